"""Writes the PyTorch-format fixtures of the checkpoint-loading tests (tests/pretrained.rs).

Run from the repository root, after tools/parity_guided.py has written its fixtures:

    /path/to/venv/bin/python tools/make_pt_fixtures.py

Needs torch and safetensors. The tests themselves never run Python: the files are committed.
- `guided_small.pt`: the state dict of the small guided-diffusion parity model, saved by
  `torch.save` in the default zip format (what `ffhq_10m.pt` is), with one f16 tensor converted
  back on load (checkpoints saved with use_fp16 hold f16 weights).
- `guided_small_nested.pt`: the same under `{"state_dict": ..., "step": 7}`, keys prefixed with
  `module.` (nn.DataParallel), as training scripts often save.
- `legacy.pt`: a tiny dict saved in the legacy (pre-1.6) format, which diffpost must refuse with a
  conversion hint.
"""
import glob
import os

import torch
from safetensors.torch import load_file

OUT = "crates/diffpost/tests/fixtures/pt"
os.makedirs(OUT, exist_ok=True)
src = sorted(glob.glob("crates/diffpost/tests/fixtures/parity/guided_*/weights.safetensors"))[0]
print("source:", src)
sd = load_file(src)
torch.save(sd, f"{OUT}/guided_small.pt")
torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "step": 7},
           f"{OUT}/guided_small_nested.pt")
torch.save({"w": torch.ones(3)}, f"{OUT}/legacy.pt", _use_new_zipfile_serialization=False)
with open(f"{OUT}/SOURCE", "w") as f:
    f.write(f"made by tools/make_pt_fixtures.py from {src} with torch {torch.__version__}\n")
for p in sorted(glob.glob(f"{OUT}/*")):
    print(p, os.path.getsize(p))
