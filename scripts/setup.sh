#!/usr/bin/env bash
# Installs, idempotently, what builds and tests need beyond the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

# runtime-core's no_std build for the Cortex-M4F.
bash scripts/setup-embedded.sh

# runtime-mcu (QEMU run): qemu-system-arm from Debian and defmt-print; scripts/mcu.sh knows
# what it needs and installs only what is missing.
bash scripts/mcu.sh setup

# `cargo fmt --check` and `cargo clippy` in the test command.
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    rustup component add "$c"
  fi
done

# `pretrain --distributed mpi` (feature `mpi`, which the test command builds): Debian's OpenMPI,
# and libclang for the bindings the `mpi` crate generates at build time.
if ! command -v mpicc >/dev/null 2>&1 || ! command -v mpirun >/dev/null 2>&1 ||
  ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  echo "setup.sh: installing OpenMPI and libclang (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenmpi-dev openmpi-bin libclang-dev
fi

# host-trainer's ONNX protobuf types (candle-onnx) need `protoc` at build time.
bash scripts/setup-protoc.sh

# onnxruntime (and the onnx checker) for exporter/tests/it/onnx_runtime.rs, which compares
# `export --onnx` models run by onnxruntime with runtime-core. The test skips, saying so, only
# if these cannot be imported, i.e. if this install failed.
if ! python3 -c 'import onnxruntime, numpy, onnx' 2>/dev/null; then
  echo "setup.sh: installing onnxruntime numpy onnx (PyPI)"
  python3 -m pip install --quiet onnxruntime numpy onnx ||
    echo "setup.sh: WARNING: pip install onnxruntime numpy onnx failed; the onnxruntime comparison will be skipped"
fi

# TensorFlow Lite Micro's Python interpreter for exporter/tests/it/tflite_micro.rs, which runs
# `export --tflite` models and checks them bit for bit against runtime-core. That test too skips,
# saying so, only if it cannot be imported.
if ! python3 -c 'from tflite_micro.python.tflite_micro import runtime' 2>/dev/null; then
  echo "setup.sh: installing tflite-micro (PyPI)"
  python3 -m pip install --quiet tflite-micro ||
    echo "setup.sh: WARNING: pip install tflite-micro failed; the TFLite Micro comparison will be skipped"
fi

# LiteRT (TensorFlow Lite with XNNPACK) for exporter/tests/it/tflite_litert.rs, which reports
# how far XNNPACK's outputs are from runtime-core's on the same .tflite, and for
# scripts/bench_vs_litert.py. That test skips, saying so, only if it cannot be imported.
if ! python3 -c 'import ai_edge_litert.interpreter' 2>/dev/null; then
  echo "setup.sh: installing ai-edge-litert (PyPI)"
  python3 -m pip install --quiet ai-edge-litert ||
    echo "setup.sh: WARNING: pip install ai-edge-litert failed; the LiteRT comparison will be skipped"
fi
