#!/usr/bin/env bash
# runtime-mcu: install what is missing, build, run under QEMU (mps2-an386, Cortex-M4F), decode the
# defmt log, check the exit code, print the footprint report.
#
#   scripts/mcu.sh                 setup + build + run + report (what the test command calls)
#   scripts/mcu.sh setup           install only what is missing (idempotent)
#   scripts/mcu.sh build           cargo build --release; prints the ELF path
#   scripts/mcu.sh qemu ELF        run one ELF, decoded log on stdout (the cargo runner)
#
# Exit status: 0 only if the firmware ran to the end and exited with semihosting code 0.
# A panic or hard fault exits 1 (the firmware reports it over semihosting); a hang is killed by
# `timeout` after $MCU_TIMEOUT seconds (default 300) and exits 124.
#
# Instruction counts come from `-icount shift=0` (1 virtual ns per instruction) read through
# SysTick; see runtime-mcu/src/icount.rs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=thumbv7em-none-eabihf
MCU_TIMEOUT="${MCU_TIMEOUT:-300}"
export PATH="$HOME/.cargo/bin:$PATH"

log() { echo "mcu.sh: $*" >&2; }

setup() {
    if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
        log "installing rust target $TARGET"
        rustup target add "$TARGET"
    fi
    if ! command -v qemu-system-arm >/dev/null; then
        log "installing qemu-system-arm (Debian)"
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends qemu-system-arm
    fi
    # Captured first: `grep -q` closing the pipe early would fail the pipeline (pipefail).
    local v
    v="$(defmt-print --version 2>/dev/null || true)"
    if ! grep -q '^defmt-print 1\.' <<<"$v"; then
        log "installing defmt-print 1.x"
        cargo install defmt-print --locked --version '^1'
    fi
    if ! command -v llvm-size >/dev/null && ! command -v readelf >/dev/null; then
        log "need llvm-size or readelf for the footprint report (apt-get install binutils)"
        return 1
    fi
}

elf_path() {
    echo "${CARGO_TARGET_DIR:-$ROOT/runtime-mcu/target}/$TARGET/release/runtime-mcu"
}

build() {
    (cd "$ROOT/runtime-mcu" && cargo build --release --locked 1>&2) || return 1
    elf_path
}

# qemu ELF [RAWFILE]: runs the ELF; the raw defmt stream is kept in RAWFILE (or a temp file) and
# decoded to stdout. Returns QEMU's exit status (124 on timeout).
run_qemu() {
    local elf="$1" raw="${2:-}" tmp=""
    if [ -z "$raw" ]; then
        tmp="$(mktemp -d)"
        raw="$tmp/defmt.bin"
    fi
    : >"$raw"
    local rc=0
    # QEMU 7.2 writes the semihosting console (":tt", where the defmt stream goes) to its own
    # stdout; -nodefaults and the three `none`s keep monitor and UART off it. The board's
    # Ethernet NIC always warns that it has no peer: drop that one line.
    timeout "$MCU_TIMEOUT" qemu-system-arm \
        -machine mps2-an386 -cpu cortex-m4 \
        -display none -monitor none -serial none -nodefaults \
        -icount shift=0 \
        -semihosting-config enable=on,target=native \
        -kernel "$elf" </dev/null >"$raw" 2> >(grep -v 'has no peer' >&2) || rc=$?
    defmt-print -e "$elf" --log-format '{L} {s}' stdin <"$raw" || true
    [ -n "$tmp" ] && rm -rf "$tmp"
    case "$rc" in
        0) ;;
        124) log "TIMEOUT: firmware did not exit within ${MCU_TIMEOUT}s (hang)" ;;
        *) log "firmware exited with status $rc (panic or fault: see the log above)" ;;
    esac
    return "$rc"
}

# Section sizes from the ELF, in bytes: name size.
sections() {
    local elf="$1"
    if command -v llvm-size >/dev/null; then
        llvm-size -A "$elf" | awk 'NR > 2 && NF >= 2 { print $1, $2 }'
    else
        readelf -S -W "$elf" | sed -n 's/^ *\[ *[0-9]*\] //p' |
            awk '$1 ~ /^\./ { printf "%s %d\n", $1, strtonum("0x" $5) }'
    fi
}

report() {
    local elf="$1" decoded="$2"
    local secs
    secs="$(sections "$elf")"
    sec() { echo "$secs" | awk -v n="$1" '$1 == n { s += $2 } END { print s + 0 }'; }
    local vt text rodata data bss uninit
    vt=$(sec .vector_table) text=$(sec .text) rodata=$(sec .rodata) data=$(sec .data)
    bss=$(sec .bss) uninit=$(sec .uninit)
    fp() { grep -E "FOOTPRINT $1 " <<<"$decoded" | tail -n1 | awk '{ print $NF }'; }
    echo "=== runtime-mcu footprint (thumbv7em-none-eabihf, release) ==="
    printf '%-34s %10s\n' "flash .vector_table" "$vt"
    printf '%-34s %10s\n' "flash .text" "$text"
    printf '%-34s %10s\n' "flash .rodata (models, images)" "$rodata"
    printf '%-34s %10s\n' "flash .data load image" "$data"
    printf '%-34s %10s  of 1048576\n' "flash total" "$((vt + text + rodata + data))"
    printf '%-34s %10s\n' "static RAM .data" "$data"
    printf '%-34s %10s  (heap + arenas inside)\n' "static RAM .bss" "$bss"
    printf '%-34s %10s  of 262144\n' "static RAM total" "$((data + bss + uninit))"
    # Every FOOTPRINT line the firmware printed (heap, stack, arena, instructions per inference).
    grep -E '^(INFO +)?FOOTPRINT ' <<<"$decoded" | sed -E 's/^(INFO +)?FOOTPRINT //' |
        awk '{ printf "%-34s %10s\n", $1, $2; v[$1] = $2 }
             END {
                 # Instructions per MAC = executed instructions of one inference / its MACs.
                 for (k in v) if (k ~ /\.macs$/) {
                     m = substr(k, 1, length(k) - 5)
                     if ((m ".infer_insns") in v && v[k] > 0)
                         printf "%-34s %10.2f\n", m ".insns_per_mac", v[m ".infer_insns"] / v[k]
                 }
             }'
}

main() {
    local cmd="${1:-all}"
    case "$cmd" in
        setup) setup ;;
        build) build ;;
        qemu) shift; run_qemu "$@" ;;
        all)
            setup
            local elf decoded rc=0
            elf="$(build)" || { log "build failed"; return 1; }
            log "running $elf under qemu-system-arm (timeout ${MCU_TIMEOUT}s)"
            decoded="$(run_qemu "$elf")" || rc=$?
            echo "$decoded"
            if [ "$rc" -ne 0 ]; then
                return "$rc"
            fi
            if ! grep -q 'DONE' <<<"$decoded"; then
                log "firmware exited 0 but never logged DONE"
                return 1
            fi
            report "$elf" "$decoded"
            ;;
        *) log "unknown command '$cmd' (setup | build | qemu ELF | all)"; return 2 ;;
    esac
}

main "$@"
