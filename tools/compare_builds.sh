#!/usr/bin/env bash
# Same seed, same samples: runs every sampler kind (and its main variants) on exact-posterior
# problems and on the shipped MNIST prior, plus the demo, the image demo and the modes study,
# with two builds of `diffpost`, and compares the outputs.
#
#   tools/compare_builds.sh OLD_BIN NEW_BIN [WORKDIR]
#
# Samples (samples.npy, particles.npy, weights.npy, the studies' .npy and JSON numbers) must be
# bit for bit equal (and the studies' PNG figures byte for byte); summary.json is compared without its timings (wall_s, timing_s, callback)
# and any other difference is printed. Exit code 1 if any sample file differs.
# Small budgets keep it to a few minutes on 2 cores.
set -uo pipefail
OLD=$(realpath "$1")
NEW=$(realpath "$2")
REPO=$(cd "$(dirname "$0")/.." && pwd)
W=${3:-$(mktemp -d)}
mkdir -p "$W"
cd "$W"
fail=0
pass=0

# Problems: made once (by OLD), shared by both builds.
"$OLD" problem gmm --d 12 --m 6 --k 3 --eta 0.1 --seed 1 --out mix --force >/dev/null
"$OLD" problem gmm --d 10 --m 5 --k 1 --eta 0.1 --seed 2 --out gauss --force >/dev/null
"$OLD" problem denoise --d 64 --eta 0.1 --seed 3 --out den --force >/dev/null

# name|problem|n|[sampler] body (`;` separates lines)
cases=(
  "annealed|mix|16|kind = \"annealed\"; stages = 5; steps_per_stage = 20; init_steps = 40"
  "annealed-admissible|gauss|8|kind = \"annealed\"; schedule = \"admissible\"; steps_per_stage = 10; init_steps = 20"
  "annealed-heun-noise|mix|8|kind = \"annealed\"; stages = 4; steps_per_stage = 10; init = \"noise\""
  "annealed-exact-prior-el|mix|8|kind = \"annealed\"; stages = 4; steps_per_stage = 10; init = \"exact-prior\"; integrator = \"exact-likelihood\""
  "annealed-heun|gauss|8|kind = \"annealed\"; stages = 4; steps_per_stage = 10; init_steps = 20; init_method = \"heun\"; final_denoise = true; score_sigma = 0.01"
  "local-lasso|mix|8|kind = \"local\"; sigma = 0.5; warm_start = \"lasso\"; stages = 4; steps_per_stage = 10; init_steps = 20"
  "local-dps|mix|8|kind = \"local\"; sigma = 0.5; warm_start = \"dps\"; warm_steps = 30; stages = 4; steps_per_stage = 10; init_steps = 20"
  "local-file|mix|8|kind = \"local\"; sigma = 0.5; warm_start = \"x_true.npy\"; start_at_x0 = true; stages = 3; steps_per_stage = 10; h = 0.001"
  "local-ls|mix|8|kind = \"local\"; sigma = 0.5; warm_start = \"least-squares\"; stages = 3; steps_per_stage = 10; init = \"noise\""
  "cs|mix|8|kind = \"cs\"; stages = 4; steps_per_stage = 10; init_steps = 20"
  "cs-ls|gauss|8|kind = \"cs\"; estimator = \"least-squares\"; delta = 2.0; stages = 4; steps_per_stage = 10; init_steps = 20"
  "ula|mix|16|kind = \"ula\"; steps = 100; init_steps = 30"
  "ula-strang|den|8|kind = \"ula\"; steps = 50; init = \"noise\"; integrator = \"exact-likelihood-strang\""
  "mala|mix|16|kind = \"mala\"; steps = 100; init = \"exact-prior\""
  "mala-h|gauss|8|kind = \"mala\"; steps = 50; h = 0.001; init_steps = 20"
  "dps|mix|8|kind = \"dps\"; steps = 50; zeta = 0.5"
  "daps|mix|8|kind = \"daps\"; stages = 10; ode_steps = 3; steps_per_stage = 10"
  "daps-old-names|mix|4|kind = \"daps\"; annealing_steps = 6; langevin_steps = 5; lr_rel = 0.1"
  "ald|mix|8|kind = \"ald\"; stages = 10; steps_per_stage = 10"
  "ald-old-names|mix|4|kind = \"ald\"; levels = 5; steps_per_level = 4"
  "exact|mix|32|kind = \"exact\""
  "prior|mix|8|kind = \"prior\"; steps = 40"
  "prior-heun|mix|8|kind = \"prior\"; steps = 20; init_method = \"heun\""
  "smc|mix|32|kind = \"smc\"; particles = 16; moves_per_stage = 5; final_moves = 10"
  "smc-geometric-ula|mix|16|kind = \"smc\"; schedule = \"geometric\"; stages = 6; kernel = \"ula\"; moves_per_stage = 5; final_moves = 5; resampling = \"residual\""
  "smc-diffusion|gauss|16|kind = \"smc\"; init = \"diffusion\"; init_steps = 20; moves_per_stage = 5; final_moves = 5; resampling = \"multinomial\""
)

write_cfg() { # problem folder, sampler body, n, out
  local p=$1 body=$2 n=$3 out=$4
  {
    sed -n '/^\[prior\]/,/^\[sampler\]/p' "$p/problem.toml" | sed '$d'
    echo "[sampler]"
    echo "$body" | tr ';' '\n' | sed 's/^ *//'
    printf '[run]\nn = %s\nseed = 7\nout = "%s"\n' "$n" "$out"
  }
}

