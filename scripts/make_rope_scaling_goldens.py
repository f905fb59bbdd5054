#!/usr/bin/env python3
"""Write the RoPE-scaling fixtures: tests/fixtures/arch/tiny-<base>-<scaling>/{config.json,
golden.stored.json}, for tests/golden_rope_scaling.rs.

Each fixture is an existing tiny checkpoint (its model.safetensors and tokenizer, NOT copied
into the new directory) run with a modified config.json:

  tiny-phi3-longrope  tiny-phi3's weights, LongRoPE in the legacy `rope_scaling` key as the
                      Phi-3.5 / Phi-4-mini configs write it (top-level
                      `original_max_position_embeddings` 32, `partial_rotary_factor` 0.75,
                      random short factors in [1, 1.5] and long factors in [1, 8])
  tiny-qwen3-yarn     tiny-qwen3's weights, YaRN in `rope_parameters` with the defaults only
                      (factor 4, original context 64): what llama.cpp's converter can write to
                      GGUF, so the test also builds a GGUF of it
  tiny-qwen2-yarn     tiny-qwen2's weights, YaRN in legacy `rope_scaling` with every knob:
                      explicit attention_factor, beta_fast 8, beta_slow 2, truncate false
                      (fractional ramp bounds), factor 3, RoPE base 10000

The reference is transformers (float32 CPU, eager attention) on the stored f16 weights widened
exactly to f32 (checked). Cases: the base fixture's golden.stored.json cases (prompt_ids and
greedy_ids taken as given: teacher forcing, no regeneration); the teacher-forced sequence is
prompt_ids + greedy_ids[:-1] and `topk[i]` is the top-8 of the row that predicts greedy_ids[i]
(same format as scripts/make_arch_goldens.py; logits as the shortest decimal that round-trips
in f32).

LongRoPE: transformers picks the factors per forward pass from the sequence length (long iff
max(position_ids) + 1 > original_max_position_embeddings), so each case records which set this
forward used (`factors`: "short" / "long", read back from the rotary module's buffer after the
forward). Two extra cases straddle the boundary: 32 tokens (= original, short) and 33 (long).

Needs the venv of scripts/make_arch_goldens.py (torch, transformers==5.25.0, safetensors):
    /tmp/gvenv/bin/python scripts/make_rope_scaling_goldens.py [--check-only]
It also prints each fixture's inv_freq and attention factor (the values src/model/rope.rs's
unit tests hold).
"""
import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_arch_goldens import TOPK, check_weights_exact, f32, forward_logits  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ARCH = os.path.join(ROOT, "tests", "fixtures", "arch")
BASE_FILES = ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]


