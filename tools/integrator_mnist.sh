#!/usr/bin/env bash
# Euler vs exact-likelihood Langevin on the MNIST UNet prior (README, "Stiffness-free Langevin"):
# Algorithm 1 (10 stages from a 100-step diffusion start, score_sigma 0.05, final denoise), n = 8,
# eta = 0.01, right half hidden and 4x single-coil MRI, 5/20/80 steps per stage. Prints a markdown
# table (PSNR/SSIM of the posterior mean, data residual of the samples). Run from the repository
# root after `cargo build --release -p diffpost-cli`; writes into ${1:-/tmp/integrator_mnist}.
set -euo pipefail
root=$(pwd)
out=${1:-/tmp/integrator_mnist}
mkdir -p "$out"
bin="$root/target/release/diffpost"
box='kind = "box"\ntop = 0\nleft = 14\nheight = 28\nwidth = 14'
mri='kind = "mri"\nacceleration = 4.0\ncenter_lines = 4\nseed = 0'
echo "| problem | integrator | evaluations per sample | PSNR of the mean (dB) | SSIM | data residual | wall s |"
echo "|---|---|---:|---:|---:|---:|---:|"
for steps in 5 20 80; do
  for integ in euler exact-likelihood; do
    for op in box mri; do
      name="${op}_${steps}_${integ}"
      opt=$([ "$op" = box ] && echo "$box" || echo "$mri")
      printf '[prior]\nkind = "unet"\npath = "%s/models/mnist"\n[operator]\n%b\n[measurement]\ntruth = "%s/data/mnist_test256.npy"\nindex = 0\neta = 0.01\n[sampler]\nkind = "annealed"\ninit_steps = 100\nstages = 10\nsteps_per_stage = %s\nscore_sigma = 0.05\nfinal_denoise = true\nintegrator = "%s"\n[run]\nn = 8\nseed = 0\nout = "out"\n' \
        "$root" "$opt" "$root" "$steps" "$integ" > "$out/$name.toml"
      s=$(date +%s)
      "$bin" sample --quiet --config "$out/$name.toml" --out "$out/$name" 2>/dev/null || true
      e=$(date +%s)
      python3 -c "
import json; m=json.load(open('$out/$name/metrics.json')); s=json.load(open('$out/$name/summary.json'))
label = 'right half hidden' if '$op' == 'box' else '4x MRI'
print('| %s | $integ | %d | %.2f | %.3f | %.2f | $((e - s)) |' % (label, s['score_evals_per_sample'], m['mean']['quality']['psnr'], m['mean']['quality']['ssim'], m['samples_mean_residual']))"
    done
  done
done
