#!/usr/bin/env bash
# The project's one test command (README "Run all tests"; .ci/run calls exactly this).
# Installs what the tests need, then runs every check: formatting, clippy, the host workspace's
# tests (which include the MCU build and QEMU run, once, in tests/tests/mcu_parity.rs), and the
# no_std builds of runtime-core for the Cortex-M4F target.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check =="
cargo fmt --all --check

echo "== cargo clippy (workspace, all targets, warnings are errors) =="
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test (workspace; includes the runtime-mcu QEMU run) =="
rm -f target/mcu-report.txt
cargo test --workspace --locked

if [ -f target/mcu-report.txt ]; then
  echo "== runtime-mcu under QEMU: the parity test's run =="
  cat target/mcu-report.txt
fi

echo "== runtime-core builds for thumbv7em-none-eabihf (no_std) =="
cargo build -p runtime-core --target thumbv7em-none-eabihf --locked
cargo build -p runtime-core --target thumbv7em-none-eabihf --features defmt --locked
