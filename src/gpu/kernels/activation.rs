//! `shaders/silu_mul.wgsl` (SwiGLU gating) and `shaders/gelu.wgsl` (gelu_new, in place).

use crate::gpu::GpuContext;
use crate::gpu::pipeline::{GELU, Kernel, SILU_MUL};

use super::groups_for;

pub struct SiluMul {
    kernel: Kernel,
}

impl SiluMul {
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            kernel: Kernel::new(ctx, SILU_MUL, &[]),
        }
    }

    pub fn bind(
        &self,
        ctx: &GpuContext,
        gate_up: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[gate_up, y])
    }

    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_tokens: usize,
        inner: usize,
    ) {
        let imm = [num_tokens as u32, inner as u32];
        self.kernel
            .dispatch(pass, bg, &imm, groups_for(num_tokens * inner, 256));
    }
}

pub struct Gelu {
    kernel: Kernel,
}

impl Gelu {
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            kernel: Kernel::new(ctx, GELU, &[]),
        }
    }

    pub fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[x])
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bg: &wgpu::BindGroup, len: usize) {
        self.kernel
            .dispatch(pass, bg, &[len as u32], groups_for(len, 256));
    }
}

/// silu(gate) * up for rows of (gate | up), each 2·inner wide.
pub fn silu_mul_reference(gate_up: &[f32], inner: usize) -> Vec<f32> {
    gate_up
        .chunks(2 * inner)
        .flat_map(|row| {
            (0..inner).map(move |i| {
                let g = row[i] as f64;
                ((g / (1.0 + (-g).exp())) * row[inner + i] as f64) as f32
            })
        })
        .collect()
}

/// gelu_new (tanh approximation), as GPT-2 defines it.
pub fn gelu_reference(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| {
            let v = v as f64;
            let c = (2.0 / std::f64::consts::PI).sqrt();
            (0.5 * v * (1.0 + (c * (v + 0.044715 * v.powi(3))).tanh())) as f32
        })
        .collect()
}
