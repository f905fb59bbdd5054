#!/usr/bin/env bash
# lavapipe_jit_profile.sh — where the CPU time goes inside the shaders llvmpipe JIT-compiles.
#
# Timestamp queries (`wllm bench ... --profile`) say which kernel is slow; this says which
# instructions are. llvmpipe's machine code has no symbols, so the script samples the running
# process with perf, copies the hottest JIT regions out of its memory with gdb, disassembles
# them with objdump and prints (1) samples per mnemonic and (2) the hottest 128-instruction
# windows with their dominant mnemonics (gathers show up as vpextrd/vpinsrd runs, texel fetches
# as vinserti128/movslq runs, spills as vmovaps to and from the stack).
#
# Usage: scripts/lavapipe_jit_profile.sh OUT_DIR -- COMMAND...
#   e.g. scripts/lavapipe_jit_profile.sh /tmp/jit -- target/release/wllm bench prefill \
#            --model models/SmolLM2-135M-Instruct.Q4_1.gguf --len 128 --repeat 40
# Knobs: WARMUP seconds before sampling (10; past model load and pipeline compiles),
#        SECONDS_SAMPLED (8), REGIONS (6 hottest 64 KiB regions dumped).
# Needs perf, gdb and objdump (Debian: linux-perf, gdb, binutils) and a command that runs at
# least WARMUP + SECONDS_SAMPLED seconds; it is killed afterwards.
set -euo pipefail
[ $# -ge 3 ] && [ "$2" = "--" ] || { sed -n '2,18p' "$0"; exit 2; }
OUT="$1"; shift 2
WARMUP="${WARMUP:-10}"; SAMPLED="${SECONDS_SAMPLED:-8}"; REGIONS="${REGIONS:-6}"
for tool in perf gdb objdump python3; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
mkdir -p "$OUT"
# A reused OUT must not mix an earlier run's dumps into this one.
rm -f "$OUT"/jit_*.bin "$OUT"/jit_*.asm
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
"$@" >"$OUT/command.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
sleep "$WARMUP"
kill -0 "$PID" 2>/dev/null || { echo "the command ended before sampling" >&2; exit 1; }
perf record -e cpu-clock:u -p "$PID" -o "$OUT/perf.data" -- sleep "$SAMPLED" >/dev/null 2>&1
perf script -i "$OUT/perf.data" -F ip 2>/dev/null >"$OUT/ips.txt"
# The hottest 64 KiB regions, trimmed to the pages that were sampled.
python3 - "$OUT" "$REGIONS" <<'PY'
import collections, sys
out, regions = sys.argv[1], int(sys.argv[2])
ips = [int(l, 16) for l in open(f"{out}/ips.txt") if l.strip()]
by_region = collections.Counter(ip >> 16 for ip in ips)
with open(f"{out}/gdb.cmds", "w") as cmds:
    for region, _ in by_region.most_common(regions):
        inside = [ip for ip in ips if ip >> 16 == region]
        lo, hi = min(inside) & ~0xFFF, (max(inside) | 0xFFF) + 1
        cmds.write(f"dump binary memory {out}/jit_{lo:x}.bin {lo:#x} {hi:#x}\n")
PY
gdb -p "$PID" -batch -x "$OUT/gdb.cmds" >/dev/null 2>&1 || true
for bin in "$OUT"/jit_*.bin; do
    [ -e "$bin" ] || { echo "gdb dumped nothing (ptrace not allowed?)" >&2; exit 1; }
    base="${bin##*/jit_}"; base="${base%.bin}"
    objdump -D -b binary -mi386:x86-64 --adjust-vma="0x$base" "$bin" >"${bin%.bin}.asm"
done
python3 - "$OUT" <<'PY'
import collections, glob, re, sys
out = sys.argv[1]
samples = collections.Counter(int(l, 16) for l in open(f"{out}/ips.txt") if l.strip())
line = re.compile(r"\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*(\S+)")
code = []  # (address, mnemonic) per dumped region, in address order
for asm in sorted(glob.glob(f"{out}/jit_*.asm")):
    code.append([(int(m.group(1), 16), m.group(2)) for m in map(line.match, open(asm)) if m])
total = sum(samples.values())
mapped = collections.Counter()
for region in code:
    for addr, mnemonic in region:
        mapped[mnemonic] += samples.get(addr, 0)
in_jit = sum(mapped.values())
print(f"samples: {total}, in the dumped JIT regions: {in_jit} ({100 * in_jit / max(total, 1):.1f}%)")
print("by mnemonic:", "  ".join(f"{m} {100 * n / max(in_jit, 1):.1f}%" for m, n in mapped.most_common(20)))
print("hottest 128-instruction windows (share of all samples, dominant mnemonics):")
windows = []
for region in code:
    for i in range(0, len(region), 128):
        w = region[i:i + 128]
        hits = sum(samples.get(a, 0) for a, _ in w)
        mix = collections.Counter(m for _, m in w).most_common(5)
        windows.append((hits, w[0][0], mix))
for hits, addr, mix in sorted(windows, reverse=True)[:15]:
    print(f"  {addr:#x} {100 * hits / max(total, 1):5.1f}%  " + " ".join(f"{m}:{n}" for m, n in mix))
PY