compare_dir() { # label, old dir, new dir
  local label=$1 a=$2 b=$3 ok=1
  for f in $(cd "$a" && ls *.npy 2>/dev/null); do
    if ! cmp -s "$a/$f" "$b/$f"; then
      echo "DIFF  $label: $f differs"; ok=0
    fi
  done
  if [ -f "$a/summary.json" ]; then
    python3 - "$a/summary.json" "$b/summary.json" "$label" <<'EOF' || true
import json, sys
drop = {"wall_s", "timing_s", "callback", "fingerprint"}
def clean(v):
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items() if k not in drop}
    if isinstance(v, list):
        return [clean(x) for x in v]
    return v
a, b = (clean(json.load(open(p))) for p in sys.argv[1:3])
if a != b:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            print(f"note  {sys.argv[3]}: summary.json `{k}`: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}")
EOF
  fi
  if [ $ok = 1 ]; then pass=$((pass + 1)); echo "same  $label"; else fail=$((fail + 1)); fi
}

for c in "${cases[@]}"; do
  IFS='|' read -r name prob n body <<<"$c"
  for v in old new; do
    write_cfg "$prob" "$body" "$n" "out_${name}_$v" >"$prob/$name.$v.toml"
  done
  "$OLD" sample --quiet --config "$prob/$name.old.toml" >"$prob/$name.old.log" 2>&1 || echo "old failed: $name ($(tail -1 "$prob/$name.old.log"))"
  "$NEW" sample --quiet --config "$prob/$name.new.toml" >"$prob/$name.new.log" 2>&1 || echo "new failed: $name ($(tail -1 "$prob/$name.new.log"))"
  if [ -d "$prob/out_${name}_old" ] && [ -d "$prob/out_${name}_new" ]; then
    compare_dir "$name" "$prob/out_${name}_old" "$prob/out_${name}_new"
  elif [ -d "$prob/out_${name}_old" ] || [ -d "$prob/out_${name}_new" ]; then
    echo "DIFF  $name: only one build wrote outputs"; fail=$((fail + 1))
  fi
done

# Shards and merge of a weighted (SMC) run.
for v in old new; do
  B=$OLD; [ $v = new ] && B=$NEW
  for k in 0 1; do
    "$B" sample --quiet --config mix/smc.$v.toml --shard $k/2 --out mix/shard_$v/$k >/dev/null 2>&1
  done
  "$B" merge mix/shard_$v/0 mix/shard_$v/1 --out mix/merged_$v >/dev/null 2>&1
done
compare_dir "smc shards merged" mix/merged_old mix/merged_new

# The demo (every sampler vs the exact posterior): its table without the wall-clock column.
no_wall() { python3 -c '
import re, sys
for line in sys.stdin:
    line = re.sub(r"\(\d+(\.\d+)? s\)", "", line)
    t = line.split()
    if len(t) >= 6 and all(re.fullmatch(r"-?[\d.e+-]+", x) for x in t[-6:]):
        del t[-5]
    print(" ".join(t))'; }
"$OLD" demo --n 200 2>&1 | no_wall >demo_old.txt
"$NEW" demo --n 200 2>&1 | no_wall >demo_new.txt
if cmp -s demo_old.txt demo_new.txt; then echo "same  demo table"; pass=$((pass + 1)); else echo "DIFF  demo table"; diff demo_old.txt demo_new.txt; fail=$((fail + 1)); fi

# The image demo and the modes study on the shipped MNIST prior (small sizes).
strip_json() { python3 -c '
import json, sys
def clean(v):
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items() if not (k.endswith("_s") or k in ("wall", "time", "seconds", "model", "out"))}
    if isinstance(v, list):
        return [clean(x) for x in v]
    return v
print(json.dumps(clean(json.load(open(sys.argv[1]))), sort_keys=True, indent=1))' "$1"; }
for v in old new; do
  B=$OLD; [ $v = new ] && B=$NEW
  (cd "$REPO" && "$B" demo --images --n 2 --count 1 --dps-steps 20 --out "$W/img_$v" >"$W/img_$v.log" 2>&1) || echo "$v image demo failed: $(tail -2 "$W/img_$v.log")"
  (cd "$REPO" && "$B" modes --n 8 --dps-steps 20 --moves-per-stage 2 --out "$W/modes_$v" >"$W/modes_$v.log" 2>&1) || echo "$v modes failed: $(tail -2 "$W/modes_$v.log")"
done
for s in img modes; do
  ok=1
  for f in $(cd "${s}_old" 2>/dev/null && find . -name '*.npy' -o -name '*.json' -o -name '*.png' | sort); do
    case $f in
      *.npy|*.png) cmp -s "${s}_old/$f" "${s}_new/$f" || { echo "DIFF  $s: $f"; ok=0; } ;;
      *.json) [ "$(strip_json "${s}_old/$f")" = "$(strip_json "${s}_new/$f")" ] || { echo "DIFF  $s: $f (numbers)"; ok=0; } ;;
    esac
  done
  [ -d "${s}_old" ] || ok=0
  if [ $ok = 1 ]; then echo "same  $s"; pass=$((pass + 1)); else fail=$((fail + 1)); fi
done

echo "compare_builds: $pass same, $fail different (work folder $W)"
[ $fail = 0 ]
