"""Ctrl-C stops a run within a few steps; progress reaches the Python side; the shipped UNet loads."""

from __future__ import annotations

import _thread
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import diffpost
from conftest import make_problem

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def python_sigint_handler():
    # Python's own Ctrl-C handler, as in an interactive session: a shell that runs this suite in
    # the background ignores SIGINT, and then interrupt_main() does nothing.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def interrupt_after(seconds: float) -> threading.Timer:
    t = threading.Timer(seconds, _thread.interrupt_main)
    t.start()
    return t


def test_ctrl_c_stops_a_builtin_run() -> None:
    p = make_problem(30, 15, 1, 0.1, 0)
    # About a minute of work on 2 cores; interrupted after 0.5 s.
    t0 = time.monotonic()
    timer = interrupt_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        diffpost.sample(p.prior, p.op, p.y, p.eta, n=20000, seed=0)
    timer.join()
    assert time.monotonic() - t0 < 5.0
    # The next run is unaffected.
    r = diffpost.sample(p.prior, p.op, p.y, p.eta, method="exact", n=3)
    assert r.samples.shape == (3, 30)


def test_ctrl_c_stops_a_callable_run() -> None:
    calls = {"n": 0}

    def slow(x: np.ndarray, sigma: float) -> np.ndarray:
        calls["n"] += 1
        time.sleep(0.001)
        return x / (1 + sigma**2)

    c = diffpost.CallableDenoiser(slow, 4, 1e-3, 50.0)
    t0 = time.monotonic()
    timer = interrupt_after(0.5)
    with pytest.raises(KeyboardInterrupt):
        diffpost.sample(c, diffpost.Identity(4), np.zeros(4), 0.1, n=8, seed=0)
    timer.join()
    assert time.monotonic() - t0 < 5.0
    assert 0 < calls["n"] < 8100


def test_progress_reaches_python() -> None:
    from diffpost import _diffpost

    p = make_problem(4, 2, 1, 0.1, 0)
    seen: list[tuple[int, int]] = []
    _diffpost.sample(
        p.prior, p.op, p.y, p.eta, "ula", 8, 0, None, {"steps": 20000, "init_steps": 10}, None,
        lambda done, total: seen.append((done, total)),
    )
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_a_failing_progress_callback_stops_the_run() -> None:
    from diffpost import _diffpost

    p = make_problem(4, 2, 1, 0.1, 0)

    def bad(done: int, total: int) -> None:
        raise ValueError("display broke")

    with pytest.raises(ValueError, match="display broke"):
        _diffpost.sample(
            p.prior, p.op, p.y, p.eta, "ula", 8, 0, None, {"steps": 200000, "init_steps": 10}, None, bad
        )


def test_the_shipped_unet_loads_and_samples() -> None:
    prior = diffpost.load_prior(ROOT / "models" / "mnist")
    assert prior.shape == [1, 28, 28] and prior.dim == 784
    assert prior.description["kind"] == "unet"
    lo, hi = prior.sigma_range
    x = np.random.default_rng(0).uniform(-1, 1, (2, 784))
    d = prior.denoise(x, hi / 2)
    assert d.shape == (2, 784) and np.isfinite(d).all()
    op = diffpost.Box((1, 28, 28), 0, 0, 28, 14)
    y = op.apply(x[0])
    r = diffpost.sample(
        prior, op, y, 0.05, n=2, seed=0, stages=2, steps_per_stage=2, init_steps=3, score_sigma=0.05
    )
    assert r.samples.shape == (2, 784) and np.isfinite(r.samples).all()
    assert r.summary["prior"]["image_shape"] == [1, 28, 28]
