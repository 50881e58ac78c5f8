#!/usr/bin/env bash
# The CPU recipe study of docs/LEARNING.md ("Converging capsnet-small"): capsnet-small on the small rendered
# stand-in, full split, validation on held-out instances, the compiled fused CPU path; one change per run.
# Usage: benchmarks/convergence_study.sh RUNS_DIR [JOBS]   (JOBS runs at a time, one thread each; default 2)
# A run whose folder exists is resumed, so the script can be stopped and started again.
set -euo pipefail
runs=${1:?usage: convergence_study.sh RUNS_DIR [JOBS]}
jobs=${2:-2}
mkdir -p "$runs"
base="--model capsnet-small --split full --batch-size 32 --epochs 8 --device cpu --seed 0
      --compile --routing fused --recompute none --model-option calibrate=beta_a"
cosine="--lr-schedule cosine --lr-min-factor 0.05"
# name | options added to the base
study=$(cat <<LIST
it2-exp|--model-option iterations=2
it2-cos|--model-option iterations=2 $cosine
it3-cos|--model-option iterations=3 $cosine
it3-T025-cos|--model-option iterations=3 --model-option estep_temperature=0.25 $cosine
it2-official-cos|--model-option iterations=2 --model-option init=official $cosine
it2-realcal-cos|--model-option iterations=2 --calibrate-images 256 $cosine
it2-bn-cos|--model-option iterations=2 --model-option conv1_batchnorm=true $cosine
it2-T025-cos|--model-option iterations=2 --model-option estep_temperature=0.25 $cosine
it2-ramp-cos|--model-option iterations=2 --margin-step-scale 180 $cosine
LIST
)
run_one() {
  local name=${1%%|*} options=${1#*|}
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 robustcaps train $base $options --out "$runs/$name" --resume \
    > "$runs/$name.log" 2>&1 && echo "done $name" || echo "FAILED $name (see $runs/$name.log)"
}
export -f run_one
export base cosine runs
echo "$study" | xargs -P "$jobs" -I{} bash -c 'run_one "$@"' _ {}
