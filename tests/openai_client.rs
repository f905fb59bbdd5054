//! The official `openai` Python package against `wllm serve`: a streaming chat and a
//! completion, the way users' code talks to the server. The package is installed from PyPI
//! into a virtualenv under the target directory (once; later runs reuse it).

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
pieces, finish = [], None
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    max_tokens=6, temperature=0, stream=True)
for chunk in stream:
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=3, temperature=0)
print(json.dumps({"model": model, "chat": "".join(pieces), "chat_finish": finish,
                  "completion": comp.choices[0].text, "usage": comp.usage.completion_tokens}))
"#;

#[test]
fn official_openai_python_client_streams_chat_and_completes() {
    let py = openai_venv();
    let mut cfg = EngineConfig::new(smollm2_path());
    cfg.model.dtype = wllm::WeightDType::F32;
    let engine = Arc::new(Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap());
    let mut opts = ServerOptions::new("smollm2");
    opts.api_key = Some("test-key".into());
    let srv = spawn(engine, opts, "127.0.0.1:0").unwrap();
    let v = run_script(&py, SCRIPT, &[&format!("http://{}/v1", srv.addr)]);
    assert_eq!(v["model"], "smollm2");
    // Greedy: "The capital of France is Paris." in the chat; " Paris.\n" after the prompt.
    assert!(v["chat"].as_str().unwrap().contains("Paris"), "{v}");
    assert_eq!(v["chat_finish"], "length");
    assert_eq!(v["completion"], " Paris.\n");
    assert_eq!(v["usage"], 3);
}
