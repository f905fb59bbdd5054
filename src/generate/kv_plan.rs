//! Sizing the KV pool: from an explicit block count or byte budget, or from the device's
//! memory (like vLLM's `gpu_memory_utilization`): a share of it, less the weights' measured
//! GPU bytes and an estimate of the runner's other buffers, within the caps below. The memory
//! figure is the device's one fact about it ([`GpuContext::memory`]); the arithmetic here is
//! pure ([`plan_kv`]), so it is tested without a device.

use crate::error::{Error, Result};
use crate::gpu::context::{DeviceMemory, MemorySource, fmt_bytes};
use crate::gpu::kernels::quant_texture::WeightData;
use crate::gpu::weights::GpuMatrix;
use crate::gpu::{GpuContext, GpuTensor, WeightDType};
use crate::model::ModelConfig;
use crate::model::weights::{LayerWeights, Linear, ModelWeights, Norm};

use super::ModelOptions;

/// The share of the device's memory wllm plans to fill (weights, activations, KV pool) when
/// the pool is sized from it, like vLLM's `gpu_memory_utilization`.
pub const DEFAULT_GPU_MEMORY_UTILIZATION: f64 = 0.9;
/// The KV pool where the backend reports no memory figure (Metal, DX12 and GL GPUs).
pub const FALLBACK_KV_BYTES: u64 = 256 << 20;
/// The smallest pool a memory-derived budget gives, however little the weights leave.
pub const MIN_KV_BYTES: u64 = 64 << 20;
/// The largest memory-derived pool on a CPU adapter (lavapipe) unless a utilization is given:
/// wgpu zero-fills the pool before its first step, so all of it becomes resident host memory
/// at once, and a CPU attends over far fewer tokens than that holds in useful time.
pub const CPU_ADAPTER_MAX_KV_BYTES: u64 = 1 << 30;

/// How a KV pool's size was chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvSource {
    /// `num_blocks` was given.
    Blocks,
    /// `kv_memory_bytes` was given.
    Bytes(u64),
    /// `utilization` × `memory` − the weights − `activations` (an estimate of the runner's
    /// other buffers, [`activation_bytes`]).
    Memory {
        memory: DeviceMemory,
        utilization: f64,
        activations: u64,
    },
    /// The backend reports no memory: [`FALLBACK_KV_BYTES`].
    Fallback,
}

/// What moved a pool off the size its source gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLimit {
    /// One layer's K (or V) pool must fit one storage binding.
    Binding,
    /// All the engine can ever hold: `max_seqs` sequences of the model's whole context.
    Sequences,
    /// [`CPU_ADAPTER_MAX_KV_BYTES`].
    CpuAdapter,
    /// Raised to [`MIN_KV_BYTES`].
    Minimum,
}

/// The KV pool chosen for a model on a device, and why (for logs and the CLI's startup line).
#[derive(Debug, Clone, PartialEq)]
pub struct KvPlan {
    pub num_blocks: usize,
    /// Bytes of all blocks, all layers, K and V.
    pub bytes: u64,
    /// The weights' bytes on the GPU.
    pub weights_bytes: u64,
    pub source: KvSource,
    pub limit: Option<KvLimit>,
}

impl KvPlan {
    /// Why the pool has its size: "90% of 16.0 GiB device-local memory − 270 MiB weights −
    /// 93 MiB activations", with the cap that applied, if any.
    pub fn reason(&self) -> String {
        let mut s = match self.source {
            KvSource::Blocks => "as many blocks as asked for".to_string(),
            KvSource::Bytes(b) => format!("as many blocks as {} hold", fmt_bytes(b)),
            KvSource::Memory {
                memory,
                utilization,
                activations,
            } => format!(
                "{:.0}% of {memory} − {} weights − {} activations",
                utilization * 100.0,
                fmt_bytes(self.weights_bytes),
                fmt_bytes(activations)
            ),
            KvSource::Fallback => format!(
                "the fixed {}: the backend reports no memory size",
                fmt_bytes(FALLBACK_KV_BYTES)
            ),
        };
        s += &match self.limit {
            None => String::new(),
            Some(KvLimit::Binding) => ", capped at one storage binding per layer".into(),
            Some(KvLimit::Sequences) => ", capped at max_seqs full-context sequences".into(),
            Some(KvLimit::CpuAdapter) => format!(
                ", capped at {} on a CPU adapter",
                fmt_bytes(CPU_ADAPTER_MAX_KV_BYTES)
            ),
            Some(KvLimit::Minimum) => {
                format!(", raised to the {} minimum", fmt_bytes(MIN_KV_BYTES))
            }
        };
        s
    }
}

