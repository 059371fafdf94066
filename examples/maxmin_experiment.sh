#!/usr/bin/env bash
# MaxMin-RLHF vs plain GRPO on one pooled reward model, on the synthetic population of
# examples/maxmin_population.py (docs/outcome-methods.md, "MaxMin-RLHF end to end").
# Usage: bash examples/maxmin_experiment.sh OUT_DIR [SEEDS] [RATIOS] [STEPS]
#   e.g. bash examples/maxmin_experiment.sh /tmp/maxmin "0 1 2" "7:3 8:2" 40
set -euo pipefail
OUT=${1:?usage: maxmin_experiment.sh OUT_DIR [SEEDS] [RATIOS] [STEPS]}
SEEDS=${2:-"0 1 2"}
RATIOS=${3:-"7:3 8:2"}
STEPS=${4:-40}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
# one warm start for every run: 300 SFT steps on add3r (answers become digit strings)
[ -f "$OUT/sft/config.json" ] || grouprl sft --out "$OUT/sft" task=add3r sft_steps=300 sft_target_acc=0 threads=1 eval_size=50
for ratio in $RATIOS; do
  for seed in $SEEDS; do
    d="$OUT/r${ratio/:/-}_s$seed"
    mkdir -p "$d"
    python "$HERE/maxmin_population.py" generate --out "$d/pop.jsonl" --ratio "$ratio" --seed "$seed" > /dev/null
    for k in 1 2; do
      [ -f "$d/rm$k/manifest.json" ] || grouprl fit-rewards "$d/pop.jsonl" --clusters $k --out "$d/rm$k" --seed "$seed" > "$d/fit$k.log"
      [ -f "$d/runs/k$k/summary.json" ] || grouprl train --config "$HERE/maxmin.yaml" reward_models="$d/rm$k" init="$OUT/sft" \
        out_dir="$d/runs" name=k$k seed="$seed" steps="$STEPS" save_every="$STEPS" progress=false tensorboard=false > "$d/train$k.log"
    done
    python "$HERE/maxmin_population.py" evaluate "$d/runs/k2" "$d/runs/k1" --init "$OUT/sft" --out "$d/eval.json" > /dev/null
    echo "$ratio seed $seed: $(python -c "import json,sys; r=json.load(open('$d/eval.json')); print(' | '.join(f'{k.split(\"/\")[-1]}: u_A {v[\"u_A\"]:.3f} u_B {v[\"u_B\"]:.3f}' for k,v in r.items()))")"
  done
done
