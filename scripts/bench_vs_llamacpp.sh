#!/usr/bin/env bash
# bench_vs_llamacpp.sh — compare `wllm bench` against llama.cpp on the same GGUF.
#
# Usage:
#   scripts/bench_vs_llamacpp.sh [--json] LLAMA_CPP_BIN_DIR [MODEL]
#
#   LLAMA_CPP_BIN_DIR  directory holding llama.cpp's `llama-bench` and
#                      `llama-batched-bench` (e.g. .../llama.cpp/build-vulkan/bin)
#   MODEL              GGUF file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)
#   --json             print the comparison as one JSON document on stdout
#                      (the human-readable table then goes to stderr)
#
# What is compared (tokens/s; ratio = wllm / llama.cpp, >1 means wllm is faster):
#   pp{PP}             llama-bench -p PP            <-> wllm bench prefill --len PP
#   tg{TG}             llama-bench -n TG            <-> wllm bench decode --batch 1 --gen-len TG
#   S_PP / S_TG @ B    llama-batched-bench -npp PROMPT_LEN -ntg GEN_LEN -npl B
#                                                   <-> wllm bench decode --batch B
#                      (prefill_tok_per_s / decode_tok_per_s; all B sequences in lockstep)
#
# Environment knobs (defaults in brackets):
#   PP [512]  TG [128]  BATCHES ["1,8,64,256"]  PROMPT_LEN [32]  GEN_LEN [128]
#   REPS [3]           repetitions (llama-bench -r, wllm --repeat)
#   NGL [99]           llama.cpp -ngl; use 0 with a CPU-only llama.cpp build
#   THREADS            llama.cpp -t (default: llama.cpp's own default)
#   LLAMA_EXTRA_ARGS   extra args appended to both llama.cpp commands (e.g. "-fa on")
#   WLLM_BIN           wllm binary (default: target/release/wllm, built with
#                      `cargo build --release` if missing)
#   WLLM_DTYPE         passed as `--dtype` to wllm (f16|f32; default: wllm's own)
#   WLLM_ADAPTER / WLLM_BACKEND   adapter selection, read by wllm itself
#   LAVAPIPE=1         software Vulkan (Mesa lavapipe/llvmpipe): small defaults
#                      (PP=128 TG=32 BATCHES=1,8 GEN_LEN=32 REPS=1),
#                      GGML_VK_VISIBLE_DEVICES=0 (llama.cpp skips CPU-type Vulkan
#                      devices otherwise) and WLLM_ADAPTER=llvmpipe unless already set.
#                      Explicit knobs still win. Expect minutes, not seconds.
#   SKIP_BATCHED=1     skip llama-batched-bench and the wllm batch rows
#   OUT_DIR            where raw outputs are kept (default: a fresh /tmp dir)
#
# A failing command does not stop the script: its cells show "-" and the script
# exits with status 3 after printing the table.
#
# Example (lavapipe):
#   XDG_RUNTIME_DIR=/tmp LAVAPIPE=1 scripts/bench_vs_llamacpp.sh \
#       /work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build-vulkan/bin
#
# Building llama.cpp (outside this repo; nothing of llama.cpp lives here):
#   mkdir -p /work/llamacpp && cd /work/llamacpp
#   pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36
#   tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
#   # CPU:
#   cmake -B build-cpu -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
#   cmake --build build-cpu -j2 --target llama-bench llama-batched-bench
#   # Vulkan: needs glslc, cmake and Vulkan + SPIR-V headers newer than Debian 12's:
#   #   apt-get install -y cmake glslc libvulkan-dev
#   #   apt-get download libvulkan-dev spirv-headers   (from Debian trixie, e.g. via a
#   #     temporary sources.list passed with -o Dir::Etc::SourceList=...)
#   #   dpkg -x libvulkan-dev_*.deb /work/llamacpp/vkhdr; dpkg -x spirv-headers_*.deb /work/llamacpp/vkhdr
#   cmake -B build-vulkan -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
#       -DGGML_VULKAN=ON -DVulkan_INCLUDE_DIR=/work/llamacpp/vkhdr/usr/include \
#       -DSPIRV-Headers_DIR=/work/llamacpp/vkhdr/usr/share/cmake/SPIRV-Headers
#   cmake --build build-vulkan -j2 --target llama-bench llama-batched-bench
#   # binaries: build-cpu/bin, build-vulkan/bin
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