impl std::fmt::Display for KvPlan {
    /// "1234 blocks, 308 MiB (90% of 16.0 GiB device-local memory − …)"
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} blocks, {} ({})",
            self.num_blocks,
            fmt_bytes(self.bytes),
            self.reason()
        )
    }
}

/// The sizes the pool's arithmetic needs, in bytes unless named otherwise.
#[derive(Debug, Clone, Copy)]
pub struct KvSizing {
    /// One block, all layers, K and V.
    pub per_block: u64,
    /// One block of one layer's K (or V) pool.
    pub per_layer_block: u64,
    /// The largest storage binding.
    pub binding_bytes: u64,
    /// Blocks that `max_seqs` sequences of the model's whole context take.
    pub useful_blocks: u64,
}

/// A second model sharing the device with its own pool of as many blocks (a speculative
/// draft model): what it takes from the memory budget.
#[derive(Debug, Clone, Copy, Default)]
pub struct Companion {
    /// Its KV bytes per block (all layers, K and V).
    pub per_block: u64,
    pub weights_bytes: u64,
    pub activations: u64,
}

impl Companion {
    /// The companion of `cfg` (a draft model's config) run with `opts`.
    pub fn of(cfg: &ModelConfig, opts: &ModelOptions, weights_bytes: u64) -> Companion {
        Companion {
            per_block: kv_bytes_per_token(cfg, opts.dtype).saturating_mul(opts.block_size as u64),
            weights_bytes,
            activations: activation_bytes(cfg, opts),
        }
    }
}

/// The KV pool for `opts` on `ctx`, given the weights' GPU bytes (0 before they are
/// uploaded: a memory-derived pool is then too large, so plan again after the upload).
pub fn plan_kv_pool(
    ctx: &GpuContext,
    cfg: &ModelConfig,
    opts: &ModelOptions,
    weights_bytes: u64,
) -> Result<KvPlan> {
    plan_kv_pool_with(ctx, cfg, opts, weights_bytes, Companion::default())
}

/// [`plan_kv_pool`] leaving room for `companion`: a memory-derived budget pays its weights
/// and activations, and is split so that both pools hold the same number of blocks.
pub fn plan_kv_pool_with(
    ctx: &GpuContext,
    cfg: &ModelConfig,
    opts: &ModelOptions,
    weights_bytes: u64,
    companion: Companion,
) -> Result<KvPlan> {
    let sizing = KvSizing {
        per_block: kv_bytes_per_token(cfg, opts.dtype)
            .saturating_mul(opts.block_size as u64)
            .saturating_add(companion.per_block),
        per_layer_block: saturating_product(&[
            opts.block_size,
            cfg.num_kv_heads,
            cfg.head_dim,
            opts.dtype.bytes_per_elem(),
        ]),
        binding_bytes: ctx.max_binding_bytes(),
        useful_blocks: saturating_product(&[
            opts.max_seqs.max(1),
            cfg.max_context.div_ceil(opts.block_size.max(1)),
        ]),
    };
    let activations = activation_bytes(cfg, opts).saturating_add(companion.activations);
    let weights_bytes = weights_bytes.saturating_add(companion.weights_bytes);
    plan_kv(&sizing, opts, ctx.memory(), weights_bytes, activations)
}

