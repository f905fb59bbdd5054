//! `shaders/silu_mul.wgsl` (gated activations: SwiGLU, and GeGLU with
//! [`GateActivation::GeluTanh`]) and `shaders/gelu.wgsl` (gelu_new, in place).

use crate::gpu::GpuContext;
use crate::gpu::pipeline::{GELU, Kernel, SILU_MUL};

use super::groups_for;

/// The activation applied to the gate half of a gated MLP: act(gate) * up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateActivation {
    /// silu(g) = g / (1 + exp(-g)) (SwiGLU: Llama, Qwen, Phi-3).
    Silu,
    /// PyTorch's gelu(approximate='tanh') = GPT-2's gelu_new (GeGLU: Gemma's
    /// gelu_pytorch_tanh), computed as g / (1 + exp(-2u)), u = √(2/π)(g + 0.044715 g³).
    GeluTanh,
}

impl GateActivation {
    /// The shader's `Params.act`.
    fn code(self) -> u32 {
        match self {
            GateActivation::Silu => 0,
            GateActivation::GeluTanh => 1,
        }
    }
}

/// act(gate) * up over rows of [gate | up]: SwiGLU ([`SiluMul::encode`]) or any
/// [`GateActivation`] ([`SiluMul::encode_act`]), one pipeline for all.
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

    /// y = silu(gate) * up: `num_tokens` rows of [gate | up], each 2·inner wide.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_tokens: usize,
        inner: usize,
    ) {
        self.encode_act(pass, bg, num_tokens, inner, GateActivation::Silu);
    }

    /// y = act(gate) * up. `GateActivation::Silu` is [`SiluMul::encode`], bit for bit.
    pub fn encode_act(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_tokens: usize,
        inner: usize,
        act: GateActivation,
    ) {
        let imm = [num_tokens as u32, inner as u32, act.code()];
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

/// act(gate) * up for rows of (gate | up), each 2·inner wide, in f64 ([`gelu_tanh_f64`] for
/// GeluTanh; silu as [`silu_mul_reference`]).
pub fn gated_reference(gate_up: &[f32], inner: usize, act: GateActivation) -> Vec<f32> {
    gate_up
        .chunks(2 * inner)
        .flat_map(|row| {
            (0..inner).map(move |i| {
                let g = row[i] as f64;
                let a = match act {
                    GateActivation::Silu => g / (1.0 + (-g).exp()),
                    GateActivation::GeluTanh => gelu_tanh_f64(g),
                };
                (a * row[inner + i] as f64) as f32
            })
        })
        .collect()
}

/// gelu(g, approximate='tanh') = 0.5·g·(1 + tanh(u)), u = √(2/π)(g + 0.044715 g³), evaluated
/// as g / (1 + exp(-2u)) (the same function: 0.5(1 + tanh u) = 1/(1 + e^(-2u))), which f64
/// gets right even where 1 + tanh(u) is below f64's resolution (g < -6 or so).
pub fn gelu_tanh_f64(g: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
    g / (1.0 + (-2.0 * u).exp())
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
