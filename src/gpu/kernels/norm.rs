//! `shaders/rms_norm.wgsl` and `shaders/layer_norm.wgsl`: per-row normalization, optionally
//! of a gathered subset of rows (the rows that need logits), RMSNorm optionally added into its
//! output (Gemma 2's post-norms); `shaders/qk_norm.wgsl`: RMSNorm of each Q and K head in place
//! on the packed QKV rows (Qwen3's and Gemma 3's q_norm / k_norm), with rms_norm's arithmetic.

use crate::gpu::GpuContext;
use crate::gpu::pipeline::{Kernel, LAYER_NORM, QK_NORM, RMS_NORM, grid_2d};

fn gather_const(gather: bool) -> [(&'static str, f64); 1] {
    [("GATHER", if gather { 1.0 } else { 0.0 })]
}

pub struct RmsNorm {
    kernel: Kernel,
}

/// Threads per row of a norm ([`crate::gpu::DeviceProfile::norm_workgroup`]).
fn workgroup_for(ctx: &GpuContext) -> usize {
    ctx.profile.norm_workgroup
}

impl RmsNorm {
    /// `gather`: read input row `rows[r]` for output row r. A workgroup of 256 reduces a row on
    /// GPUs, of 8 on CPU adapters.
    pub fn new(ctx: &GpuContext, gather: bool) -> Self {
        Self::with_workgroup(ctx, gather, workgroup_for(ctx))
    }

    /// [`RmsNorm::new`] with the threads per row chosen (a power of two, at most 256).
    pub fn with_workgroup(ctx: &GpuContext, gather: bool, wg: usize) -> Self {
        let [g] = gather_const(gather);
        Self {
            kernel: Kernel::new(ctx, RMS_NORM, &[g, ("WG", wg as f64)]),
        }
    }

    /// `rows` may be any buffer when not gathering.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[x, weight, rows, y])
    }

    /// y = norm(x) · weight, `num_rows` rows of `dim`.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_rows: usize,
        dim: usize,
        eps: f32,
    ) {
        self.encode_mode(pass, bg, num_rows, dim, eps, false);
    }

    /// y += norm(x) · weight: the normalized row is added to what y holds (Gemma 2's
    /// post-norms, `h = h + post_norm(attn_out)` with x = attn_out and y = h, in one pass).
    /// Each element is y + ((x · inv) · w) in f32, with the same inv and product as
    /// [`RmsNorm::encode`] (which this does not change: that one stores them as before).
    pub fn encode_accumulate(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_rows: usize,
        dim: usize,
        eps: f32,
    ) {
        self.encode_mode(pass, bg, num_rows, dim, eps, true);
    }

    fn encode_mode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_rows: usize,
        dim: usize,
        eps: f32,
        accumulate: bool,
    ) {
        let imm = [
            num_rows as u32,
            dim as u32,
            eps.to_bits(),
            u32::from(accumulate),
        ];
        self.kernel
            .dispatch(pass, bg, &imm, grid_2d(num_rows as u32));
    }
}

/// The shape of a [`QkNorm`] dispatch: `num_tokens` rows of `row_stride` floats, each
/// [num_heads Q heads | num_kv_heads K heads | V heads ...], head_dim floats a head.
#[derive(Debug, Clone, Copy)]
pub struct QkNormParams {
    pub num_tokens: usize,
    pub row_stride: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
}

/// RMSNorm of every Q head (weight q_w) and K head (weight k_w) in place on the QKV rows;
/// V untouched. Same arithmetic as [`RmsNorm`] with a head as the row: with the same workgroup
/// size a head gets the bits RmsNorm gives it as a row of its own.
pub struct QkNorm {
    kernel: Kernel,
}

impl QkNorm {
    /// Threads per head as [`RmsNorm::new`]'s per row: 256 on GPUs, 8 on CPU adapters.
    pub fn new(ctx: &GpuContext) -> Self {
        Self::with_workgroup(ctx, workgroup_for(ctx))
    }

    /// [`QkNorm::new`] with the threads per head chosen (a power of two, at most 256).
    pub fn with_workgroup(ctx: &GpuContext, wg: usize) -> Self {
        assert!(wg.is_power_of_two() && wg <= 256, "qk_norm workgroup {wg}");
        Self {
            kernel: Kernel::new(ctx, QK_NORM, &[("WG", wg as f64)]),
        }
    }

