#!/usr/bin/env bash
# Installs, idempotently, what builds and tests need beyond the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed 2>/dev/null | grep -qx thumbv7em-none-eabihf; then
  rustup target add thumbv7em-none-eabihf
fi