def longrope_config(base):
    rng = random.Random(20261206)
    pairs = int(base["hidden_size"] // base["num_attention_heads"] * base["partial_rotary_factor"]) // 2
    short = [round(rng.uniform(1.0, 1.5), 4) for _ in range(pairs)]
    long = sorted(round(rng.uniform(1.0, 8.0), 4) for _ in range(pairs))
    c = copy.deepcopy(base)
    del c["rope_parameters"]
    c["rope_theta"] = 10000.0
    c["original_max_position_embeddings"] = 32
    c["max_position_embeddings"] = 512
    c["rope_scaling"] = {"type": "longrope", "short_factor": short, "long_factor": long}
    return c


def qwen3_yarn_config(base):
    c = copy.deepcopy(base)
    c["max_position_embeddings"] = 256
    c["rope_parameters"] = {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 1000000.0,
    }
    return c


def qwen2_yarn_config(base):
    c = copy.deepcopy(base)
    del c["rope_parameters"]
    c["rope_theta"] = 10000.0
    c["max_position_embeddings"] = 384
    c["rope_scaling"] = {
        "type": "yarn",
        "factor": 3.0,
        "original_max_position_embeddings": 128,
        "attention_factor": 1.25,
        "beta_fast": 8,
        "beta_slow": 2,
        "truncate": False,
    }
    return c


FIXTURES = [
    ("tiny-phi3-longrope", "tiny-phi3", longrope_config),
    ("tiny-qwen3-yarn", "tiny-qwen3", qwen3_yarn_config),
    ("tiny-qwen2-yarn", "tiny-qwen2", qwen2_yarn_config),
]


def cases_of(base_golden, longrope):
    cases = [(c["name"], c["prompt_ids"], c["greedy_ids"]) for c in base_golden["cases"]]
    if longrope:
        c17 = next(c for c in base_golden["cases"] if c["name"] == "rand_len17")
        # prompt 17 + 16 continuation ids, teacher-forced over 17 + 15 = 32 tokens: short.
        cases.append(("rand_len17_at_original", c17["prompt_ids"], c17["greedy_ids"][:16]))
        # 33 tokens: long.
        cases.append(("rand_len17_past_original", c17["prompt_ids"], c17["greedy_ids"][:17]))
    return cases


def process(name, base_name, make_config, write):
    base_dir = os.path.join(ARCH, base_name)
    base_cfg = json.load(open(os.path.join(base_dir, "config.json")))
    base_golden = json.load(open(os.path.join(base_dir, "golden.stored.json")))
    cfg = make_config(base_cfg)
    tmp = tempfile.mkdtemp(prefix=name)
    try:
        for f in BASE_FILES:
            if os.path.exists(os.path.join(base_dir, f)):
                shutil.copy(os.path.join(base_dir, f), tmp)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        nparams = check_weights_exact(model, tmp)
    finally:
        shutil.rmtree(tmp)

    rot = model.model.rotary_emb
    longrope = rot.rope_type == "longrope"
    report = {"model": name, "params": nparams, "rope_type": rot.rope_type,
              "attention_scaling": rot.attention_scaling,
              "attention_scaling_f32": f32(rot.attention_scaling),
              "inv_freq": [f32(x) for x in rot.original_inv_freq]}
    if longrope:
        orig = model.config.rope_parameters["original_max_position_embeddings"]
        report["original_max_position_embeddings"] = orig
    cases_out = []
    for case_name, prompt, gen in cases_of(base_golden, longrope):
        seq = list(prompt) + list(gen[:-1])
        logits = forward_logits(model, seq)
        rows = logits[len(prompt) - 1 : len(prompt) - 1 + len(gen)]
        topk = []
        for r in rows:
            v, ix = torch.topk(r, TOPK)
            topk.append({"ids": [int(x) for x in ix], "logits": [f32(x) for x in v]})
        out = {"name": case_name, "prompt_ids": prompt, "greedy_ids": gen}
        if longrope:
            used_long = not torch.equal(rot.inv_freq, rot.original_inv_freq)
            assert used_long == (len(seq) > orig), (case_name, len(seq), used_long)
            out["factors"] = "long" if used_long else "short"
            if used_long:
                report["inv_freq_long"] = [f32(x) for x in rot.inv_freq]
        out["topk"] = topk
        cases_out.append(out)

    result = {
        "model": name,
        "architecture": cfg["architectures"][0],
        "base_checkpoint": base_name,
        "reference": (
            f"transformers {transformers.__version__}, torch {torch.__version__}, float32 CPU, "
            f"eager attention; weights = the stored f16 values of {base_name}/model.safetensors "
            "widened to f32 (checked exactly), with this directory's config.json; topk "
            "teacher-forced over greedy_ids (row i predicts greedy_ids[i])"
            + ("; factors = the LongRoPE set transformers used for that forward" if longrope else "")
        ),
        "cases": cases_out,
    }
    if write:
        out_dir = os.path.join(ARCH, name)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        with open(os.path.join(out_dir, "golden.stored.json"), "w") as f:
            json.dump(result, f, separators=(",", ":"))
            f.write("\n")
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-only", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", file=sys.stderr)
    for name, base, make in FIXTURES:
        print(json.dumps(process(name, base, make, not args.check_only)))


if __name__ == "__main__":
    main()
