#!/usr/bin/env bash
# libFuzzer runs of the model loader, the C API and the .tflite reader (docs/runtime.md); by
# hand, not in CI.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Usage: bash fuzz/run.sh [RUNS per target, default 1000000] [target...]
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${1:-1000000}
shift || true
TARGETS=${*:-model_parse c_api tflite_convert}
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz"; exit 1; }
rustup toolchain list | grep -q nightly || { echo "no nightly toolchain: rustup toolchain install nightly"; exit 1; }
# Seed corpora: every committed fixture model; the C API's inputs get its 5-byte prefix.
for t in $TARGETS; do
  mkdir -p corpus/$t
  if [ "$t" = tflite_convert ]; then
    # Ours (`export --tflite`) and TensorFlow's converter's (depthwise, PAD, QUANTIZE/DEQUANTIZE).
    for f in ../fixtures/tflite/*.tflite; do cp "$f" corpus/$t/seed-$(basename "$f" .tflite); done
    continue
  fi
  for f in ../fixtures/tiny/backbone-int8.safetensors ../fixtures/tiny/landmarks-int8.safetensors \
           ../fixtures/tiny/backbone-f32.safetensors ../fixtures/mcu/landmark.safetensors; do
    n=corpus/$t/seed-$(basename "$f" .safetensors)
    if [ "$t" = c_api ]; then
      { printf '\x00\x00\x00\x00\x00'; cat "$f"; } > "$n"
    else
      cp "$f" "$n"
    fi
  done
done
for t in $TARGETS; do
  echo "== fuzz $t: $RUNS runs =="
  cargo +nightly fuzz run "$t" "corpus/$t" -- -runs="$RUNS" -max_len=${MAX_LEN:-32768} -rss_limit_mb=4096 -print_final_stats=1 2>&1 | tee "$t.log" | grep -E "^(#[0-9]+.*(pulse|DONE)|Done|stat::|==[0-9]+==)" || true
  tail -n 3 "$t.log"
done
