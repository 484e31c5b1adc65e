#!/usr/bin/env bash
# runtime-mcu: install what is missing, build, run under QEMU (mps2-an386, Cortex-M4F), decode the
# defmt log, check the exit code, print the footprint report.
#
#   scripts/mcu.sh                 setup + build + run + report (what the test command calls)
#   scripts/mcu.sh setup           install only what is missing (idempotent)
#   scripts/mcu.sh build [BOARD]   cargo build --release for BOARD (default qemu-an386); prints
#                                  the ELF path
#   scripts/mcu.sh qemu ELF        run one ELF, decoded log on stdout (the cargo runner)
#   scripts/mcu.sh boards          build every board in runtime-mcu/boards/ (compile and size only,
#                                  no run), print its flash/RAM use against the board's map; fails
#                                  if a board's build does not fit its map (the linker checks)
#   scripts/mcu.sh mlperf          MLPerf Tiny's own ResNet-8 .tflite (path in
#                                  MLPERF_RESNET8_TFLITE; unset: SKIP, exit 0) converted on the
#                                  host, run under QEMU, outputs compared with the host bit for
#                                  bit, instructions per inference and per MAC printed (the test
#                                  mlperf_resnet8_on_the_mcu in tests/tests/mcu_parity.rs)
#
# Boards: runtime-mcu/boards/<name>/memory.x (the memory map) and models (the models that fit it);
# runtime-mcu/build.rs reads MCU_BOARD, and MCU_MODELS, which overrides the board's models
# (MCU_MODELS="landmark fewshot" scripts/mcu.sh runs that subset under QEMU). The QEMU run always
# builds qemu-an386. Builds go to $CARGO_TARGET_DIR (default runtime-mcu/target).
# MCU_FEATURES: cargo features of the build (e.g. `hostile`: mutated models through the C API
# instead of the parity program, runtime-mcu/src/hostile_run.rs).
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
BOARDS="$ROOT/runtime-mcu/boards"
QEMU_BOARD=qemu-an386
ALL_MODELS="landmark fewshot resnet8 tiny-landmark tiny-fewshot tflite-landmark"
MCU_TIMEOUT="${MCU_TIMEOUT:-300}"
export PATH="$HOME/.cargo/bin:$PATH"

log() { echo "mcu.sh: $*" >&2; }

# What a build and its size report need: the rust target and llvm-size or readelf.
setup_build() {
    if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
        log "installing rust target $TARGET"
        rustup target add "$TARGET"
    fi
    if ! command -v llvm-size >/dev/null && ! command -v readelf >/dev/null; then
        log "need llvm-size or readelf for the footprint report (apt-get install binutils)"
        return 1
    fi
}

setup() {
    setup_build
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
}

elf_path() {
    echo "${CARGO_TARGET_DIR:-$ROOT/runtime-mcu/target}/$TARGET/release/runtime-mcu"
}

# build [BOARD]: the firmware for BOARD (default qemu-an386) with the board's models or
# $MCU_MODELS; prints the ELF path. A build that does not fit the board's map fails to link.
build() {
    local board="${1:-$QEMU_BOARD}"
    local features=()
    [ -n "${MCU_FEATURES:-}" ] && features=(--features "$MCU_FEATURES")
    (cd "$ROOT/runtime-mcu" && MCU_BOARD="$board" cargo build --release --locked "${features[@]}" 1>&2) || return 1
    elf_path
}

# region_bytes MEMORY_X REGION: LENGTH of FLASH or RAM in a memory.x, in bytes (K and M suffixes).
region_bytes() {
    local v
    v="$(sed -nE "s/^[[:space:]]*$2[[:space:]]*:.*LENGTH[[:space:]]*=[[:space:]]*([0-9A-Fa-fx]+[KM]?).*/\1/p" "$1" | head -n1)"
    case "$v" in
        "") log "$1: no LENGTH for $2"; return 1 ;;
        *K) echo $((${v%K} * 1024)) ;;
        *M) echo $((${v%M} * 1024 * 1024)) ;;
        *) echo $((v)) ;;
    esac
}

