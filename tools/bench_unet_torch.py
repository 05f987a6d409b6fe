#!/usr/bin/env python3
"""PyTorch CPU reference for the crate's EDM UNet (`crates/diffpost-nn/src/unet.rs`, `edm.rs`,
`train.rs`): the same architecture, module names equal to the safetensors names, so the shipped
weights load with `load_state_dict(strict=True)`. Not used by the tests.

    python tools/bench_unet_torch.py models/mnist [--parity /tmp/unet_parity.safetensors]

1. Parity: reads the fixed input, sigmas and outputs written by
   `cargo run --release -p diffpost-nn --example bench_unet -- models/mnist` and prints the error of
   this port against candle's raw network F(x, c_noise) and preconditioned D(x, sigma).
2. Timing (median of --repeats after warm-up, torch.set_num_threads(n) for each n in --threads):
   forward of the raw network (batch 16, 28x28x1, no_grad), D(x, sigma) (batch 16, no_grad), and one
   training step like `Trainer::step` (EDM loss at the config's batch size on the shipped test
   digits, backward, Adam, EMA of the weights).
3. --profile: torch.profiler per-op table of the forward and of a training step (2 threads).
Prints one JSON line per thread count.
"""
import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

FREQ_MIN, FREQ_MAX = 0.5, 50.0
GN_EPS = 1e-5
INV_SQRT2 = 1.0 / math.sqrt(2.0)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 (+ embedding) -> GroupNorm -> SiLU -> conv3x3, skip, / sqrt 2."""

    def __init__(self, cin, cout, cfg):
        super().__init__()
        g = cfg["groups"]
        self.norm1 = nn.GroupNorm(g, cin, eps=GN_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(cfg["emb_dim"], cout)
        self.norm2 = nn.GroupNorm(g, cout, eps=GN_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        e = self.emb(emb)
        h = self.conv1(F.silu(self.norm1(x))) + e[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        s = self.skip(x) if self.skip is not None else x
        return (s + h) * INV_SQRT2


class Attention(nn.Module):
    def __init__(self, ch, cfg):
        super().__init__()
        self.norm = nn.GroupNorm(cfg["groups"], ch, eps=GN_EPS)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)
        self.heads = cfg["num_heads"]

    def forward(self, x):
        b, c, h, w = x.shape
        n, hd = h * w, c // self.heads
        t = self.norm(x).reshape(b, c, n).transpose(1, 2)  # [B, N, C]
        qkv = self.qkv(t).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, hd]
        o = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(hd)) v
        o = self.proj(o.transpose(1, 2).reshape(b, n, c)).transpose(1, 2).reshape(b, c, h, w)
        return (x + o) * INV_SQRT2


class Level(nn.Module):
    def __init__(self):
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()


class Embedding(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        nf, d = cfg["fourier_features"], cfg["emb_dim"]
        self.fc1 = nn.Linear(2 * nf, d)
        self.fc2 = nn.Linear(d, d)
        t = np.arange(nf, dtype=np.float64) / max(nf - 1, 1)
        freqs = np.exp(math.log(FREQ_MIN) + t * (math.log(FREQ_MAX) - math.log(FREQ_MIN)))
        self.register_buffer("freqs", torch.tensor(freqs, dtype=torch.float32)[None], persistent=False)

    def forward(self, c_noise):
        arg = c_noise.float()[:, None] * self.freqs
        feats = torch.cat([arg.cos(), arg.sin()], 1)
        return F.silu(self.fc2(F.silu(self.fc1(feats))))


class UNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        base, mults, nrb = cfg["base_channels"], cfg["channel_mults"], cfg["num_res_blocks"]
        chans = [base * m for m in mults]
        nl = len(chans)
        sizes, (h, w) = [], cfg["image_size"]
        for _ in range(nl):
            sizes.append((h, w))
            h, w = (h + 1) // 2, (w + 1) // 2
        self.has_attn = [min(s) in cfg["attn_resolutions"] for s in sizes]
        self.emb = Embedding(cfg)
        self.conv_in = nn.Conv2d(cfg["in_channels"], base, 3, padding=1)
        skips, ch = [base], base
        self.down = nn.ModuleList()
        for l, cout in enumerate(chans):
            lv = Level()
            for _ in range(nrb):
                lv.res.append(ResBlock(ch, cout, cfg))
                ch = cout
                if self.has_attn[l]:
                    lv.attn.append(Attention(ch, cfg))
                skips.append(ch)
            if l + 1 < nl:
                skips.append(ch)
                lv.downsample = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
            else:
                lv.downsample = None
            self.down.append(lv)
        self.mid = nn.Module()
        self.mid.res1 = ResBlock(ch, ch, cfg)
        self.mid.attn = Attention(ch, cfg) if cfg["mid_attention"] else None
        self.mid.res2 = ResBlock(ch, ch, cfg)
        up = [None] * nl
        for l in reversed(range(nl)):
            lv = Level()
            for _ in range(nrb + 1):
                lv.res.append(ResBlock(ch + skips.pop(), chans[l], cfg))
                ch = chans[l]
                if self.has_attn[l]:
                    lv.attn.append(Attention(ch, cfg))
            lv.upsample = nn.Conv2d(ch, ch, 3, padding=1) if l > 0 else None
            up[l] = lv
        assert not skips
        self.up = nn.ModuleList(up)  # indexed by level, run deepest first
        self.norm_out = nn.GroupNorm(cfg["groups"], ch, eps=GN_EPS)
        self.conv_out = nn.Conv2d(ch, cfg["in_channels"], 3, padding=1)

    def forward(self, x, c_noise):
        emb = self.emb(c_noise)
        h = self.conv_in(x)
        skips = [h]
        for l, lv in enumerate(self.down):
            for r, res in enumerate(lv.res):
                h = res(h, emb)
                if self.has_attn[l]:
                    h = lv.attn[r](h)
                skips.append(h)
            if lv.downsample is not None:
                h = lv.downsample(h)
                skips.append(h)
        h = self.mid.res1(h, emb)
        if self.mid.attn is not None:
            h = self.mid.attn(h)
        h = self.mid.res2(h, emb)
        for l in reversed(range(len(self.up))):
            lv = self.up[l]
            for r, res in enumerate(lv.res):
                h = res(torch.cat([h, skips.pop()], 1), emb)
                if self.has_attn[l]:
                    h = lv.attn[r](h)
            if lv.upsample is not None:
                th, tw = skips[-1].shape[2:]
                h = F.interpolate(h, scale_factor=2, mode="nearest")[:, :, :th, :tw]
                h = lv.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def edm_coefficients(sigmas, sd):
    """Per-sample c_skip, c_out, c_in ([B,1,1,1], f64 -> f32 like edm.rs) and c_noise [B] f32."""
    s = torch.as_tensor(sigmas, dtype=torch.float64)
    s2 = s * s + sd * sd
    col = lambda v: v.float().reshape(-1, 1, 1, 1)
    return col(sd * sd / s2), col(s * sd / s2.sqrt()), col(1.0 / s2.sqrt()), (s.log() / 4).float()


def precond(net, x, sigmas, sd):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (EDM Table 1, `precond_forward`)."""
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigmas, sd)
    return x * c_skip + net(x * c_in, c_noise) * c_out


