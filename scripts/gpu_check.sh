#!/usr/bin/env bash
# A conformance report for every GPU adapter on this machine: `wllm check --all-adapters --perf
# --json` (every kernel against its CPU reference, then timed at model-like shapes against the
# adapter's copy bandwidth), saved to OUT (default gpu_check.json) and summarized.
# Exit status: wllm check's (non-zero on a FAIL or a stale expected-failure entry).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-gpu_check.json}"
wllm="${WLLM_BIN:-target/release/wllm}"
[ -x "$wllm" ] || cargo build --release --quiet || exit 1
"$wllm" check --all-adapters --perf --json > "$out"
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
    p = a.get("perf")
    if p:
        print(f'  perf: copy {p["copy_gb_per_s"]:.1f} GB/s, timed by {p["timer"]}')
        for r in p["results"]:
            print(f'    {r["kernel"]} [{r["form"]}] {r["case"]}: {r["us_per_call"]:.1f} µs, '
                  f'{r["gb_per_s"]:.1f} GB/s ({100 * r["of_copy"]:.0f}% of copy)')
PY
echo "report: $out"
exit $status
