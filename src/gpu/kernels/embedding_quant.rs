//! `shaders/embedding_quant.wgsl`: token embedding lookup from a table that stays quantized
//! (Q4_0, Q4_1, Q8_0) in [`super::matmul_quant`]'s layout, so a tied LM head shares it.
//! No position table: the quantized models this serves are Llama-style.

use crate::gpu::pipeline::{EMBEDDING_QUANT, Kernel};
use crate::gpu::{GpuContext, GpuError};
use crate::loader::{TensorDType, dequant};

use super::groups_for;
use super::matmul_quant::{QUANT_BLOCK, QuantFormat};

pub struct EmbeddingQuant {
    kernel: Kernel,
}

impl EmbeddingQuant {
    pub fn new(ctx: &GpuContext, format: QuantFormat) -> Self {
        Self {
            kernel: Kernel::new(ctx, EMBEDDING_QUANT, &[("Q8", format.q8_constant())]),
        }
    }

    /// `table` holds one part of the table as [`super::matmul_quant::pack_quantized`] words.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        token_ids: &wgpu::Buffer,
        table: &wgpu::Buffer,
        x: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[token_ids, table, x])
    }

    /// Checks the shape contract the shader relies on: whole blocks per row.
    pub fn check(dim: usize) -> Result<(), GpuError> {
        if dim % QUANT_BLOCK != 0 {
            return Err(GpuError::Shape {
                op: "embedding_quant",
                msg: format!("dim = {dim} is not a multiple of {QUANT_BLOCK}"),
            });
        }
        Ok(())
    }

    /// Writes x's rows (f32, (num_tokens, dim)) for the tokens with ids in
    /// `[first_id, first_id + vocab)`, reading a table part of `vocab` rows; other rows are
    /// left untouched.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_tokens: usize,
        dim: usize,
        first_id: usize,
        vocab: usize,
    ) {
        let imm = [num_tokens as u32, dim as u32, vocab as u32, first_id as u32];
        self.kernel
            .dispatch(pass, bg, &imm, groups_for(num_tokens * dim / 4, 256));
    }
}

/// x[t, :] = table[ids[t], :], the (vocab, dim) table being GGUF `dtype` blocks in `raw`
/// dequantized by [`crate::loader::dequant`].
pub fn reference(
    ids: &[u32],
    raw: &[u8],
    dtype: TensorDType,
    vocab: usize,
    dim: usize,
) -> Result<Vec<f32>, GpuError> {
    let table = dequant::to_f32(dtype, raw, vocab * dim).map_err(|msg| GpuError::Shape {
        op: "embedding_quant reference",
        msg,
    })?;
    Ok(super::embedding::reference(ids, &[], &table, None, dim))
}
