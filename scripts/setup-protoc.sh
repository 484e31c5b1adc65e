#!/usr/bin/env bash
# Installs, if missing, what building host-trainer needs beyond the Rust toolchain: `protoc`
# (Debian's protobuf-compiler), which prost-build runs to generate candle-onnx's ONNX protobuf
# types (host-trainer export --onnx). Called by scripts/setup.sh (tests) and scripts/main.sh.
set -euo pipefail
if ! command -v protoc >/dev/null; then
  echo "setup-protoc.sh: installing protobuf-compiler (Debian)"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends protobuf-compiler
fi
