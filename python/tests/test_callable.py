"""CallableDenoiser: a numpy denoiser reproduces the built-in mixture's runs; batches, gradients
(vjp) and the callback's exceptions."""

from __future__ import annotations

import traceback

import numpy as np
import pytest

import diffpost
from conftest import callable_like, gmm_denoiser, make_problem

# A short Algorithm 1 (5 stages of 100 steps, a 100-step diffusion start). The score of a
# callable is Tweedie's (D(x, s) - x) / s^2, so both runs evaluate it at s = 0.01.
SHORT = dict(stages=5, steps_per_stage=100, init_steps=100, score_sigma=1e-2)


def problem():
    return make_problem(6, 3, 2, 0.2, 28, spread=1.5)


def test_numpy_denoiser_reproduces_the_builtin_sampler() -> None:
    p = problem()
    c = callable_like(p)
    builtin = diffpost.sample(p.prior, p.op, p.y, p.eta, n=64, seed=1, **SHORT)
    called = diffpost.sample(c, p.op, p.y, p.eta, n=64, seed=1, **SHORT)
    # Same streams, same steps: equal up to the rounding of two implementations of D
    # (measured 9e-12 here, 9e-11 over the default 8,100-evaluation run).
    diff = np.abs(builtin.samples - called.samples).max()
    assert diff < 1e-8, diff
    assert builtin.summary["info"] == called.summary["info"]
    assert builtin.summary["params"] == called.summary["params"]
    # The comparison resolves a different seed and a slightly wrong denoiser.
    other = diffpost.sample(p.prior, p.op, p.y, p.eta, n=64, seed=2, **SHORT)
    assert np.abs(other.samples - called.samples).max() > 0.1
    wrong = callable_like(p, gmm_denoiser(p.weights, p.means, 1.01 * p.covs))
    off = diffpost.sample(wrong, p.op, p.y, p.eta, n=64, seed=1, **SHORT)
    assert np.abs(off.samples - called.samples).max() > 1e-4
    cb = called.summary["callback"]
    assert cb["calls"] > 0 and cb["seconds_inside"] > 0 and cb["seconds_outside"] >= 0


def test_the_callback_sees_the_batch_size_and_results_do_not_depend_on_it() -> None:
    p = problem()
    f = gmm_denoiser(p.weights, p.means, p.covs)
    shapes = set()

    def fn(x: np.ndarray, sigma: float) -> np.ndarray:
        assert x.dtype == np.float64 and isinstance(sigma, float)
        shapes.add(x.shape)
        return f(x, sigma)

    c = callable_like(p, fn)
    a = diffpost.sample(c, p.op, p.y, p.eta, n=20, seed=3, batch=7, **SHORT)
    assert shapes == {(7, 6), (6, 6)}
    b = diffpost.sample(c, p.op, p.y, p.eta, n=20, seed=3, batch=20, **SHORT)
    np.testing.assert_allclose(a.samples, b.samples, rtol=0, atol=1e-12)


def test_images_are_passed_in_the_callables_shape() -> None:
    shapes = set()

    def fn(x: np.ndarray, sigma: float) -> np.ndarray:
        shapes.add(x.shape[1:])
        return x / (1 + sigma**2)  # the denoiser of N(0, I)

    c = diffpost.CallableDenoiser(fn, 12, 1e-3, 50.0, shape=(1, 3, 4))
    assert c.shape == [1, 3, 4] and c.dim == 12
    op = diffpost.Inpaint((1, 3, 4), 0.5, seed=1)
    y = np.zeros(op.out_dim)
    r = diffpost.sample(c, op, y, 0.1, method="ula", n=4, seed=0, steps=20, init_steps=10)
    assert shapes == {(1, 3, 4)} and r.samples.shape == (4, 12)


def test_float32_and_fortran_ordered_results_are_read_correctly() -> None:
    p = problem()
    f = gmm_denoiser(p.weights, p.means, p.covs)
    x = np.random.default_rng(0).standard_normal((5, 6))
    ref = p.prior.denoise(x, 0.3)
    as_f = diffpost.CallableDenoiser(lambda x, s: np.asfortranarray(f(x, s)), 6, 1e-6, 100.0)
    np.testing.assert_allclose(as_f.denoise(x, 0.3), ref, atol=1e-12)
    as_32 = diffpost.CallableDenoiser(lambda x, s: f(x, s).astype(np.float32), 6, 1e-6, 100.0)
    np.testing.assert_allclose(as_32.denoise(x, 0.3), ref, atol=1e-5)


def gaussian_vjp_problem():
    p = make_problem(5, 3, 1, 0.1, 11)
    s = p.covs[0]

    def jac(sigma: float) -> np.ndarray:  # D(x, s) = mu + S (S + s^2 I)^-1 (x - mu)
        return s @ np.linalg.inv(s + sigma**2 * np.eye(5))

    def vjp(x: np.ndarray, sigma: float, g: np.ndarray) -> np.ndarray:
        return g @ jac(sigma)  # J^T g per row, J symmetric

    return p, vjp


def dps_callable(p, vjp) -> diffpost.CallableDenoiser:
    # DPS walks the VP levels of 1000 linear-beta steps up to sigma ~ 157: the callable's range
    # must cover them as the mixture's (0, inf) does.
    return diffpost.CallableDenoiser(
        gmm_denoiser(p.weights, p.means, p.covs), 5, 1e-6, 1e3, vjp=vjp, scale=p.prior.scale
    )


