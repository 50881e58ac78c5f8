#!/usr/bin/env bash
# The single command that made results/gpu/ and benchmarks/results/<gpu>.csv on a lent GPU machine.
#
# A session gets 15 minutes of GPU time, the machine's start included, and 10 minutes per command, so
# everything runs here in one go, in order of what matters most, each part under its own time limit:
#   1. `robustcaps reproduce --preset gpu` (render the full stand-in, train capsnet and the CNN on the full,
#      azimuth and elevation splits, export the full-split models' weights, the attack sweeps and checks,
#      the report) into results/gpu/;
#   2. benchmarks/bench_models.py on the GPU until the deadline, the configurations that the issues'
#      bars name first (bench rows already measured come back even if the command is cut off), with a
#      one-process torchrun (NCCL) training smoke test (--compile, --amp bf16) after the first group.
# What comes back is packed into $OUT (the device tool's return folder; at most 8 files of 16 MiB).
#
#   ROBUSTCAPS_GIT_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_session.sh        # on the GPU machine
#   PRESET=tiny DEVICE=cpu BENCH_CAPSNET=capsnet-small OUT=/tmp/out bash benchmarks/gpu_session.sh  # CPU dry run
#   REPRODUCE=0 BUDGET=240 bash benchmarks/gpu_session.sh   # a second, shorter call: the benchmarks only
# A 15-minute lease holds the machine's start (2-3 min), this command (≈ 9.5 min) and a short second call:
# set the second call's BUDGET from `status` (budget_left_s less a minute).
set -u
start=$(date +%s)
: "${OUT:?set OUT to the folder that comes back}" "${PRESET:=gpu}" "${DEVICE:=cuda}" "${BUDGET:=570}"
# 550 s for the reproduce: the gpu preset's steps add up to ≈ 500-560 s (presets.gpu); cut off, the pipeline
# resumes from /tmp on the same warm machine when this command is run again
: "${REPRODUCE_LIMIT:=550}" "${BENCH:=1}" "${REPRODUCE:=1}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20 PYTHONPATH="/tmp/site:$PWD" ROBUSTCAPS_CACHE="${ROBUSTCAPS_CACHE:-/tmp/robustcaps-cache}"
results="results/$PRESET" runs="/tmp/robustcaps-runs-$PRESET"
elapsed() { echo $(($(date +%s) - start)); }

