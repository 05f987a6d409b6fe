#!/usr/bin/env bash
# One shard of a diffpost run per Slurm array task. Submit with, e.g.:
#   CONFIG=problem.toml OUT=shards sbatch --array=0-3 examples/cluster/slurm_sample.sh
# then, when all tasks are done:
#   diffpost merge shards/0 shards/1 shards/2 shards/3 --out merged
# Slurm sets SLURM_ARRAY_TASK_ID (this task's index) and SLURM_ARRAY_TASK_COUNT (the number of
# tasks); SHARDS overrides the count (it must equal the array's size). Locally:
#   SLURM_ARRAY_TASK_ID=0 SHARDS=4 CONFIG=problem.toml bash examples/cluster/slurm_sample.sh
#SBATCH --job-name=diffpost
#SBATCH --cpus-per-task=8
#SBATCH --output=diffpost-%A_%a.log
set -euo pipefail
: "${CONFIG:?set CONFIG to the problem.toml}"
K="${SLURM_ARRAY_TASK_ID:?SLURM_ARRAY_TASK_ID is set by Slurm for array jobs}"
N="${SHARDS:-${SLURM_ARRAY_TASK_COUNT:?set SHARDS to the number of array tasks}}"
OUT="${OUT:-shards}"
exec "${DIFFPOST:-diffpost}" sample --quiet --config "$CONFIG" --shard "$K/$N" --out "$OUT/$K"
