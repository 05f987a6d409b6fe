"""diffpost from Python: posterior sampling for linear inverse problems ``y = A x + eta * xi``
with diffusion (score) priors, on numpy arrays and on your own model.

Everything runs in the Rust library ``diffpost`` (the same code as the ``diffpost`` command line);
this package converts arrays and settings and forwards them.

>>> import numpy as np, diffpost
>>> prior = diffpost.GaussianMixture(np.ones(1), np.zeros((1, 2)), np.eye(2)[None])
>>> op = diffpost.Matrix(np.array([[1.0, 0.5]]))
>>> res = diffpost.sample(prior, op, np.array([0.3]), eta=0.1, method="exact", n=100, seed=0)
>>> res.samples.shape
(100, 2)
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from . import _diffpost
from ._diffpost import (
    KINDS,
    MRI,
    Blur,
    Box,
    CallableDenoiser,
    DivergedError,
    GaussianMixture,
    Identity,
    Inpaint,
    Mask,
    Matrix,
    Operator,
    Prior,
    Result,
    SuperRes,
    exact_posterior,
    load_prior,
    merge_calibrations,
    plot_calibration,
)
from ._progress import ProgressBar

__all__ = [
    "KINDS",
    "MRI",
    "Blur",
    "Box",
    "CallableDenoiser",
    "DivergedError",
    "GaussianMixture",
    "Identity",
    "Inpaint",
    "Mask",
    "Matrix",
    "Operator",
    "Prior",
    "Result",
    "SuperRes",
    "calibrate",
    "evaluate",
    "exact_posterior",
    "load_prior",
    "merge_calibrations",
    "plot_calibration",
    "sample",
]

__version__ = "0.1.0"

ArrayLike = Union[np.ndarray, "list[float]"]


def _count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


def sample(
    prior: Prior,
    operator: Operator,
    y: ArrayLike,
    eta: float,
    method: str = "annealed",
    n: int = 2000,
    seed: int = 0,
    *,
    batch: Optional[int] = None,
    progress: Optional[bool] = None,
    **settings: Any,
) -> Result:
    """Samples ``p(x | y)`` for ``y = A x + eta * xi`` with the sampler ``method``.

    Args:
        prior: a :class:`GaussianMixture`, a :func:`load_prior` result or a
            :class:`CallableDenoiser`.
        operator: the forward operator ``A`` (:class:`Matrix`, :class:`Mask`, ...).
        y: the measurement, shape ``(m,)``.
        eta: noise standard deviation per measurement, in the units of ``x`` (> 0).
        method: the ``[sampler]`` table's ``kind``: ``annealed`` (Algorithm 1), ``local``, ``cs``,
            ``ula``, ``mala``, ``dps``, ``daps``, ``ald``, ``exact``, ``prior``, ``smc``,
            ``smc-gibbs`` (SMC with Gibbs moves; e.g. ``method="smc-gibbs", populations=4``).
        n: number of samples (SMC: a multiple of ``particles``).
        seed: sample ``i`` draws from the random stream ``(seed, i)``, whatever ``batch``: the same
            seed gives the same samples as ``diffpost sample`` with the equivalent TOML.
        batch: samples per batch (the batch a :class:`CallableDenoiser` is called with); the
            results do not depend on it. Default: about two batches per core, 16..1000.
        progress: show a progress bar on stderr; default: when stderr is a terminal.
        **settings: the ``[sampler]`` table's settings, same names and defaults (README, "Config
            reference"); an unknown name is a ``ValueError``. ``method="local"`` also takes
            ``warm_start`` as an array ``(d,)`` or ``(n, d)``.

    Returns:
        A :class:`Result`: ``samples`` ``(n, d)``, ``summary`` (the dict ``summary.json`` holds),
        and for SMC ``particles``, ``weights`` and ``log_evidence``.

    Raises:
        ValueError, TypeError: bad input (the message names the argument or setting).
        DivergedError: the sampler left the problem's scale (lower ``h_rel``, ``h`` or ``zeta``).
        KeyboardInterrupt: Ctrl-C; the run stops within a few steps.
        Any exception a :class:`CallableDenoiser` callable raised, with its traceback.
    """
    if not isinstance(prior, Prior):
        raise TypeError(
            "prior: expected a GaussianMixture, a load_prior(...) result or a CallableDenoiser, "
            f"got {type(prior).__name__}"
        )
    if not isinstance(operator, Operator):
        raise TypeError(
            f"operator: expected a diffpost operator (Matrix, Mask, ...), got {type(operator).__name__}"
        )
    if not isinstance(method, str):
        raise TypeError(f"method: expected a str, got {type(method).__name__}")
    n = _count("n", n, 1)
    seed = _count("seed", seed, 0)
    if batch is not None:
        batch = _count("batch", batch, 1)
    warm = None
    if method == "local" and not isinstance(settings.get("warm_start", ""), str):
        warm = settings.pop("warm_start")
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    bar = ProgressBar(method) if progress else None
    try:
        return _diffpost.sample(
            prior,
            operator,
            y,
            float(eta),
            method,
            n,
            seed,
            batch,
            settings,
            warm,
            bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()


def evaluate(
    samples: ArrayLike,
    prior: GaussianMixture,
    operator: Operator,
    y: ArrayLike,
    eta: float,
    *,
    n_ref: int = 20000,
    log_evidence: Optional[float] = None,
) -> Dict[str, Any]:
    """What ``diffpost eval`` prints: distances of ``samples`` ``(n, d)`` to the exact posterior
    of a mixture prior, each with its Monte-Carlo noise floor.

    Returns a dict with ``sw2`` (sliced W2, 100 fixed directions), ``mmd2`` (unbiased MMD²,
    median bandwidth), ``mean_err`` (``|m_hat - m| / sqrt(tr C)``) and ``cov_err``
    (``|C_hat - C|_F / |C|_F``), each ``{"value", "floor_mean", "floor_sd"}`` against an
    ``n_ref``-point exact reference, the floor being the mean and sd over 10 fresh exact sets of
    ``n`` points; for mixture posteriors ``mode_tv`` (with its floor) and
    ``posterior_weights``; and ``log_evidence``: ``{"exact"}`` plus ``estimate`` and ``error``
    when ``log_evidence`` (e.g. ``Result.log_evidence`` of SMC) is given.
    """
    if isinstance(samples, Result):
        if log_evidence is None:
            log_evidence = samples.log_evidence
        samples = samples.samples
    n_ref = _count("n_ref", n_ref, 2)
    return _diffpost.evaluate(samples, prior, operator, y, float(eta), n_ref, log_evidence)


def calibrate(
    prior: Prior,
    operator: Operator,
    eta: float,
    method: str = "annealed",
    replicates: int = 100,
    samples: int = 31,
    seed: int = 0,
    *,
    shard: Union[str, Tuple[int, int], None] = None,
    projections: int = 8,
    pixels: int = 4,
    misfit: bool = True,
    hidden_mean: bool = True,
    sampler_eta_scale: float = 1.0,
    prior_draws: Optional[Dict[str, Any]] = None,
    bins: Optional[int] = None,
    band_draws: int = 5000,
    batch: Optional[int] = None,
    progress: Optional[bool] = None,
    **settings: Any,
) -> Dict[str, Any]:
    """Simulation-based calibration of the sampler ``method`` (what ``diffpost calibrate`` runs).

    For each of ``replicates`` replicates ``r``: ``x*`` from the prior (exact draws for a
    :class:`GaussianMixture`, else the prior's own reverse diffusion, ``prior_draws``),
    ``y = A x* + eta xi``, ``samples`` posterior samples with ``method`` (given
    ``eta * sampler_eta_scale``), and the rank of ``f(x*)`` among the samples' ``f`` for each
    statistic ``f``: ``projections`` fixed random unit projections, the misfit ``|y - A x|^2``,
    ``pixels`` coordinates (among the hidden ones for a :class:`Mask`/:class:`Inpaint`/:class:`Box`)
    and the hidden-part mean. Replicate ``r`` depends only on ``(seed, r)``.

    Args:
        shard: ``"K/N"`` or ``(K, N)``: only the K-th (0-based) of N blocks of replicates; put
            the parts back together with :func:`merge_calibrations`.
        sampler_eta_scale: diagnostic knob: the sampler assumes ``eta * sampler_eta_scale``
            while the data have ``eta`` (any value but 1 makes even an exact sampler wrong).
        prior_draws: the ``prior`` sampler's settings for ``x*`` of priors without exact draws
            (``steps``, ``init_method``, ...).
        **settings: the ``[sampler]`` table's settings, as for :func:`sample`.

    Returns:
        The dict ``calibration.json`` holds: ``replicates`` (per replicate ``ranks``, ``truth``,
        ``posterior_mean``, ``posterior_sd``), ``statistics`` (names), ``summary`` (``passed``,
        ``failed``, ``band``, and per statistic ``histogram``, ``ecdf_diff``, ``leaves_band``,
        ``min_pointwise_p``, ``coverage``, ``contraction``), ``fingerprint``, ``options``.
    """
    if not isinstance(prior, Prior):
        raise TypeError(f"prior: expected a diffpost prior, got {type(prior).__name__}")
    if not isinstance(operator, Operator):
        raise TypeError(
            f"operator: expected a diffpost operator (Matrix, Mask, ...), got {type(operator).__name__}"
        )
    if not isinstance(method, str):
        raise TypeError(f"method: expected a str, got {type(method).__name__}")
    if isinstance(shard, str):
        parts = shard.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"shard: expected 'K/N' (e.g. '0/4'), got {shard!r}")
        shard = (int(parts[0]), int(parts[1]))
    if shard is not None:
        k, n = (_count("shard[0]", shard[0], 0), _count("shard[1]", shard[1], 1))
        if k >= n:
            raise ValueError(f"shard: expected K/N with 0 <= K < N, got {k}/{n}")
        shard = {"index": k, "count": n}
    options: Dict[str, Any] = {
        "replicates": _count("replicates", replicates, 1),
        "samples": _count("samples", samples, 1),
        "seed": _count("seed", seed, 0),
        "statistics": {
            "projections": _count("projections", projections, 0),
            "pixels": _count("pixels", pixels, 0),
            "misfit": bool(misfit),
            "hidden_mean": bool(hidden_mean),
        },
        "sampler_eta_scale": float(sampler_eta_scale),
        "band_draws": _count("band_draws", band_draws, 100),
    }
    if prior_draws is not None:
        options["prior_draws"] = dict(prior_draws)
    if bins is not None:
        options["bins"] = _count("bins", bins, 1)
    if batch is not None:
        options["batch"] = _count("batch", batch, 1)
    if shard is not None:
        options["shard"] = shard
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    bar = ProgressBar(f"calibrate {method}") if progress else None
    try:
        return _diffpost.calibrate(
            prior,
            operator,
            float(eta),
            method,
            options,
            settings,
            bar.update if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
