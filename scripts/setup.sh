#!/usr/bin/env bash
# Installs, idempotently, what builds and tests need beyond the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed 2>/dev/null | grep -qx thumbv7em-none-eabihf; then
  rustup target add thumbv7em-none-eabihf
fi

# runtime-mcu (QEMU run): qemu-system-arm from Debian and defmt-print; scripts/mcu.sh knows
# what it needs and installs only what is missing.
bash scripts/mcu.sh setup