/// [`plan_kv_pool`]'s arithmetic: `opts.num_blocks`; else as many blocks as
/// `opts.kv_memory_bytes` hold; else as many as the memory budget holds (see [`KvSource`]),
/// at most [`KvSizing::useful_blocks`] and (on a CPU adapter, unless a utilization is given)
/// [`CPU_ADAPTER_MAX_KV_BYTES`], at least [`MIN_KV_BYTES`]; without a memory figure,
/// [`FALLBACK_KV_BYTES`]. A byte budget is capped so one layer's K (or V) pool fits one
/// storage binding; an explicit count beyond that is an error.
pub fn plan_kv(
    s: &KvSizing,
    opts: &ModelOptions,
    memory: Option<DeviceMemory>,
    weights_bytes: u64,
    activations: u64,
) -> Result<KvPlan> {
    let per_block = s.per_block.max(1);
    let binding_cap = s.binding_bytes / s.per_layer_block.max(1);
    let mut limit = None;
    let (blocks, source) = if let Some(n) = opts.num_blocks {
        if n as u64 > binding_cap {
            return Err(Error::InvalidRequest(format!(
                "a KV pool of {n} blocks does not fit this adapter: one layer's K (or V) \
                 pool must fit one storage binding of {} bytes, which holds at most \
                 {binding_cap} blocks of {} tokens",
                s.binding_bytes, opts.block_size
            )));
        }
        (n as u64, KvSource::Blocks)
    } else if let Some(b) = opts.kv_memory_bytes {
        (b / per_block, KvSource::Bytes(b))
    } else if let Some(memory) = memory {
        let utilization = opts
            .gpu_memory_utilization
            .unwrap_or(DEFAULT_GPU_MEMORY_UTILIZATION);
        if !(utilization > 0.0 && utilization <= 1.0) {
            return Err(Error::InvalidRequest(format!(
                "gpu_memory_utilization {utilization} is not in (0, 1]"
            )));
        }
        let usable = (memory.bytes as f64 * utilization) as u64;
        let mut bytes = usable
            .saturating_sub(weights_bytes)
            .saturating_sub(activations);
        let cpu_cap =
            memory.source == MemorySource::HostAvailable && opts.gpu_memory_utilization.is_none();
        if cpu_cap && bytes > CPU_ADAPTER_MAX_KV_BYTES {
            bytes = CPU_ADAPTER_MAX_KV_BYTES;
            limit = Some(KvLimit::CpuAdapter);
        }
        if bytes < MIN_KV_BYTES {
            bytes = MIN_KV_BYTES;
            limit = Some(KvLimit::Minimum);
        }
        let mut blocks = bytes / per_block;
        if blocks > s.useful_blocks {
            blocks = s.useful_blocks;
            limit = Some(KvLimit::Sequences);
        }
        let source = KvSource::Memory {
            memory,
            utilization,
            activations,
        };
        (blocks, source)
    } else {
        (FALLBACK_KV_BYTES / per_block, KvSource::Fallback)
    };
    // A budget never asks for more than one binding per layer holds (which also keeps the
    // count within a usize on any target).
    let blocks = if blocks > binding_cap {
        limit = Some(KvLimit::Binding);
        binding_cap
    } else {
        blocks
    };
    if blocks == 0 {
        return Err(Error::InvalidRequest(format!(
            "the KV pool holds no block ({per_block} bytes per block)"
        )));
    }
    Ok(KvPlan {
        num_blocks: usize::try_from(blocks).unwrap_or(usize::MAX),
        bytes: blocks.saturating_mul(per_block),
        weights_bytes,
        source,
        limit,
    })
}

/// An estimate of the runner's buffers besides weights and KV pool: per token of a step, the
/// residual stream and its normed copy, attention's input and output, Q/K/V, the MLP's
/// gate/up and its product (f32); a step's logits rows and their readback; RoPE's table; and
/// 32 MiB for the small buffers, uniforms and staging.
pub fn activation_bytes(cfg: &ModelConfig, opts: &ModelOptions) -> u64 {
    let t = opts.max_batch_tokens.max(1);
    let per_token =
        4 * cfg.hidden_size + 2 * cfg.q_dim() + 2 * cfg.kv_dim() + 3 * cfg.intermediate_size;
    saturating_product(&[t, per_token, 4])
        .saturating_add(saturating_product(&[t, cfg.vocab_size, 4, 2]))
        .saturating_add(saturating_product(&[cfg.max_context, cfg.head_dim, 4]))
        .saturating_add(32 << 20)
}

