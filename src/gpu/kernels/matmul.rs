//! `shaders/matmul.wgsl`: activations × a linear layer's weight, with optional bias and a
//! fused residual add.

use crate::gpu::pipeline::{Kernel, MATMUL};
use crate::gpu::{GpuContext, GpuError, WeightDType};

/// Sizes of one matmul call. `y` has `y_stride` columns; this call writes columns
/// `[y_col, y_col + n)`. The weight is laid out by [`pack_weight`].
#[derive(Debug, Clone, Copy)]
pub struct MatmulParams {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub y_stride: usize,
    pub y_col: usize,
    pub bias: bool,
    /// y += x·Wᵀ (+ bias): the residual add.
    pub accumulate: bool,
}

impl MatmulParams {
    /// y (m, n) = x (m, k) · Wᵀ, nothing else.
    pub fn plain(m: usize, n: usize, k: usize) -> Self {
        Self {
            m,
            n,
            k,
            y_stride: n,
            y_col: 0,
            bias: false,
            accumulate: false,
        }
    }
}

pub struct Matmul {
    /// (rows per thread, pipeline): 1 for batches under 8 rows, else 8.
    kernels: Vec<(usize, Kernel)>,
}

const COLS_PER_GROUP: usize = 256;
const ROW_CHOICES: [usize; 2] = [1, 8];

/// Columns of the stored (transposed) weight: n rounded up to a multiple of 8.
pub fn padded_cols(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// The kernel's weight layout: `w` is (n, k) row-major (PyTorch's [out, in]); the result is
/// the words of its transpose (k, padded_cols(n)), zero-padded, in `dtype`.
pub fn pack_weight(w: &[f32], n: usize, k: usize, dtype: WeightDType) -> Vec<u32> {
    let np = padded_cols(n);
    let mut t = vec![0f32; k * np];
    for (row, chunk) in w.chunks(k).enumerate().take(n) {
        for (kk, v) in chunk.iter().enumerate() {
            t[kk * np + row] = *v;
        }
    }
    crate::gpu::tensor::encode_words(&t, dtype)
}

impl Matmul {
    pub fn new(ctx: &GpuContext, dtype: WeightDType) -> Self {
        let w_f16 = dtype.is_f16();
        let sets: Vec<[(&str, f64); 2]> = ROW_CHOICES
            .iter()
            .map(|&r| [("W_F16", w_f16), ("ROWS", r as f64)])
            .collect();
        let variants: Vec<&[(&str, f64)]> = sets.iter().map(|c| &c[..]).collect();
        // x, w, bias read-only; y read-write.
        let family = Kernel::family(ctx, MATMUL, &[true, true, true, false], &variants);
        Self {
            kernels: ROW_CHOICES.into_iter().zip(family).collect(),
        }
    }

    /// `w` holds [`pack_weight`]'s layout; `bias` may be any buffer when the call has no bias.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernels[0].1.bind(ctx, &[x, w, bias, y])
    }

    /// Checks the shape contract the shader relies on.
    pub fn check(p: &MatmulParams) -> Result<(), GpuError> {
        if p.y_col + p.n > p.y_stride {
            return Err(GpuError::Shape {
                op: "matmul",
                msg: format!(
                    "columns {}..{} exceed the output width {}",
                    p.y_col,
                    p.y_col + p.n,
                    p.y_stride
                ),
            });
        }
        Ok(())
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bg: &wgpu::BindGroup, p: &MatmulParams) {
        let flags = (p.bias as u32) | ((p.accumulate as u32) << 1);
        let imm = [
            p.m as u32,
            p.n as u32,
            p.k as u32,
            padded_cols(p.n) as u32,
            p.y_stride as u32,
            p.y_col as u32,
            flags,
        ];
        // A thread reads its rows of x per k; with fewer rows than it holds it would read the
        // last one again, so small batches take one row per thread.
        let (rows, kernel) = if p.m >= 8 {
            &self.kernels[1]
        } else {
            &self.kernels[0]
        };
        let groups = [
            p.n.div_ceil(COLS_PER_GROUP) as u32,
            p.m.div_ceil(*rows) as u32,
            1,
        ];
        kernel.dispatch(pass, bg, &imm, groups);
    }
}

/// y (m, y_stride): columns y_col.. get x·Wᵀ (+ bias) (+ previous y), accumulated in f64.
pub fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32], p: &MatmulParams) {
    for m in 0..p.m {
        for n in 0..p.n {
            let mut s = 0f64;
            for k in 0..p.k {
                s += x[m * p.k + k] as f64 * w[n * p.k + k] as f64;
            }
            if let Some(b) = bias {
                s += b[n] as f64;
            }
            let o = m * p.y_stride + p.y_col + n;
            if p.accumulate {
                s += y[o] as f64;
            }
            y[o] = s as f32;
        }
    }
}
