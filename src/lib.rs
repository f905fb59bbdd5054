//! wllm: a portable LLM inference runtime — PagedAttention serving on any GPU through wgpu.

pub mod loader;
pub mod model;
pub mod tokenizer;
pub mod gpu;
pub mod batch;
pub mod kv;
pub mod sampling;
pub mod error;
pub mod generate;

pub use error::{Error, Result};
pub use generate::{FinishReason, Generation, Generator, ModelOptions};
pub use gpu::{AdapterSelector, GpuContext, WeightDType};
pub use sampling::SamplingParams;
