#!/usr/bin/env bash
# bench_ab.sh — the same `wllm bench decode` / `bench prefill` runs with two wllm binaries,
# alternating A, B, A, B, ... on one machine, so a change is judged by ratios from one run
# rather than against figures taken at another time (lavapipe swings ±30% between runs).
#
# Usage: scripts/bench_ab.sh A_BIN B_BIN [MODEL]
#   e.g. build the old commit in a worktree:
#     git worktree add /tmp/wllm_a <commit> && (cd /tmp/wllm_a && cargo build --release)
#     scripts/bench_ab.sh /tmp/wllm_a/target/release/wllm target/release/wllm
# Knobs (environment): ROUNDS (2), BATCHES (1,8), PROMPT_LEN (32), GEN_LEN (32), PP (128), REPS (3).
# Prints one JSON line per run, labelled "== round R A|B decode|prefill", then a median table.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,10p' "$0"; exit 2; }
A="$1"; B="$2"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
MODEL="${3:-$REPO/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
ROUNDS="${ROUNDS:-2}"; BATCHES="${BATCHES:-1,8}"; PROMPT_LEN="${PROMPT_LEN:-32}"
GEN_LEN="${GEN_LEN:-32}"; PP="${PP:-128}"; REPS="${REPS:-3}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
for bin in "$A" "$B"; do [ -x "$bin" ] || { echo "not executable: $bin" >&2; exit 1; }; done
LOG="$(mktemp)"
for round in $(seq 1 "$ROUNDS"); do
    for which in A B; do
        bin="$A"; [ "$which" = B ] && bin="$B"
        echo "== round $round $which decode" | tee -a "$LOG"
        "$bin" bench decode --model "$MODEL" --batch "$BATCHES" --prompt-len "$PROMPT_LEN" \
            --gen-len "$GEN_LEN" --repeat "$REPS" --json 2>/dev/null | tail -1 | tee -a "$LOG"
        echo "== round $round $which prefill" | tee -a "$LOG"
        "$bin" bench prefill --model "$MODEL" --len "$PP" --repeat "$REPS" --json 2>/dev/null \
            | tail -1 | tee -a "$LOG"
    done
done
python3 - "$LOG" <<'PY'
import json, statistics, sys
runs = {}
label = None
for line in open(sys.argv[1]):
    if line.startswith("=="):
        _, _, _, which, kind = line.split()
        label = (which, kind)
        continue
    j = json.loads(line)
    if label[1] == "decode":
        for r in j["results"]:
            runs.setdefault((f"decode B={r['batch']}", label[0]), []).append(r["decode_tok_per_s"])
            runs.setdefault((f"CPU before submit µs B={r['batch']}", label[0]),
                            []).append(r["cpu_encode_us_per_step"])
    else:
        runs.setdefault((f"prefill {j['len']}", label[0]), []).append(j["tok_per_s"])
print(f"{'measure':32} {'A (median)':>12} {'B (median)':>12} {'B/A':>7}")
for name in sorted({k[0] for k in runs}):
    a = statistics.median(runs[(name, "A")]); b = statistics.median(runs[(name, "B")])
    print(f"{name:32} {a:12.2f} {b:12.2f} {b / a:7.2f}")
PY
rm -f "$LOG"
