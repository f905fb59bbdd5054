//! Running the built `wllm` binary from a test.

use std::process::Command;

/// `wllm ARGS`: (succeeded, stdout, stderr).
pub fn wllm(args: &[&str]) -> (bool, String, String) {
    wllm_with_env(args, &[])
}

/// [`wllm`] with extra environment variables.
pub fn wllm_with_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wllm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .envs(env.iter().copied())
        .output()
        .expect("run wllm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