class TrainStep:
    """One step of `Trainer::step`: EDM loss on a fresh batch, backward, Adam (warm-up lr), EMA."""

    def __init__(self, net, tcfg, sd, data):
        self.net, self.tcfg, self.sd, self.data = net, tcfg, sd, data
        self.params = [p for p in net.parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        # fused: one kernel for the whole update (on 2 threads: 0.9 ms against 7 ms for foreach=True
        # and 14 ms for the per-tensor loop, the default on CPU).
        self.opt = torch.optim.Adam(self.params, lr=tcfg["lr"], betas=(tcfg["beta1"], tcfg["beta2"]),
                                    eps=tcfg["eps"], fused=True)
        self.phases = None  # {phase: total ms} when profiling
        self.t = 0
        self.gen = torch.Generator().manual_seed(tcfg["seed"])

    def _lap(self, name):
        if self.phases is not None:
            now = time.perf_counter()
            self.phases[name] = self.phases.get(name, 0.0) + (now - self._tick) * 1e3
            self._tick = now

    def __call__(self):
        c, bs, sd = self.tcfg, self.tcfg["batch_size"], self.sd
        self._tick = time.perf_counter()
        idx = torch.randint(0, self.data.shape[0], (bs,), generator=self.gen)
        y = self.data[idx]
        sig64 = (c["p_mean"] + c["p_std"] * torch.randn(bs, generator=self.gen, dtype=torch.float64)).exp()
        noise = torch.randn(y.shape, generator=self.gen)
        x = y + noise * sig64.float().reshape(-1, 1, 1, 1)
        self._lap("1 batch draw")
        den = precond(self.net, x, sig64, sd)
        w = ((sig64 ** 2 + sd * sd) / (sig64 * sd) ** 2).float()
        loss = (((den - y) ** 2).flatten(1).mean(1) * w).mean()
        loss_value = loss.item()
        self._lap("2 forward + loss")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self._lap("3 backward")
        self.t += 1
        warm = c["warmup_steps"]
        lr = c["lr"] * min(self.t / warm, 1.0) if warm > 0 else c["lr"]
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        decay = min(c["ema_decay"], (1 + self.t) / (10 + self.t))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - decay)
        self._lap("4 Adam + EMA")
        return loss_value


