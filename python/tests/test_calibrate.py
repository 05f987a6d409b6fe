"""Simulation-based calibration from Python (`diffpost.calibrate`): the exact sampler is
calibrated on a mixture prior and its broken companion (the sampler given 3 x eta) is not; shards
merge to the whole; the same seed gives the CLI's ranks; callables draw x* by diffusion; bad input
is a ValueError naming the argument. Seeds are fixed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import diffpost
from conftest import callable_like, make_problem


def problem():
    p = make_problem(6, 3, 2, 0.3, 11)
    mask = diffpost.Mask(np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0]))
    return p, mask


def test_exact_sampler_is_calibrated_and_a_wrong_eta_is_not() -> None:
    p, mask = problem()
    res = diffpost.calibrate(p.prior, mask, p.eta, method="exact", replicates=300, samples=15, seed=2)
    s = res["summary"]
    assert res["statistics"][:8] == [f"proj{k}" for k in range(8)]
    assert res["statistics"][8:] == ["misfit", "pixel1", "pixel3", "pixel5", "hidden_mean"]
    assert len(res["replicates"]) == 300
    # Family-wise 95% over the 13 statistics: an exact sampler fails with probability <= 5%.
    assert s["passed"], s["failed"]
    for st in s["statistics"]:
        for c in st["coverage"]:
            # 26 coverage checks at 3.5 binomial sd: <= 1.2% family-wise.
            assert abs(c["observed"] - c["expected"]) <= 3.5 * c["sd"], (st["name"], c)
    # Broken companion: the same sampler assuming 3 eta (over-dispersed).
    bad = diffpost.calibrate(
        p.prior, mask, p.eta, method="exact", replicates=300, samples=15, seed=2,
        sampler_eta_scale=3.0,
    )
    assert not bad["summary"]["passed"]
    assert "misfit" in bad["summary"]["failed"]


def close(a, b, rel: float = 1e-12) -> bool:
    """Equal structures, floats within `rel`."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)
    return a == b


def test_shards_merge_and_plot(tmp_path: Path) -> None:
    p, mask = problem()
    kw = dict(method="exact", replicates=30, samples=7, seed=4, band_draws=500)
    whole = diffpost.calibrate(p.prior, mask, p.eta, **kw)
    a = diffpost.calibrate(p.prior, mask, p.eta, shard="0/2", **kw)
    b = diffpost.calibrate(p.prior, mask, p.eta, shard=(1, 2), **kw)
    merged = diffpost.merge_calibrations([b, a])
    assert [r["ranks"] for r in merged["replicates"]] == [r["ranks"] for r in whole["replicates"]]
    # The parts travel as JSON (serde_json's float parsing is exact to about 1 ulp), so the
    # moments behind prior_sd/contraction match to rounding; the counts and ranks exactly.
    assert close(merged["summary"], whole["summary"])
    with pytest.raises(ValueError, match="missing 15 of 30 replicates: 0-14"):
        diffpost.merge_calibrations([b])
    with pytest.raises(ValueError, match="is given twice"):
        diffpost.merge_calibrations([a, a, b])
    diffpost.plot_calibration(merged, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_same_ranks_as_the_cli(tmp_path: Path, cli: Path) -> None:
    p, _ = problem()
    np.savez(tmp_path / "prior.npz", weights=p.weights, means=p.means, covs=p.covs)
    np.save(tmp_path / "A.npy", p.A)
    (tmp_path / "c.toml").write_text(
        '[prior]\nkind = "gmm"\npath = "prior.npz"\n[operator]\nkind = "matrix"\npath = "A.npy"\n'
        f'[measurement]\neta = {p.eta!r}\n[sampler]\nkind = "exact"\n'
    )
    subprocess.run(
        [str(cli), "calibrate", str(tmp_path / "c.toml"), "--replicates", "20", "--samples", "9",
         "--seed", "3", "--quiet", "--out", str(tmp_path / "out")],
        check=True, capture_output=True,
    )
    res = json.loads((tmp_path / "out" / "calibration.json").read_text())
    py = diffpost.calibrate(p.prior, p.op, p.eta, method="exact", replicates=20, samples=9, seed=3)
    assert [r["ranks"] for r in py["replicates"]] == [r["ranks"] for r in res["replicates"]]
    assert py["statistics"] == res["statistics"]


def test_a_callable_prior_draws_the_truth_by_diffusion() -> None:
    p, mask = problem()
    prior = callable_like(p)
    res = diffpost.calibrate(
        prior, mask, p.eta, method="prior", replicates=6, samples=3, seed=0, steps=20,
        prior_draws={"steps": 20}, band_draws=200,
    )
    assert res["truth_sampler"] == "diffusion"
    assert len(res["replicates"]) == 6


def test_bad_input_names_the_argument() -> None:
    p, mask = problem()
    with pytest.raises(ValueError, match="replicates"):
        diffpost.calibrate(p.prior, mask, p.eta, method="exact", replicates=0)
    with pytest.raises(ValueError, match="shard"):
        diffpost.calibrate(p.prior, mask, p.eta, method="exact", replicates=4, shard="2/2")
    with pytest.raises(ValueError, match="shard"):
        diffpost.calibrate(p.prior, mask, p.eta, method="exact", replicates=4, shard=(0, 5))
    with pytest.raises(ValueError, match="sampler_eta_scale"):
        diffpost.calibrate(p.prior, mask, p.eta, method="exact", replicates=4, sampler_eta_scale=0.0)
    with pytest.raises(ValueError, match="stepz"):
        diffpost.calibrate(p.prior, mask, p.eta, method="ula", replicates=4, stepz=3)
    with pytest.raises(ValueError, match="eta"):
        diffpost.calibrate(p.prior, mask, -1.0, method="exact", replicates=4)
    with pytest.raises(ValueError, match="results\\[0\\]"):
        diffpost.merge_calibrations([{"not": "a calibration"}])
