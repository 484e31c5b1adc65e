#!/usr/bin/env bash
# Where the firmware's executed instructions go, under QEMU (mps2-an386, the same machine and
# -icount setting as scripts/mcu.sh): every translation block's instruction count times its
# executions (QEMU's `-d in_asm,exec,nochain` log, streamed, never stored), each block attributed
# through the ELF's debug info (llvm-addr2line, inlined frames) to the innermost function of
# runtime-core's kernels (`runtime_core::ops::…`), else to the innermost function.
#
#   scripts/mcu-profile.sh [ELF]    profile ELF (default: build with MCU_MODELS, default resnet8)
#   MCU_PROFILE_TOP=40              how many rows to print (default 25)
#
# The whole run is profiled: boot, the SysTick calibration loop (`icount::spin`, 2.4 M), model
# parsing and every inference of the selected models. The sum agrees with the SysTick counts of
# scripts/mcu.sh to about 1 %. Needs qemu-system-arm and llvm-addr2line (or addr2line).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOP="${MCU_PROFILE_TOP:-25}"

elf="${1:-}"
if [ -z "$elf" ]; then
    export MCU_MODELS="${MCU_MODELS:-resnet8}"
    elf="$("$ROOT/scripts/mcu.sh" build)"
fi
a2l="$(command -v llvm-addr2line || command -v addr2line || true)"
if [ -z "$a2l" ] || ! command -v qemu-system-arm >/dev/null; then
    echo "mcu-profile.sh: needs qemu-system-arm and llvm-addr2line (scripts/mcu.sh setup; apt-get install llvm)" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkfifo "$tmp/log"
# Per block start address: executions and instructions. A block's size comes from the `IN:`
# listing printed when it is translated, keyed by the host code address of its first `Trace`
# line (QEMU retranslates blocks, e.g. shorter ones at the end of an icount budget, so the
# guest address alone does not fix the size).
awk '
    /^IN:/ { inblk = 1; n = 0; next }
    inblk && /^0x[0-9a-f]+:/ { n++; next }
    inblk && /^$/ { pending = n; inblk = 0; next }
    /^Trace/ {
        h = $3
        if (pending) { sz[h] = pending; pending = 0 }
        split($4, a, "/"); p = "0x" a[2]
        ins[p] += sz[h]
        next
    }
    END { for (p in ins) print p, ins[p] }
' <"$tmp/log" >"$tmp/blocks" &
awk_pid=$!
timeout "${MCU_TIMEOUT:-300}" qemu-system-arm \
    -machine mps2-an386 -cpu cortex-m4 \
    -display none -monitor none -serial none -nodefaults \
    -icount shift=0 \
    -semihosting-config enable=on,target=native \
    -d in_asm,exec,nochain -D "$tmp/log" \
    -kernel "$elf" </dev/null >/dev/null 2> >(grep -v 'has no peer' >&2) || {
    echo "mcu-profile.sh: the firmware did not exit cleanly" >&2
    exit 1
}
wait "$awk_pid"

cut -d' ' -f1 "$tmp/blocks" | "$a2l" -e "$elf" -a -f -i -C >"$tmp/frames"
# Attribution: per block, the first `runtime_core::ops::` frame of its inline chain (innermost
# first), else its innermost function; summed per function.
python3 - "$tmp/blocks" "$tmp/frames" "$TOP" <<'EOF'
import re, sys
blocks = {}
for line in open(sys.argv[1]):
    a, n = line.split()
    blocks[int(a, 16)] = int(n)
cost, addr, chosen, first = {}, None, None, None
def flush():
    if addr is not None:
        name = chosen or first or "??"
        cost[name] = cost.get(name, 0) + blocks.get(addr, 0)
for line in open(sys.argv[2]):
    line = line.rstrip("\n")
    if line.startswith("0x"):
        flush()
        addr, chosen, first = int(line, 16), None, None
    elif not re.search(r":(\d+|\?)(:\d+)?$", line) or line.startswith("??"):
        name = re.sub(r"::h[0-9a-f]{16}$", "", line)
        first = first or name
        if chosen is None and name.startswith("runtime_core::ops::"):
            chosen = name
flush()
total = sum(cost.values())
print(f"{'instructions':>14}  {'share':>6}  function")
for name, n in sorted(cost.items(), key=lambda kv: -kv[1])[: int(sys.argv[3])]:
    print(f"{n:>14,}  {100 * n / total:5.1f}%  {name}")
print(f"{total:>14,}  100.0%  total (the whole run)")
EOF
