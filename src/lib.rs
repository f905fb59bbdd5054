//! wllm: a portable LLM inference runtime — PagedAttention serving on any GPU through wgpu.

pub mod loader;
pub mod model;
