//! The official `openai` Python package for the client tests, in a virtualenv under the
//! target directory shared by every test binary that drives it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The interpreter that creates the virtualenv (`WLLM_PYTHON` overrides `python3`).
fn python() -> String {
    std::env::var("WLLM_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The Python of a virtualenv with `openai` installed: created and installed from PyPI the
/// first time, reused while `import openai` works. Any failure here fails the test with the
/// reason.
pub fn openai_venv() -> PathBuf {
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
                // The Responses API (tests/server_responses.rs) needs 1.66.
                "openai>=1.66",
            ])
            .status()
            .expect("pip");
        assert!(st.success(), "pip install openai failed");
    }
    py
}

/// Runs `script` (`python -c`) with `py` and `args`: what it prints, as JSON. A failing script
/// fails the test with its stderr.
pub fn run_script(py: &Path, script: &str, args: &[&str]) -> Value {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
