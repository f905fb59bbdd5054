//! `shaders/rms_norm.wgsl` and `shaders/layer_norm.wgsl`: per-row normalization, optionally
//! of a gathered subset of rows (the rows that need logits).

use crate::gpu::GpuContext;
use crate::gpu::pipeline::{Kernel, LAYER_NORM, RMS_NORM, grid_2d};

fn gather_const(gather: bool) -> [(&'static str, f64); 1] {
    [("GATHER", if gather { 1.0 } else { 0.0 })]
}

pub struct RmsNorm {
    kernel: Kernel,
}

/// Threads per row of a norm: 256 on GPUs, one 8-lane SIMD group on CPU adapters (llvmpipe).
fn workgroup_for(ctx: &GpuContext) -> usize {
    if ctx.wants_cpu_kernels() { 8 } else { 256 }
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
