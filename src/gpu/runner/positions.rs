//! How many positions the runner's per-position tables hold.
//!
//! A sequence keeps its KV in distinct blocks of the pool, so it can never reach a position
//! past the pool's tokens, whatever context the model file claims. The RoPE table and the
//! block-table width are therefore sized to min(context, pool tokens), so a file's context
//! length (up to [`crate::model::config::caps::MAX_CONTEXT`]) costs no more than the KV
//! memory budget allows. Each table row depends only on its position, so the rows kept are
//! the ones a full-context table would have: results do not change.

use super::RunnerConfig;
use crate::gpu::kernels::rope::cos_sin_table;
use crate::gpu::{GpuContext, GpuError, GpuTensor, WeightDType};
use crate::model::ModelConfig;

/// Positions a sequence can reach: the model's context, or the pool's tokens if fewer.
pub(super) fn max_positions(cfg: &ModelConfig, rc: &RunnerConfig) -> usize {
    cfg.max_context
        .min(rc.num_blocks.saturating_mul(rc.block_size))
}

/// RoPE's (cos, sin) table, (positions, head_dim / 2, 2) f32, for the models that rotate.
pub(super) fn rope_table(
    ctx: &GpuContext,
    cfg: &ModelConfig,
    positions: usize,
) -> Result<Option<wgpu::Buffer>, GpuError> {
    if !cfg.uses_rope() {
        return Ok(None);
    }
    let table = cos_sin_table(positions, cfg.head_dim, cfg.rope_theta);
    let cs = GpuTensor::from_f32(
        ctx,
        "rope cos/sin",
        &table,
        &[table.len()],
        WeightDType::F32,
    )?;
    Ok(Some(cs.buffer))
}
