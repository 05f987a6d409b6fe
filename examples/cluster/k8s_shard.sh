#!/usr/bin/env bash
# Entry point of one pod of a Kubernetes Indexed Job (examples/cluster/k8s-indexed-job.yaml):
# Kubernetes sets JOB_COMPLETION_INDEX to the pod's index; SHARDS must equal the Job's
# `completions`. Locally:
#   JOB_COMPLETION_INDEX=0 SHARDS=4 CONFIG=problem.toml bash examples/cluster/k8s_shard.sh
set -euo pipefail
: "${CONFIG:?set CONFIG to the problem.toml}"
: "${SHARDS:?set SHARDS to the completions of the Job}"
K="${JOB_COMPLETION_INDEX:?JOB_COMPLETION_INDEX is set by Kubernetes for Indexed Jobs}"
OUT="${OUT:-shards}"
exec "${DIFFPOST:-diffpost}" sample --quiet --config "$CONFIG" --shard "$K/$SHARDS" --out "$OUT/$K"
