//! The official `openai` Python package calling tools on `wllm serve`: a weather-function round
//! trip (a forced call, the tool's answer sent back, a plain answer) and the same call
//! streamed and assembled from `delta.tool_calls`, as users' agent code does. The package is
//! installed into the virtualenv of tests/common/python.rs (once; later runs reuse it).

mod common;

use std::sync::Arc;

use common::python::{openai_venv, run_script};
use common::{gpu, smollm2_path};
use wllm::server::{ServerOptions, spawn};
use wllm::{Engine, EngineConfig};

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="test-key")
model = client.models.list().data[0].id
tools = [{"type": "function", "function": {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {"type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"], "additionalProperties": False}}}]
force = {"type": "function", "function": {"name": "get_weather"}}
messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]

first = client.chat.completions.create(model=model, messages=messages, tools=tools,
    tool_choice=force, max_tokens=40, temperature=0)
choice = first.choices[0]
call = choice.message.tool_calls[0]
args = json.loads(call.function.arguments)

# The round trip: the assistant's call and the tool's result go back; a plain answer comes.
messages.append(choice.message.model_dump(exclude_none=True))
messages.append({"role": "tool", "tool_call_id": call.id,
                 "content": json.dumps({"temperature_c": 21, "sky": "sunny"})})
second = client.chat.completions.create(model=model, messages=messages, tools=tools,
    tool_choice="none", max_tokens=12, temperature=0)

# The first call again, streamed: tool_calls deltas joined by index.
calls = {}
finish = None
stream = client.chat.completions.create(model=model, messages=messages[:1], tools=tools,
    tool_choice=force, max_tokens=40, temperature=0, stream=True)
for chunk in stream:
    for c in chunk.choices:
        for d in c.delta.tool_calls or []:
            e = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            if d.id:
                e["id"] = d.id
            if d.function and d.function.name:
                e["name"] += d.function.name
            if d.function and d.function.arguments:
                e["arguments"] += d.function.arguments
        if c.finish_reason:
            finish = c.finish_reason

print(json.dumps({
    "finish": choice.finish_reason, "content": choice.message.content,
    "name": call.function.name, "id": call.id, "args": args,
    "answer": second.choices[0].message.content,
    "answer_calls": second.choices[0].message.tool_calls is not None,
    "streamed": [calls[i] for i in sorted(calls)], "stream_finish": finish,
}))
"#;

#[test]
fn official_openai_python_client_round_trips_a_tool_call() {
    let py = openai_venv();
    let engine = Arc::new(
        Engine::with_context(gpu(), EngineConfig::new(smollm2_path()), &mut |_, _| {}).unwrap(),
    );
    let mut opts = ServerOptions::new("smollm2");
    opts.api_key = Some("test-key".into());
    let srv = spawn(engine, opts, "127.0.0.1:0").unwrap();
    let v = run_script(&py, SCRIPT, &[&format!("http://{}/v1", srv.addr)]);
    eprintln!("{v}");
    assert_eq!(v["finish"], "tool_calls", "{v}");
    assert!(v["content"].is_null(), "{v}");
    assert_eq!(v["name"], "get_weather", "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("call_"), "{v}");
    assert!(v["args"]["city"].is_string(), "{v}");
    assert!(
        v["answer"].as_str().is_some_and(|a| !a.trim().is_empty()),
        "{v}"
    );
    assert_eq!(v["answer_calls"], false, "{v}");
    let streamed = v["streamed"].as_array().unwrap();
    assert_eq!(streamed.len(), 1, "{v}");
    assert_eq!(streamed[0]["name"], "get_weather", "{v}");
    let args: serde_json::Value =
        serde_json::from_str(streamed[0]["arguments"].as_str().unwrap()).unwrap();
    // Greedy with the same prompt: the streamed call is the same call.
    assert_eq!(args, v["args"], "{v}");
    assert_eq!(v["stream_finish"], "tool_calls", "{v}");
}
