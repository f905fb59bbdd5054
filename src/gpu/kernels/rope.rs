//! `shaders/rope.wgsl`: rotary position embedding in place on the packed Q and K heads.

use crate::gpu::GpuContext;
use crate::gpu::pipeline::{Kernel, ROPE};

/// Which dimensions RoPE rotates together within one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGUF llama checkpoints, whose Q/K rows were permuted by the converter.
    Interleaved,
    /// Pairs (i, i + head_dim/2): Hugging Face llama checkpoints ("rotate_half").
    Half,
}

use super::groups_for;

#[derive(Debug, Clone, Copy)]
pub struct RopeParams {
    pub num_tokens: usize,
    pub row_stride: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub style: RopeStyle,
}

impl RopeParams {
    /// The `Params` struct of rope.wgsl and rope_kv_write.wgsl.
    pub(crate) fn immediates(&self) -> [u32; 7] {
        let style = match self.style {
            RopeStyle::Interleaved => 0,
            RopeStyle::Half => 1,
        };
        [
            self.num_tokens as u32,
            self.row_stride as u32,
            self.num_heads as u32,
            self.num_kv_heads as u32,
            self.head_dim as u32,
            self.max_positions as u32,
            style,
        ]
    }
}

pub struct Rope {
    kernel: Kernel,
}

impl Rope {
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            kernel: Kernel::new(ctx, ROPE, &[]),
        }
    }

    pub fn bind(
        &self,
        ctx: &GpuContext,
        qkv: &wgpu::Buffer,
        positions: &wgpu::Buffer,
        cos_sin: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[qkv, positions, cos_sin])
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bg: &wgpu::BindGroup, p: &RopeParams) {
        let imm = p.immediates();
        let n = p.num_tokens * (p.num_heads + p.num_kv_heads) * p.head_dim / 2;
        self.kernel.dispatch(pass, bg, &imm, groups_for(n, 256));
    }
}

/// The (cos, sin) table, (max_positions, head_dim/2, 2), in f32 the way transformers computes
/// it: inv_freq = 1 / theta^(2i/head_dim), angle = (pos as f32) * inv_freq.
pub fn cos_sin_table(max_positions: usize, head_dim: usize, theta: f32) -> Vec<f32> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut t = Vec::with_capacity(max_positions * half * 2);
    for pos in 0..max_positions {
        for f in &inv_freq {
            let a = pos as f32 * f;
            t.push(a.cos());
            t.push(a.sin());
        }
    }
    t
}

/// Applies RoPE to the Q and K heads of `qkv` in place (f64 rotation of the table's values).
pub fn reference(qkv: &mut [f32], positions: &[u32], cos_sin: &[f32], p: &RopeParams) {
    let half = p.head_dim / 2;
    for (t, &pos) in positions.iter().enumerate().take(p.num_tokens) {
        let pos = pos as usize;
        for h in 0..p.num_heads + p.num_kv_heads {
            let base = t * p.row_stride + h * p.head_dim;
            for i in 0..half {
                let (ia, ib) = match p.style {
                    RopeStyle::Interleaved => (base + 2 * i, base + 2 * i + 1),
                    RopeStyle::Half => (base + i, base + i + half),
                };
                let c = cos_sin[(pos * half + i) * 2] as f64;
                let s = cos_sin[(pos * half + i) * 2 + 1] as f64;
                let (a, b) = (qkv[ia] as f64, qkv[ib] as f64);
                qkv[ia] = (a * c - b * s) as f32;
                qkv[ib] = (b * c + a * s) as f32;
            }
        }
    }
}
