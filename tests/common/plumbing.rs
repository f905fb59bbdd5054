//! Kernel-test plumbing: a deterministic PRNG, buffers, one-pass submission, comparisons.

use wllm::GpuContext;
use wllm::WeightDType::{self, F32};
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::matmul;

/// The library's SplitMix64 with the helpers the tests need.
pub struct Rng(wllm::sampling::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(wllm::sampling::Rng::new(seed ^ 0xD1B5_4A32_D192_ED03))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// N(0, 1) by Box–Muller.
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }

    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }

    /// Uniform in (lo, hi].
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    pub fn below(&mut self, n: usize) -> u32 {
        (self.next_u64() % n as u64) as u32
    }

    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1) as usize);
        }
    }
}

pub fn ctx() -> &'static GpuContext {
    super::gpu()
}

pub fn tensor(name: &str, data: &[f32], shape: &[usize], dtype: WeightDType) -> GpuTensor {
    GpuTensor::from_f32(ctx(), name, data, shape, dtype).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A linear layer's weight `w` (n, k) in the matmul kernel's layout (also the embedding's).
pub fn linear_weight(name: &str, w: &[f32], n: usize, k: usize, dtype: WeightDType) -> GpuTensor {
    let words = matmul::pack_weight(w, n, k, dtype);
    GpuTensor::from_words(ctx(), name, &words, &[k, matmul::padded_cols(n)], dtype)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn f32s(name: &str, data: &[f32], shape: &[usize]) -> GpuTensor {
    tensor(name, data, shape, F32)
}

/// A u32 buffer (ids, positions, slots, block tables): the words are stored as they are.
pub fn u32s(name: &str, data: &[u32]) -> GpuTensor {
    GpuTensor::from_words(ctx(), name, data, &[data.len()], F32)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Records `f`'s dispatches into one compute pass and submits it.
pub fn run(f: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
    let mut enc = ctx()
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("test"),
        });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("test"),
            timestamp_writes: None,
        });
        f(&mut pass);
    }
    ctx().queue.submit([enc.finish()]);
}

pub fn read(t: &GpuTensor) -> Vec<f32> {
    t.read_f32(ctx()).expect("read back")
}

/// |gpu - cpu| <= tol * (1 + |cpu|): relative for large values, absolute near zero.
#[track_caller]
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let close = (g - c).abs() <= tol * (1.0 + c.abs());
        assert!(close, "{what}: failed at index {i}: {g} vs {c}");
    }
}

#[track_caller]
pub fn assert_bits_eq(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.to_bits() == y.to_bits(),
            "{what}: failed at index {i}: {x} vs {y}"
        );
    }
}

pub const TOL: f32 = 1e-4;
