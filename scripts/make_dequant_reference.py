#!/usr/bin/env python3
"""Reference hashes of gguf-py's dequantization of every tensor of the quantized GGUF fixtures.

Run with a Python that has gguf-py (`pip install gguf`):
    python scripts/make_dequant_reference.py
It reads tests/fixtures/arch/gguf/tiny-*.{Q*,IQ*}.gguf, dequantizes every tensor with
`gguf.quants.dequantize` to float32, and writes tests/fixtures/arch/gguf/dequant_sha256.json:
  "formats": ggml type name -> [type id, weights per block, bytes per block] (GGML_QUANT_SIZES)
  "files":   file name -> tensor name -> [type name, SHA-256 of the little-endian f32 bytes]
tests/dequant_formats.rs requires wllm's CPU dequantization to give the same hashes.
"""

import hashlib
import json
import pathlib
import sys

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIR = ROOT / "tests" / "fixtures" / "arch" / "gguf"
OUT = DIR / "dequant_sha256.json"
FILES = [
    f"tiny-llama3.{q}.gguf"
    for q in ["Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"]
] + [f"tiny-qwen2.{q}.gguf" for q in ["Q4_K_M", "Q5_K_S", "Q6_K"]]


def main() -> int:
    files = {}
    used = set()
    for name in FILES:
        reader = GGUFReader(DIR / name)
        tensors = {}
        for t in reader.tensors:
            qtype = GGMLQuantizationType(t.tensor_type)
            w = dequantize(np.asarray(t.data), qtype).astype("<f4", copy=False)
            n = int(np.prod(t.shape))
            assert w.size == n, (name, t.name, w.size, n)
            tensors[t.name] = [qtype.name, hashlib.sha256(w.tobytes()).hexdigest()]
            used.add(qtype)
        files[name] = dict(sorted(tensors.items()))
        print(f"{name}: {len(tensors)} tensors", file=sys.stderr)
    wanted = used | {
        GGMLQuantizationType[n]
        for n in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K",
                  "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
    }
    formats = {
        q.name: [int(q.value), *GGML_QUANT_SIZES[q]]
        for q in sorted(wanted, key=lambda q: q.value)
    }
    # One line per format and per tensor: small, and diffs read well.
    lines = ['{', ' "formats": {']
    lines += [f'  {json.dumps(k)}: {json.dumps(v)},' for k, v in formats.items()]
    lines[-1] = lines[-1].rstrip(",")
    lines += [' },', ' "files": {']
    for fi, (name, tensors) in enumerate(files.items()):
        lines.append(f'  {json.dumps(name)}: {{')
        lines += [f'   {json.dumps(k)}: {json.dumps(v)},' for k, v in tensors.items()]
        lines[-1] = lines[-1].rstrip(",")
        lines.append('  }' + (',' if fi + 1 < len(files) else ''))
    lines += [' }', '}']
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == {"formats": formats, "files": files}
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
