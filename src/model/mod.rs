//! Architectures: configuration, weight names, loading weights onto the GPU, and each
//! family's forward pass as a [`Graph`] (one function per family, top to bottom like the
//! math; the GPU runner records it).
mod arch;
pub mod config;
mod config_gguf;
mod config_hf;
mod gpt2;
mod llama;
mod rope;
mod tensors;
pub mod weights;

pub use config::{Architecture, MlpActivation, ModelConfig, RopeConfig, RopeScaling, RopeStyle};
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
pub fn forward(cfg: &ModelConfig, weights: ModelWeights) -> Result<Graph, ModelError> {
    match cfg.arch {
        Architecture::Gpt2 => Ok(gpt2::forward(cfg, weights)),
        _ => llama::forward(cfg, weights),
    }
}
