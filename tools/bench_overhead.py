#!/usr/bin/env python3
"""Time spent outside the sampler: two `diffpost` binaries side by side on the same configs.

For each config, runs `diffpost sample --quiet` REPEATS times with each binary, alternating, and
reports the median of the process wall time, of the sampling time (`wall_s` in summary.json) and of
their difference (parsing, loading, building the run, writing). Checks that both binaries write the
same samples.

    python3 tools/bench_overhead.py BEFORE_BIN AFTER_BIN [--repeats 5]
"""
import json, os, statistics, subprocess, sys, tempfile, time

def run(binary, cfg, out):
    t = time.perf_counter()
    subprocess.run([binary, "sample", "--quiet", "--config", cfg], check=True)
    total = time.perf_counter() - t
    s = json.load(open(os.path.join(out, "summary.json")))
    return total, s["wall_s"], open(os.path.join(out, "samples.npy"), "rb").read()

def main():
    before, after = sys.argv[1], sys.argv[2]
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 5
    tmp = tempfile.mkdtemp(prefix="diffpost-overhead-")
    cases = []
    for d, m, sampler in [
        (30, 15, 'kind = "ula"\nsteps = 20\ninit = "noise"'),
        (400, 200, 'kind = "ula"\nsteps = 20\ninit = "noise"'),
        (400, 200, 'kind = "cs"\nstages = 3\nsteps_per_stage = 5\ninit = "noise"'),
    ]:
        inst = os.path.join(tmp, f"d{d}")
        if not os.path.exists(inst):
            subprocess.run([after, "problem", "gmm", "--d", str(d), "--m", str(m), "--k", "1",
                            "--eta", "0.1", "--seed", "0", "--out", inst], check=True,
                           stdout=subprocess.DEVNULL)
        name = f"d{d}_{sampler.split()[2].strip(chr(34))}"
        cfg = os.path.join(inst, f"{name}.toml")
        with open(cfg, "w") as f:
            f.write('[prior]\nkind = "gmm"\npath = "prior.npz"\n[operator]\nkind = "matrix"\n'
                    'path = "A.npy"\n[measurement]\ny = "y.npy"\neta = 0.1\n'
                    f'[sampler]\n{sampler}\n[run]\nn = 2000\nseed = 0\nout = "out_{name}"\n')
        cases.append((name, cfg, os.path.join(inst, f"out_{name}")))
    print(f"{'config':<14} {'binary':<7} {'total s':>9} {'sample s':>9} {'outside s':>10}")
    for name, cfg, out in cases:
        res = {"before": [], "after": []}
        samples = {}
        for _ in range(repeats):
            for label, b in (("before", before), ("after", after)):
                total, wall, x = run(b, cfg, out)
                res[label].append((total, wall, total - wall))
                samples[label] = x
        same = samples["before"] == samples["after"]
        for label in ("before", "after"):
            med = [statistics.median(r[i] for r in res[label]) for i in range(3)]
            print(f"{name:<14} {label:<7} {med[0]:>9.3f} {med[1]:>9.3f} {med[2]:>10.3f}")
        print(f"{name:<14} samples identical: {same}")

if __name__ == "__main__":
    main()
