//! In-place element-wise kernels over `rows × cols` f32 values: `shaders/scale.wgsl`
//! (x *= c: Gemma's embedding scale √hidden) and `shaders/softcap.wgsl`
//! (x = cap · tanh(x / cap): Gemma 2's final-logit soft-cap).

use crate::gpu::GpuContext;
use crate::gpu::pipeline::{Kernel, SCALE, SOFTCAP};

use super::groups_for;

/// One in-place kernel over the first `rows · cols` floats of x with one f32 parameter.
struct InPlace {
    kernel: Kernel,
}

impl InPlace {
    fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[x])
    }

    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bg: &wgpu::BindGroup, len: usize, p: f32) {
        self.kernel
            .dispatch(pass, bg, &[len as u32, p.to_bits()], groups_for(len, 256));
    }
}

/// x *= c in place. Bit-exact: one correctly rounded f32 multiply per element.
pub struct Scale(InPlace);

impl Scale {
    pub fn new(ctx: &GpuContext) -> Self {
        Self(InPlace {
            kernel: Kernel::new(ctx, SCALE, &[]),
        })
    }

    /// `x` holds at least rows · cols floats (rows of cols, contiguous).
    pub fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer) -> wgpu::BindGroup {
        self.0.bind(ctx, x)
    }

    /// The first rows · cols floats of x times `c`.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        rows: usize,
        cols: usize,
        c: f32,
    ) {
        self.0.encode(pass, bg, rows * cols, c);
    }
}

/// x = cap · tanh(x / cap) in place, with a tanh that stays within a few ulps over all of f32
/// and never gives NaN for finite x (see softcap.wgsl).
pub struct SoftCap(InPlace);

impl SoftCap {
    pub fn new(ctx: &GpuContext) -> Self {
        Self(InPlace {
            kernel: Kernel::new(ctx, SOFTCAP, &[]),
        })
    }

    /// `x` holds at least rows · cols floats (rows of cols, contiguous).
    pub fn bind(&self, ctx: &GpuContext, x: &wgpu::Buffer) -> wgpu::BindGroup {
        self.0.bind(ctx, x)
    }

    /// Soft-caps the first rows · cols floats of x. Panics unless cap is finite and positive.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        rows: usize,
        cols: usize,
        cap: f32,
    ) {
        assert!(
            cap.is_finite() && cap > 0.0,
            "soft-cap {cap} must be finite and positive"
        );
        self.0.encode(pass, bg, rows * cols, cap);
    }
}

/// x *= c in f32, what [`Scale`] computes (bit for bit).
pub fn scale_reference(x: &mut [f32], c: f32) {
    for v in x {
        *v *= c;
    }
}

/// cap · tanh(x / cap) in f64 (rounded once to f32), the math [`SoftCap`] approximates.
pub fn softcap_reference(x: &mut [f32], cap: f32) {
    let cap = cap as f64;
    for v in x {
        *v = (cap * (*v as f64 / cap).tanh()) as f32;
    }
}
