//! `shaders/cpu/matmul.wgsl` and `shaders/gpu/matmul_split.wgsl`: activations × a dense
//! (f16/f32) linear layer's weight, with optional bias and a fused residual add. The first kernel gives
//! each thread 8 output columns walking all of k alone (CPU adapters); the second splits each
//! 4-column quad's k over [`Matmul::k_split`] lanes (GPUs), so a decode step's matvec has
//! enough threads. Both read [`pack_weight`]'s layout and take the same bind groups and
//! [`MatmulParams`]; [`Matmul::new`] picks the form from [`GpuContext::kernel_forms`].

use crate::gpu::pipeline::{Kernel, MATMUL, MATMUL_SPLIT};
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
    /// (rows per thread, pipeline): matmul.wgsl's 1 and 8, or matmul_split.wgsl's 1, 4, 8.
    kernels: Vec<(usize, Kernel)>,
    /// Lanes per column quad (matmul_split.wgsl); 1: matmul.wgsl.
    k_split: usize,
    /// Threads per workgroup of the k-split form: a multiple of `k_split`.
    workgroup: usize,
}

/// matmul.wgsl: 32 threads × 8 columns a workgroup, 1 or 8 rows per thread.
const COLS_PER_GROUP: usize = 256;
const ROW_CHOICES: [usize; 2] = [1, 8];
/// matmul_split.wgsl: rows per thread, 4 columns (a quad) per lane group.
const SPLIT_ROW_CHOICES: [usize; 3] = [1, 4, 8];
const QUAD: usize = 4;
/// The k-split form's workgroup: the largest multiple of k_split up to this.
const SPLIT_WG: usize = 64;
/// Workgroups per grid dimension.
const MAX_GROUPS: usize = 65535;

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
    /// Lanes per column quad of the GPU form: each sums every 16th k, so a decode step's
    /// 576-column matvec runs 144 · 16 threads in 36 workgroups, 36 terms each (matmul.wgsl:
    /// 72 threads in 3 workgroups, 576 terms each); the quantized k-split matmul's choice.
    pub const GPU_K_SPLIT: usize = 16;
    /// The largest k_split [`Matmul::with_k_split`] takes (one quad per 64-lane workgroup).
    pub const MAX_K_SPLIT: usize = SPLIT_WG;

    /// The form the device profile picks ([`crate::gpu::DeviceProfile::dense_k_split`]):
    /// matmul.wgsl for CPU adapters, the k-split kernel with [`Matmul::GPU_K_SPLIT`] lanes
    /// for GPUs.
    pub fn new(ctx: &GpuContext, dtype: WeightDType) -> Self {
        Self::with_k_split(ctx, dtype, ctx.profile.dense_k_split)
    }

    /// matmul.wgsl when `k_split` is 1, else matmul_split.wgsl with `k_split` lanes (1..=
    /// [`Matmul::MAX_K_SPLIT`], any value) per column quad. The order of each sum depends on
    /// `k_split` alone, so one model must use one `k_split` at every batch size.
    pub fn with_k_split(ctx: &GpuContext, dtype: WeightDType, k_split: usize) -> Self {
        assert!(
            (1..=Self::MAX_K_SPLIT).contains(&k_split),
            "Matmul: k_split {k_split} is not in 1..={}",
            Self::MAX_K_SPLIT
        );
        let w_f16 = dtype.is_f16();
        let workgroup = SPLIT_WG / k_split * k_split;
        let (source, sets): (_, Vec<Vec<(&str, f64)>>) = if k_split == 1 {
            let sets = ROW_CHOICES
                .iter()
                .map(|&r| vec![("W_F16", w_f16), ("ROWS", r as f64)])
                .collect();
            (MATMUL, sets)
        } else {
            let sets = SPLIT_ROW_CHOICES
                .iter()
                .map(|&r| {
                    vec![
                        ("W_F16", w_f16),
                        ("ROWS", r as f64),
                        ("SPLIT", k_split as f64),
                        ("SPLIT_WG", workgroup as f64),
                    ]
                })
                .collect();
            (MATMUL_SPLIT, sets)
        };
        let rows: &[usize] = if k_split == 1 {
            &ROW_CHOICES
        } else {
            &SPLIT_ROW_CHOICES
        };
        let variants: Vec<&[(&str, f64)]> = sets.iter().map(|c| &c[..]).collect();
        // x, w, bias read-only; y read-write.
        let family = Kernel::family(ctx, source, &[true, true, true, false], &variants);
        Self {
            kernels: rows.iter().copied().zip(family).collect(),
            k_split,
            workgroup,
        }
    }

    /// Lanes that share each output column's sum: 1 for matmul.wgsl (one thread walks all of
    /// k), else matmul_split.wgsl's.
    pub fn k_split(&self) -> usize {
        self.k_split
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
        let (rows, kernel) = self.pipeline_for(p.m);
        kernel.dispatch(pass, bg, &imm, self.grid(p.n, p.m, *rows));
    }

    /// The workgroup grid [`Matmul::encode`] dispatches for `p` (x, y, z).
    pub fn workgroups(&self, p: &MatmulParams) -> [u32; 3] {
        self.grid(p.n, p.m, self.pipeline_for(p.m).0)
    }

    /// Threads per workgroup.
    pub fn workgroup_size(&self) -> usize {
        if self.k_split > 1 {
            self.workgroup
        } else {
            COLS_PER_GROUP / 8
        }
    }

    /// The pipeline for an m-row call and its rows per thread. A thread reads its rows of x
    /// per k; with fewer rows than it holds it would read the last one again, so small
    /// batches take fewer rows per thread.
    fn pipeline_for(&self, m: usize) -> &(usize, Kernel) {
        let rows = match (self.k_split > 1, m) {
            (false, 0..=7) => 1,
            (false, _) => 8,
            (true, 0..=3) => 1,
            (true, 4..=7) => 4,
            (true, _) => 8,
        };
        self.kernels
            .iter()
            .find(|(r, _)| *r == rows)
            .expect("a pipeline per rows choice")
    }

    /// matmul.wgsl: a workgroup per 256 columns and `rows` rows. The k-split kernel: a
    /// workgroup per workgroup / k_split column quads and `rows` rows, quad groups past 65,535
    /// continuing along z (16 columns a group pass the limit at 1,048,561 columns).
    fn grid(&self, n: usize, m: usize, rows: usize) -> [u32; 3] {
        let y = m.div_ceil(rows) as u32;
        if self.k_split == 1 {
            return [n.div_ceil(COLS_PER_GROUP) as u32, y, 1];
        }
        let quad_groups = n.div_ceil(QUAD).div_ceil(self.workgroup / self.k_split);
        let gz = quad_groups.div_ceil(MAX_GROUPS).max(1);
        [quad_groups.div_ceil(gz) as u32, y, gz as u32]
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
