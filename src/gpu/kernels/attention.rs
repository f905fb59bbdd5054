//! `shaders/paged_attention.wgsl` and `shaders/paged_attention_serial.wgsl`: causal attention
//! for packed queries over the paged KV pool. One of the two serves every step on an adapter
//! (prefill and decode alike), so results never depend on the batch.

use crate::gpu::pipeline::{Kernel, PAGED_ATTENTION, PAGED_ATTENTION_SERIAL, grid_2d};
use crate::gpu::{GpuContext, GpuError, WeightDType};

#[derive(Debug, Clone, Copy)]
pub struct AttentionParams {
    pub num_tokens: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Columns of a qkv row (Q heads start at column 0).
    pub row_stride: usize,
    pub block_size: usize,
    /// Columns of the block-table matrix (its row stride).
    pub max_blocks: usize,
    pub scale: f32,
}

/// How the attention work is spread over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// A workgroup of 64 threads per (token, head), keys in tiles of 64 (GPUs).
    Workgroup,
    /// One thread per (token, head) walking the keys alone (CPU adapters: no barriers, and
    /// each K/V word loaded once).
    Serial,
}

impl AttentionKind {
    pub fn for_adapter(ctx: &GpuContext) -> AttentionKind {
        if ctx.adapter_info.device_type == format!("{:?}", wgpu::DeviceType::Cpu) {
            AttentionKind::Serial
        } else {
            AttentionKind::Workgroup
        }
    }
}

/// Threads per workgroup of the serial kernel.
const SERIAL_WG: usize = 8;

pub struct PagedAttention {
    kernel: Kernel,
    kind: AttentionKind,
}

/// Largest head the shader's per-thread accumulators cover (4 dims × 64 threads).
pub const MAX_HEAD_DIM: usize = 256;

impl PagedAttention {
    /// The kind [`AttentionKind::for_adapter`] picks.
    pub fn new(ctx: &GpuContext, head_dim: usize, kv_dtype: WeightDType) -> Result<Self, GpuError> {
        Self::with_kind(ctx, head_dim, kv_dtype, AttentionKind::for_adapter(ctx))
    }

    pub fn with_kind(
        ctx: &GpuContext,
        head_dim: usize,
        kv_dtype: WeightDType,
        kind: AttentionKind,
    ) -> Result<Self, GpuError> {
        if head_dim % 2 != 0 || head_dim == 0 || head_dim > MAX_HEAD_DIM {
            return Err(GpuError::Shape {
                op: "paged_attention",
                msg: format!("head_dim {head_dim} must be even and at most {MAX_HEAD_DIM}"),
            });
        }
        let consts = [("HEAD_DIM", head_dim as f64), ("KV_F16", kv_dtype.is_f16())];
        let kernel = match kind {
            AttentionKind::Workgroup => Kernel::new(ctx, PAGED_ATTENTION, &consts),
            AttentionKind::Serial => Kernel::new(
                ctx,
                PAGED_ATTENTION_SERIAL,
                &[consts[0], consts[1], ("WG", SERIAL_WG as f64)],
            ),
        };
        Ok(Self { kernel, kind })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &GpuContext,
        qkv: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        block_tables: &wgpu::Buffer,
        token_seq: &wgpu::Buffer,
        positions: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(
            ctx,
            &[
                qkv,
                k_cache,
                v_cache,
                block_tables,
                token_seq,
                positions,
                out,
            ],
        )
    }

    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        p: &AttentionParams,
    ) {
        let imm = [
            p.num_tokens as u32,
            p.num_heads as u32,
            p.num_kv_heads as u32,
            p.row_stride as u32,
            p.block_size as u32,
            p.max_blocks as u32,
            p.scale.to_bits(),
        ];
        let items = p.num_tokens * p.num_heads;
        let groups = match self.kind {
            AttentionKind::Workgroup => items,
            AttentionKind::Serial => items.div_ceil(SERIAL_WG),
        };
        self.kernel.dispatch(pass, bg, &imm, grid_2d(groups as u32));
    }
}

/// Causal attention computed from contiguous per-sequence K/V (`keys[s]`, `values[s]`, each
/// (len, kv_dim)), independent of any block layout: the paged kernel must equal this.
pub fn reference(
    q_rows: &[f32],
    keys: &[Vec<f32>],
    values: &[Vec<f32>],
    token_seq: &[u32],
    positions: &[u32],
    p: &AttentionParams,
) -> Vec<f32> {
    let hd = p.head_dim;
    let kv_dim = p.num_kv_heads * hd;
    let group = p.num_heads / p.num_kv_heads;
    let mut out = vec![0f32; p.num_tokens * p.num_heads * hd];
    for t in 0..p.num_tokens {
        let s = token_seq[t] as usize;
        let ctx = positions[t] as usize + 1;
        for h in 0..p.num_heads {
            let kvh = h / group;
            let q = &q_rows[t * p.row_stride + h * hd..t * p.row_stride + (h + 1) * hd];
            let scores: Vec<f64> = (0..ctx)
                .map(|j| {
                    let k = &keys[s][j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
                    q.iter()
                        .zip(k)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * p.scale as f64
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|v| (v - mx).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                let mut a = 0f64;
                for (j, w) in e.iter().enumerate() {
                    a += w * values[s][j * kv_dim + kvh * hd + d] as f64;
                }
                out[t * p.num_heads * hd + h * hd + d] = (a / sum) as f32;
            }
        }
    }
    out
}
