#!/usr/bin/env bash
# runtime-core on aarch64 Linux (Raspberry Pi class boards): cross-build with Debian's
# aarch64-linux-gnu-gcc as the linker and run the crate's tests under qemu-user (qemu-aarch64).
#
#   scripts/aarch64.sh setup   install only what is missing (idempotent): the rust target
#                              aarch64-unknown-linux-gnu, gcc-aarch64-linux-gnu,
#                              libc6-dev-arm64-cross and qemu-user (Debian)
#   scripts/aarch64.sh test    setup, then `cargo test -p runtime-core --features std,threads`
#                              (the NEON kernel and the sdot one where the CPU has it, whole and
#                              split over threads) and the no_std build, for aarch64
#   scripts/aarch64.sh         the same as `test`
#
# The linker and runner are given as environment variables for these commands only, so no
# other build sees them. qemu-user's timings mean nothing, so nothing here measures speed.
# qemu-aarch64 emulates a CPU with every extension it knows (FEAT_DotProd included), so the
# sdot kernel is the one `PreparedI8::new` picks and the NEON smull/sadalp kernel is forced by
# `PreparedI8::new_neon` in tests/fast_kernels.rs; both are checked against the reference.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=aarch64-unknown-linux-gnu
export PATH="$HOME/.cargo/bin:$PATH"

log() { echo "aarch64.sh: $*" >&2; }

setup() {
    if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
        log "installing rust target $TARGET"
        rustup target add "$TARGET"
    fi
    local need=()
    command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
    [ -f /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need+=(libc6-dev-arm64-cross)
    command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
    if [ "${#need[@]}" -gt 0 ]; then
        log "installing ${need[*]} (Debian)"
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
    fi
}

run_tests() {
    cd "$ROOT"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
    log "cargo test -p runtime-core --features std,threads --target $TARGET (under qemu-aarch64)"
    cargo test -p runtime-core --features std,threads --target "$TARGET" --locked
    log "cargo build -p runtime-core --no-default-features --target $TARGET (no_std + alloc)"
    cargo build -p runtime-core --no-default-features --target "$TARGET" --locked
}

case "${1:-test}" in
    setup) setup ;;
    test)
        setup
        run_tests
        ;;
    *)
        log "usage: $0 [setup|test]"
        exit 2
        ;;
esac
