#!/usr/bin/env bash
# The evaluation experiment of issue #7; results and what they mean: bench/RESULTS.md.
# Builds an 8K dataset with make demo's pipeline at a larger size, trains SmolLM2-135M on it
# on the CPU twice (long rows only vs the long+short mix), evaluates base vs both on the full
# suite, then the LIFT probe: train on the suite's one document, ask its facts without it.
# About an hour on 2 CPU cores. Usage: experiments/run_eval_experiment.sh  (after `make setup model`)
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin
OUT=${OUT:-runs/experiment}
STEPS=${STEPS:-24}            # 8K tokens per step: ~30 s per step on 2 cores
LIFT_STEPS=${LIFT_STEPS:-30}
M=models/smollm2-135m-instruct
mkdir -p "$OUT"
: > "$OUT/times.txt"
t() { local s=$SECONDS; "$@"; echo "$((SECONDS - s)) s: $*" | tee -a "$OUT/times.txt"; }

t $B/lcdata build experiments/long8k.yaml --out "$OUT/data"
$B/lcdata report "$OUT/data"
$B/lcdata inspect "$OUT/data" > "$OUT/inspect.txt" 2>&1
common=(--run.steps="$STEPS" --batch.tokens_per_step=8192 --optim.lr=5e-5 --optim.warmup_steps=3 --run.resume=false)
t $B/lcdata train "$OUT/data" --run.out="$OUT/long_only" --data.short_ratio=0 "${common[@]}"
t $B/lcdata train "$OUT/data" --run.out="$OUT/mix" --data.short_ratio=0.3 "${common[@]}"
t $B/lcdata eval base=$M long_only="$OUT/long_only/final" mix="$OUT/mix/final" --out "$OUT/eval"

# LIFT probe: the document lcdata eval wrote, memorized segment by segment (+ closed-book QA)
sed "s#runs/experiment/eval/suite#$OUT/eval/suite#" experiments/lift_probe.yaml > "$OUT/lift_probe.yaml"
t $B/lcdata build "$OUT/lift_probe.yaml" --out "$OUT/lift_data"
t $B/lcdata train "$OUT/lift_data" --run.out="$OUT/lift" --run.steps="$LIFT_STEPS" --batch.tokens_per_step=4096 \
  --optim.lr=1e-4 --optim.warmup_steps=3 --run.resume=false
t $B/lcdata eval base=$M lift="$OUT/lift/final" --suite lift --out "$OUT/lift_eval"
cat "$OUT/eval/summary.md" "$OUT/lift_eval/summary.md" "$OUT/times.txt"
