//! Rotary position embedding's parameters and CPU reference. The GPU applies RoPE only fused
//! with the KV write ([`RopeKvWrite`], `shaders/rope_kv_write.wgsl`): over all of each Q and K
//! head (full rotary) or its first `rotary_dim` dimensions (partial rotary, Phi-3's
//! `partial_rotary_factor`: the rest of the head passes through).
//!
//! [`RopeKvWrite`]: super::RopeKvWrite

/// Which dimensions RoPE rotates together within one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGUF llama checkpoints, whose Q/K rows were permuted by the converter.
    Interleaved,
    /// Pairs (i, i + head_dim/2): Hugging Face llama checkpoints ("rotate_half").
    Half,
}

/// The sizes of one RoPE call ([`RopeKvWrite::encode`](super::RopeKvWrite::encode)).
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
    /// The first 7 words of rope_kv_write.wgsl's `Params` struct (`row_slots` and
    /// `rotary_dim` follow).
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

/// Panics unless `rotary_dim` is even and at most `p.head_dim` (0 rotates nothing).
pub(crate) fn check_rotary_dim(p: &RopeParams, rotary_dim: usize) {
    assert!(
        rotary_dim.is_multiple_of(2) && rotary_dim <= p.head_dim,
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

/// [`reference()`] over the first `rotary_dim` dimensions of each head, as Hugging Face's Phi-3
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
