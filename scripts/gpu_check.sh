#!/usr/bin/env bash
# The GPU check of host-trainer's `cuda`/`cudnn` features, run on a lent GPU machine (never by CI).
# Nothing is built on the device: build here, carry .gpu/, run there.
#
# Build here (10-15 min clean on 2 cores; the `gpu` profile is release without debuginfo, stripped):
#   bash scripts/gpu_check.sh --build
# which runs
#   source ../shared/cuda/toolkit.sh cudnn; source scripts/nccl-env.sh   # libnccl to link against
#   CARGO_TARGET_DIR=target-cuda cargo build --profile gpu -p host-trainer --features cudnn,nccl
#   CARGO_TARGET_DIR=target-cuda cargo test --profile gpu -p trainer --features cudnn,nccl --test cuda_ops --no-run
# (`nccl` in both, so that candle and cudarc are compiled once, with one feature set.)
# and puts both binaries into .gpu/ xz-compressed (.gpu/host-trainer.xz, .gpu/cuda_ops.xz: the
# two together are over the 64 MiB that travels uncompressed; candle's embedded PTX compresses well).
#
# Run there:   bash scripts/gpu_check.sh   (carry [".gpu"], timeout_s 480; logs and JSON go to $OUT)
#
# It records, in this order (each step has its own timeout; the whole run is sized for ~5 min):
#  1. the exactness tests (tests/cuda_ops.rs: each CUDA op against the CPU op within 1e-4),
#  2. the MoCo-v2 step (ResNet-18, small stem, 32 px) like for like against PyTorch on the same GPU
#     (BN groups 1, data on the device), per phase (forward / backward / optimiser), with candle's
#     own CUDA ops as the "before" in the same process (--baseline), at batch 256 and 64; and the
#     step as training runs it (the method's shuffle-BN groups, data uploaded per step),
#  3. a short pretraining of each method on synthetic objects on the GPU, and a few-shot evaluation,
#  4. the loss curve of a 2-epoch MoCo-v2 pretraining on CUDA next to the same run on the CPU,
#  5. `--distributed nccl` at world size 1 (RANK=0 WORLD_SIZE=1 ...: every step's keys, BN
#     statistics and gradients through NCCL's all-gather on this GPU) against the same run without
#     `--distributed`, byte for byte (world size 2 needs two GPUs: docs/host-trainer.md).
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = --build ]; then
  set -e
  # shellcheck disable=SC1091
  source ../shared/cuda/toolkit.sh cudnn
  # shellcheck disable=SC1091
  source scripts/nccl-env.sh
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
  nice -n 19 cargo build -j 2 --profile gpu -p host-trainer --features cudnn,nccl
  exe=$(nice -n 19 cargo test -j 2 --profile gpu -p trainer --features cudnn,nccl --test cuda_ops --no-run \
          --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="cuda_ops": print(m["executable"])' | tail -n 1)
  [ -n "$exe" ] || { echo "cuda_ops test binary not found" >&2; exit 1; }
  mkdir -p .gpu
  xz -T2 -6 -c "$CARGO_TARGET_DIR/gpu/host-trainer" > .gpu/host-trainer.xz
  xz -T2 -6 -c "$exe" > .gpu/cuda_ops.xz
  ls -l .gpu
  du -cb .gpu/*.xz | tail -n 1 | awk '{ if ($1 > 64*1024*1024) { print "over 64 MiB: " $1; exit 1 } }'
  exit 0
fi

OUT=${OUT:-out/gpu}
WORK=${WORK:-/tmp/gpu-check}
mkdir -p "$OUT" "$WORK"
for b in host-trainer cuda_ops; do
  if [ -e ".gpu/$b.xz" ]; then
    if command -v xz >/dev/null; then xz -dc ".gpu/$b.xz" > "$WORK/$b"
    else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' ".gpu/$b.xz" "$WORK/$b"
    fi
    chmod +x "$WORK/$b"
  fi
done
BIN=${BIN:-$WORK/host-trainer}
TESTS=${TESTS:-$WORK/cuda_ops}
[ -x "$BIN" ] || BIN=.gpu/host-trainer
DEV=${DEV:-cuda:0} TORCH_DEV=${TORCH_DEV:-cuda}
# Sizes (overridable only to dry-run the script on a CPU).
W=${W:-1.0} PB=${PB:-256} Q=${Q:-4096} PER_CLASS=${PER_CLASS:-60} STEPS=${STEPS:-20}
if python3 -c 1 2>/dev/null; then
  SP=$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
  # nvidia/nccl/lib: PyTorch's libnccl.so.2 (the `nccl` build needs it to start at all).
  export LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/cudnn/lib:$SP/nvidia/nccl/lib:${LD_LIBRARY_PATH:-}
fi
log="$OUT/gpu_check.log"
run() { # name timeout-seconds command...
  local name=$1 t=$2; shift 2
  echo "== $name: $*" | tee -a "$log"
  local s=$(date +%s.%N)
  timeout "$t" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  local rc=$?
  tail -c 3000 "$WORK/$name.err" >> "$log"; cat "$WORK/$name.out" >> "$log"
  cp "$WORK/$name.out" "$OUT/$name.out" 2>/dev/null
  echo "-- $name: exit $rc in $(awk "BEGIN{print $(date +%s.%N) - $s}") s" | tee -a "$log"
  return $rc
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$log" 2>&1
# Which libnccl the binary will load (a missing one shows as "not found" here, before any step).
ldd "$BIN" 2>&1 | grep -i 'nccl\|not found' >> "$log"
run version 30 "$BIN" --version
# 1. Exactness (TF32 off inside the tests). One thread: the tests share the GPU.
[ -x "$TESTS" ] && run exactness 180 "$TESTS" --test-threads=1 --nocapture
# 2. The step, candle CUDA vs PyTorch CUDA, same machine and run, per phase.
bench() { # name batch extra-bench-step-flags...
  local name=$1 b=$2; shift 2
  run "$name" 200 ${PYTHON:-python3} scripts/bench_torch_step.py --device $TORCH_DEV --batch $b --queue $Q \
    --warmup 3 --steps $STEPS --candle-cmd "$BIN bench-step --device $DEV --batch-size $b --queue $Q --warmup 3 --steps $STEPS --width $W --json $*"
}
bench like_for_like_b256 256 --bn-groups 1 --data-on-device --baseline
bench like_for_like_b64 64 --bn-groups 1 --data-on-device
bench training_step_b256 256
# 3. Short pretraining of each method on the GPU, then few-shot.
run synth 120 "$BIN" synth objects --out "$WORK/objects" --per-class $PER_CLASS --seed 0
for m in "moco --version v2" "exemplar --version v2" "supervised"; do
  name=$(echo "$m" | tr -d ' -' )
  run "pretrain_$name" 150 "$BIN" pretrain --method $m --data "$WORK/objects" --device $DEV --width $W \
    --image-size 32 --epochs 2 --batch-size $PB --queue $Q --knn-images 500 --out "$WORK/$name" --quiet
done
run fewshot 120 "$BIN" eval fewshot --backbone "$WORK/mocoversionv2/backbone.safetensors" --data "$WORK/objects" \
  --image-size 32 --episodes 200 --device $DEV --out "$WORK/fewshot"
# 4. Loss curve, CUDA against CPU: the same small MoCo-v2 run (same seed, data, augmentations) on
#    both devices; the per-step losses should agree within noise (summation order and cuDNN's
#    algorithms differ, so not bit for bit).
for d in cpu $DEV; do
  tag=$(echo "$d" | tr -d ':')
  rm -rf "$WORK/curve_$tag"
  run "curve_$tag" 150 "$BIN" pretrain --method moco --version v2 --data "$WORK/objects" --device "$d" --width 0.25 \
    --image-size 32 --epochs 2 --batch-size 64 --queue 1024 --knn-images 0 --out "$WORK/curve_$tag" --quiet
done
python3 - "$WORK/curve_cpu/metrics.jsonl" "$WORK/curve_$(echo "$DEV" | tr -d ':')/metrics.jsonl" <<'EOF' | tee -a "$log" "$OUT/loss_curve.txt"
import json, sys
def load(p):
    try:
        return [json.loads(l) for l in open(p)]
    except OSError as e:
        return print(f"loss curve: {e}") or []
cpu, gpu = load(sys.argv[1]), load(sys.argv[2])
print("kind  epoch step   loss_cpu  loss_cuda  diff")
for a, b in zip(cpu, gpu):
    print(f"{a['kind']:5} {a['epoch']:5} {a['step']:5} {a['loss']:9.4f} {b['loss']:9.4f} {b['loss'] - a['loss']:+8.4f}")
EOF
# 5. NCCL at world size 1 against no --distributed: a short MoCo-v2 run (its keys, BN statistics
#    and gradients cross NCCL every step), both checkpoints byte for byte. If they differ, a second
#    plain run tells whether CUDA training itself repeats here (cuDNN may pick non-deterministic
#    algorithms), which would make the comparison inconclusive rather than failed.
nccl_run() { # name "VAR=value ..." extra-flags...
  local name=$1 vars=$2; shift 2
  rm -rf "${WORK:?}/$name"
  # shellcheck disable=SC2086
  run "$name" 150 env $vars "$BIN" pretrain --method moco --version v2 --data "$WORK/objects" --width 0.25 \
    --image-size 32 --epochs 1 --batch-size 64 --queue 256 --knn-images 0 --seed 1 --out "$WORK/$name" --quiet "$@"
}
same() { cmp -s "$WORK/$1/last.safetensors" "$WORK/$2/last.safetensors" &&
         cmp -s "$WORK/$1/backbone.safetensors" "$WORK/$2/backbone.safetensors"; }
nccl_run nccl_plain "" --device "$DEV"
# The same GPU as $DEV: the only one visible, so the rank's cuda:0.
nccl_run nccl_ws1 "CUDA_VISIBLE_DEVICES=${DEV#cuda:} RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 \
MASTER_PORT=${NCCL_PORT:-29517} NCCL_DEBUG=${NCCL_DEBUG:-WARN}" --distributed nccl
if [ -s "$WORK/nccl_ws1/last.safetensors" ] && same nccl_plain nccl_ws1; then
  verdict="PASS: --distributed nccl at world size 1 wrote the same bytes as the plain CUDA run"
else
  nccl_run nccl_plain2 "" --device "$DEV"
  if [ ! -s "$WORK/nccl_ws1/last.safetensors" ]; then verdict="FAIL: the NCCL run wrote no checkpoint (see nccl_ws1 above)"
  elif same nccl_plain nccl_plain2; then verdict="FAIL: the NCCL run differs from two identical plain CUDA runs"
  else verdict="INCONCLUSIVE: two plain CUDA runs already differ (non-deterministic kernels)"
  fi
fi
echo "nccl world size 1: $verdict" | tee -a "$log" "$OUT/nccl_check.txt"
# 6. (Optional) the CPU step on 2 pinned cores, candle vs PyTorch (measured before; CPU_RATIO=1).
if [ "${CPU_RATIO:-0}" = 1 ] && command -v taskset >/dev/null; then
  RAYON_NUM_THREADS=2 run cpu_ratio_2cores 240 taskset -c 0,1 python3 scripts/bench_torch_step.py --device cpu --threads 2 \
    --batch 64 --queue 4096 --warmup 1 --steps 3 --candle-cmd "$BIN bench-step --device cpu --batch-size 64 --queue 4096 --warmup 1 --steps 3 --json"
fi
grep -h '"img_per_sec"\|images_per_sec' "$WORK"/*.out > "$OUT/summary.txt" 2>/dev/null
grep -h 'test result\|SKIP\|FAILED\|panicked' "$WORK/exactness.out" >> "$OUT/summary.txt" 2>/dev/null
echo "done" | tee -a "$log"
