//! `shaders/kv_write.wgsl`: copies each token's K and V into its slot of the paged pools.

use crate::gpu::pipeline::{KV_WRITE, Kernel};
use crate::gpu::{GpuContext, WeightDType};

use super::groups_for;

pub struct KvWrite {
    kernel: Kernel,
}

impl KvWrite {
    pub fn new(ctx: &GpuContext, kv_dtype: WeightDType) -> Self {
        Self {
            kernel: Kernel::new(ctx, KV_WRITE, &[("KV_F16", kv_dtype.is_f16())]),
        }
    }

    pub fn bind(
        &self,
        ctx: &GpuContext,
        qkv: &wgpu::Buffer,
        slot_mapping: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel
            .bind(ctx, &[qkv, slot_mapping, k_cache, v_cache])
    }

    /// K sits at columns `[k_col, k_col + kv_dim)` of each qkv row, V right after.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_tokens: usize,
        row_stride: usize,
        k_col: usize,
        kv_dim: usize,
    ) {
        let imm = [
            num_tokens as u32,
            row_stride as u32,
            k_col as u32,
            kv_dim as u32,
        ];
        self.kernel
            .dispatch(pass, bg, &imm, groups_for(num_tokens * kv_dim / 2, 256));
    }
}

/// Writes K and V rows into `(k_cache, v_cache)`, each (slots, kv_dim).
pub fn reference(
    qkv: &[f32],
    slot_mapping: &[u32],
    row_stride: usize,
    k_col: usize,
    kv_dim: usize,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
) {
    for (t, &slot) in slot_mapping.iter().enumerate() {
        let src = t * row_stride + k_col;
        let dst = slot as usize * kv_dim;
        k_cache[dst..dst + kv_dim].copy_from_slice(&qkv[src..src + kv_dim]);
        v_cache[dst..dst + kv_dim].copy_from_slice(&qkv[src + kv_dim..src + 2 * kv_dim]);
    }
}
