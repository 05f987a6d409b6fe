"""Bad input gets a ValueError/TypeError naming the argument (never a panic)."""

from __future__ import annotations

import numpy as np
import pytest

import diffpost
from conftest import make_problem


@pytest.fixture
def p():
    return make_problem(4, 2, 1, 0.1, 0)


def test_measurement_checks(p) -> None:
    with pytest.raises(ValueError, match=r"y: expected shape \(2,\)"):
        diffpost.sample(p.prior, p.op, np.zeros(3), p.eta, n=4)
    with pytest.raises(ValueError, match=r"y: expected shape \(2,\)"):
        diffpost.sample(p.prior, p.op, np.zeros((1, 2)), p.eta, n=4)
    with pytest.raises(ValueError, match=r"y: non-finite value NaN at flat index 1 \(shape \(2,\)\)"):
        diffpost.sample(p.prior, p.op, np.array([0.0, np.nan]), p.eta, n=4)
    with pytest.raises(TypeError, match="y: expected a real numeric array, got dtype complex128"):
        diffpost.sample(p.prior, p.op, np.zeros(2, dtype=complex), p.eta, n=4)
    for eta in [0.0, -1.0, np.inf, np.nan]:
        with pytest.raises(ValueError, match="eta"):
            diffpost.sample(p.prior, p.op, p.y, eta, n=4)


def test_integer_and_list_inputs_are_converted(p) -> None:
    a = diffpost.sample(p.prior, p.op, p.y.tolist(), p.eta, method="exact", n=4)
    b = diffpost.sample(p.prior, p.op, p.y, p.eta, method="exact", n=4)
    assert np.array_equal(a.samples, b.samples)
    m = diffpost.Matrix(np.array([[1, 0, 0, 0]], dtype=np.int32))
    np.testing.assert_array_equal(m.apply(np.arange(4.0)), [0.0])


def test_fortran_ordered_arrays_are_read_in_their_logical_order(p) -> None:
    af = np.asfortranarray(p.A)
    assert not af.flags.c_contiguous
    x = np.random.default_rng(1).standard_normal((3, 4))
    np.testing.assert_allclose(diffpost.Matrix(af).apply(x), x @ p.A.T, atol=1e-12)
    np.testing.assert_allclose(diffpost.Matrix(af).apply(np.asfortranarray(x)), x @ p.A.T, atol=1e-12)


def test_settings_are_the_sampler_tables(p) -> None:
    with pytest.raises(ValueError, match="stepz"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, method="ula", n=4, stepz=10)
    # A key of another sampler is refused too.
    with pytest.raises(ValueError, match="particles"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, method="annealed", n=4, particles=10)
    with pytest.raises(ValueError, match="unknown sampler kind `anealed`"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, method="anealed", n=4)
    with pytest.raises(ValueError, match="steps"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, method="ula", n=4, steps=0)
    with pytest.raises(ValueError, match="stages"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, n=4, stages=20_000_000)
    with pytest.raises(ValueError, match="kind: give the sampler as method"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, n=4, kind="ula")
    with pytest.raises(TypeError, match="h_rel"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, n=4, h_rel=object())
    with pytest.raises(ValueError, match="h_rel: must be finite"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, n=4, h_rel=float("nan"))
    with pytest.raises(ValueError, match="`run.n`: must be a multiple of the population size 4"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, method="smc", n=6, particles=4)
    # Defaults filled in, as summary.json's params.
    r = diffpost.sample(p.prior, p.op, p.y, p.eta, method="ula", n=2, steps=3, init_steps=2)
    assert r.summary["params"]["h_rel"] == 0.2 and r.summary["params"]["steps"] == 3


def test_deprecated_names_warn(p) -> None:
    with pytest.warns(DeprecationWarning, match="levels"):
        r = diffpost.sample(p.prior, p.op, p.y, p.eta, method="ald", n=2, levels=3, steps_per_stage=2)
    assert r.summary["warnings"]


