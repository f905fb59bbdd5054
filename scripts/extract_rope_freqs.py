#!/usr/bin/env python3
"""Write tests/fixtures/arch/gguf/tiny-llama3.rope_freqs.gguf: the metadata and the
`rope_freqs.weight` tensor of tiny-llama3.Q4_K_M.gguf (both written by llama.cpp's
converter), copied verbatim with gguf-py, without the quantized weight tensors.

tests/golden_llama3_gguf.rs adds the checkpoint's f16 weights to it in llama.cpp's layout,
so that a Llama 3 GGUF's RoPE scaling is checked against transformers before wllm can load
K-quants. Needs gguf-py: `pip install gguf` (e.g. in the venv of make_arch_goldens.py).
"""
import os

import gguf

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GG = os.path.join(ROOT, "tests", "fixtures", "arch", "gguf")

src = gguf.GGUFReader(os.path.join(GG, "tiny-llama3.Q4_K_M.gguf"))
arch = bytes(src.fields["general.architecture"].parts[-1]).decode()
out = gguf.GGUFWriter(os.path.join(GG, "tiny-llama3.rope_freqs.gguf"), arch)
for name, field in src.fields.items():
    # The writer adds these itself; general.file_type would name a type no tensor here has.
    if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
        continue
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == gguf.GGUFValueType.STRING:
            value = [bytes(field.parts[i]) for i in field.data]
        else:
            value = [field.parts[i].tolist()[0] for i in field.data]
        out.add_key_value(name, value, vtype, sub_type=sub)
    elif vtype == gguf.GGUFValueType.STRING:
        out.add_key_value(name, bytes(field.parts[-1]), vtype)
    else:
        out.add_key_value(name, field.parts[-1].tolist()[0], vtype)
for t in src.tensors:
    if t.name == "rope_freqs.weight":
        out.add_tensor(t.name, t.data.copy(), raw_dtype=t.tensor_type)
out.write_header_to_file()
out.write_kv_data_to_file()
out.write_tensors_to_file()
out.close()
print("wrote", os.path.join(GG, "tiny-llama3.rope_freqs.gguf"))
