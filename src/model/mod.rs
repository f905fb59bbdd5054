//! Architectures: configuration, weight names, loading weights onto the GPU, and each
//! family's forward pass as a [`Graph`] (one function per family, top to bottom like the
//! math; the GPU runner records it).
pub mod config;
mod gpt2;
mod llama;
mod rope;
mod tensors;
pub mod weights;

pub use config::{Architecture, ModelConfig, RopeStyle};
pub use weights::{ModelFiles, ModelWeights, load_weights};

use crate::gpu::graph::Graph;

/// Why a model could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}

/// The forward pass of `cfg`'s family over `weights` (from [`load_weights`] with `cfg`).
pub fn forward(cfg: &ModelConfig, weights: ModelWeights) -> Graph {
    match cfg.arch {
        Architecture::Llama => llama::forward(cfg, weights),
        Architecture::Gpt2 => gpt2::forward(cfg, weights),
    }
}
