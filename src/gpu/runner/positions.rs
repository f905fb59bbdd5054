//! How many positions the runner's per-position tables hold.
//!
//! A sequence keeps its KV in distinct blocks of the pool, so it can never reach a position
//! past the pool's tokens, whatever context the model file claims. The RoPE table and the
//! block-table width are therefore sized to min(context, pool tokens), so a file's context
//! length (up to the loader's cap) costs no more than the KV memory budget allows. Each table
//! row depends only on its position, so the rows kept are the ones a full-context table would
//! have: results do not change.

use super::RunnerConfig;
use crate::gpu::graph::Rotary;
use crate::gpu::{GpuContext, GpuError, GpuTensor, WeightDType};

/// Positions a sequence can reach: the model's context, or the pool's tokens if fewer.
pub(super) fn max_positions(max_context: usize, rc: &RunnerConfig) -> usize {
    max_context.min(rc.num_blocks.saturating_mul(rc.block_size))
}

/// RoPE's (cos, sin) table, (positions, rotated pairs, 2) f32.
pub(super) fn rope_table(
    ctx: &GpuContext,
    rotary: &Rotary,
    positions: usize,
) -> Result<wgpu::Buffer, GpuError> {
    let mut table = Vec::with_capacity(positions * rotary.inv_freq.len() * 2);
    for pos in 0..positions {
        for f in &rotary.inv_freq {
            let a = pos as f32 * f;
            table.push(a.cos());
            table.push(a.sin());
        }
    }
    let cs = GpuTensor::from_f32(
        ctx,
        "rope cos/sin",
        &table,
        &[table.len()],
        WeightDType::F32,
    )?;
    Ok(cs.buffer)
}