# The models a build of BOARD embeds: $MCU_MODELS, else the board's `models` file.
board_models() {
    local m="${MCU_MODELS:-}"
    [ -n "${m// /}" ] || m="$(grep -v '^[[:space:]]*#' "$BOARDS/$1/models")"
    # Unquoted on purpose: one space between names.
    # shellcheck disable=SC2086
    echo $(tr ',' ' ' <<<"$m")
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

# report ELF DECODED [BOARD]: sections against BOARD's map (default qemu-an386), then every
# FOOTPRINT line of the decoded log (none for a board that was only built).
report() {
    local elf="$1" decoded="$2" board="${3:-$QEMU_BOARD}"
    local flash_cap ram_cap
    flash_cap="$(region_bytes "$BOARDS/$board/memory.x" FLASH)" || return 1
    ram_cap="$(region_bytes "$BOARDS/$board/memory.x" RAM)" || return 1
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
    printf '%-34s %10s  of %s\n' "flash total" "$((vt + text + rodata + data))" "$flash_cap"
    printf '%-34s %10s\n' "static RAM .data" "$data"
    printf '%-34s %10s  (heap + arenas inside)\n' "static RAM .bss" "$bss"
    printf '%-34s %10s  of %s\n' "static RAM total" "$((data + bss + uninit))" "$ram_cap"
    # Every FOOTPRINT line the firmware printed (heap, stack, arena, instructions per inference).
    { grep -E '^(INFO +)?FOOTPRINT ' <<<"$decoded" || true; } | sed -E 's/^(INFO +)?FOOTPRINT //' |
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

# boards: builds every board with its models (compile and size only) and reports each against
# its map; a board whose models do not fit fails. A board built with fewer than all models is
# also tried with all of them, to show what does not fit (informational, never a failure).
boards() {
    setup_build
    local tgt="${CARGO_TARGET_DIR:-$ROOT/runtime-mcu/target}/$TARGET/release/boards"
    mkdir -p "$tgt"
    local summary="" rc=0 dir board models elf err
    err="$(mktemp)"
    for dir in "$BOARDS"/*/; do
        board="$(basename "$dir")"
        [ -f "$dir/memory.x" ] && [ -f "$dir/models" ] || continue
        models="$(board_models "$board")"
        log "building board $board (models: $models)"
        if ! elf="$(build "$board" 2>"$err")"; then
            cat "$err" >&2
            log "board $board: build FAILED (models: $models): see the linker error above"
            summary+="$(printf '%-12s %-50s %s' "$board" "${models// /+}" \
                "BUILD FAILED: $(why_not "$err")")"$'\n'
            rc=1
            continue
        fi
        cp "$elf" "$tgt/$board.elf"
        echo "=== board $board (runtime-mcu/boards/$board, models: $models; compile and size only) ==="
        report "$tgt/$board.elf" "" "$board"
        summary+="$(board_line "$board" "$models" "$tgt/$board.elf")"$'\n'
        if [ "$models" != "$ALL_MODELS" ]; then
            log "board $board: trying all models ($ALL_MODELS), expected not to fit"
            if elf="$(MCU_MODELS="$ALL_MODELS" build "$board" 2>"$err")"; then
                cp "$elf" "$tgt/$board-all.elf"
                summary+="$(board_line "$board" "$ALL_MODELS" "$tgt/$board-all.elf") (fits: add to its models?)"$'\n'
            else
                summary+="$(printf '%-12s %-50s %s' "$board" "${ALL_MODELS// /+}" \
                    "does not fit: $(why_not "$err")")"$'\n'
            fi
        fi
    done
    rm -f "$err"
    echo "=== boards: flash and static RAM used / capacity (stack gets the rest of RAM; the maps keep 32 KiB for it) ==="
    printf '%-12s %-50s %-24s %-24s %s\n' board models flash RAM "stack room"
    printf '%s' "$summary"
    return "$rc"
}

# why_not ERRFILE: the linker's reasons in a failed build's output, on one line.
why_not() {
    {
        grep -oE "section '[^']*' will not fit in region '[^']*': overflowed by [0-9]+ bytes" "$1" |
            head -n1
        grep -oE 'ERROR\(runtime-mcu\): [^"]*' "$1" | head -n1
    } | paste -sd ';' - | sed 's/;/; /g'
}

# board_line BOARD MODELS ELF: one summary row.
board_line() {
    local board="$1" models="$2" elf="$3" secs flash ram fc rc
    secs="$(sections "$elf")"
    flash="$(awk '$1 ~ /^\.(vector_table|text|rodata|data)$/ { s += $2 } END { print s + 0 }' <<<"$secs")"
    ram="$(awk '$1 ~ /^\.(data|bss|uninit)$/ { s += $2 } END { print s + 0 }' <<<"$secs")"
    fc="$(region_bytes "$BOARDS/$board/memory.x" FLASH)"
    rc="$(region_bytes "$BOARDS/$board/memory.x" RAM)"
    printf '%-12s %-50s %-24s %-24s %s' "$board" "${models// /+}" \
        "$flash / $fc ($(((200 * flash / fc + 1) / 2))%)" "$ram / $rc ($(((200 * ram / rc + 1) / 2))%)" \
        "$((rc - ram))"
}

main() {
    local cmd="${1:-all}"
    case "$cmd" in
        setup) setup ;;
        build) shift; build "$@" ;;
        qemu) shift; run_qemu "$@" ;;
        boards) boards ;;
        mlperf)
            if [ -z "${MLPERF_RESNET8_TFLITE:-}" ]; then
                log "SKIP mlperf: MLPERF_RESNET8_TFLITE is not set (the path of MLPerf Tiny's pretrainedResnet_quant.tflite)"
                return 0
            fi
            setup
            (cd "$ROOT" && cargo test -p parity-tests --test mcu_parity mlperf_resnet8_on_the_mcu -- --nocapture)
            ;;
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
        *) log "unknown command '$cmd' (setup | build [BOARD] | qemu ELF | boards | mlperf | all)"; return 2 ;;
    esac
}

main "$@"