def test_dps_differentiates_through_the_callable_with_its_vjp() -> None:
    p, vjp = gaussian_vjp_problem()
    c = dps_callable(p, vjp)
    assert c.has_vjp
    a = diffpost.sample(p.prior, p.op, p.y, p.eta, method="dps", n=16, seed=5, steps=100)
    b = diffpost.sample(c, p.op, p.y, p.eta, method="dps", n=16, seed=5, steps=100)
    assert np.abs(a.samples - b.samples).max() < 1e-8
    # A wrong vjp changes the result: the gradient really goes through it.
    bad = dps_callable(p, lambda x, s, g: 0.5 * vjp(x, s, g))
    w = diffpost.sample(bad, p.op, p.y, p.eta, method="dps", n=16, seed=5, steps=100)
    assert np.abs(w.samples - a.samples).max() > 1e-3


def test_dps_without_vjp_says_what_is_missing() -> None:
    p, _ = gaussian_vjp_problem()
    c = callable_like(p)
    with pytest.raises(ValueError, match="vjp"):
        diffpost.sample(c, p.op, p.y, p.eta, method="dps", n=4)
    with pytest.raises(ValueError, match="vjp"):
        diffpost.sample(c, p.op, p.y, p.eta, method="local", n=4, sigma=0.5)
    # Algorithm 2 with another warm start needs no gradient.
    r = diffpost.sample(
        c, p.op, p.y, p.eta, method="local", n=4, sigma=0.5, warm_start="least-squares", stages=3,
        steps_per_stage=10, init_steps=10, score_sigma=1e-2,
    )
    assert r.samples.shape == (4, 5)


class Boom(RuntimeError):
    pass


def exploding_denoiser(after: int):
    calls = {"n": 0}

    def fn(x: np.ndarray, sigma: float) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > after:
            raise Boom(f"model failed at call {calls['n']}")
        return x / (1 + sigma**2)

    return fn, calls


def test_a_callback_exception_comes_back_with_its_traceback() -> None:
    fn, calls = exploding_denoiser(after=3)
    c = diffpost.CallableDenoiser(fn, 4, 1e-3, 50.0)
    op = diffpost.Identity(4)
    with pytest.raises(Boom, match="model failed at call 4") as info:
        diffpost.sample(c, op, np.zeros(4), 0.1, n=8, seed=0, batch=4)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "fn" in frames, frames  # the original traceback, down to the raising line
    # The run stopped at the next call: no call after the failing one in its batch, at most one
    # more per other batch in flight.
    assert calls["n"] <= 4 + 1
    # A later run with the same (now healthy) object works.
    calls["n"] = -10**9
    r = diffpost.sample(c, op, np.zeros(4), 0.1, method="ula", n=2, steps=5, init_steps=5)
    assert r.samples.shape == (2, 4)


def test_bad_results_from_the_callable_are_value_errors() -> None:
    op = diffpost.Identity(4)
    y = np.zeros(4)
    shape = diffpost.CallableDenoiser(lambda x, s: x[:, :3], 4, 1e-3, 50.0)
    with pytest.raises(ValueError, match=r"returned shape \(\d+, 3\), expected \(\d+, 4\)"):
        diffpost.sample(shape, op, y, 0.1, n=2)
    nan = diffpost.CallableDenoiser(lambda x, s: x * np.nan, 4, 1e-3, 50.0)
    with pytest.raises(ValueError, match="non-finite"):
        diffpost.sample(nan, op, y, 0.1, n=2)
    text = diffpost.CallableDenoiser(lambda x, s: "no", 4, 1e-3, 50.0)
    with pytest.raises((TypeError, ValueError)):
        diffpost.sample(text, op, y, 0.1, n=2)


def test_constructor_checks() -> None:
    with pytest.raises(TypeError, match="fn: must be callable"):
        diffpost.CallableDenoiser(3.0, 4, 1e-3, 50.0)
    with pytest.raises(TypeError, match="vjp"):
        diffpost.CallableDenoiser(lambda x, s: x, 4, 1e-3, 50.0, vjp="grad")
    with pytest.raises(ValueError, match="sigma_min"):
        diffpost.CallableDenoiser(lambda x, s: x, 4, 0.0, 50.0)
    with pytest.raises(ValueError, match="shape"):
        diffpost.CallableDenoiser(lambda x, s: x, 4, 1e-3, 50.0, shape=(3, 3))
    with pytest.raises(ValueError, match="dim"):
        diffpost.CallableDenoiser(lambda x, s: x, 0, 1e-3, 50.0)


def test_smc_runs_on_a_callable_with_ula_moves() -> None:
    p = problem()
    c = callable_like(p)
    r = diffpost.sample(
        c, p.op, p.y, p.eta, method="smc", n=50, seed=0, moves_per_stage=5, final_moves=10,
        init_steps=20, score_sigma=1e-2,
    )
    # ULA moves (no log-density): MALA would record its acceptance in the trace.
    assert "acceptance" not in r.summary["info"]["smc"][0]
    assert r.log_evidence is not None and np.isfinite(r.log_evidence)