JSON_OUT=0
POS=()
for a in "$@"; do
    case "$a" in
        --json) JSON_OUT=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "unknown option: $a" >&2; usage >&2; exit 2 ;;
        *) POS+=("$a") ;;
    esac
done
if [ "${#POS[@]}" -lt 1 ] || [ "${#POS[@]}" -gt 2 ]; then usage >&2; exit 2; fi

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"

LLAMA_DIR="$(cd "${POS[0]}" && pwd)"
MODEL="${POS[1]:-$REPO/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[ -f "$MODEL" ] || { echo "model not found: $MODEL" >&2; exit 1; }
MODEL="$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")"

LLAMA_BENCH="$LLAMA_DIR/llama-bench"
LLAMA_BATCHED="$LLAMA_DIR/llama-batched-bench"
[ -x "$LLAMA_BENCH" ] || { echo "not found/executable: $LLAMA_BENCH" >&2; exit 1; }

if [ "${LAVAPIPE:-0}" = 1 ]; then
    : "${PP:=128}" "${TG:=32}" "${BATCHES:=1,8}" "${GEN_LEN:=32}" "${REPS:=1}"
    export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"
    export WLLM_ADAPTER="${WLLM_ADAPTER:-llvmpipe}"
fi
PP="${PP:-512}"
TG="${TG:-128}"
BATCHES="${BATCHES:-1,8,64,256}"
PROMPT_LEN="${PROMPT_LEN:-32}"
GEN_LEN="${GEN_LEN:-128}"
REPS="${REPS:-3}"
NGL="${NGL:-99}"
THREADS="${THREADS:-}"
SKIP_BATCHED="${SKIP_BATCHED:-0}"
read -r -a LLAMA_EXTRA <<< "${LLAMA_EXTRA_ARGS:-}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/bench_vs_llamacpp.XXXXXX)}"
mkdir -p "$OUT_DIR"

log() { echo "[bench_vs_llamacpp] $*" >&2; }

# ---- wllm binary ---------------------------------------------------------
if [ -n "${WLLM_BIN:-}" ]; then
    WLLM="$WLLM_BIN"
else
    WLLM="$REPO/target/release/wllm"
    if [ ! -x "$WLLM" ]; then
        log "building wllm (cargo build --release)"
        (cd "$REPO" && cargo build --release >&2)
    fi
fi
[ -x "$WLLM" ] || { echo "wllm binary not found: $WLLM" >&2; exit 1; }

T_ARGS=()
[ -n "$THREADS" ] && T_ARGS=(-t "$THREADS")
DTYPE_ARGS=()
[ -n "${WLLM_DTYPE:-}" ] && DTYPE_ARGS=(--dtype "$WLLM_DTYPE")

# run NAME CMD...: stdout -> $OUT_DIR/NAME.out, stderr -> NAME.err; never fatal
run() {
    local name="$1"; shift
    log "$name: $*"
    local t0=$SECONDS
    if "$@" > "$OUT_DIR/$name.out" 2> "$OUT_DIR/$name.err"; then
        log "$name: done in $((SECONDS - t0)) s"
    else
        log "$name: FAILED (rc=$?) after $((SECONDS - t0)) s; see $OUT_DIR/$name.err:"
        tail -n 5 "$OUT_DIR/$name.err" | sed 's/^/    /' >&2 || true
    fi
}

# ---- llama.cpp -----------------------------------------------------------
run llama_bench "$LLAMA_BENCH" -m "$MODEL" -p "$PP" -n "$TG" -ngl "$NGL" -r "$REPS" \
    "${T_ARGS[@]}" -o json "${LLAMA_EXTRA[@]}"

