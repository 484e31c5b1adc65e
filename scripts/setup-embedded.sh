#!/usr/bin/env bash
# Installs what the embedded build needs: the Cortex-M4F (hard-float) target for runtime-core.
# Idempotent: rustup skips a target that is already installed.
set -euo pipefail
TARGET=thumbv7em-none-eabihf
if rustup target list --installed | grep -qx "$TARGET"; then
  echo "target $TARGET already installed"
else
  rustup target add "$TARGET"
fi
