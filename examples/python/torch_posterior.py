"""Posterior sampling with your own PyTorch denoiser: diffpost's Algorithm 1 and SMC on an
8x8-digit inpainting problem, plotting the posterior mean and standard deviation.

The "model" is the exact denoiser of the Gaussian mixture fitted to scikit-learn's 8x8 digits
(`data/digits_gmm.npz`), written in PyTorch: any `torch.nn.Module` computing D(x, sigma) plugs in
the same way (three lines, below). Torch is needed for this example only:

    python3 -m venv venv && venv/bin/pip install ./python torch matplotlib
    venv/bin/python examples/python/torch_posterior.py --out digits_posterior.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import diffpost

ROOT = Path(__file__).resolve().parents[2]


class MixtureDenoiser(torch.nn.Module):
    """D(x, sigma) = sum_k r_k(x) (mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)), in float64."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, covs: np.ndarray) -> None:
        super().__init__()
        self.log_w = torch.log(torch.from_numpy(weights / weights.sum()))
        self.means = torch.from_numpy(means)  # [K, d]
        evals, evecs = np.linalg.eigh(covs)  # S_k = U diag(lam) U^T
        self.lam = torch.from_numpy(evals)  # [K, d]
        self.u = torch.from_numpy(evecs)  # [K, d, d]

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        r = torch.einsum("kde,bkd->bke", self.u, x[:, None, :] - self.means)  # U^T (x - mu)
        var = self.lam + sigma**2  # eigenvalues of S + sigma^2 I
        logp = self.log_w - 0.5 * (r**2 / var).sum(-1) - 0.5 * torch.log(var).sum(-1)
        resp = torch.softmax(logp, dim=1)  # [B, K]
        shrunk = torch.einsum("kde,bke->bkd", self.u, r * self.lam / var)  # S (S + s^2)^-1 (x - mu)
        return torch.einsum("bk,bkd->bd", resp, self.means + shrunk)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="digits_posterior.png")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--digit", type=int, default=0, help="row of data/digits_test100.npy")
    args = ap.parse_args()

    gmm = np.load(ROOT / "data" / "digits_gmm.npz")
    model = MixtureDenoiser(gmm["weights"], gmm["means"], gmm["covs"]).eval()

    # The three lines that wrap a PyTorch model: numpy [B, 64] float64 in, numpy out.
    def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x), sigma).numpy()

    prior = diffpost.CallableDenoiser(denoise, 64, 0.01, 80.0)  # x: [B, 64]; shape=(1, 8, 8) for a CNN

    # The left 5 columns of a held-out digit hidden, noise 0.05 on the [-1, 1] pixel scale.
    truth = np.load(ROOT / "data" / "digits_test100.npy")[args.digit].astype(float) / 8.0 - 1.0
    op = diffpost.Box((1, 8, 8), 0, 0, 8, 5)
    eta = 0.05
    y = op.apply(truth.ravel()) + eta * np.random.default_rng(0).standard_normal(op.out_dim)

    rows = []
    for label, method, settings in [
        ("Algorithm 1", "annealed", dict(score_sigma=0.05)),
        ("SMC", "smc", dict(score_sigma=0.05)),
    ]:
        t = time.perf_counter()
        res = diffpost.sample(prior, op, y, eta, method=method, n=args.n, seed=0, **settings)
        cb = res.summary["callback"]
        print(
            f"{label}: {args.n} samples in {time.perf_counter() - t:.1f} s, "
            f"{res.summary['score_evals_per_sample']} evaluations per sample; "
            f"{cb['seconds_inside']:.1f} s inside the torch model, "
            f"{cb['seconds_outside']:.1f} s outside"
        )
        rows.append((label, res.samples.mean(0), res.samples.std(0)))

    observed = np.full(64, np.nan)
    observed[op.adjoint(np.ones(op.out_dim)) > 0] = y
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.2 * len(rows)))
    for (label, mean, std), ax in zip(rows, axes):
        panels = [(truth, "truth"), (observed, "observed"), (mean, f"{label}: mean"), (std, "std")]
        for a, (img, title) in zip(ax, panels):
            a.imshow(np.asarray(img).reshape(8, 8), cmap="gray" if title != "std" else "magma",
                     vmin=-1 if title != "std" else 0, vmax=1 if title != "std" else None)
            a.set_title(title, fontsize=9)
            a.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
