"""Shared problems and a numpy Gaussian-mixture denoiser for the tests."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

import diffpost


@dataclass
class Problem:
    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    A: np.ndarray
    y: np.ndarray
    eta: float

    @property
    def prior(self) -> diffpost.GaussianMixture:
        return diffpost.GaussianMixture(self.weights, self.means, self.covs)

    @property
    def op(self) -> diffpost.Matrix:
        return diffpost.Matrix(self.A)


def make_problem(d: int, m: int, k: int, eta: float, seed: int, spread: float = 0.5) -> Problem:
    """A random mixture prior (random rotations, eigenvalues in [0.25, 1]), a Gaussian A / sqrt(m)
    and y from a prior draw, like `diffpost problem gmm`."""
    rng = np.random.default_rng(seed)
    weights = 0.5 + rng.random(k)
    means = np.zeros((k, d)) if k == 1 else spread * rng.standard_normal((k, d))
    covs = []
    for _ in range(k):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        lam = 0.25 * 4.0 ** rng.random(d)
        c = (q * lam) @ q.T
        covs.append(0.5 * (c + c.T))
    covs = np.stack(covs)
    A = rng.standard_normal((m, d)) / np.sqrt(m)
    j = rng.choice(k, p=weights / weights.sum())
    x = rng.multivariate_normal(means[j], covs[j])
    y = A @ x + eta * rng.standard_normal(m)
    return Problem(weights, means, covs, A, y, eta)


def gmm_denoiser(
    weights: np.ndarray, means: np.ndarray, covs: np.ndarray
) -> Callable[[np.ndarray, float], np.ndarray]:
    """The exact Tweedie denoiser of a Gaussian mixture in numpy:
    D(x, s) = sum_k r_k(x) (mu_k + S_k (S_k + s^2 I)^-1 (x - mu_k))."""
    w = weights / weights.sum()
    d = means.shape[1]

    def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        logp = []
        post_means = []
        for wk, mu, s in zip(w, means, covs):
            c = s + sigma**2 * np.eye(d)
            chol = np.linalg.cholesky(c)
            r = x - mu
            z = np.linalg.solve(chol, r.T)  # [d, B]
            logdet = 2 * np.log(np.diag(chol)).sum()
            logp.append(np.log(wk) - 0.5 * (z**2).sum(0) - 0.5 * logdet)
            cinv_r = np.linalg.solve(chol.T, z)  # C^-1 r, [d, B]
            post_means.append(mu + (s @ cinv_r).T)
        logp = np.stack(logp)  # [K, B]
        resp = np.exp(logp - logp.max(0))
        resp /= resp.sum(0)
        return np.einsum("kb,kbd->bd", resp, np.stack(post_means))

    return denoise


def callable_like(
    p: Problem, fn: Optional[Callable] = None, **kw
) -> diffpost.CallableDenoiser:
    """A CallableDenoiser that sees what the built-in mixture tells the samplers: the same sigma
    range top (so the same diffusion start), Lipschitz constant and scale."""
    g = p.prior
    return diffpost.CallableDenoiser(
        fn or gmm_denoiser(p.weights, p.means, p.covs),
        g.dim,
        1e-6,
        g.sigma_max_hint,
        lipschitz=g.lipschitz,
        scale=g.scale,
        **kw,
    )


def floor_ok(metric: dict, k: float) -> bool:
    return metric["value"] <= metric["floor_mean"] + k * metric["floor_sd"]


def at_floor(ev: dict) -> bool:
    """The Rust tests' rule: sliced W2 at most 1.3 x its floor mean; mean and covariance errors
    within floor mean + 4 floor sd."""
    return (
        ev["sw2"]["value"] <= 1.3 * ev["sw2"]["floor_mean"]
        and floor_ok(ev["mean_err"], 4.0)
        and floor_ok(ev["cov_err"], 4.0)
    )


def cli_binary() -> Optional[Path]:
    """The `diffpost` binary: $DIFFPOST_BIN, else target/release/diffpost of the workspace (or of
    $CARGO_TARGET_DIR), else on PATH."""
    env = os.environ.get("DIFFPOST_BIN")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[2]
    for t in [os.environ.get("CARGO_TARGET_DIR"), str(root / "target")]:
        if t and (Path(t) / "release" / "diffpost").is_file():
            return Path(t) / "release" / "diffpost"
    w = shutil.which("diffpost")
    return Path(w) if w else None


@pytest.fixture
def cli() -> Path:
    b = cli_binary()
    if b is None:
        if os.environ.get("DIFFPOST_REQUIRE_CLI"):
            pytest.fail("DIFFPOST_REQUIRE_CLI is set but no diffpost binary was found")
        pytest.skip("no diffpost binary (build it with cargo build --release or set DIFFPOST_BIN)")
    return b
