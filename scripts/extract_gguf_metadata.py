#!/usr/bin/env python3
"""Write tests/fixtures/arch/gguf/<name>.meta.gguf for tiny-llama3 and tiny-qwen2: the
metadata of <name>.Q4_K_M.gguf (written by llama.cpp's converter) and its tensors that are
not weights of the checkpoint (Llama 3's `rope_freqs.weight`), copied verbatim with gguf-py,
without the quantized weight tensors.

tests/golden_converted_gguf.rs adds the checkpoint's f16 weights to them in llama.cpp's
layout, so that these families' GGUF metadata is checked against transformers before wllm
can load K-quants. Needs gguf-py: `pip install gguf` (e.g. in the venv of
make_arch_goldens.py).
"""
import os

import gguf

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GG = os.path.join(ROOT, "tests", "fixtures", "arch", "gguf")
# Tensors llama.cpp's converter computes rather than copies from the checkpoint.
DERIVED = {"rope_freqs.weight"}

for name in ["tiny-llama3", "tiny-qwen2"]:
    src = gguf.GGUFReader(os.path.join(GG, f"{name}.Q4_K_M.gguf"))
    arch = bytes(src.fields["general.architecture"].parts[-1]).decode()
    path = os.path.join(GG, f"{name}.meta.gguf")
    out = gguf.GGUFWriter(path, arch)
    for key, field in src.fields.items():
        # The writer adds these itself; general.file_type names a type no tensor here has.
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                value = [bytes(field.parts[i]) for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            out.add_key_value(key, value, vtype, sub_type=sub)
        elif vtype == gguf.GGUFValueType.STRING:
            out.add_key_value(key, bytes(field.parts[-1]), vtype)
        else:
            out.add_key_value(key, field.parts[-1].tolist()[0], vtype)
    for t in src.tensors:
        if t.name in DERIVED:
            out.add_tensor(t.name, t.data.copy(), raw_dtype=t.tensor_type)
    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.write_tensors_to_file()
    out.close()
    print("wrote", path)
