//! `shaders/embedding_quant.wgsl`: token embedding lookup from a table that stays quantized
//! (any GGUF quantized type) in [`super::matmul_quant`]'s layout, so a tied LM head shares it.
//! No position table: the quantized models this serves are Llama-style.

use crate::gpu::pipeline::{EMBEDDING_QUANT, Kernel};
use crate::gpu::{GpuContext, GpuError};
use crate::loader::{TensorDType, dequant};

use super::groups_for;
use super::matmul_quant::{QUANT_BLOCK, QuantFormat};
use super::quant_texture::{WeightData, unused_texture};

pub struct EmbeddingQuant {
    kernel: Kernel,
    in_texture: bool,
    /// What fills the table binding the kernel does not read (buffer or texture).
    unused_buffer: wgpu::Buffer,
    unused_texture: wgpu::TextureView,
}

impl EmbeddingQuant {
    /// `in_texture`: the table parts are [`WeightData::Texture`]s, else buffers (always
    /// buffers for formats without texture planes).
    pub fn new(ctx: &GpuContext, format: QuantFormat, in_texture: bool) -> Self {
        let in_texture = in_texture && format.texture_layout();
        let consts = [
            ("Q8", format.q8_constant()),
            ("FORMAT", format.format_constant()),
            ("W_TEXTURE", f64::from(u8::from(in_texture))),
        ];
        Self {
            kernel: Kernel::new(ctx, EMBEDDING_QUANT, &consts),
            in_texture,
            unused_buffer: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("embedding_quant unused table buffer"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }),
            unused_texture: unused_texture(ctx),
        }
    }

    /// `table` holds one part of the table as [`super::matmul_quant::pack_quantized`] words, or
    /// as [`super::quant_texture`]'s planes (as [`EmbeddingQuant::new`] was told).
    pub fn bind(
        &self,
        ctx: &GpuContext,
        token_ids: &wgpu::Buffer,
        table: &WeightData,
        x: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup, GpuError> {
        let (buffer, texture) = match table {
            WeightData::Buffer(b) if !self.in_texture => (b, &self.unused_texture),
            WeightData::Texture(t) if self.in_texture => (&self.unused_buffer, t),
            _ => {
                return Err(GpuError::Shape {
                    op: "embedding_quant",
                    msg: "the table's storage (buffer or texture) is not the kernel's".into(),
                });
            }
        };
        let entries = [
            (0, token_ids.as_entire_binding()),
            (1, buffer.as_entire_binding()),
            (2, x.as_entire_binding()),
            (3, wgpu::BindingResource::TextureView(texture)),
        ]
        .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource });
        Ok(ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("embedding_quant"),
            layout: &self.kernel.layout,
            entries: &entries,
        }))
    }

    /// Checks the shape contract the shader relies on: whole blocks per row.
    pub fn check(dim: usize) -> Result<(), GpuError> {
        if !dim.is_multiple_of(QUANT_BLOCK) {
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
