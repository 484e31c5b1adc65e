#!/usr/bin/env bash
# Cross-builds the C API for a Cortex-M4F: the staticlib for thumbv7em-none-eabihf, the C example
# compiled with Debian's arm-none-eabi-gcc for the same ABI (hard float, FPv4-SP), and a full link
# of the two with newlib (`nosys.specs`: stub system calls and the toolchain's default linker
# script) to prove that every symbol resolves: the bare-metal staticlib needs only malloc/free
# (and memcpy-style routines) from the C library. The ELF is not meant to boot (no vector table or
# board linker script); runtime-mcu is the project's runnable firmware. Honours CARGO_TARGET_DIR.
# Needs: rustup target thumbv7em-none-eabihf; apt-get install gcc-arm-none-eabi
# libnewlib-arm-none-eabi.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
out=$target/runtime-ffi-thumbv7em
mkdir -p "$out"

cargo build -p runtime-ffi --release --target thumbv7em-none-eabihf --locked
lib=$target/thumbv7em-none-eabihf/release/libruntime_ffi.a

cpu=(-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16)
arm-none-eabi-gcc "${cpu[@]}" -std=c11 -O2 -Wall -Wextra -Werror -pedantic \
  -ffunction-sections -fdata-sections -I runtime-ffi/include \
  -c runtime-ffi/examples/c/fewshot_landmarks.c -o "$out/fewshot_landmarks.o"
arm-none-eabi-gcc "${cpu[@]}" --specs=nosys.specs -Wl,--gc-sections \
  "$out/fewshot_landmarks.o" "$lib" -lm -o "$out/fewshot_landmarks.elf"
arm-none-eabi-size "$out/fewshot_landmarks.elf"
echo "runtime-ffi: staticlib $lib and $out/fewshot_landmarks.elf built for Cortex-M4F"
