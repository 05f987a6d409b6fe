"""Samples against exact posteriors, with the Rust tests' noise-floor rule (`conftest.at_floor`:
sliced W2 <= 1.3 x its floor mean, mean and covariance errors within floor mean + 4 floor sd;
mode-weight TV within floor mean + 3 floor sd). Each check has a broken companion that must fail
the same rule. Seeds are fixed; n = 1000."""

from __future__ import annotations

import numpy as np

import diffpost
from conftest import at_floor, floor_ok, make_problem

N = 1000


def test_annealed_reaches_the_noise_floor() -> None:
    p = make_problem(10, 5, 1, 0.1, 3)
    r = diffpost.sample(p.prior, p.op, p.y, p.eta, method="annealed", n=N, seed=1)
    assert r.samples.shape == (N, 10)
    assert r.summary["score_evals_per_sample"] == 8100  # the documented default budget
    ev = diffpost.evaluate(r.samples, p.prior, p.op, p.y, p.eta)
    print("annealed sw2/floor", ev["sw2"]["value"] / ev["sw2"]["floor_mean"])
    assert at_floor(ev), ev


def test_annealed_with_a_wrong_eta_fails_the_same_rule() -> None:
    # Broken companion: the sampler targets eta' = 3 eta (measured 1.96x the floor; 2 eta gives
    # 1.25x, inside the 1.3x rule on this problem, so the rule resolves about a factor 3 here).
    p = make_problem(10, 5, 1, 0.1, 3)
    r = diffpost.sample(p.prior, p.op, p.y, 3 * p.eta, method="annealed", n=N, seed=1)
    ev = diffpost.evaluate(r.samples, p.prior, p.op, p.y, p.eta)
    assert not at_floor(ev), ev


def mixture():
    # Two modes whose posterior weights (0.74 / 0.26) differ from the prior's (0.49 / 0.51).
    return make_problem(6, 3, 2, 0.2, 28, spread=1.5)


def test_smc_gets_the_posterior_mode_weights() -> None:
    q = mixture()
    r = diffpost.sample(q.prior, q.op, q.y, q.eta, method="smc", n=N, seed=1, moves_per_stage=300)
    assert r.weights is not None and r.particles is not None
    assert r.weights.shape == (N,) and r.particles.shape == (N, 6)
    assert abs(r.weights.sum() - 1.0) < 1e-9  # one population of N particles
    assert r.log_evidence is not None and r.log_evidence == r.summary["log_evidence"]
    ev = diffpost.evaluate(r, q.prior, q.op, q.y, q.eta)
    print("smc", ev["mode_tv"], ev["sw2"]["value"] / ev["sw2"]["floor_mean"], ev["log_evidence"])
    assert ev["log_evidence"]["estimate"] == r.log_evidence
    assert at_floor(ev), ev
    assert floor_ok(ev["mode_tv"], 3.0), ev["mode_tv"]


def test_smc_gibbs_gets_the_posterior_mode_weights() -> None:
    q = mixture()
    r = diffpost.sample(q.prior, q.op, q.y, q.eta, method="smc-gibbs", n=N, seed=1)
    # Four populations of N particles pooled: 4N weighted particles, weights summing to one.
    assert r.weights is not None and r.weights.shape == (4 * N,)
    assert abs(r.weights.sum() - 1.0) < 1e-9
    ev = diffpost.evaluate(r, q.prior, q.op, q.y, q.eta)
    print("smc-gibbs", ev["mode_tv"], ev["sw2"]["value"] / ev["sw2"]["floor_mean"], ev["log_evidence"])
    assert at_floor(ev), ev
    assert floor_ok(ev["mode_tv"], 3.0), ev["mode_tv"]
    assert abs(ev["log_evidence"]["error"]) < 0.5, ev["log_evidence"]


def test_a_local_sampler_keeps_the_prior_mode_weights() -> None:
    # Companion: Algorithm 1 cannot reweight separated modes (README, "Limit").
    q = mixture()
    r = diffpost.sample(q.prior, q.op, q.y, q.eta, method="annealed", n=N, seed=1)
    ev = diffpost.evaluate(r, q.prior, q.op, q.y, q.eta)
    assert not floor_ok(ev["mode_tv"], 3.0), ev["mode_tv"]


def test_exact_posterior_matches_the_exact_sampler() -> None:
    q = mixture()
    post = diffpost.exact_posterior(q.prior, q.op, q.y, q.eta)
    assert post.k == 2 and post.dim == 6
    np.testing.assert_allclose(post.weights, [0.74040396, 0.25959604], atol=1e-8)
    r = diffpost.sample(q.prior, q.op, q.y, q.eta, method="exact", n=200, seed=4)
    assert np.array_equal(post.sample(200, seed=4), r.samples)
    ev = diffpost.evaluate(post.sample(N, seed=9), q.prior, q.op, q.y, q.eta)
    assert at_floor(ev) and floor_ok(ev["mode_tv"], 3.0)
