//! Architectures: configuration, weight names, and loading weights onto the GPU.
//! The forward graph itself (kernel calls, top to bottom) is in [`crate::gpu::runner`].
pub mod config;
mod tensors;
pub mod weights;

pub use config::{Architecture, ModelConfig, RopeStyle};
pub use weights::{ModelFiles, ModelWeights, load_weights};

/// Why a model could not be brought up.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
}
