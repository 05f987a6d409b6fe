"""Type stubs of the native module (Rust, PyO3). The public API is re-exported by `diffpost`."""

from __future__ import annotations

from os import PathLike
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

ArrayLike = Union[npt.ArrayLike, np.ndarray]
Shape3 = Tuple[int, int, int]

KINDS: List[str]

class DivergedError(RuntimeError):
    """A sampler left the problem's scale or produced NaN/inf (lower h_rel, h or zeta)."""

class Prior:
    """A diffusion prior seen through its denoiser D(x, sigma) (base class of every prior)."""

    @property
    def dim(self) -> int: ...
    @property
    def shape(self) -> List[int]: ...
    @property
    def sigma_range(self) -> Tuple[float, float]: ...
    @property
    def sigma_max_hint(self) -> float: ...
    @property
    def lipschitz(self) -> Optional[float]: ...
    @property
    def scale(self) -> float: ...
    @property
    def description(self) -> Dict[str, Any]: ...
    def denoise(self, x: ArrayLike, sigma: float) -> np.ndarray:
        """D(x, sigma) for x of shape (d,) or (B, d)."""

class GaussianMixture(Prior):
    """sum_k w_k N(mu_k, S_k): exact denoiser, score and posterior."""

    def __init__(self, weights: ArrayLike, means: ArrayLike, covs: ArrayLike) -> None: ...
    @property
    def weights(self) -> np.ndarray: ...
    @property
    def means(self) -> np.ndarray: ...
    @property
    def covs(self) -> np.ndarray: ...
    @property
    def k(self) -> int: ...
    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n exact draws (n, d); sample i from stream (seed, i), as method="exact" draws them."""

class CallableDenoiser(Prior):
    """A prior given by fn(x, sigma) -> D(x, sigma) on float64 arrays (B, *shape)."""

    def __init__(
        self,
        fn: Callable[[np.ndarray, float], Any],
        dim: int,
        sigma_min: float,
        sigma_max: float,
        shape: Optional[Sequence[int]] = None,
        *,
        vjp: Optional[Callable[[np.ndarray, float, np.ndarray], Any]] = None,
        lipschitz: Optional[float] = None,
        scale: Optional[float] = None,
    ) -> None: ...
    @property
    def has_vjp(self) -> bool: ...

class Operator:
    """A linear operator A: R^d -> R^m with its adjoint (base class of every operator)."""

    def apply(self, x: ArrayLike) -> np.ndarray:
        """A x for x of shape (d,) or (B, d)."""
    def adjoint(self, y: ArrayLike) -> np.ndarray:
        """A^T y for y of shape (m,) or (B, m)."""
    def norm(self) -> float:
        """||A|| by power iteration."""
    @property
    def in_dim(self) -> int: ...
    @property
    def out_dim(self) -> int: ...
    @property
    def image_shape(self) -> Optional[Shape3]: ...
    @property
    def name(self) -> str: ...

class Matrix(Operator):
    def __init__(self, a: ArrayLike) -> None: ...

class Mask(Operator):
    def __init__(self, mask: ArrayLike) -> None: ...

class Identity(Operator):
    def __init__(self, d: int) -> None: ...

class Inpaint(Operator):
    def __init__(self, shape: Shape3, rate: float, seed: int = 0) -> None: ...

class Box(Operator):
    def __init__(self, shape: Shape3, top: int, left: int, height: int, width: int) -> None: ...

class SuperRes(Operator):
    def __init__(self, shape: Shape3, factor: int) -> None: ...

class Blur(Operator):
    def __init__(self, shape: Shape3, kernel_size: int, std: float) -> None: ...

class MRI(Operator):
    def __init__(self, shape: Shape3, acceleration: float, center_lines: int, seed: int = 0) -> None: ...

class Result:
    """What sample() returns."""

    @property
    def samples(self) -> np.ndarray: ...
    @property
    def summary(self) -> Dict[str, Any]: ...
    @property
    def particles(self) -> Optional[np.ndarray]: ...
    @property
    def weights(self) -> Optional[np.ndarray]: ...
    @property
    def log_evidence(self) -> Optional[float]: ...

def load_prior(
    path: Union[str, PathLike[str], None] = None, kind: Optional[str] = None, **settings: Any
) -> Prior: ...
def exact_posterior(prior: Prior, operator: Operator, y: ArrayLike, eta: float) -> GaussianMixture: ...
def sample(
    prior: Prior,
    operator: Operator,
    y: ArrayLike,
    eta: float,
    method: str,
    n: int,
    seed: int,
    batch: Optional[int],
    settings: Dict[str, Any],
    warm_start: Optional[ArrayLike],
    progress: Optional[Callable[[int, int], Any]],
) -> Result: ...
def evaluate(
    samples: ArrayLike,
    prior: Prior,
    operator: Operator,
    y: ArrayLike,
    eta: float,
    n_ref: int = 20000,
    log_evidence: Optional[float] = None,
) -> Dict[str, Any]: ...
def calibrate(
    prior: Prior,
    operator: Operator,
    eta: float,
    method: str,
    options: Dict[str, Any],
    settings: Dict[str, Any],
    progress: Optional[Callable[[int, int], Any]],
) -> Dict[str, Any]: ...
def merge_calibrations(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The parts (shards) of one calibration put back together, the summary over all replicates."""
def plot_calibration(result: Dict[str, Any], path: Union[str, PathLike[str]]) -> None:
    """Draws the calibration figure (rank histograms, ECDF differences with the band) to path."""
