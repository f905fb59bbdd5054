#!/usr/bin/env bash
# Fetches llama.cpp's tokenizer test suite — the vocabulary-only GGUFs `ggml-vocab-*.gguf` with
# their `.inp` (texts) and `.out` (expected ids) files — into models/tokenizer-suite/, for
# tests/tokenizer_suite.rs.
#
# Source: the llama-cpp-python sdist on PyPI, which vendors llama.cpp with its models/ folder
# (pinned version, checked against its sha256). pip needs cmake and scikit-build-core installed
# to read the sdist's metadata without build isolation, so they go into a throwaway venv under
# /tmp (reused on later runs). Only models/ggml-vocab-* is extracted. Idempotent: does nothing
# when the suite of this version is already in place.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VERSION=0.3.36
SDIST="llama_cpp_python-${VERSION}.tar.gz"
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
DEST=models/tokenizer-suite
STAMP="$DEST/.fetched-llama-cpp-python-${VERSION}"
VENV="${WLLM_SUITE_VENV:-/tmp/wllm-tokenizer-suite-venv}"
DOWNLOADS="${WLLM_SUITE_DOWNLOADS:-/tmp/wllm-tokenizer-suite-dl}"

if [ -f "$STAMP" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/pip" ]; then
  echo "fetch_tokenizer_suite: creating a Python venv in $VENV" >&2
  # A bare Debian has no python3, or one without venv/ensurepip until python3-venv is installed.
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv "$VENV" 2>/dev/null; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "fetch_tokenizer_suite: cannot create a venv; install python3 with its venv module" >&2
      exit 1
    fi
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3 python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
fi
"$VENV/bin/pip" install -q cmake scikit-build-core

mkdir -p "$DOWNLOADS"
if [ ! -f "$DOWNLOADS/$SDIST" ] || ! echo "$SHA256  $DOWNLOADS/$SDIST" | sha256sum -c --quiet - 2>/dev/null; then
  rm -f "$DOWNLOADS/$SDIST"
  echo "fetch_tokenizer_suite: downloading $SDIST (~75 MB)" >&2
  "$VENV/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation \
    -d "$DOWNLOADS" "llama-cpp-python==${VERSION}"
fi
if ! echo "$SHA256  $DOWNLOADS/$SDIST" | sha256sum -c --quiet -; then
  echo "fetch_tokenizer_suite: $DOWNLOADS/$SDIST does not have sha256 $SHA256; refusing it" >&2
  exit 1
fi

# Extract beside the destination, then move into place, so an interrupted run leaves no
# half-filled suite behind.
tmp="$(mktemp -d "models/.tokenizer-suite.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$DOWNLOADS/$SDIST" -C "$tmp" --strip-components=4 --wildcards \
  "llama_cpp_python-${VERSION}/vendor/llama.cpp/models/ggml-vocab-*"
n=$(find "$tmp" -name 'ggml-vocab-*.gguf.inp' | wc -l)
if [ "$n" -lt 10 ]; then
  echo "fetch_tokenizer_suite: only $n test vocabularies in $SDIST" >&2
  exit 1
fi
chmod 755 "$tmp"
touch "$tmp/$(basename "$STAMP")"
rm -rf "$DEST"
mv "$tmp" "$DEST"
trap - EXIT
echo "fetch_tokenizer_suite: $n vocabularies with test cases in $DEST" >&2