MAXB=$(tr ',' '\n' <<< "$BATCHES" | sort -n | tail -n 1)
# batched-bench silently skips configs that do not fit in the context; the KV cache
# is split evenly across MAXB sequences, so give each PROMPT_LEN+GEN_LEN (+ slack).
CTX=$(( MAXB * (PROMPT_LEN + GEN_LEN + 16) ))
if [ "$SKIP_BATCHED" != 1 ]; then
    if [ -x "$LLAMA_BATCHED" ]; then
        run llama_batched "$LLAMA_BATCHED" -m "$MODEL" -c "$CTX" -npp "$PROMPT_LEN" -ntg "$GEN_LEN" \
            -npl "$BATCHES" -ngl "$NGL" "${T_ARGS[@]}" --output-format jsonl "${LLAMA_EXTRA[@]}"
    else
        log "no $LLAMA_BATCHED; skipping batched rows"
    fi
fi

# ---- wllm ----------------------------------------------------------------
run wllm_prefill "$WLLM" bench prefill --model "$MODEL" --len "$PP" --repeat "$REPS" \
    "${DTYPE_ARGS[@]}" --json
if [ "$SKIP_BATCHED" = 1 ]; then
    run wllm_decode_tg "$WLLM" bench decode --model "$MODEL" --batch 1 --prompt-len "$PROMPT_LEN" \
        --gen-len "$TG" --repeat "$REPS" "${DTYPE_ARGS[@]}" --json
elif [ "$TG" = "$GEN_LEN" ]; then
    # one run covers tg (batch 1) and the batched rows
    WB="$BATCHES"
    tr ',' '\n' <<< "$BATCHES" | grep -qx 1 || WB="1,$BATCHES"
    run wllm_decode "$WLLM" bench decode --model "$MODEL" --batch "$WB" --prompt-len "$PROMPT_LEN" \
        --gen-len "$GEN_LEN" --repeat "$REPS" "${DTYPE_ARGS[@]}" --json
    cp "$OUT_DIR/wllm_decode.out" "$OUT_DIR/wllm_decode_tg.out"
else
    run wllm_decode_tg "$WLLM" bench decode --model "$MODEL" --batch 1 --prompt-len "$PROMPT_LEN" \
        --gen-len "$TG" --repeat "$REPS" "${DTYPE_ARGS[@]}" --json
    run wllm_decode "$WLLM" bench decode --model "$MODEL" --batch "$BATCHES" --prompt-len "$PROMPT_LEN" \
        --gen-len "$GEN_LEN" --repeat "$REPS" "${DTYPE_ARGS[@]}" --json
fi

log "raw outputs in $OUT_DIR"

# ---- table ---------------------------------------------------------------
OUT_DIR="$OUT_DIR" MODEL="$MODEL" PP="$PP" TG="$TG" BATCHES="$BATCHES" PROMPT_LEN="$PROMPT_LEN" \
GEN_LEN="$GEN_LEN" REPS="$REPS" NGL="$NGL" SKIP_BATCHED="$SKIP_BATCHED" JSON_OUT="$JSON_OUT" \
LLAMA_DIR="$LLAMA_DIR" WLLM="$WLLM" python3 - <<'PY'
import json, os, sys

E = os.environ
out = E["OUT_DIR"]


def read(name):
    try:
        with open(os.path.join(out, name + ".out")) as f:
            return f.read()
    except OSError:
        return ""


def first_json(text, opener):
    """First JSON value starting with `opener` ('[' or '{') that parses."""
    dec = json.JSONDecoder()
    i = text.find(opener)
    while i != -1:
        try:
            return dec.raw_decode(text, i)[0]
        except ValueError:
            i = text.find(opener, i + 1)
    return None


def last_json_obj(text):
    dec = json.JSONDecoder()
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return dec.raw_decode(line)[0]
            except ValueError:
                pass
    return first_json(text, "{")


def jsonl(text):
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


PP, TG = int(E["PP"]), int(E["TG"])
PL, GL = int(E["PROMPT_LEN"]), int(E["GEN_LEN"])
batches = [int(b) for b in E["BATCHES"].split(",") if b.strip()]
skip_batched = E["SKIP_BATCHED"] == "1"

