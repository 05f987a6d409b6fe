#!/usr/bin/env python3
"""numpy reference for `diffpost bench score`: one exact GMM score, batch 10,000, d = 100, K = 10,
full covariances (about 2e9 flops), computed the way a careful numpy user would (one GEMM against the
stacked precisions, then vectorised reductions). Not used by the tests.

    pip install numpy && python3 tools/bench_score_numpy.py --d 100 --k 10 --batch 10000
Prints JSON with the median over repeats, like `diffpost bench score`.
"""
import argparse, json, time
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--d", type=int, default=100)
ap.add_argument("--k", type=int, default=10)
ap.add_argument("--batch", type=int, default=10000)
ap.add_argument("--repeats", type=int, default=20)
a = ap.parse_args()
rng = np.random.default_rng(0)
d, k, b = a.d, a.k, a.batch
w = rng.uniform(0.5, 1.5, k); w /= w.sum()
mu = 0.5 * rng.standard_normal((k, d))
covs = []
for _ in range(k):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    covs.append(q @ np.diag(0.25 * 4 ** rng.uniform(size=d)) @ q.T)
sigma = 0.5
prec = np.stack([np.linalg.inv(c + sigma**2 * np.eye(d)) for c in covs])  # [K,d,d]
logdet = np.array([np.linalg.slogdet(c + sigma**2 * np.eye(d))[1] for c in covs])
pcat = np.concatenate(list(prec), axis=1)  # [d, K d]
pmu = np.einsum("kij,kj->ki", prec, mu)     # [K, d]
const = np.log(w) - 0.5 * logdet
x = rng.standard_normal((b, d))

def score(x):
    g = (x @ pcat).reshape(b, k, d) - pmu[None]          # P_k (x - mu_k)
    q = np.einsum("bkd,bkd->bk", x[:, None, :] - mu[None], g)
    lg = const[None] - 0.5 * q
    lg -= lg.max(1, keepdims=True)
    r = np.exp(lg); r /= r.sum(1, keepdims=True)
    return -np.einsum("bk,bkd->bd", r, g)

score(x)
ts = []
for _ in range(a.repeats):
    t = time.perf_counter(); score(x); ts.append((time.perf_counter() - t) * 1e3)
ts.sort()
print(json.dumps({"bench": "gmm_score_numpy", "d": d, "k": k, "batch": b, "repeats": a.repeats,
                  "median_ms": ts[len(ts) // 2], "min_ms": ts[0], "numpy": np.__version__}, indent=2))