/// Bytes the weights take on the GPU: every matrix part's buffer or texture, every vector.
pub fn weights_gpu_bytes(w: &ModelWeights) -> u64 {
    let matrix = |m: &GpuMatrix| -> u64 {
        m.parts
            .iter()
            .map(|p| match &p.data {
                WeightData::Buffer(b) => b.size(),
                WeightData::Texture(v) => {
                    let t = v.texture();
                    let texel = u64::from(t.format().block_copy_size(None).unwrap_or(16));
                    u64::from(t.width()) * u64::from(t.height()) * texel
                }
            })
            .sum()
    };
    let tensor = |t: &GpuTensor| t.buffer.size();
    let opt = |t: &Option<GpuTensor>| t.as_ref().map_or(0, tensor);
    let norm = |n: &Norm| tensor(&n.w) + opt(&n.b);
    let linear = |l: &Linear| matrix(&l.w) + opt(&l.b);
    let layers: u64 = w
        .layers
        .iter()
        .map(|l| {
            // Destructured in full, so that a new weight cannot be left out of the sum.
            let LayerWeights {
                attn_norm,
                qkv,
                q_norm,
                k_norm,
                o,
                post_attn_norm,
                mlp_norm,
                up,
                down,
                post_mlp_norm,
            } = l;
            norm(attn_norm)
                + linear(qkv)
                + opt(q_norm)
                + opt(k_norm)
                + linear(o)
                + post_attn_norm.as_ref().map_or(0, norm)
                + norm(mlp_norm)
                + linear(up)
                + linear(down)
                + post_mlp_norm.as_ref().map_or(0, norm)
        })
        .sum();
    matrix(&w.embed)
        + opt(&w.pos_embed)
        + layers
        + norm(&w.final_norm)
        + w.lm_head.as_ref().map_or(0, matrix)
}

/// KV bytes one token takes across all layers (K and V). Saturates instead of wrapping for a
/// config no memory could hold (a file's sizes are capped far below that: see
/// [`crate::model::config::caps`]).
pub fn kv_bytes_per_token(cfg: &ModelConfig, dtype: WeightDType) -> u64 {
    saturating_product(&[
        2,
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
        dtype.bytes_per_elem(),
    ])
}

