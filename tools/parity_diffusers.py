#!/usr/bin/env python3
"""Reference outputs of diffusers' `UNet2DModel` for the Rust port
(`crates/diffpost-nn/src/diffusers_unet.rs`), checked by
`crates/diffpost/tests/diffusers_parity.rs` (which needs no Python).

Run from the repository root:

    python tools/parity_diffusers.py

Written and run with diffusers 0.42.1, torch 2.15.0 (CPU, float32), safetensors 0.8.0.

For each small instance below, builds `diffusers.UNet2DModel(**kwargs)`, draws every parameter
at random (fixed seed; no parameter keeps its default, e.g. GroupNorm weights of 1 and biases
of 0), runs it in eval mode on a fixed input, and writes
`crates/diffpost/tests/fixtures/parity/diffusers_<name>/`:
- `config.json`: `model.save_config(dir)`, the format of the hub's `unet/config.json`;
- `weights.safetensors`: `model.state_dict()` (current diffusers names);
- `io.safetensors`: `x` [2, C, H, W], `t` [2] (float32, fractional), `out` = `model(x, t).sample`.
It also prints max|f32 - f64| / max|f64| of diffusers itself (the float32 noise floor).
"""

import json
import os

import numpy as np
import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

ROOT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "diffpost", "tests", "fixtures", "parity"
)

# Small instances (fixtures stay well under 1 MB each).
INSTANCES = {
    # The google/ddpm-* flags: [sin | cos], freq_shift 1, eps 1e-6, one attention head over all
    # channels, downsample_padding 0 (zero pad right/bottom, then stride-2 conv).
    "ddpm_flags": dict(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 24),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        norm_eps=1e-6,
        flip_sin_to_cos=False,
        freq_shift=1,
        attention_head_dim=None,
        downsample_padding=0,
    ),
    # diffusers' default flags: [cos | sin], freq_shift 0, 8 channels per head (4 heads),
    # downsample_padding 1, centred input.
    "flip_heads": dict(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        attention_head_dim=8,
        downsample_padding=1,
        center_input_sample=True,
    ),
    # Three levels, attention at full resolution, Gaussian Fourier time features (output / t),
    # "scale_shift" resnets (the middle attention then has no GroupNorm), a middle-block scale
    # factor, a time embedding width of its own and out_channels != in_channels.
    "fourier_scaleshift": dict(
        sample_size=(8, 16),
        in_channels=2,
        out_channels=3,
        block_out_channels=(16, 16, 32),
        layers_per_block=1,
        down_block_types=("AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
        norm_num_groups=4,
        norm_eps=1e-6,
        time_embedding_type="fourier",
        time_embedding_dim=48,
        resnet_time_scale_shift="scale_shift",
        mid_block_scale_factor=2**0.5,
        attention_head_dim=None,
        downsample_padding=1,
    ),
}

TIMESTEPS = {
    "ddpm_flags": [10.0, 737.5],
    "flip_heads": [3.25, 999.0],
    "fourier_scaleshift": [0.5, 20.0],  # sigmas: log t must exist
}


def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter random, at scales that keep activations O(1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = "norm" in name and p.ndim == 1
            if name == "time_proj.weight":  # Gaussian Fourier frequencies
                p.copy_(torch.randn(p.shape, generator=gen) * 2.0)
            elif is_norm and leaf == "weight":
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif leaf == "bias":
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))


def main() -> None:
    torch.set_num_threads(1)
    for idx, (name, kwargs) in enumerate(INSTANCES.items()):
        torch.manual_seed(1234 + idx)
        gen = torch.Generator().manual_seed(4321 + idx)
        model = UNet2DModel(**kwargs).eval()
        randomise(model, gen)
        ss = kwargs["sample_size"]
        h, w = (ss, ss) if isinstance(ss, int) else ss
        x = torch.randn((2, kwargs["in_channels"], h, w), generator=gen)
        if kwargs.get("center_input_sample"):
            x = (x * 0.5 + 0.5).clamp(0, 1)  # images in [0, 1]
        t = torch.tensor(TIMESTEPS[name], dtype=torch.float32)
        with torch.no_grad():
            out = model(x, t).sample
            ref64 = model.double()(x.double(), t.double()).sample
            model.float()
        noise = ((out.double() - ref64).abs().max() / ref64.abs().max()).item()

        d = os.path.join(ROOT, f"diffusers_{name}")
        os.makedirs(d, exist_ok=True)
        model.save_config(d)
        sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(sd, os.path.join(d, "weights.safetensors"))
        save_file(
            {"x": x.contiguous(), "t": t.contiguous(), "out": out.contiguous()},
            os.path.join(d, "io.safetensors"),
        )
        nparams = sum(v.numel() for v in sd.values())
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        print(
            f"{name}: {nparams} params, {size / 1024:.0f} KiB, out {tuple(out.shape)}, "
            f"max|out| {out.abs().max().item():.3f}, f32-vs-f64 {noise:.2e}, "
            f"config keys {len(cfg)}"
        )


if __name__ == "__main__":
    main()