# llama.cpp
lb = first_json(read("llama_bench"), "[") or []
llama_info = {}
llama_pp = llama_tg = None
for r in lb:
    if not llama_info:
        llama_info = {k: r.get(k) for k in ("build_commit", "build_number", "backends", "gpu_info",
                                            "cpu_info", "model_type", "n_threads", "n_gpu_layers")}
    if r.get("n_prompt") == PP and r.get("n_gen") == 0:
        llama_pp = r.get("avg_ts")
    if r.get("n_gen") == TG and r.get("n_prompt") == 0:
        llama_tg = r.get("avg_ts")
llama_b = {r["pl"]: r for r in jsonl(read("llama_batched")) if "pl" in r}

# wllm
wp = last_json_obj(read("wllm_prefill")) or {}
wtg = last_json_obj(read("wllm_decode_tg")) or {}
wd = last_json_obj(read("wllm_decode")) or {}


def wres(doc, b, key):
    for r in doc.get("results", []) or []:
        if r.get("batch") == b:
            return r.get(key)
    return None


rows = []


def row(test, desc, l, w):
    ratio = (w / l) if (isinstance(l, (int, float)) and isinstance(w, (int, float)) and l > 0) else None
    rows.append({"test": test, "desc": desc, "llama_cpp_tok_s": l, "wllm_tok_s": w, "ratio": ratio})


row(f"pp{PP}", "prefill, 1 seq", llama_pp, wp.get("tok_per_s"))
row(f"tg{TG}", "decode, 1 seq", llama_tg, wres(wtg, 1, "decode_tok_per_s"))
if not skip_batched:
    for b in batches:
        lr = llama_b.get(b, {})
        row(f"S_PP B={b}", f"prefill {b}x{PL}", lr.get("speed_pp"), wres(wd, b, "prefill_tok_per_s"))
    for b in batches:
        lr = llama_b.get(b, {})
        row(f"S_TG B={b}", f"decode {b}x{GL} after {PL}", lr.get("speed_tg"), wres(wd, b, "decode_tok_per_s"))

wllm_adapter = wp.get("adapter") or wtg.get("adapter") or wd.get("adapter")
doc = {
    "model": E["MODEL"],
    "config": {"pp": PP, "tg": TG, "batches": batches, "prompt_len": PL, "gen_len": GL,
               "reps": int(E["REPS"]), "ngl": int(E["NGL"])},
    "llama_cpp": dict(llama_info, bin_dir=E["LLAMA_DIR"]),
    "wllm": {"bin": E["WLLM"], "adapter": wllm_adapter},
    "raw_dir": out,
    "rows": rows,
}


def fmt(v, spec):
    width = int(spec.split(".")[0])
    return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(width)


lines = []
lines.append(f"model:     {os.path.basename(E['MODEL'])}")
lines.append("llama.cpp: backend={} gpu={} build={} ngl={} threads={}".format(
    llama_info.get("backends"), llama_info.get("gpu_info") or "-", llama_info.get("build_commit"),
    llama_info.get("n_gpu_layers"), llama_info.get("n_threads")))
lines.append(f"wllm:      adapter={wllm_adapter}")
lines.append("")
hdr = f"| {'test':<12} | {'workload':<22} | {'llama.cpp t/s':>13} | {'wllm t/s':>10} | {'wllm/llama':>10} |"
lines.append(hdr)
lines.append("|" + "|".join("-" * (len(c) + 0) for c in hdr.split("|")[1:-1]) + "|")
for r in rows:
    lines.append(f"| {r['test']:<12} | {r['desc']:<22} | {fmt(r['llama_cpp_tok_s'], '13.2f')} | "
                 f"{fmt(r['wllm_tok_s'], '10.2f')} | {fmt(r['ratio'], '10.3f')} |")
table = "\n".join(lines)

if E["JSON_OUT"] == "1":
    print(table, file=sys.stderr)
    print(json.dumps(doc, indent=2))
else:
    print(table)

missing = [r["test"] for r in rows if r["ratio"] is None]
if missing:
    print(f"[bench_vs_llamacpp] no figure for: {', '.join(missing)} (see raw outputs in {out})",
          file=sys.stderr)
    sys.exit(3)
PY
