#!/usr/bin/env bash
# A conformance report for every GPU adapter on this machine: `wllm check --all-adapters --json`
# (every kernel against its CPU reference), saved to OUT (default gpu_check.json) and summarized.
# Exit status: wllm check's (non-zero on a FAIL or a stale expected-failure entry).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-gpu_check.json}"
wllm="${WLLM_BIN:-target/release/wllm}"
[ -x "$wllm" ] || cargo build --release --quiet || exit 1
"$wllm" check --all-adapters --json > "$out"
status=$?
python3 - "$out" <<'PY'
import json, sys
for a in json.load(open(sys.argv[1]))["adapters"]:
    counts = {}
    for r in a["results"]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f'{a["name"]} [{a["backend"]}]: {counts}')
    for r in a["results"]:
        if r["status"] == "FAIL" or r.get("expected_failure"):
            print(f'  {r["status"]} {r["kernel"]} {r["form"]} {r["case"]}: {r.get("detail")}')
PY
echo "report: $out"
exit $status
