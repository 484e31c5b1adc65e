#!/usr/bin/env bash
# The GPU check of host-trainer's `cuda`/`cudnn` features, run on a lent GPU machine (never by CI).
#
# Build here:  source ../shared/cuda/toolkit.sh cudnn
#              CARGO_TARGET_DIR=target-cuda cargo build --release -p host-trainer --features cudnn
#              mkdir -p .gpu && strip -o .gpu/host-trainer target-cuda/release/host-trainer
# Run there:   bash scripts/gpu_check.sh   (with .gpu carried; logs and JSON go to $OUT)
#
# It records: the candle CUDA MoCo-v2 step (ResNet-18, small stem, 32 px) next to the same step in
# PyTorch on the same GPU (scripts/bench_torch_step.py --device cuda), a short pretraining of each
# method on synthetic objects on the GPU (img/s from the run's summary), and a few-shot evaluation
# of the result on the GPU.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-.gpu/host-trainer}
OUT=${OUT:-out/gpu}
WORK=${WORK:-/tmp/gpu-check}
DEV=${DEV:-cuda:0} TORCH_DEV=${TORCH_DEV:-cuda}
# Sizes (overridable only to dry-run the script on a CPU).
W=${W:-1.0} BATCHES=${BATCHES:-"64 256"} PB=${PB:-256} Q=${Q:-4096} PER_CLASS=${PER_CLASS:-60} STEPS=${STEPS:-20}
mkdir -p "$OUT" "$WORK"
if python3 -c 1 2>/dev/null; then
  SP=$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
  export LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}
fi
log="$OUT/gpu_check.log"
run() { # name timeout-seconds command...
  local name=$1 t=$2; shift 2
  echo "== $name: $*" | tee -a "$log"
  local s=$(date +%s.%N)
  timeout "$t" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  local rc=$?
  tail -c 3000 "$WORK/$name.err" >> "$log"; cat "$WORK/$name.out" >> "$log"
  echo "-- $name: exit $rc in $(awk "BEGIN{print $(date +%s.%N) - $s}") s" | tee -a "$log"
  return $rc
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$log" 2>&1
run version 30 "$BIN" --version
# 1. The step, candle CUDA vs PyTorch CUDA, same machine and run.
for b in $BATCHES; do
  run "torch_vs_candle_b$b" 150 ${PYTHON:-python3} scripts/bench_torch_step.py --device $TORCH_DEV --batch $b --queue $Q \
    --warmup 3 --steps $STEPS --candle-cmd "$BIN bench-step --device $DEV --batch-size $b --queue $Q --warmup 3 --steps $STEPS --width $W --json"
done
# 2. Short pretraining of each method on the GPU.
run synth 120 "$BIN" synth objects --out "$WORK/objects" --per-class $PER_CLASS --seed 0
for m in "moco --version v2" "exemplar --version v2" "supervised"; do
  name=$(echo "$m" | tr -d ' -' )
  run "pretrain_$name" 150 "$BIN" pretrain --method $m --data "$WORK/objects" --device $DEV --width $W \
    --image-size 32 --epochs 2 --batch-size $PB --queue $Q --knn-images 500 --out "$WORK/$name" --quiet
done
# 3. Few-shot evaluation of the MoCo-v2 backbone with GPU features.
run fewshot 120 "$BIN" eval fewshot --backbone "$WORK/mocoversionv2/backbone.safetensors" --data "$WORK/objects" \
  --image-size 32 --episodes 200 --device $DEV --out "$WORK/fewshot"
grep -h '"img_per_sec"\|images_per_sec' "$WORK"/*.out > "$OUT/summary.txt" 2>/dev/null
echo "done" | tee -a "$log"