if ls .whl/*.whl >/dev/null 2>&1; then  # torchattacks is not on the GPU image: it travels as a wheel
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, torchattacks, robustcaps; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    || exit 1

if [ "$REPRODUCE" = 1 ]; then
rm -rf "$results"  # this copy's committed results of an earlier run: the new run replaces them whole
echo "== [$(elapsed) s] reproduce --preset $PRESET (limit $REPRODUCE_LIMIT s)"
timeout --signal=INT --kill-after=10 "$REPRODUCE_LIMIT" \
    python3 -m robustcaps reproduce --preset "$PRESET" --out "$results" --runs "$runs" --device "$DEVICE"
echo "== [$(elapsed) s] reproduce exit $?"
tar -czf "$OUT/results.tgz" "$results" "$runs/steps" 2>/dev/null
# A 4.25M-parameter CNN is 17 MB of weights: over one returned file's 16 MiB, so the archive is cut up.
(cd "$OUT" && split -b 15m results.tgz results.tgz.part- && rm results.tgz)
fi

[ "$BENCH" = 1 ] || { echo "== [$(elapsed) s] done (BENCH=0)"; ls -la "$OUT"; exit 0; }
deadline=$((start + BUDGET))
bench() {  # configurations in order of importance, until the deadline
    echo "== [$(elapsed) s] bench $*"
    python3 benchmarks/bench_models.py --device "$DEVICE" --in-process --deadline "$deadline" --steps 10 \
        --warmup 3 --check --out "$OUT/bench.csv" --configs "$@"
}
C=${BENCH_CAPSNET:-capsnet}
# Issue 8's newest candidate first: the Triton kernels (routing="triton"; eager, so no compile wait),
# checkpointed per layer or not; before the timings, its tests on this GPU (compiled kernels, float64,
# against torch and the loop oracle; on the CPU they run in Triton's interpreter)
echo "== [$(elapsed) s] tests/test_routing_triton.py on $DEVICE"
timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_routing_triton.py 2>&1 | tail -n 15
bench "$C:triton:64:eager:train,$C:triton:256:eager:infer" --tf32 off
# The fused path under torch.compile's "reduce-overhead" mode (CUDA graphs): at batch 64 a step launches
# hundreds of small kernels, which may be a real part of the 18 ms step measured on the H200
bench "$C:fused:64:cudagraphs:train,$C:fused:256:cudagraphs:infer" --tf32 off
# ...and `robustcaps train --compile-mode reduce-overhead` itself, which a preset needs before it can use
# CUDA graphs: 40 steps, so that a replay that reads an overwritten output fails here (when time is left)
if [ $((deadline - $(date +%s))) -ge 150 ]; then
    echo "== [$(elapsed) s] train $C --compile --compile-mode reduce-overhead --routing fused, 40 steps"
    rm -rf /tmp/robustcaps-graphs
    timeout 150 python3 -m robustcaps train --model "$C" --model-option iterations=2 \
        --data-size "$([ "$PRESET" = tiny ] && echo tiny || echo full)" --max-per-part 640 --steps 40 \
        --device "$DEVICE" --compile --compile-mode reduce-overhead --routing fused --out /tmp/robustcaps-graphs \
        && tail -n 1 /tmp/robustcaps-graphs/metrics.csv
    echo "== [$(elapsed) s] train exit $?"
fi
bench "$C:triton:64:eager:train" --recompute none --tf32 off
bench "$C:triton:64:compile:train,$C:triton:256:compile:infer" --tf32 off  # the torch part compiled around the kernels
# Then the bars: capsnet training at batch 64 (issue 4: the plain path as users run it; issue 8: the
# fused path under torch.compile) and inference at batch 256; then the plain path compiled; then the rest.
# Capsule rows with --tf32 off, as `robustcaps train` and `attack` run capsule networks since TF32 was
# found to put their gradients 10-15 % from float64 (models.common.full_float32_convolutions); a later
# group repeats the bars with torch's default for comparison.
bench "$C:plain:64:eager:train,$C:fused:64:compile:train" --tf32 off
# Issue 8's training target (3,700 img/s within 4 GiB): recompute only ConvCaps1 in backward, or nothing;
# then the forward under bf16 autocast (routing stays float32; its gradients were 57-75 % from float64 on
# the CPU, so this is a speed figure, not a recommendation)
bench "$C:fused:64:compile:train" --recompute first --tf32 off
bench "$C:fused:64:compile:train" --recompute none --tf32 off
bench "$C:fused:64:compile:train,$C:fused:256:compile:infer" --amp bf16 --tf32 off
bench "$C:fused:256:compile:infer,$C:plain:64:compile:train" --tf32 off
echo "== [$(elapsed) s] one-process DDP (NCCL) training with torch.compile and bf16 autocast, 60 steps"
rm -rf /tmp/robustcaps-smoke  # a leftover run there would be refused rather than overwritten
timeout 90 torchrun --nproc-per-node 1 -m robustcaps train --model cnn-small --data-size "$([ "$PRESET" = tiny ] && echo tiny || echo full)" \
    --steps 60 --batch-size 64 --device "$DEVICE" --compile --amp bf16 --out /tmp/robustcaps-smoke \
    && tail -n 2 /tmp/robustcaps-smoke/metrics.csv
echo "== [$(elapsed) s] smoke exit $?"
# attack --crafting compiled (the paper preset's attacks) against plain on the reproduce's capsnet, when
# this machine still holds it (/tmp survives between calls while the machine stays warm) and time is left
caps=$(ls -d "$runs"/capsnet*-full-* 2>/dev/null | head -n 1)
for crafting in plain compiled; do
    [ -n "$caps" ] && [ $((deadline - $(date +%s))) -ge 150 ] || break
    echo "== [$(elapsed) s] attack $caps --crafting $crafting: BIM + PGD-vote, 100 examples, 10 steps"
    rm -rf "/tmp/robustcaps-craft-$crafting"
    timeout 150 python3 -m robustcaps attack "$caps" --attack bim --attack pgd-vote --eps 0,0.1,0.25 --n 100 \
        --steps 10 --no-checks --no-progress --crafting "$crafting" --device "$DEVICE" \
        --out "/tmp/robustcaps-craft-$crafting" | tail -n 7
    echo "== [$(elapsed) s] attack exit $?"
done

bench "$C:plain:256:eager:infer,$C:plain:256:compile:infer,$C:fused:64:compile:infer,$C:fused:256:compile:train" --tf32 off
bench "$C:plain:64:eager:train,$C:fused:64:compile:train"  # torch's default (TF32 convolutions)
bench "cnn:-:64:eager:train,cnn:-:256:eager:infer,capsnet-small:plain:64:eager:train,capsnet-small:fused:64:compile:train,cnn-small:-:64:eager:train,cnn-small:-:256:eager:infer,capsnet-small:plain:256:eager:infer,capsnet-small:fused:256:compile:infer"
bench "$C:plain:256:eager:train,$C:plain:64:eager:infer,cnn:-:64:compile:train,cnn:-:256:compile:infer"
echo "== [$(elapsed) s] done"
ls -la "$OUT"
