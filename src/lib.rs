//! wllm: a portable LLM inference runtime — PagedAttention serving on any GPU through wgpu.

pub mod batch;
pub mod check;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod kv;
pub mod loader;
pub mod model;
pub mod sampling;
pub mod scheduler;
#[cfg(feature = "server")]
pub mod server;
pub mod spec;
pub mod tier;
pub mod tokenizer;

pub use engine::{
    Completion, Engine, EngineConfig, EngineStats, Event, Prompt, Request, RequestHandle,
    TokenLogprob, Usage,
};
pub use error::{Error, Result};
pub use generate::{FinishReason, Generator, ModelOptions};
pub use gpu::{AdapterSelector, GpuContext, KernelForms, WeightDType};
pub use sampling::{Grammar, SamplingParams};
pub use spec::{SpecConfig, SpecMethod};
