#!/usr/bin/env bash
# The project's one test command (README "Run all tests"; .ci/run calls exactly this).
# Installs what the tests need, then runs every test: the host workspace, the no_std build for the
# Cortex-M4F target, and (when runtime-mcu exists) the QEMU run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo test (workspace) =="
cargo test --workspace --locked

echo "== runtime-core builds for thumbv7em-none-eabihf (no_std) =="
cargo build -p runtime-core --target thumbv7em-none-eabihf --locked
cargo build -p runtime-core --target thumbv7em-none-eabihf --features defmt --locked

if [ -x scripts/mcu.sh ]; then
  echo "== runtime-mcu under QEMU =="
  bash scripts/mcu.sh
fi