def test_counts_and_objects(p) -> None:
    for bad in [0, -1]:
        with pytest.raises(ValueError, match="n: must be >= 1"):
            diffpost.sample(p.prior, p.op, p.y, p.eta, n=bad)
    with pytest.raises(TypeError, match="n: expected an int"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, n=2.5)
    with pytest.raises(ValueError, match="batch"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, n=2, batch=0)
    with pytest.raises(TypeError, match="prior: expected"):
        diffpost.sample("gmm", p.op, p.y, p.eta)
    with pytest.raises(TypeError, match="operator: expected"):
        diffpost.sample(p.prior, p.A, p.y, p.eta)
    with pytest.raises(ValueError, match="operator: matrix\\[2x5\\] takes vectors of length 5 but the prior has dim 4"):
        diffpost.sample(p.prior, diffpost.Matrix(np.ones((2, 5))), p.y, p.eta)


def test_mixture_checks() -> None:
    w, mu, cov = np.ones(2), np.zeros((2, 3)), np.stack([np.eye(3)] * 2)
    with pytest.raises(ValueError, match=r"means: expected shape \(2, d\)"):
        diffpost.GaussianMixture(w, np.zeros((3, 3)), cov)
    with pytest.raises(ValueError, match=r"covs: expected shape \(2, 3, 3\)"):
        diffpost.GaussianMixture(w, mu, np.eye(3))
    with pytest.raises(ValueError, match="means: non-finite"):
        diffpost.GaussianMixture(w, np.full((2, 3), np.inf), cov)
    with pytest.raises(ValueError, match="weights"):
        diffpost.GaussianMixture(-w, mu, cov)
    with pytest.raises(ValueError):  # not positive semi-definite
        diffpost.GaussianMixture(w, mu, -cov)


def test_evaluate_checks(p) -> None:
    with pytest.raises(ValueError, match=r"samples: expected shape \(n, 4\) with n >= 2"):
        diffpost.evaluate(np.zeros((10, 3)), p.prior, p.op, p.y, p.eta)
    with pytest.raises(ValueError, match="samples: non-finite"):
        diffpost.evaluate(np.full((10, 4), np.nan), p.prior, p.op, p.y, p.eta)
    c = diffpost.CallableDenoiser(lambda x, s: x, 4, 1e-3, 10.0)
    with pytest.raises(TypeError, match="prior: evaluate needs a GaussianMixture"):
        diffpost.evaluate(np.zeros((10, 4)), c, p.op, p.y, p.eta)
    with pytest.raises(TypeError, match="prior: exact_posterior needs a GaussianMixture"):
        diffpost.exact_posterior(c, p.op, p.y, p.eta)
    with pytest.raises(ValueError, match="exact needs an analytic"):
        diffpost.sample(c, p.op, p.y, p.eta, method="exact", n=2)


def test_divergence_is_its_own_error(p) -> None:
    with pytest.raises(diffpost.DivergedError, match="diverged"):
        diffpost.sample(p.prior, p.op, p.y, p.eta, method="ula", n=4, h=10.0, steps=100, init_steps=5)
    assert issubclass(diffpost.DivergedError, RuntimeError)


def test_load_prior_checks(tmp_path) -> None:
    with pytest.raises(ValueError, match="kind: cannot tell"):
        diffpost.load_prior(tmp_path)
    with pytest.raises(ValueError, match="unknown field `sigma`"):
        diffpost.load_prior(kind="isotropic", d=3, sigma=1.0)
    with pytest.raises(ValueError, match="file not found|No such file"):
        diffpost.load_prior(tmp_path / "nope.npz")
    g = diffpost.load_prior(kind="isotropic", d=3, var=2.0)
    assert isinstance(g, diffpost.GaussianMixture) and g.dim == 3
    np.testing.assert_allclose(g.covs[0], 2.0 * np.eye(3))