    /// `qkv` (T, row_stride) is normalized in place; `q_w` and `k_w` hold head_dim floats each
    /// (with Gemma's `1 + w` convention already applied, if the file did not apply it).
    pub fn bind(
        &self,
        ctx: &GpuContext,
        qkv: &wgpu::Buffer,
        q_w: &wgpu::Buffer,
        k_w: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[qkv, q_w, k_w])
    }

    /// Panics if the Q and K heads do not fit in a row.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bg: &wgpu::BindGroup, p: &QkNormParams) {
        let heads = p.num_heads + p.num_kv_heads;
        assert!(
            heads * p.head_dim <= p.row_stride,
            "qk_norm: {heads} heads of {} do not fit a row of {}",
            p.head_dim,
            p.row_stride
        );
        let imm = [
            p.num_tokens as u32,
            p.row_stride as u32,
            p.num_heads as u32,
            p.num_kv_heads as u32,
            p.head_dim as u32,
            p.eps.to_bits(),
        ];
        let groups = grid_2d((p.num_tokens * heads) as u32);
        self.kernel.dispatch(pass, bg, &imm, groups);
    }
}

pub struct LayerNorm {
    kernel: Kernel,
}

impl LayerNorm {
    /// `gather` as for [`RmsNorm::new`]; threads per row as there.
    pub fn new(ctx: &GpuContext, gather: bool) -> Self {
        Self::with_workgroup(ctx, gather, workgroup_for(ctx))
    }

    /// [`LayerNorm::new`] with the threads per row chosen (a power of two, at most 256).
    pub fn with_workgroup(ctx: &GpuContext, gather: bool, wg: usize) -> Self {
        let [g] = gather_const(gather);
        Self {
            kernel: Kernel::new(ctx, LAYER_NORM, &[g, ("WG", wg as f64)]),
        }
    }

    pub fn bind(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[x, weight, bias, rows, y])
    }

    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_rows: usize,
        dim: usize,
        eps: f32,
    ) {
        let imm = [num_rows as u32, dim as u32, eps.to_bits()];
        self.kernel
            .dispatch(pass, bg, &imm, grid_2d(num_rows as u32));
    }
}

/// RMSNorm of the selected rows (`rows = None`: all rows in order), accumulated in f64.
pub fn rms_norm_reference(
    x: &[f32],
    weight: &[f32],
    rows: Option<&[u32]>,
    dim: usize,
    eps: f32,
) -> Vec<f32> {
    let all: Vec<u32> = (0..(x.len() / dim) as u32).collect();
    let rows = rows.unwrap_or(&all);
    let mut y = Vec::with_capacity(rows.len() * dim);
    for &r in rows {
        let row = &x[r as usize * dim..(r as usize + 1) * dim];
        let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        y.extend(
            row.iter()
                .zip(weight)
                .map(|(v, w)| (*v as f64 * inv) as f32 * w),
        );
    }
    y
}

/// [`rms_norm_reference`] added into `y` (f32 additions of the f64-computed, f32-rounded norm),
/// what [`RmsNorm::encode_accumulate`] computes; `y` holds one row of `dim` per selected row.
pub fn rms_norm_accumulate_reference(
    y: &mut [f32],
    x: &[f32],
    weight: &[f32],
    rows: Option<&[u32]>,
    dim: usize,
    eps: f32,
) {
    let n = rms_norm_reference(x, weight, rows, dim, eps);
    assert_eq!(y.len(), n.len(), "rms_norm_accumulate_reference: y's rows");
    for (y, n) in y.iter_mut().zip(n) {
        *y += n;
    }
}

/// What [`QkNorm`] computes: each Q head normalized with `q_w`, each K head with `k_w`, in
/// place ([`rms_norm_reference`] on each head, in f64); V and the rest of a row untouched.
pub fn qk_norm_reference(qkv: &mut [f32], q_w: &[f32], k_w: &[f32], p: &QkNormParams) {
    let hd = p.head_dim;
    for t in 0..p.num_tokens {
        for h in 0..p.num_heads + p.num_kv_heads {
            let w = if h < p.num_heads { q_w } else { k_w };
            let at = t * p.row_stride + h * hd;
            let head = rms_norm_reference(&qkv[at..at + hd], &w[..hd], None, hd, p.eps);
            qkv[at..at + hd].copy_from_slice(&head);
        }
    }
}

/// LayerNorm of the selected rows, accumulated in f64.
pub fn layer_norm_reference(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows: Option<&[u32]>,
    dim: usize,
    eps: f32,
) -> Vec<f32> {
    let all: Vec<u32> = (0..(x.len() / dim) as u32).collect();
    let rows = rows.unwrap_or(&all);
    let mut y = Vec::with_capacity(rows.len() * dim);
    for &r in rows {
        let row = &x[r as usize * dim..(r as usize + 1) * dim];
        let mean = row.iter().map(|v| *v as f64).sum::<f64>() / dim as f64;
        let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for d in 0..dim {
            y.push(((row[d] as f64 - mean) * inv * weight[d] as f64 + bias[d] as f64) as f32);
        }
    }
    y
}
