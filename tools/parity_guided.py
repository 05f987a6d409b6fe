#!/usr/bin/env python3
"""Reference outputs of the guided-diffusion (OpenAI ADM / DPS FFHQ) UNet for
`crates/diffpost/tests/guided_parity.rs`, computed with deepinv's port (`deepinv.models.DiffUNet`).

    python tools/parity_guided.py            # writes the fixtures
    python tools/parity_guided.py --bench    # times the DPS FFHQ 256 model

Fixtures were produced with Python 3, torch 2.15.0 (CPU), deepinv 0.5.0, safetensors 0.8.0,
numpy 2.4.6 (`pip install torch deepinv safetensors numpy`).

`DiffUNet.__init__` hard-codes the 256x256 architecture (128 or 256 channels), so the small
instances are assembled by `SmallDiffUNet` below: the body of `DiffUNet.__init__` with its
constants turned into arguments, built from deepinv's own blocks (`ResBlock`, `AttentionBlock`,
`Downsample`, `Upsample`, `TimestepEmbedSequential`, `normalization`, `zero_module`) and run by
`DiffUNet.forward_diffusion` (guided-diffusion's `UNetModel.forward`). The script first checks that
`SmallDiffUNet` with the FFHQ arguments has exactly `DiffUNet`'s parameter names and shapes.

Per instance it writes `crates/diffpost/tests/fixtures/parity/guided_<name>/`:
- `config.json`: the architecture in `GuidedUNetConfig`'s field names (create_model's arguments);
- `weights.safetensors`: the state dict under the module's names, stored as float16 to keep the
  fixtures small (every parameter is first rounded to float16, so the f32 reference model uses
  exactly these values; the Rust side converts them to f32 on load);
- `io.safetensors`: `x` [2, 3, 32, 32] and `t` [2] (f32; t = 10.0 and 737.5) and `out`, the raw
  model output `forward_diffusion(x, t)` in float32.
Every parameter is random and non-trivial (seeded), including the zero-initialised output convs.

`--bench`: builds `DiffUNet(pretrained=None)` (DPS's FFHQ 256 model, ~94M parameters) with random
weights, saves them (f32) with one input/output pair to /tmp/guided_ffhq256_bench.safetensors and
/tmp/guided_ffhq256_bench_io.safetensors, and times `forward_diffusion` at batch 1, 256x256 with
`torch.set_num_threads(2)` (compare with `cargo run --release -p diffpost-nn --example guided_forward`).
"""
import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn
from safetensors.torch import save_file

import deepinv
from deepinv.models import DiffUNet
from deepinv.models.diffunet import (
    AttentionBlock,
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    zero_module,
)

ROOT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "diffpost", "tests", "fixtures", "parity"
)


class SmallDiffUNet(DiffUNet):
    """`DiffUNet.__init__` with its architecture constants as arguments (guided-diffusion's
    `create_model`/`UNetModel`); forward: `DiffUNet.forward_diffusion`."""

    def __init__(self, cfg):
        nn.Module.__init__(self)
        dims = 2
        dropout = cfg["dropout"]
        use_checkpoint = False
        conv_resample = True
        model_channels = cfg["num_channels"]
        num_res_blocks = cfg["num_res_blocks"]
        channel_mult = tuple(cfg["channel_mult"])
        in_channels = cfg["in_channels"]
        out_channels = 2 * in_channels if cfg["learn_sigma"] else in_channels
        num_heads = cfg["num_heads"]
        num_head_channels = cfg["num_head_channels"]
        num_heads_upsample = cfg["num_heads_upsample"]
        use_scale_shift_norm = cfg["use_scale_shift_norm"]
        resblock_updown = cfg["resblock_updown"]
        use_new_attention_order = cfg["use_new_attention_order"]
        attention_resolutions = tuple(cfg["image_size"] // r for r in cfg["attention_resolutions"])
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.img_size = cfg["image_size"]
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_classes = None
        self.dtype = torch.float32

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )
        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [
                    ResBlock(
                        ch,
                        time_embed_dim,
                        dropout,
                        out_channels=int(mult * model_channels),
                        dims=dims,
                        use_checkpoint=use_checkpoint,
                        use_scale_shift_norm=use_scale_shift_norm,
                    )
                ]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(
                        AttentionBlock(
                            ch,
                            use_checkpoint=use_checkpoint,
                            num_heads=num_heads,
                            num_head_channels=num_head_channels,
                            use_new_attention_order=use_new_attention_order,
                        )
                    )
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                out_ch = ch
                self.input_blocks.append(
                    TimestepEmbedSequential(
                        ResBlock(
                            ch,
                            time_embed_dim,
                            dropout,
                            out_channels=out_ch,
                            dims=dims,
                            use_checkpoint=use_checkpoint,
                            use_scale_shift_norm=use_scale_shift_norm,
                            down=True,
                        )
                        if resblock_updown
                        else Downsample(ch, conv_resample, dims=dims, out_channels=out_ch)
                    )
                )
                ch = out_ch
                input_block_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(
                ch,
                time_embed_dim,
                dropout,
                dims=dims,
                use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm,
            ),
            AttentionBlock(
                ch,
                use_checkpoint=use_checkpoint,
                num_heads=num_heads,
                num_head_channels=num_head_channels,
                use_new_attention_order=use_new_attention_order,
            ),
            ResBlock(
                ch,
                time_embed_dim,
                dropout,
                dims=dims,
                use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm,
            ),
        )

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [
                    ResBlock(
                        ch + ich,
                        time_embed_dim,
                        dropout,
                        out_channels=int(model_channels * mult),
                        dims=dims,
                        use_checkpoint=use_checkpoint,
                        use_scale_shift_norm=use_scale_shift_norm,
                    )
                ]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(
                        AttentionBlock(
                            ch,
                            use_checkpoint=use_checkpoint,
                            num_heads=num_heads_upsample,
                            num_head_channels=num_head_channels,
                            use_new_attention_order=use_new_attention_order,
                        )
                    )
                if level and i == num_res_blocks:
                    out_ch = ch
                    layers.append(
                        ResBlock(
                            ch,
                            time_embed_dim,
                            dropout,
                            out_channels=out_ch,
                            dims=dims,
                            use_checkpoint=use_checkpoint,
                            use_scale_shift_norm=use_scale_shift_norm,
                            up=True,
                        )
                        if resblock_updown
                        else Upsample(ch, conv_resample, dims=dims, out_channels=out_ch)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1)),
        )


