//! `shaders/rope.wgsl`: rotary position embedding in place on the packed Q and K heads, over
//! all of each head (full rotary) or its first `rotary_dim` dimensions (partial rotary, Phi-3's
//! `partial_rotary_factor`: the rest of the head passes through).

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
    /// The first 7 words of the `Params` struct of rope.wgsl and rope_kv_write.wgsl (each
    /// appends its own: `rotary_dim`, and `row_slots` before it in rope_kv_write).
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

    /// Full rotary: every dimension of each head rotates (`cos_sin` has head_dim/2 columns).
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bg: &wgpu::BindGroup, p: &RopeParams) {
        self.encode_partial(pass, bg, p, p.head_dim);
    }

    /// Partial rotary: the first `rotary_dim` dimensions of each head rotate (pairs in
    /// `p.style`, taken within those dimensions), the others pass through; `cos_sin` is
    /// [`cos_sin_table`] of `rotary_dim` (rotary_dim/2 columns). `rotary_dim = p.head_dim` is
    /// [`Rope::encode`], bit for bit. Panics unless rotary_dim is even and at most head_dim.
    pub fn encode_partial(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        p: &RopeParams,
        rotary_dim: usize,
    ) {
        check_rotary_dim(p, rotary_dim);
        let mut imm = [0; 8];
        imm[..7].copy_from_slice(&p.immediates());
        imm[7] = rotary_dim as u32;
        let n = p.num_tokens * (p.num_heads + p.num_kv_heads) * rotary_dim / 2;
        self.kernel.dispatch(pass, bg, &imm, groups_for(n, 256));
    }
}

/// Panics unless `rotary_dim` is even and at most `p.head_dim` (0 rotates nothing).
pub(crate) fn check_rotary_dim(p: &RopeParams, rotary_dim: usize) {
    assert!(
        rotary_dim % 2 == 0 && rotary_dim <= p.head_dim,
        "rotary_dim {rotary_dim} must be even and at most head_dim {}",
        p.head_dim
    );
}

/// The (cos, sin) table, (max_positions, rotary_dim/2, 2), in f32 the way transformers computes
/// it: inv_freq = 1 / theta^(2i/rotary_dim), angle = (pos as f32) * inv_freq. `rotary_dim` is
/// head_dim for full rotary, int(head_dim · partial_rotary_factor) for partial (Phi-3).
pub fn cos_sin_table(max_positions: usize, rotary_dim: usize, theta: f32) -> Vec<f32> {
    let half = rotary_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / rotary_dim as f32))
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
    reference_partial(qkv, positions, cos_sin, p, p.head_dim);
}

/// [`reference`] over the first `rotary_dim` dimensions of each head, as Hugging Face's Phi-3
/// does it (`q_rot = q[..., :rotary_dim]`, rotate_half within q_rot, `q_pass` unchanged); the
/// interleaved style pairs (2i, 2i+1) for i < rotary_dim/2. `cos_sin` has rotary_dim/2 columns.
pub fn reference_partial(
    qkv: &mut [f32],
    positions: &[u32],
    cos_sin: &[f32],
    p: &RopeParams,
    rotary_dim: usize,
) {
    check_rotary_dim(p, rotary_dim);
    let half = rotary_dim / 2;
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
