#!/usr/bin/env python3
"""Write tests/fixtures/arch/tiny-*/golden.stored.json: references computed on the
*stored* f16 weights of each tiny checkpoint, widened exactly to f32.

Why: tests/fixtures/arch/README.md says golden.json ran on the stored f16 values
widened to f32, but golden.json disagrees with the GGUF goldens (built from the
same f16 values) by up to ~4e-3 in logit differences, which points at golden.json
having been computed on the f32 weights before they were rounded to f16.

For every case of the existing golden.json this script takes `prompt_ids` and
`greedy_ids` as given (teacher forcing, no regeneration), runs the model once over
prompt_ids + greedy_ids[:-1] and records, for every continuation position i (the
row that predicts greedy_ids[i]), the top-8 ids and logits of that row. It also
records its own greedy decode of the same length from prompt_ids
(`greedy_ids_stored`) so that a test can tell where the stored-weight model's
greedy path departs from golden.json's.

Logits are written as the shortest decimal that round-trips to the same float32
(so parsing as f32 gives the exact value the model produced).

Needs: torch, transformers==5.25.0, safetensors (e.g. in a venv outside the repo):
    python3 -m venv /tmp/gvenv
    /tmp/gvenv/bin/pip install torch "transformers==5.25.0" safetensors
    /tmp/gvenv/bin/python scripts/make_arch_goldens.py [--check-only]

With --check-only nothing is written; it only prints, per model, the max
|difference| of logit differences against golden.json (and the GGUF f16 goldens
where those exist).
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ARCH = os.path.join(ROOT, "tests", "fixtures", "arch")
TOPK = 8


def f32(x):
    """float32 -> Python float with the shortest repr that round-trips in f32."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def check_weights_exact(model, path):
    """Every parameter must equal the f16 safetensors tensor widened to f32."""
    stored = load_file(os.path.join(path, "model.safetensors"))
    for k, v in stored.items():
        assert v.dtype == torch.float16, (k, v.dtype)
    params = dict(model.named_parameters(remove_duplicate=False))
    seen = set()
    for name, p in params.items():
        assert p.dtype == torch.float32, (name, p.dtype)
        if name in stored:
            src = name
        elif name == "lm_head.weight" and "model.embed_tokens.weight" in stored:
            # tied head: must be the very same values as the embedding
            src = "model.embed_tokens.weight"
        else:
            raise AssertionError(f"{path}: parameter {name} not in model.safetensors")
        ref = stored[src].float()
        assert p.shape == ref.shape, (name, p.shape, ref.shape)
        assert torch.equal(p.detach(), ref), f"{path}: {name} differs from stored f16 widened"
        seen.add(src)
    missing = set(stored) - seen
    assert not missing, f"{path}: stored tensors not used: {sorted(missing)}"
    return len(params)


@torch.no_grad()
def forward_logits(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32)


@torch.no_grad()
def greedy(model, prompt, n):
    ids = list(prompt)
    out = []
    for _ in range(n):
        nxt = int(torch.argmax(forward_logits(model, ids)[-1]).item())
        out.append(nxt)
        ids.append(nxt)
    return out


def rows_for_case(model, prompt, gen):
    logits = forward_logits(model, list(prompt) + list(gen[:-1]))
    p = len(prompt)
    return logits[p - 1 : p - 1 + len(gen)]  # row i predicts gen[i]


def max_diff_vs(golden, rows_by_case):
    """max |(new[top1]-new[id]) - (ref[0]-ref[j])| over golden's top-8 ids."""
    worst = 0.0
    for case in golden["cases"]:
        rows = rows_by_case[case["name"]]
        assert len(rows) == len(case["topk"])
        for i, tk in enumerate(case["topk"]):
            row = rows[i].double()
            ids, ref = tk["ids"], tk["logits"]
            for j in range(len(ids)):
                d_new = float(row[ids[0]] - row[ids[j]])
                d_ref = ref[0] - ref[j]
                worst = max(worst, abs(d_new - d_ref))
    return worst


def process(path, write):
    name = os.path.basename(path)
    golden = json.load(open(os.path.join(path, "golden.json")))
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    nparams = check_weights_exact(model, path)

    cases_out, rows_by_case, greedy_departs = [], {}, []
    for case in golden["cases"]:
        prompt, gen = case["prompt_ids"], case["greedy_ids"]
        rows = rows_for_case(model, prompt, gen)
        rows_by_case[case["name"]] = rows
        topk = []
        for r in rows:
            v, ix = torch.topk(r, TOPK)
            topk.append({"ids": [int(x) for x in ix], "logits": [f32(x) for x in v]})
        g = greedy(model, prompt, len(gen))
        first = next((i for i, (a, b) in enumerate(zip(g, gen)) if a != b), None)
        greedy_departs.append((case["name"], first))
        cases_out.append(
            {
                "name": case["name"],
                "prompt_ids": prompt,
                "greedy_ids": gen,
                "greedy_ids_stored": g,
                "topk": topk,
            }
        )

    result = {
        "model": golden.get("model", name),
        "architecture": golden.get("architecture"),
        "reference": (
            f"transformers {transformers.__version__}, torch {torch.__version__}, float32 CPU, "
            "eager attention; weights = the stored f16 values of model.safetensors widened to f32 "
            "(checked exactly); topk teacher-forced over golden.json's greedy_ids "
            "(row i predicts greedy_ids[i]); greedy_ids_stored = this model's own greedy decode"
        ),
        "cases": cases_out,
    }
    report = {"model": name, "params": nparams, "vs_golden": max_diff_vs(golden, rows_by_case)}
    gguf = os.path.join(ARCH, "gguf", f"{name}.f16.golden.json")
    if os.path.exists(gguf):
        report["vs_gguf_f16"] = max_diff_vs(json.load(open(gguf)), rows_by_case)
    report["greedy_first_departure"] = greedy_departs
    if write:
        out = os.path.join(path, "golden.stored.json")
        with open(out, "w") as f:
            json.dump(result, f, separators=(",", ":"))
            f.write("\n")
        report["bytes"] = os.path.getsize(out)
    return report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-only", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", file=sys.stderr)
    for path in sorted(glob.glob(os.path.join(ARCH, "tiny-*"))):
        if os.path.isdir(path):
            print(json.dumps(process(path, not args.check_only)))


if __name__ == "__main__":
    main()
