//! Rotary position embedding: the frequency of each rotated pair of a head.

use super::ModelConfig;
use crate::gpu::graph::Rotary;

/// RoPE with base θ: pair i of a head turns by position · θ^(−2i / head_dim).
pub(crate) fn rotary(cfg: &ModelConfig) -> Rotary {
    let hd = cfg.head_dim;
    let inv_freq = (0..hd / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / hd as f32))
        .collect();
    Rotary {
        style: cfg.rope_style,
        inv_freq,
    }
}
