//! One typed wrapper per kernel in `shaders/` (and its `cpu/` and `gpu/` forms), each with its
//! CPU reference.
//!
//! A wrapper compiles its pipeline once ([`Kernel`]), builds bind groups once per set of
//! buffers, and records a dispatch per call with the per-call sizes as immediates.
//! The `reference` functions are the math the kernels must reproduce; the kernel tests
//! compare against them on random inputs.

pub mod activation;
pub mod argmax;
pub mod attention;
pub mod copy_blocks;
pub mod embedding;
pub mod embedding_quant;
pub mod feed_tokens;
pub mod kv_write;
pub mod logit_adjust;
pub mod matmul;
pub mod matmul_quant;
pub mod norm;
pub mod pointwise;
pub mod quant_texture;
pub mod rope;
pub mod rope_kv_write;
pub mod sample;

pub use activation::{GateActivation, Gelu, SiluMul};
pub use argmax::Argmax;
pub use attention::{AttentionKind, AttentionParams, PagedAttention};
pub use copy_blocks::CopyBlocks;
pub use embedding::Embedding;
pub use embedding_quant::EmbeddingQuant;
pub use feed_tokens::FeedTokens;
pub use kv_write::KvWrite;
pub use logit_adjust::LogitAdjust;
pub use matmul::{Matmul, MatmulParams};
pub use matmul_quant::{MatmulQuant, QuantFormat, QuantTuning, pack_quantized};
pub use norm::{LayerNorm, QkNorm, QkNormParams, RmsNorm};
pub use pointwise::{Scale, SoftCap};
pub use quant_texture::WeightData;
pub use rope::RopeParams;
pub use rope_kv_write::RopeKvWrite;
pub use sample::Sample;

/// Workgroups for `n` independent items handled `per_group` at a time (2-D when large).
pub(crate) fn groups_for(n: usize, per_group: usize) -> [u32; 3] {
    super::pipeline::grid_2d(n.div_ceil(per_group) as u32)
}