def median_ms(f, repeats, warmup):
    for _ in range(warmup):
        f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), min(ts)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return {
        "max_abs": (a - b).abs().max().item(),
        "max_abs_over_max_ref": ((a - b).abs().max() / b.abs().max()).item(),
        "rel_l2": ((a - b).norm() / b.norm()).item(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", nargs="?", default="models/mnist")
    ap.add_argument("--parity", default="/tmp/unet_parity.safetensors")
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--data", default="data/mnist_test256.npy")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()

    conf = json.loads((Path(a.model_dir) / "config.json").read_text())
    cfg, tcfg = conf["model"], conf["train"]
    sd = cfg["sigma_data"]
    torch.manual_seed(0)
    net = UNet(cfg)
    state = load_file(str(Path(a.model_dir) / "weights.safetensors"))
    net.load_state_dict(state, strict=True)
    net.eval()
    nparams = sum(p.numel() for p in net.parameters())

    parity = None
    if a.parity and Path(a.parity).exists():
        ref = load_file(a.parity)
        with torch.no_grad():
            raw = net(ref["x"], ref["c_noise"])
            den = precond(net, ref["x"], ref["sigmas"].double(), sd)
        parity = {"raw": rel_err(raw, ref["raw"]), "denoised": rel_err(den, ref["denoised"])}
        print(f"parity vs candle ({a.parity}): raw F {parity['raw']}, D {parity['denoised']}", file=sys.stderr)
    else:
        print(f"no parity file {a.parity}: run the Rust example first", file=sys.stderr)

    # The timing inputs are the parity inputs when present (the same bytes candle timed).
    if parity is not None:
        x16, sig16, cn16 = ref["x"], ref["sigmas"].double(), ref["c_noise"]
    else:
        x16 = torch.randn(16, 1, 28, 28)
        sig16 = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), 16, dtype=torch.float64))
        cn16 = (sig16.log() / 4).float()
    imgs = torch.from_numpy(np.load(a.data).astype(np.float32) / 127.5 - 1.0)
    data = imgs.reshape(imgs.shape[0], cfg["in_channels"], *cfg["image_size"])

    results = []
    for nt in [int(s) for s in a.threads.split(",")]:
        torch.set_num_threads(nt)
        res = {"impl": "torch", "torch": torch.__version__, "threads": nt, "params": nparams,
               "repeats": a.repeats, "parity": parity}
        with torch.no_grad():
            res["forward_b16_ms"], res["forward_b16_min_ms"] = median_ms(lambda: net(x16, cn16), a.repeats, a.warmup)
            res["denoise_b16_ms"], res["denoise_b16_min_ms"] = median_ms(
                lambda: precond(net, x16, sig16, sd), a.repeats, a.warmup)
        # Training mutates the weights: a fresh copy per thread count, same starting point.
        tnet = UNet(cfg)
        tnet.load_state_dict(state, strict=True)
        tnet.train()
        step = TrainStep(tnet, tcfg, sd, data)
        res["train_step_b%d_ms" % tcfg["batch_size"]], res["train_step_min_ms"] = median_ms(step, a.repeats, a.warmup)
        print(json.dumps(res))
        results.append(res)

    if a.profile:
        from torch.profiler import profile, ProfilerActivity
        torch.set_num_threads(2)
        with torch.no_grad():
            for _ in range(3):
                net(x16, cn16)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(10):
                    net(x16, cn16)
        print("== torch.profiler: forward b16, 10 runs, 2 threads ==")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        tnet = UNet(cfg)
        tnet.load_state_dict(state, strict=True)
        step = TrainStep(tnet, tcfg, sd, data)
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                step()
        print("== torch.profiler: training step b%d, 10 runs, 2 threads ==" % tcfg["batch_size"])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        step.phases = {}
        n = a.repeats
        for _ in range(n):
            step()
        tot = sum(step.phases.values()) / n
        print("== torch training step b%d, by phase (%d runs, no profiler) ==" % (tcfg["batch_size"], n))
        for k in sorted(step.phases):
            ms = step.phases[k] / n
            print(f"{k:<34} {ms:8.2f} ms/step {100 * ms / tot:5.1f}%")
        print(f"{'total':<34} {tot:8.2f} ms/step")


if __name__ == "__main__":
    main()
