#!/usr/bin/env bash
# requantize_smollm2.sh — the SmolLM2-135M-Instruct GGUFs in other quant formats, made by
# llama.cpp's own `llama-quantize` from the reference Q4_1 file (models/fetch_smollm2.sh).
#
# Usage:
#   scripts/requantize_smollm2.sh [TYPE ...]        (default: Q4_K_M Q5_K_M Q6_K Q8_0)
#
# Writes $OUT_DIR/SmolLM2-135M-Instruct.<TYPE>.gguf for each TYPE. Each file is written under
# a `.part` name and renamed when llama-quantize has finished, so a reader polling the
# directory only ever sees whole files.
#
# These are *requantized* files (Q4_1 → TYPE, `--allow-requantize`): their quality is bounded
# by the Q4_1 source. They exist to measure load time, memory and speed per format on a real
# model, not to judge output quality. SmolLM2's rows are 576 wide (not a multiple of the
# K-quants' 256-weight super-block), so llama.cpp falls back to Q5_0/Q5_1/Q8_0 for most
# matrices of the K-quant files; `llama-quantize` prints the mix.
#
# Where llama.cpp comes from: the source vendored in PyPI's llama-cpp-python==0.3.36 sdist
# (the same tree tests/fixtures/arch/README.md names), checked against its sha256. Nothing of
# llama.cpp lives in this repository.
#
# Environment (defaults in brackets):
#   SDIST     the sdist, llama_cpp_python-0.3.36.tar.gz [downloaded with pip into $WORK_DIR]
#   WORK_DIR  where the sdist is extracted and built [/tmp/llcpp-src]
#   OUT_DIR   where the GGUFs go [/tmp/quant]
#   MODEL     the Q4_1 source [models/SmolLM2-135M-Instruct.Q4_1.gguf, fetched if missing]
#   JOBS      build parallelism and quantize threads [2]
#
# Needs a C/C++ compiler; cmake is installed into a virtualenv with pip when there is none.
# Idempotent: an existing llama-quantize build and existing output files are reused.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
WORK_DIR="${WORK_DIR:-/tmp/llcpp-src}"
OUT_DIR="${OUT_DIR:-/tmp/quant}"
JOBS="${JOBS:-2}"
MODEL="${MODEL:-$here/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
TYPES=("$@")
[ ${#TYPES[@]} -gt 0 ] || TYPES=(Q4_K_M Q5_K_M Q6_K Q8_0)

# sha256 of each output as built on 2026-12-06 (gcc 12, Debian 12, GGML_NATIVE=OFF, any
# thread count). A different compiler may round differently; a mismatch is reported, not fatal.
declare -A WANT=(
  [Q4_K_M]=dc0f3a02e821146247a0af6895adf9872124f368682cb110cb9ed09ff2a9f9f1
  [Q5_K_M]=8170c7ef444692b3b2fe63459c326def0358807ef9be6e3cb020efb86a71015e
  [Q6_K]=a969ae2086dd4945a7c61594bf72b2bcc3b7df8571c92aed8f213918673a7f80
  [Q8_0]=7b46609d11703c058397e5cfe4cc6e4b2508cb1eb4c80ddc472a5d421fbdb508
)

say() { echo "requantize_smollm2: $*" >&2; }

if [ ! -f "$MODEL" ]; then
  "$here/models/fetch_smollm2.sh" >/dev/null
fi

# 1. The sdist, checked.
mkdir -p "$WORK_DIR"
if [ -z "${SDIST:-}" ]; then
  SDIST="$WORK_DIR/llama_cpp_python-0.3.36.tar.gz"
  if [ ! -f "$SDIST" ]; then
    say "downloading llama-cpp-python==0.3.36 (sdist) from PyPI"
    python3 -m pip download --quiet --no-deps --no-binary :all: --disable-pip-version-check \
      -d "$WORK_DIR" llama-cpp-python==0.3.36
  fi
fi
got="$(sha256sum "$SDIST" | cut -d' ' -f1)"
if [ "$got" != "$SDIST_SHA256" ]; then
  say "sha256 mismatch for $SDIST: got $got, want $SDIST_SHA256"
  exit 1
fi

# 2. llama-quantize, built from the vendored tree.
src="$WORK_DIR/llama_cpp_python-0.3.36/vendor/llama.cpp"
quantize="$src/build/bin/llama-quantize"
if [ ! -x "$quantize" ]; then
  tar xzf "$SDIST" -C "$WORK_DIR"
  cmake_bin="$(command -v cmake || true)"
  if [ -z "$cmake_bin" ]; then
    say "no cmake: installing it into $WORK_DIR/venv with pip"
    python3 -m venv "$WORK_DIR/venv"
    "$WORK_DIR/venv/bin/pip" install --quiet cmake
    cmake_bin="$WORK_DIR/venv/bin/cmake"
  fi
  (
    cd "$src"
    "$cmake_bin" -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    "$cmake_bin" --build build --target llama-quantize -j"$JOBS"
  ) >&2
fi

# 3. One file per type, renamed into place when whole.
mkdir -p "$OUT_DIR"
for t in "${TYPES[@]}"; do
  out="$OUT_DIR/SmolLM2-135M-Instruct.$t.gguf"
  if [ ! -f "$out" ]; then
    say "$t ..."
    "$quantize" --allow-requantize "$MODEL" "$out.part" "$t" "$JOBS" >"$OUT_DIR/$t.log" 2>&1 || {
      rm -f "$out.part"
      say "llama-quantize failed for $t; see $OUT_DIR/$t.log"
      exit 1
    }
    mv "$out.part" "$out"
  fi
  sum="$(sha256sum "$out" | cut -d' ' -f1)"
  if [ -n "${WANT[$t]:-}" ] && [ "$sum" != "${WANT[$t]}" ]; then
    say "note: $out has sha256 $sum, not the recorded ${WANT[$t]} (another compiler?)"
  fi
  echo "$out"
done
