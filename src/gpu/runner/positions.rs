//! How many positions the runner's per-position tables hold.
//!
//! A sequence keeps its KV in distinct blocks of the pool, so it can never reach a position
//! past the pool's tokens, whatever context the model file claims. The RoPE table and the
//! block-table width are therefore sized to min(context, pool tokens), so a file's context
//! length (up to the loader's cap) costs no more than the KV memory budget allows. Each table
//! row depends only on its position, so the rows kept are the ones a full-context table would
//! have: results do not change. The exception: where every attention layer has a sliding
//! window, the scheduler gives back the blocks a sequence's window has passed, so a sequence
//! can outgrow the pool; there the tables span the whole context.

use super::RunnerConfig;
use crate::gpu::graph::{Graph, Op, Rotary};
use crate::gpu::{GpuContext, GpuError, GpuTensor, WeightDType};

/// Positions a sequence can reach: the model's context, or the pool's tokens if fewer
/// (unless every attention layer has a window, see the module docs).
pub(super) fn max_positions(g: &Graph, rc: &RunnerConfig) -> usize {
    let mut attention = g.ops.iter().filter_map(|op| match op {
        Op::Attention { params, .. } => Some(params.window.is_some()),
        _ => None,
    });
    let all_windowed = attention.clone().next().is_some() && attention.all(|w| w);
    if all_windowed {
        g.max_context
    } else {
        g.max_context
            .min(rc.num_blocks.saturating_mul(rc.block_size))
    }
}

/// RoPE's (cos, sin) table ([`Rotary::cos_sin`]) in a storage buffer.
pub(super) fn rope_table(
    ctx: &GpuContext,
    rotary: &Rotary,
    positions: usize,
) -> Result<wgpu::Buffer, GpuError> {
    let table = rotary.cos_sin(positions);
    let cs = GpuTensor::from_f32(
        ctx,
        "rope cos/sin",
        &table,
        &[table.len()],
        WeightDType::F32,
    )?;
    Ok(cs.buffer)
}
