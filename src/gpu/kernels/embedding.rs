//! `shaders/embedding.wgsl`: token (and learned position) embedding lookup.

use crate::gpu::pipeline::{EMBEDDING, Kernel};
use crate::gpu::{GpuContext, WeightDType};

use super::groups_for;

pub struct Embedding {
    kernel: Kernel,
}

impl Embedding {
    pub fn new(ctx: &GpuContext, dtype: WeightDType, with_positions: bool) -> Self {
        let consts = [
            ("W_F16", dtype.is_f16()),
            ("HAS_POS", if with_positions { 1.0 } else { 0.0 }),
        ];
        Self {
            kernel: Kernel::new(ctx, EMBEDDING, &consts),
        }
    }

    /// `pos_table` may be any buffer when positions are off.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        token_ids: &wgpu::Buffer,
        positions: &wgpu::Buffer,
        table: &wgpu::Buffer,
        pos_table: &wgpu::Buffer,
        x: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel
            .bind(ctx, &[token_ids, positions, table, pos_table, x])
    }

    /// Writes the rows of tokens with ids in `[first_id, first_id + vocab)`, reading a table
    /// part laid out like a matmul weight ([`super::matmul::pack_weight`] of (vocab, dim)).
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_tokens: usize,
        dim: usize,
        first_id: usize,
        vocab: usize,
        num_positions: usize,
    ) {
        let imm = [
            num_tokens as u32,
            dim as u32,
            vocab as u32,
            num_positions as u32,
            first_id as u32,
            super::matmul::padded_cols(vocab) as u32,
        ];
        self.kernel
            .dispatch(pass, bg, &imm, groups_for(num_tokens * dim, 256));
    }
}

/// x[t, :] = table[ids[t], :] + pos_table[positions[t], :] (when given).
pub fn reference(
    ids: &[u32],
    positions: &[u32],
    table: &[f32],
    pos_table: Option<&[f32]>,
    dim: usize,
) -> Vec<f32> {
    let mut x = Vec::with_capacity(ids.len() * dim);
    for (t, &id) in ids.iter().enumerate() {
        for d in 0..dim {
            let mut v = table[id as usize * dim + d];
            if let Some(pt) = pos_table {
                v += pt[positions[t] as usize * dim + d];
            }
            x.push(v);
        }
    }
    x
}
