#!/usr/bin/env bash
# Train one model of the convergence study (docs/LEARNING.md) to a validation plateau on a lent GPU, in
# pieces of at most LIMIT seconds: each device command continues the run that the previous one brought back.
#
# Needs: this repository as the working directory, with torchattacks as a wheel in .whl/ as for
# gpu_session.sh (the CLI imports it); OUT set to the folder that comes back; CARRY, a folder holding the
# previous piece's
# <run>.tar, carried in with the working tree (the device tool's `carry`), absent for the first piece.
# Each piece packs the run folder (config, metadata, metrics, checkpoints/last.pt and best.pt; about 8 MB
# for the full capsnet) into $OUT/<run>.tar: one file of the 8 that come back.
#
#   OUT=$OUT CARRY=carry bash benchmarks/gpu_convergence.sh                     # on the GPU machine, repeated
#   OUT=/tmp/out CARRY=/tmp/carry DEVICE=cpu MODEL=capsnet-small SIZE=tiny EPOCHS=2 PYTHON=.venv/bin/python \
#     bash benchmarks/gpu_convergence.sh                                      # a CPU dry run
#
# The plan: first VAL=instances (the study's validation) until PATIENCE validations bring no new best, to
# learn the epoch count; then VAL=pairs with EPOCHS set to it, so that the compared models train on all five
# training instances per category (holding one out costs a final model a fifth of its objects).
set -u
: "${OUT:?set OUT to the folder that comes back}" "${CARRY:=carry}" "${DEVICE:=cuda}" "${MODEL:=capsnet}"
: "${SIZE:=full}" "${SPLIT:=full}" "${EPOCHS:=100}" "${PATIENCE:=10}" "${VAL:=instances}" "${LIMIT:=540}"
: "${BATCH:=64}" "${SEED:=0}" "${PYTHON:=python3}"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site/torchattacks ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
run="$MODEL-$SPLIT-$VAL-s$SEED" runs=/tmp/robustcaps-convergence
mkdir -p "$OUT" "$runs"
if [ -f "$CARRY/$run.tar" ] && [ ! -d "$runs/$run" ]; then
    tar -xf "$CARRY/$run.tar" -C "$runs"  # the previous piece's run folder
fi
recipe=()
case "$MODEL" in capsnet*)  # the CPU study's recipe: 2 iterations, E-step T = 0.25, β_a start
    recipe=(--model-option calibrate=beta_a --model-option iterations=2 --model-option estep_temperature=0.25) ;;
esac
start=$(date +%s)
# SIGINT lets the trainer stop like Ctrl-C; the run resumes from its last checkpoint (every epoch)
timeout -s INT "$LIMIT" "$PYTHON" -m robustcaps train --model "$MODEL" --split "$SPLIT" --epochs "$EPOCHS" \
    --batch-size "$BATCH" --seed "$SEED" --device "$DEVICE" --speed auto "${recipe[@]}" \
    --set data_size="$SIZE" --set val="$VAL" --set lr_schedule=cosine --set patience="$PATIENCE" \
    --out "$runs/$run" --resume
echo "== piece ended with status $? after $(($(date +%s) - start)) s"
tar -cf "$OUT/$run.tar" --exclude "$run/checkpoints/familiar-step*" -C "$runs" "$run"
tail -n 3 "$runs/$run/metrics.csv"
