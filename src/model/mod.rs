//! Architectures: configuration, weight names, and the forward graph as kernel calls.
pub mod config;

pub use config::{Architecture, ModelConfig, RopeStyle};