fn saturating_product(factors: &[usize]) -> u64 {
    factors
        .iter()
        .fold(1u64, |acc, &f| acc.saturating_mul(f as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// SmolLM2-135M in f16, blocks of 16: 30 layers × 2 (K, V) × 3 heads × 64 × 2 bytes =
    /// 23040 bytes a token, 368640 a block; one layer's K pool takes 6144 bytes a block.
    fn smollm2(binding_bytes: u64) -> KvSizing {
        KvSizing {
            per_block: 368_640,
            per_layer_block: 6144,
            binding_bytes,
            // 64 sequences × 8192 tokens / 16 = 32768 blocks
            useful_blocks: 32_768,
        }
    }

    fn opts() -> ModelOptions {
        ModelOptions::new("m.gguf")
    }

    fn gpu(bytes: u64) -> Option<DeviceMemory> {
        Some(DeviceMemory {
            bytes,
            source: MemorySource::VulkanHeapSize,
        })
    }

    #[test]
    fn memory_budget_is_the_share_less_weights_and_activations() {
        // 0.9 × 4 GiB = 3865470566 bytes; − 270 MiB − 100 MiB = 3477497446 bytes
        // → 9433 blocks of 368640 bytes (3477381120 bytes).
        let p = plan_kv(
            &smollm2(2 * GIB),
            &opts(),
            gpu(4 * GIB),
            270 * MIB,
            100 * MIB,
        )
        .unwrap();
        assert_eq!(p.num_blocks, 9433);
        assert_eq!(p.bytes, 9433 * 368_640);
        assert_eq!(p.limit, None);
        assert_eq!(
            p.reason(),
            "90% of 4.0 GiB device-local memory − 270 MiB weights − 100 MiB activations"
        );
    }

    #[test]
    fn a_given_utilization_replaces_the_default() {
        // 0.5 × 4 GiB − 270 MiB − 100 MiB = 1678 MiB → 4772 blocks (4772.9…)
        let mut o = opts();
        o.gpu_memory_utilization = Some(0.5);
        let p = plan_kv(&smollm2(2 * GIB), &o, gpu(4 * GIB), 270 * MIB, 100 * MIB).unwrap();
        assert_eq!(p.num_blocks, (1678 * MIB / 368_640) as usize);
        o.gpu_memory_utilization = Some(1.5);
        assert!(plan_kv(&smollm2(2 * GIB), &o, gpu(4 * GIB), 0, 0).is_err());
    }

    #[test]
    fn the_pool_is_capped_by_one_binding_per_layer() {
        // 80 GiB leaves far more than lavapipe's 128 MiB binding holds per layer:
        // 134217728 / 6144 = 21845 blocks.
        let p = plan_kv(&smollm2(128 * MIB), &opts(), gpu(80 * GIB), 0, 0).unwrap();
        assert_eq!(p.num_blocks, 21_845);
        assert_eq!(p.limit, Some(KvLimit::Binding));
    }

    #[test]
    fn the_pool_is_capped_by_what_max_seqs_full_sequences_take() {
        let p = plan_kv(&smollm2(2 * GIB), &opts(), gpu(80 * GIB), 0, 0).unwrap();
        assert_eq!(p.num_blocks, 32_768);
        assert_eq!(p.limit, Some(KvLimit::Sequences));
    }

    #[test]
    fn too_little_memory_gives_the_minimum() {
        // 0.9 × 1 GiB < 2 GiB of weights: 64 MiB → 182 blocks.
        let p = plan_kv(&smollm2(2 * GIB), &opts(), gpu(GIB), 2 * GIB, 0).unwrap();
        assert_eq!(p.num_blocks, (64 * MIB / 368_640) as usize);
        assert_eq!(p.limit, Some(KvLimit::Minimum));
    }

    #[test]
    fn a_cpu_adapter_keeps_within_its_cap_unless_a_utilization_is_given() {
        let host = Some(DeviceMemory {
            bytes: 22 * GIB,
            source: MemorySource::HostAvailable,
        });
        // 1 GiB / 368640 = 2912 blocks.
        let p = plan_kv(&smollm2(2 * GIB), &opts(), host, 100 * MIB, 100 * MIB).unwrap();
        assert_eq!(p.num_blocks, 2912);
        assert_eq!(p.limit, Some(KvLimit::CpuAdapter));
        assert!(p.reason().ends_with("capped at 1.0 GiB on a CPU adapter"));
        let mut o = opts();
        o.gpu_memory_utilization = Some(0.25);
        // 0.25 × 22 GiB − 200 MiB = 5432 MiB → 15451 blocks
        let p = plan_kv(&smollm2(2 * GIB), &o, host, 100 * MIB, 100 * MIB).unwrap();
        assert_eq!(p.num_blocks, 15_451);
        assert_eq!(p.limit, None);
    }

    #[test]
    fn without_a_memory_figure_the_pool_is_the_fallback() {
        // 256 MiB / 368640 = 728 blocks (as before budgets came from the device).
        let p = plan_kv(&smollm2(2 * GIB), &opts(), None, 270 * MIB, 0).unwrap();
        assert_eq!(p.num_blocks, 728);
        assert_eq!(p.source, KvSource::Fallback);
    }

    #[test]
    fn explicit_sizes_win_and_a_count_beyond_the_binding_is_refused() {
        let mut o = opts();
        o.kv_memory_bytes = Some(512 * MIB);
        let p = plan_kv(&smollm2(2 * GIB), &o, gpu(80 * GIB), 0, 0).unwrap();
        assert_eq!((p.num_blocks, p.source), (1456, KvSource::Bytes(512 * MIB)));
        o.num_blocks = Some(100);
        let p = plan_kv(&smollm2(2 * GIB), &o, gpu(80 * GIB), 0, 0).unwrap();
        assert_eq!((p.num_blocks, p.source), (100, KvSource::Blocks));
        // A 1 MiB binding holds 170 blocks of one layer.
        o.num_blocks = Some(171);
        let e = plan_kv(&smollm2(MIB), &o, None, 0, 0).unwrap_err();
        assert!(e.to_string().contains("at most 170 blocks"), "{e}");
        o.num_blocks = None;
        o.kv_memory_bytes = Some(1000);
        assert!(
            plan_kv(&smollm2(MIB), &o, None, 0, 0).is_err(),
            "no whole block"
        );
    }
}
