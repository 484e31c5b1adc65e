#!/usr/bin/env bash
# The project's one test command (README "Run all tests"; .ci/run calls exactly this).
# Installs what the tests need, then runs every check: formatting, clippy, the host workspace's
# tests (which include the MCU build and QEMU run, once, in tests/tests/mcu_parity.rs), the
# no_std builds of runtime-core for the Cortex-M4F target, runtime-core's tests on aarch64 under
# qemu-user (the NEON kernels), and the C API checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each section's heading carries the seconds since the start, so a slow CI run shows where.
phase() { echo "== [${SECONDS}s] $* =="; }

bash scripts/setup.sh

# Features the host workspace is checked and tested with (one build serves clippy and the tests):
# MPI, so that `pretrain --distributed mpi` runs under mpirun in host-trainer's CLI tests.
FEATURES="host-trainer/mpi"

phase "cargo fmt --check"
cargo fmt --all --check

phase "cargo clippy (workspace, all targets, warnings are errors)"
cargo clippy --workspace --all-targets --features "$FEATURES" --locked -- -D warnings

phase "cargo test (workspace; includes the runtime-mcu QEMU run)"
rm -f target/mcu-report.txt target/mcu-hostile-report.txt
mkdir -p target
cargo test --workspace --features "$FEATURES" --locked 2>&1 | tee target/test-output.txt

if [ -f target/mcu-report.txt ]; then
  phase "runtime-mcu under QEMU: the parity test's run"
  cat target/mcu-report.txt
fi
if [ -f target/mcu-hostile-report.txt ]; then
  phase "runtime-mcu under QEMU: mutated models through the C API (mcu_parity, hostile)"
  cat target/mcu-hostile-report.txt
fi

phase "runtime-mcu board builds beyond QEMU (compile and size only)"
bash scripts/mcu.sh boards

# runtime-core's no_std builds for the Cortex-M4F need no phase of their own: the QEMU firmware
# (in cargo test) builds it with defmt, and runtime-ffi's Cortex-M4F build below builds it plain.

phase "runtime-core on aarch64 Linux under qemu-user (NEON kernels vs the reference)"
bash scripts/aarch64.sh 2>&1 | tee target/test-output-aarch64.txt

phase "runtime-ffi: C API header check, C example vs runtime-cli, Cortex-M4F cross-build"
if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen 0.29.4" ]; then
  # A debug build of the tool: no optimisation to compile, and it only reads one crate.
  cargo install cbindgen --version 0.29.4 --locked --debug
fi
if ! command -v arm-none-eabi-gcc >/dev/null 2>&1 || [ ! -d /usr/lib/arm-none-eabi/newlib ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-arm-none-eabi libnewlib-arm-none-eabi
fi
bash runtime-ffi/check.sh
RT_FFI_PROFILE=dev RT_FFI_CARGO_ARGS="--workspace --features $FEATURES" bash runtime-ffi/run_c_example.sh
bash runtime-ffi/build_thumbv7em.sh

# One closing line for the whole run (every check above stops the script on failure).
phase "done"
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' \
  target/test-output.txt target/test-output-aarch64.txt