def base_config(**kw):
    """GuidedUNetConfig's fields (guided-diffusion's create_model arguments)."""
    cfg = dict(
        image_size=32,
        in_channels=3,
        num_channels=32,
        num_res_blocks=1,
        channel_mult=[1, 1],
        learn_sigma=False,
        class_cond=False,
        attention_resolutions=[16],
        num_heads=2,
        num_head_channels=-1,
        num_heads_upsample=-1,
        use_scale_shift_norm=False,
        resblock_updown=False,
        use_new_attention_order=False,
        dropout=0.0,
        use_fp16=False,
    )
    cfg.update(kw)
    return cfg


INSTANCES = {
    # Plain: additive embedding, conv down/upsampling, legacy attention with num_heads.
    "plain": base_config(),
    # DPS FFHQ flavour: scale-shift norm, resblock up/down, learn_sigma, num_head_channels.
    "dps": base_config(
        learn_sigma=True,
        num_head_channels=16,
        use_scale_shift_norm=True,
        resblock_updown=True,
    ),
    # New attention order, resblock up/down without scale-shift, distinct upsample heads.
    "neworder": base_config(
        num_heads=4,
        num_heads_upsample=1,
        resblock_updown=True,
        use_new_attention_order=True,
    ),
}

FFHQ = dict(
    image_size=256,
    in_channels=3,
    num_channels=128,
    num_res_blocks=1,
    channel_mult=[1, 1, 2, 2, 4, 4],
    learn_sigma=True,
    class_cond=False,
    attention_resolutions=[16],
    num_heads=4,
    num_head_channels=64,
    num_heads_upsample=-1,
    use_scale_shift_norm=True,
    resblock_updown=True,
    use_new_attention_order=False,
    dropout=0.0,
    use_fp16=False,
)


def randomize(model, gen):
    """Non-trivial random values for every parameter (the zero-initialised convs included):
    variance-preserving uniform weights, small random biases, GroupNorm scales around 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm." in name or "layers.0." in name or name.startswith("out.0."):
                # GroupNorm (in_layers.0, out_layers.0, norm, out.0)
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("weight"):
                fan_in = p[0].numel()
                bound = math.sqrt(3.0 / fan_in)
                p.copy_((2 * torch.rand(p.shape, generator=gen) - 1) * bound)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def check_layout():
    """SmallDiffUNet(FFHQ) must have exactly DiffUNet's parameter names and shapes."""
    ref = DiffUNet(in_channels=3, out_channels=3, large_model=False, pretrained=None)
    ours = SmallDiffUNet(FFHQ)
    a = {k: tuple(v.shape) for k, v in ref.named_parameters()}
    b = {k: tuple(v.shape) for k, v in ours.named_parameters()}
    assert a == b, sorted(set(a.items()) ^ set(b.items()))[:10]
    print(f"layout check: SmallDiffUNet(FFHQ) == DiffUNet ({len(a)} tensors)")


def make_fixture(name, cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    model = SmallDiffUNet(cfg).eval()
    randomize(model, gen)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    x = torch.randn(2, cfg["in_channels"], 32, 32, generator=gen)
    t = torch.tensor([10.0, 737.5])
    with torch.no_grad():
        out = model.forward_diffusion(x, t)
    d = os.path.join(ROOT, f"guided_{name}")
    os.makedirs(d, exist_ok=True)
    sd = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "weights.safetensors"))
    save_file(
        {"x": x.contiguous(), "t": t.contiguous(), "out": out.float().contiguous()},
        os.path.join(d, "io.safetensors"),
    )
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    n = sum(p.numel() for p in model.parameters())
    print(
        f"guided_{name}: {n} params, out {tuple(out.shape)}, |out|_inf {out.abs().max():.4g}, "
        f"std {out.std():.4g}"
    )


def bench(repeats):
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    model = DiffUNet(in_channels=3, out_channels=3, large_model=False, pretrained=None).eval()
    randomize(model, gen)
    sd = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    save_file(sd, "/tmp/guided_ffhq256_bench.safetensors")
    x = torch.randn(1, 3, 256, 256, generator=gen)
    t = torch.tensor([500.0])
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.forward_diffusion(x, t)
            times.append(time.perf_counter() - t0)
    save_file({"x": x, "t": t, "out": out.contiguous()}, "/tmp/guided_ffhq256_bench_io.safetensors")
    n = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "model": "dps-ffhq256 (DiffUNet, random weights)",
                "params": n,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "times_s": [round(s, 3) for s in times],
                "min_s": round(min(times), 3),
            }
        )
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, deepinv {deepinv.__version__}")
    if a.bench:
        bench(a.repeats)
    else:
        torch.set_num_threads(1)
        check_layout()
        for i, (name, cfg) in enumerate(INSTANCES.items()):
            make_fixture(name, cfg, 1000 + i)
