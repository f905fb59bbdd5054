//! The GPU layer: wgpu context, buffers, one typed wrapper per kernel, and the model runner.
//!
//! Nothing here knows about requests or scheduling: the runner takes a plain
//! [`crate::batch::StepBatch`] and returns logits.

pub mod context;
pub mod device_profile;
pub mod graph;
pub mod kernels;
pub mod kv_pool;
pub mod kv_transfer;
pub mod pipeline;
pub mod profile;
pub mod runner;
pub mod tensor;
pub mod weights;

pub use context::{AdapterReport, GpuContext, list_adapters};
pub use device_profile::{AdapterSelector, DeviceProfile, KernelForms, Placement, parse_backends};
pub use pipeline::{Kernel, ShaderSource};
pub use profile::StepProfile;
pub use runner::{Logits, Runner, RunnerConfig, StepTicket, StepTiming};
pub use tensor::{GpuTensor, WeightDType};

/// Why something on the GPU side failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("unknown backend `{0}` (expected vulkan, gl, metal, dx12 or all)")]
    BadBackend(String),
    #[error("unknown kernel forms `{0}` (expected cpu or gpu)")]
    BadKernelForms(String),
    #[error("{name}={value:?} cannot be used: {why}")]
    BadEnv {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error(
        "no usable GPU adapter matching `{wanted}` (wgpu sees: {seen:?}); install a Vulkan driver (on Debian: apt-get install mesa-vulkan-drivers) or check WLLM_BACKEND / WLLM_ADAPTER"
    )]
    NoAdapter { wanted: String, seen: Vec<String> },
    #[error("could not open the device: {0}")]
    RequestDevice(String),
    #[error("the device lacks a required feature: {0}")]
    MissingFeature(String),
    #[error(
        "tensor `{name}` needs {bytes} bytes in one binding, over the adapter's limit of {limit}"
    )]
    TooLarge {
        name: String,
        bytes: u64,
        limit: u64,
    },
    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
    #[error("GPU validation error: {0}")]
    Validation(String),
}
