//! The official `openai` Python package against `wllm serve`: a streaming chat and a
//! completion, the way users' code talks to the server. The package is installed from PyPI
//! into a virtualenv under the target directory (once; later runs reuse it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{gpu, smollm2_path};
use wllm::server::{ServerOptions, spawn};
use wllm::{Engine, EngineConfig};

fn python() -> String {
    std::env::var("WLLM_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A virtualenv with `openai` installed; any failure here fails the test with the reason.
fn venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let py = dir.join("bin").join("python");
    let ready = Command::new(&py)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let st = Command::new(python())
            .args(["-m", "venv", "--clear"])
            .arg(&dir)
            .status()
            .expect("python3 is needed for the OpenAI client test (set WLLM_PYTHON)");
        assert!(st.success(), "python3 -m venv failed");
        let st = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "openai>=1.0",
            ])
            .status()
            .expect("pip");
        assert!(st.success(), "pip install openai failed");
    }
    py
}

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
    let py = venv();
    let mut cfg = EngineConfig::new(smollm2_path());
    cfg.model.dtype = wllm::WeightDType::F32;
    let engine = Arc::new(Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap());
    let mut opts = ServerOptions::new("smollm2");
    opts.api_key = Some("test-key".into());
    let srv = spawn(engine, opts, "127.0.0.1:0").unwrap();
    let out = Command::new(py)
        .args(["-c", SCRIPT, &format!("http://{}/v1", srv.addr)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "smollm2");
    // Greedy: "The capital of France is Paris." in the chat; " Paris.\n" after the prompt.
    assert!(v["chat"].as_str().unwrap().contains("Paris"), "{v}");
    assert_eq!(v["chat_finish"], "length");
    assert_eq!(v["completion"], " Paris.\n");
    assert_eq!(v["usage"], 3);
}
