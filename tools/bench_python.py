"""Overhead of the Python package against the CLI on the same Gaussian-mixture problem.

    python3 tools/bench_python.py [--bin target/release/diffpost] [--repeats 5] [--n 2000]

1. `diffpost sample --quiet` on `diffpost problem gmm --d 30 --m 15 --k 2 --eta 0.1 --seed 0`
   (Algorithm 1 at its defaults) against `diffpost.sample` on the same arrays and settings:
   median over repeats of the whole call (process start, loading and writing for the CLI;
   conversions and the summary for Python) and of the sampling alone (`summary["wall_s"]`).
   The samples are checked equal.
2. The same run with a numpy mixture denoiser as a `CallableDenoiser` (`score_sigma = 0.01` for
   both, since a callable's score is Tweedie's): time inside the callable, outside it, and the
   built-in prior's time at the same settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import diffpost

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python" / "tests"))
from conftest import gmm_denoiser  # noqa: E402


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "diffpost"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_python_"))
    prob = work / "p"
    subprocess.run(
        [args.bin, "problem", "gmm", "--d", "30", "--m", "15", "--k", "2", "--eta", "0.1",
         "--seed", "0", "--out", str(prob)],
        check=True, capture_output=True,
    )
    cfg = prob / "problem.toml"
    cfg.write_text(cfg.read_text().replace("n = 2000", f"n = {args.n}"))
    z = np.load(prob / "prior.npz")
    prior = diffpost.GaussianMixture(z["weights"], z["means"], z["covs"])
    op = diffpost.Matrix(np.load(prob / "A.npy"))
    y = np.load(prob / "y.npy")
    eta = 0.1

    cli_total, cli_sample, py_total, py_sample = [], [], [], []
    for rep in range(args.repeats):
        t = time.perf_counter()
        subprocess.run([args.bin, "sample", "--config", str(cfg), "--quiet"], check=True)
        cli_total.append(time.perf_counter() - t)
        cli_sample.append(json.loads((prob / "out" / "summary.json").read_text())["wall_s"])
        t = time.perf_counter()
        r = diffpost.sample(prior, op, y, eta, n=args.n, seed=0, progress=False)
        py_total.append(time.perf_counter() - t)
        py_sample.append(r.summary["wall_s"])
        if rep == 0:
            same = np.array_equal(r.samples, np.load(prob / "out" / "samples.npy"))
            print(f"samples identical to the CLI's: {same}")
    med = statistics.median
    res = {
        "cpu": cpu_name(),
        "threads": r.summary["run"]["populations"] and None,
        "problem": "diffpost problem gmm --d 30 --m 15 --k 2 --eta 0.1 --seed 0; annealed defaults",
        "n": args.n,
        "repeats": args.repeats,
        "cli_total_s": med(cli_total),
        "python_total_s": med(py_total),
        "cli_sample_s": med(cli_sample),
        "python_sample_s": med(py_sample),
    }
    res.pop("threads")
    res["ratio_total"] = res["python_total_s"] / res["cli_total_s"]
    res["ratio_sample"] = res["python_sample_s"] / res["cli_sample_s"]

    # A Python callable: time inside vs outside it.
    fn = gmm_denoiser(z["weights"], z["means"], z["covs"])
    c = diffpost.CallableDenoiser(
        fn, prior.dim, 1e-6, prior.sigma_max_hint, lipschitz=prior.lipschitz, scale=prior.scale
    )
    t = time.perf_counter()
    rc = diffpost.sample(c, op, y, eta, n=args.n, seed=0, score_sigma=0.01, progress=False)
    callable_total = time.perf_counter() - t
    t = time.perf_counter()
    rb = diffpost.sample(prior, op, y, eta, n=args.n, seed=0, score_sigma=0.01, progress=False)
    builtin_total = time.perf_counter() - t
    cb = rc.summary["callback"]
    res["callable"] = {
        "total_s": callable_total,
        "sample_s": rc.summary["wall_s"],
        "calls": cb["calls"],
        "inside_s": cb["seconds_inside"],
        "outside_s": cb["seconds_outside"],
        "outside_per_call_us": 1e6 * cb["seconds_outside"] / cb["calls"],
        "builtin_same_settings_s": builtin_total,
        "max_abs_diff_to_builtin": float(np.abs(rc.samples - rb.samples).max()),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
