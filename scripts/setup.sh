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
