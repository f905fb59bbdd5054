//! `shaders/argmax.wgsl`: greedy sampling on the GPU, so a greedy step reads back one id per
//! sequence instead of its vocab-sized logits row.

use crate::gpu::GpuContext;
use crate::gpu::pipeline::{ARGMAX, Kernel, grid_2d};

/// Threads per row. A power of two (the shader reduces in a tree).
const WG: usize = 64;

pub struct Argmax {
    kernel: Kernel,
}

impl Argmax {
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            kernel: Kernel::new(ctx, ARGMAX, &[("WG", WG as f64)]),
        }
    }

    /// `logits`: f32 (rows, vocab); `ids`: u32 (rows), written.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        logits: &wgpu::Buffer,
        ids: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[logits, ids])
    }

    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        rows: usize,
        vocab: usize,
    ) {
        let imm = [rows as u32, vocab as u32];
        self.kernel.dispatch(pass, bg, &imm, grid_2d(rows as u32));
    }
}

/// What the kernel computes, row by row: [`crate::sampling::argmax`].
pub fn reference(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits.chunks(vocab).map(crate::sampling::argmax).collect()
}
