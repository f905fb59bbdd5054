//! The model runner: owns the weights, the paged KV pools and the activation buffers, and
//! turns one [`StepBatch`] into logits with one command encoder and one submit.
//!
//! Every buffer and bind group is created once in [`Runner::new`]; a step only writes the
//! batch metadata, records the dispatches and reads back the logits rows it asked for.

use crate::gpu::kernels::attention::SplitLimits;
use crate::gpu::kernels::copy_blocks::{check_pairs, words_per_block};
use crate::gpu::kernels::matmul_quant::{MatmulQuant, QuantFormat, QuantTuning};
use crate::gpu::kernels::{
    Argmax, CopyBlocks, Embedding, EmbeddingQuant, FeedTokens, Gelu, KvWrite, LayerNorm, Matmul,
    PagedAttention, RmsNorm, RopeKvWrite, Sample, SiluMul, WeightData,
};
use crate::gpu::kv_pool::{KvPool, KvStorage, copy_texture_blocks};
use crate::gpu::pipeline::join_scoped;
use crate::gpu::profile::{Profiler, StepProfile};
use crate::gpu::{GpuContext, GpuError, GpuTensor, WeightDType};
use crate::model::weights::{GpuMatrix, LayerWeights, MatrixFormat, ModelWeights};
use crate::model::{Architecture, ModelConfig};
use crate::sampling::RowSampling;

mod check;
mod logits;
mod positions;
mod record;
mod step;

pub use logits::Logits;
use logits::Readback;
use record::StepShape;
pub use step::StepTicket;

/// Sizes fixed when the runner is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Storage type of the KV cache.
    pub kv_dtype: WeightDType,
    /// Tokens per KV block (power of two, 1..=256).
    pub block_size: usize,
    /// Physical blocks in the pool (each layer has a K and a V pool of this many blocks).
    pub num_blocks: usize,
    /// Most tokens in one step (the activation buffers' row count).
    pub max_batch_tokens: usize,
    /// Most sequences in one step.
    pub max_seqs: usize,
}

/// The token-embedding gather for the table's storage.
enum EmbeddingKernel {
    Dense(Embedding),
    Quant(EmbeddingQuant),
}

struct Kernels {
    embedding: EmbeddingKernel,
    /// A quantized matmul per quantized format the weights use.
    matmul_quant: Vec<(QuantFormat, MatmulQuant)>,
    rms_norm: RmsNorm,
    rms_norm_gather: RmsNorm,
    layer_norm: LayerNorm,
    layer_norm_gather: LayerNorm,
    matmul: Matmul,
    /// RoPE models write K and V through the fused kernel, others through the plain copy.
    rope_kv_write: RopeKvWrite,
    kv_write: KvWrite,
    attention: PagedAttention,
    silu_mul: SiluMul,
    gelu: Gelu,
    copy_blocks: CopyBlocks,
    argmax: Argmax,
    sample: Sample,
    feed_tokens: FeedTokens,
}

/// Per-step metadata buffers (see [`StepBatch`] for their meaning).
struct Metadata {
    token_ids: wgpu::Buffer,
    positions: wgpu::Buffer,
    slot_mapping: wgpu::Buffer,
    token_seq: wgpu::Buffer,
    block_tables: wgpu::Buffer,
    logit_rows: wgpu::Buffer,
    /// `RowSampling` per logits row (written only when a row is sampled on the GPU).
    row_sampling: wgpu::Buffer,
}

/// A matmul over a weight's parts: one bind group and column offset per part.
struct MatmulBinds {
    format: MatrixFormat,
    parts: Vec<(usize, usize, wgpu::BindGroup)>, // (first row, rows, bind group)
    k: usize,
    y_stride: usize,
    bias: bool,
    accumulate: bool,
    /// The stacked gate|up weight with SiLU·mul applied in the same pass: y gets rows / 2
    /// columns.
    glu: bool,
    /// RMSNorm with this eps fused in front (quantized k-split matmul): x is the residual
    /// stream and the layer's norm pass is skipped.
    norm_eps: Option<f32>,
}

struct LayerBinds {
    /// `None` where the next matmul applies the norm (`MatmulBinds::norm_eps`).
    norm1: Option<wgpu::BindGroup>,
    qkv: MatmulBinds,
    /// The fused RoPE + KV write for RoPE models, else the plain KV write.
    kv_write: wgpu::BindGroup,
    attention: wgpu::BindGroup,
    out_proj: MatmulBinds,
    norm2: Option<wgpu::BindGroup>,
    up: MatmulBinds,
    /// The activation pass; `None` when `up` applies it (SwiGLU fused into the matmul).
    act: Option<wgpu::BindGroup>,
    down: MatmulBinds,
}

pub struct Runner {
    ctx: GpuContext,
    cfg: ModelConfig,
    rc: RunnerConfig,
    /// Positions a sequence can reach (rows of the RoPE table): see [`positions`].
    max_positions: usize,
    /// Columns of the block-table matrix: blocks of the longest sequence that fits.
    max_blocks: usize,
    /// Most logits rows one step can return.
    max_logit_rows: usize,
    kernels: Kernels,
    meta: Metadata,
    logits: wgpu::Buffer,
    /// The GPU's token for each logits row; the argmax's bind group over (logits, ids) and
    /// the sampler's over (logits, ids, row_sampling).
    ids: wgpu::Buffer,
    argmax_bind: wgpu::BindGroup,
    sample_bind: wgpu::BindGroup,
    /// The feed kernel's bind group over (token_ids, ids).
    feed_bind: wgpu::BindGroup,
    /// Two readback buffers, so a step can be submitted while the one before it is still to
    /// be read back; `staging_step[i]` numbers the step whose readback buffer `i` holds (a
    /// third submit takes over the buffer of the oldest, whose ticket then fails to wait).
    staging: [wgpu::Buffer; 2],
    staging_step: [u64; 2],
    submitted_steps: u64,
    /// Staging buffer of the next submit.
    next_staging: usize,
    /// Logits rows of the step submitted last (what a fed token may name).
    last_rows: usize,
    embed_binds: Vec<(usize, usize, wgpu::BindGroup)>,
    /// Whether the model rotates Q and K (then `LayerBinds::kv_write` is the fused kernel's).
    has_rope: bool,
    layers: Vec<LayerBinds>,
    final_norm: wgpu::BindGroup,
    lm_head: MatmulBinds,
    /// (src, dst) block pairs for copy-on-write, and one bind group per layer over them.
    copy_pairs: wgpu::Buffer,
    copy_binds: Vec<wgpu::BindGroup>,
    kv_storage: KvStorage,
    k_pools: Vec<KvPool>,
    v_pools: Vec<KvPool>,
    /// Set by [`Runner::enable_profiling`]: per-kernel timestamps of every step.
    profiler: Option<Profiler>,
    last_profile: Option<StepProfile>,
    last_timing: StepTiming,
    /// The next step's commands, recorded while the GPU ran the last one, for the shape a
    /// decode step after it would have and the staging buffer it will use; used when the next
    /// batch has that shape.
    prerecorded: Option<(StepShape, usize, wgpu::CommandBuffer)>,
    // Kept alive for the bind groups above.
    _weights: ModelWeights,
    _buffers: Vec<wgpu::Buffer>,
}

/// CPU-side time of the last step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTiming {
    /// Writing the metadata and recording the dispatches, up to the submit (only the metadata
    /// when the commands were prerecorded).
    pub encode_us: f64,
    /// Whether the step ran commands recorded while the GPU ran the step before.
    pub prerecorded: bool,
    /// Inside the submit call (CPU adapters may run the whole step there).
    pub submit_us: f64,
    /// The whole `forward` call, readback included.
    pub total_us: f64,
}

/// Labels of the two readback buffers.
const STAGING_LABELS: [&str; 2] = ["logits staging 0", "logits staging 1"];

/// Block copies one submit can carry.
const MAX_BLOCK_COPIES: usize = 1024;

fn u32_buffer(ctx: &GpuContext, name: &str, len: usize) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(name),
        size: (len.max(1) * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

fn f32_buffer(ctx: &GpuContext, name: &str, len: usize) -> Result<wgpu::Buffer, GpuError> {
    Ok(GpuTensor::zeros(ctx, name, &[len], WeightDType::F32)?.buffer)
}

/// An activation buffer of `rows` × `k` f32 that matmuls read: also bindable as the quantized
/// matmul's uniform x window (see [`MatmulQuant::bind`]).
fn matmul_input(
    ctx: &GpuContext,
    name: &str,
    rows: usize,
    k: usize,
) -> Result<wgpu::Buffer, GpuError> {
    Ok(GpuTensor::matmul_input(ctx, name, &[], rows, k)?.buffer)
}

impl Runner {
    pub fn new(
        ctx: &GpuContext,
        cfg: &ModelConfig,
        weights: ModelWeights,
        rc: RunnerConfig,
    ) -> Result<Runner, GpuError> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let t = rc.max_batch_tokens.max(1);
        let qkv_dim = cfg.q_dim() + 2 * cfg.kv_dim();
        let inner = cfg.intermediate_size;
        let max_positions = positions::max_positions(cfg, &rc);
        let max_blocks = max_positions.div_ceil(rc.block_size);
        let vocab = cfg.vocab_size;
        let max_logit_rows = t.min((ctx.max_binding_bytes() / (vocab as u64 * 4)).max(1) as usize);
        let wdt = weights.dtype;

        let mut quant_formats: Vec<QuantFormat> = Vec::new();
        // Quantized weights sit in textures or in buffers (the loader's choice, one for all).
        let quant_in_texture = weights
            .matrices()
            .iter()
            .flat_map(|m| &m.parts)
            .any(|p| matches!(p.data, WeightData::Texture(_)));
        for m in weights.matrices() {
            if let MatrixFormat::Quant(f) = m.format {
                if !quant_formats.contains(&f) {
                    quant_formats.push(f);
                }
            }
        }
        // SwiGLU's gate|up matmul and SiLU·mul run as one pass when the stacked weight is
        // quantized in one binding (the fused kernel reads both halves from it).
        let glu_formats: Vec<QuantFormat> = weights
            .layers
            .iter()
            .filter_map(|l| match l {
                LayerWeights::Llama(w) => fused_glu_format(&w.w_gate_up),
                LayerWeights::Gpt2(_) => None,
            })
            .collect();
        // The widest input any matmul reads (hidden, attention output or MLP inner width).
        let max_k = d.max(cfg.q_dim()).max(inner);
        // Weights forced into textures (WLLM_QUANT_WEIGHTS) take the one-thread-per-column
        // kernel, the only one that reads textures.
        let quant_tuning = {
            let base = QuantTuning::for_adapter(ctx, max_k);
            QuantTuning {
                w_texture: quant_in_texture,
                k_split: if quant_in_texture { 1 } else { base.k_split },
                ..base
            }
        };
        // Llama's RMSNorms run inside the quantized qkv and gate|up matmuls where the kernel
        // has that form (GPUs: one dispatch fewer per norm).
        let fuse_norms = cfg.arch == Architecture::Llama && MatmulQuant::fuses_norm(quant_tuning);
        // Each kernel compiles on its own thread. Drivers that compile at pipeline creation
        // (llvmpipe: a fraction of a second each, most of a model's load) can then use more
        // cores. On 2 cores this measured level: the families' own threads keep both busy.
        let kv_dtype = rc.kv_dtype;
        let kv_storage =
            KvStorage::for_adapter(ctx, rc.num_blocks, rc.block_size, cfg.kv_dim(), kv_dtype)?;
        let kernels = std::thread::scope(|s| -> Result<Kernels, GpuError> {
            let embedding = s.spawn(|| match weights.embed.format {
                MatrixFormat::Quant(f) => {
                    EmbeddingKernel::Quant(EmbeddingQuant::new(ctx, f, quant_in_texture))
                }
                MatrixFormat::Dense(_) => {
                    EmbeddingKernel::Dense(Embedding::new(ctx, wdt, weights.pos_embed.is_some()))
                }
            });
            let matmul_quant = s.spawn(|| {
                quant_formats
                    .iter()
                    .map(|&f| {
                        let glu = glu_formats.contains(&f);
                        let k = MatmulQuant::with_variants(ctx, f, quant_tuning, glu, fuse_norms);
                        (f, k)
                    })
                    .collect()
            });
            let attention = s.spawn(|| {
                PagedAttention::for_model(
                    ctx,
                    hd,
                    kv_dtype,
                    cfg.num_kv_heads,
                    SplitLimits {
                        max_tokens: t,
                        num_heads: cfg.num_heads,
                        max_context: cfg.max_context,
                    },
                    kv_storage,
                )
            });
            let rms_norm = s.spawn(|| RmsNorm::new(ctx, false));
            let rms_norm_gather = s.spawn(|| RmsNorm::new(ctx, true));
            let layer_norm = s.spawn(|| LayerNorm::new(ctx, false));
            let layer_norm_gather = s.spawn(|| LayerNorm::new(ctx, true));
            let matmul = s.spawn(|| Matmul::new(ctx, wdt));
            let rope_kv_write = s.spawn(|| RopeKvWrite::new(ctx, kv_dtype, hd, kv_storage));
            let kv_write = s.spawn(|| KvWrite::new(ctx, kv_dtype, kv_storage));
            let silu_mul = s.spawn(|| SiluMul::new(ctx));
            let gelu = s.spawn(|| Gelu::new(ctx));
            let copy_blocks = s.spawn(|| CopyBlocks::new(ctx));
            let argmax = s.spawn(|| Argmax::new(ctx));
            let sample = s.spawn(|| Sample::new(ctx));
            let feed_tokens = s.spawn(|| FeedTokens::new(ctx));
            Ok(Kernels {
                embedding: join_scoped(embedding),
                matmul_quant: join_scoped(matmul_quant),
                rms_norm: join_scoped(rms_norm),
                rms_norm_gather: join_scoped(rms_norm_gather),
                layer_norm: join_scoped(layer_norm),
                layer_norm_gather: join_scoped(layer_norm_gather),
                matmul: join_scoped(matmul),
                rope_kv_write: join_scoped(rope_kv_write),
                kv_write: join_scoped(kv_write),
                attention: join_scoped(attention)?,
                silu_mul: join_scoped(silu_mul),
                gelu: join_scoped(gelu),
                copy_blocks: join_scoped(copy_blocks),
                argmax: join_scoped(argmax),
                sample: join_scoped(sample),
                feed_tokens: join_scoped(feed_tokens),
            })
        })?;
        let meta = Metadata {
            token_ids: u32_buffer(ctx, "token_ids", t),
            positions: u32_buffer(ctx, "positions", t),
            slot_mapping: u32_buffer(ctx, "slot_mapping", t),
            token_seq: u32_buffer(ctx, "token_seq", t),
            block_tables: u32_buffer(ctx, "block_tables", rc.max_seqs * max_blocks),
            logit_rows: u32_buffer(ctx, "logit_rows", max_logit_rows),
            row_sampling: u32_buffer(
                ctx,
                "row_sampling",
                max_logit_rows * std::mem::size_of::<RowSampling>() / 4,
            ),
        };
        // Activations, (max_batch_tokens, width) each.
        let x = f32_buffer(ctx, "x (residual)", t * d)?;
        let h = matmul_input(ctx, "h (normed)", t, d)?;
        let qkv = f32_buffer(ctx, "qkv", t * qkv_dim)?;
        let attn = matmul_input(ctx, "attention out", t, cfg.q_dim())?;
        let ffn_in_width = if cfg.arch == Architecture::Llama {
            2 * inner
        } else {
            inner
        };
        let ffn_in = f32_buffer(ctx, "gate_up / fc", t * ffn_in_width)?;
        let act = matmul_input(ctx, "mlp act", t, inner)?;
        let final_h = matmul_input(ctx, "final normed rows", max_logit_rows, d)?;
        let logits = f32_buffer(ctx, "logits", max_logit_rows * vocab)?;
        // Sized for the picked ids of a full step; a step that keeps whole logits rows grows
        // its buffer when submitted (see `Runner::fit_staging`). Sized for every row kept,
        // the two would take 2 × 50 MB of mappable memory for SmolLM2 at 256 rows, which
        // a run sampling on the GPU never touches.
        let staging = STAGING_LABELS
            .map(|label| logits::staging_buffer(ctx, label, (max_logit_rows * 4) as u64));
        let ids = u32_buffer(ctx, "token ids", max_logit_rows);
        let argmax_bind = kernels.argmax.bind(ctx, &logits, &ids);
        let sample_bind = kernels.sample.bind(ctx, &logits, &ids, &meta.row_sampling);
        let feed_bind = kernels.feed_tokens.bind(ctx, &meta.token_ids, &ids);
        let dummy = u32_buffer(ctx, "unused binding", 1);

        // KV pools: one K and one V pool per layer, (num_blocks * block_size, kv_dim), in
        // buffers or textures (src/gpu/kv_pool.rs).
        let slots = rc.num_blocks * rc.block_size;
        let mut k_pools = Vec::new();
        let mut v_pools = Vec::new();
        for l in 0..cfg.num_layers {
            let pool =
                |name: &str| KvPool::zeros(ctx, name, kv_storage, slots, cfg.kv_dim(), rc.kv_dtype);
            k_pools.push(pool(&format!("k_cache[{l}]"))?);
            v_pools.push(pool(&format!("v_cache[{l}]"))?);
        }

        let mm = &kernels.matmul;
        let matmul_binds = |w: &GpuMatrix,
                            x: &wgpu::Buffer,
                            bias: Option<&GpuTensor>,
                            y: &wgpu::Buffer,
                            y_stride: usize,
                            accumulate: bool|
         -> Result<MatmulBinds, GpuError> {
            if bias.is_some() && w.parts.len() > 1 {
                return Err(GpuError::Shape {
                    op: "matmul",
                    msg: "a biased weight must fit one binding".into(),
                });
            }
            let bias_buf = bias.map_or(&dummy, |b| &b.buffer);
            let bind = |data: &WeightData| match (w.format, data) {
                (MatrixFormat::Dense(_), WeightData::Buffer(buf)) => {
                    Ok(mm.bind(ctx, x, buf, bias_buf, y))
                }
                (MatrixFormat::Quant(f), _) => {
                    quant_kernel(&kernels, f).bind(ctx, x, data, bias_buf, y)
                }
                (MatrixFormat::Dense(_), WeightData::Texture(_)) => Err(GpuError::Shape {
                    op: "matmul",
                    msg: "dense weights are read from buffers".into(),
                }),
            };
            Ok(MatmulBinds {
                format: w.format,
                parts: w
                    .parts
                    .iter()
                    .map(|p| Ok((p.first_row, p.rows, bind(&p.data)?)))
                    .collect::<Result<_, GpuError>>()?,
                k: w.cols,
                y_stride,
                bias: bias.is_some(),
                accumulate,
                glu: false,
                norm_eps: None,
            })
        };
        // A quantized matmul over RMSNorm(x, g) with the norm fused, or None where it cannot
        // be (dense weights, or a tuning without the fused form).
        let normed_binds = |w: &GpuMatrix,
                            g: &GpuTensor,
                            y: &wgpu::Buffer,
                            y_stride: usize,
                            glu: bool|
         -> Result<Option<MatmulBinds>, GpuError> {
            let MatrixFormat::Quant(f) = w.format else {
                return Ok(None);
            };
            if !fuse_norms || (glu && fused_glu_format(w).is_none()) {
                return Ok(None);
            }
            let k = quant_kernel(&kernels, f);
            Ok(Some(MatmulBinds {
                format: w.format,
                parts: w
                    .parts
                    .iter()
                    .map(|p| {
                        let bg = k.bind_normed(ctx, &x, &p.data, &g.buffer, &dummy, y)?;
                        Ok((p.first_row, p.rows, bg))
                    })
                    .collect::<Result<_, GpuError>>()?,
                k: w.cols,
                y_stride,
                bias: false,
                accumulate: false,
                glu,
                norm_eps: Some(cfg.norm_eps),
            }))
        };

        let pos_table = weights.pos_embed.as_ref().map_or(&dummy, |p| &p.buffer);
        let embed_binds = weights
            .embed
            .parts
            .iter()
            .map(|p| {
                let bg = match (&kernels.embedding, &p.data) {
                    (EmbeddingKernel::Dense(e), WeightData::Buffer(table)) => {
                        Ok(e.bind(ctx, &meta.token_ids, &meta.positions, table, pos_table, &x))
                    }
                    (EmbeddingKernel::Quant(e), data) => e.bind(ctx, &meta.token_ids, data, &x),
                    (EmbeddingKernel::Dense(_), WeightData::Texture(_)) => Err(GpuError::Shape {
                        op: "embedding",
                        msg: "a dense table is read from a buffer".into(),
                    }),
                }?;
                Ok((p.first_row, p.rows, bg))
            })
            .collect::<Result<_, GpuError>>()?;

        let mut buffers = vec![];
        let cos_sin = positions::rope_table(ctx, cfg, max_positions)?;

        let copy_pairs = u32_buffer(ctx, "block copy pairs", 2 * MAX_BLOCK_COPIES);
        // Texture pools copy blocks through a staging buffer instead (copy_texture_blocks).
        let copy_binds = k_pools
            .iter()
            .zip(&v_pools)
            .filter_map(|pools| match pools {
                (KvPool::Buffer(k), KvPool::Buffer(v)) => {
                    Some(kernels.copy_blocks.bind(ctx, &copy_pairs, k, v))
                }
                _ => None,
            })
            .collect();
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for (l, lw) in weights.layers.iter().enumerate() {
            let kv_write = match &cos_sin {
                Some(cs) => kernels.rope_kv_write.bind(
                    ctx,
                    &qkv,
                    &meta.positions,
                    cs,
                    &meta.slot_mapping,
                    &k_pools[l],
                    &v_pools[l],
                ),
                None => {
                    kernels
                        .kv_write
                        .bind(ctx, &qkv, &meta.slot_mapping, &k_pools[l], &v_pools[l])
                }
            };
            let attention = kernels.attention.bind(
                ctx,
                &qkv,
                &k_pools[l],
                &v_pools[l],
                &meta.block_tables,
                &meta.token_seq,
                &meta.positions,
                &attn,
            )?;
            layers.push(match lw {
                LayerWeights::Llama(w) => {
                    let qkv_normed = normed_binds(&w.wqkv, &w.attn_norm, &qkv, qkv_dim, false)?;
                    let up_normed = normed_binds(&w.w_gate_up, &w.ffn_norm, &act, inner, true)?;
                    let norm_pass =
                        |g: &GpuTensor| kernels.rms_norm.bind(ctx, &x, &g.buffer, &dummy, &h);
                    LayerBinds {
                        norm1: qkv_normed.is_none().then(|| norm_pass(&w.attn_norm)),
                        qkv: match qkv_normed {
                            Some(b) => b,
                            None => matmul_binds(&w.wqkv, &h, None, &qkv, qkv_dim, false)?,
                        },
                        kv_write,
                        attention,
                        out_proj: matmul_binds(&w.wo, &attn, None, &x, d, true)?,
                        norm2: up_normed.is_none().then(|| norm_pass(&w.ffn_norm)),
                        up: if let Some(b) = up_normed {
                            b
                        } else if fused_glu_format(&w.w_gate_up).is_some() {
                            MatmulBinds {
                                glu: true,
                                ..matmul_binds(&w.w_gate_up, &h, None, &act, inner, false)?
                            }
                        } else {
                            matmul_binds(&w.w_gate_up, &h, None, &ffn_in, 2 * inner, false)?
                        },
                        act: fused_glu_format(&w.w_gate_up)
                            .is_none()
                            .then(|| kernels.silu_mul.bind(ctx, &ffn_in, &act)),
                        down: matmul_binds(&w.w_down, &act, None, &x, d, true)?,
                    }
                }
                LayerWeights::Gpt2(w) => LayerBinds {
                    norm1: Some(kernels.layer_norm.bind(
                        ctx,
                        &x,
                        &w.ln1_w.buffer,
                        &w.ln1_b.buffer,
                        &dummy,
                        &h,
                    )),
                    qkv: matmul_binds(&w.w_qkv, &h, Some(&w.b_qkv), &qkv, qkv_dim, false)?,
                    kv_write,
                    attention,
                    out_proj: matmul_binds(&w.w_o, &attn, Some(&w.b_o), &x, d, true)?,
                    norm2: Some(kernels.layer_norm.bind(
                        ctx,
                        &x,
                        &w.ln2_w.buffer,
                        &w.ln2_b.buffer,
                        &dummy,
                        &h,
                    )),
                    up: matmul_binds(&w.w_fc, &h, Some(&w.b_fc), &ffn_in, inner, false)?,
                    act: Some(kernels.gelu.bind(ctx, &ffn_in)),
                    down: matmul_binds(&w.w_proj, &ffn_in, Some(&w.b_proj), &x, d, true)?,
                },
            });
        }
        let final_norm = match &weights.final_norm_b {
            None => kernels.rms_norm_gather.bind(
                ctx,
                &x,
                &weights.final_norm_w.buffer,
                &meta.logit_rows,
                &final_h,
            ),
            Some(b) => kernels.layer_norm_gather.bind(
                ctx,
                &x,
                &weights.final_norm_w.buffer,
                &b.buffer,
                &meta.logit_rows,
                &final_h,
            ),
        };
        let lm_head = matmul_binds(weights.lm_head(), &final_h, None, &logits, vocab, false)?;
        let has_rope = cos_sin.is_some();
        buffers.extend([x, h, qkv, attn, ffn_in, act, final_h, dummy]);
        buffers.extend(cos_sin);

        Ok(Runner {
            ctx: ctx.clone(),
            cfg: cfg.clone(),
            rc,
            max_positions,
            max_blocks,
            max_logit_rows,
            kernels,
            meta,
            logits,
            ids,
            argmax_bind,
            sample_bind,
            feed_bind,
            staging,
            staging_step: [0; 2],
            submitted_steps: 0,
            next_staging: 0,
            last_rows: 0,
            embed_binds,
            has_rope,
            layers,
            final_norm,
            lm_head,
            copy_pairs,
            copy_binds,
            kv_storage,
            k_pools,
            v_pools,
            profiler: None,
            last_profile: None,
            last_timing: StepTiming::default(),
            prerecorded: None,
            _weights: weights,
            _buffers: buffers,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn runner_config(&self) -> &RunnerConfig {
        &self.rc
    }

    /// Bytes of the two logits readback buffers now: the picked ids of a full step at first,
    /// grown when a step keeps whole rows.
    pub fn readback_capacity(&self) -> [u64; 2] {
        self.staging.each_ref().map(|b| b.size())
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Times every kernel call of each following step (see [`Runner::last_profile`]), or
    /// stops doing so. Fails on adapters without timestamp queries.
    pub fn set_profiling(&mut self, on: bool) -> Result<(), GpuError> {
        if !on {
            self.profiler = None;
            self.last_profile = None;
        } else if self.profiler.is_none() {
            self.profiler = Some(Profiler::new(&self.ctx)?);
        }
        Ok(())
    }

    /// Per-kernel GPU time of the last step, when profiling.
    pub fn is_profiling(&self) -> bool {
        self.profiler.is_some()
    }

    pub fn last_profile(&self) -> Option<&StepProfile> {
        self.last_profile.as_ref()
    }

    /// CPU-side time of the last step.
    pub fn last_timing(&self) -> StepTiming {
        self.last_timing
    }

    /// Most columns a batch's block-table matrix may have (the blocks of the longest
    /// sequence the model allows). A batch may use fewer: [`Runner::block_columns`].
    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    /// Block-table columns for a batch whose longest table holds `blocks` blocks: the next
    /// power of two (so a step's recording, which depends on it, is rarely re-made as
    /// sequences grow), at most [`Runner::max_blocks`]. Narrow rows keep the per-step
    /// metadata small: (sequences × columns) words instead of (sequences × max_blocks).
    pub fn block_columns(&self, blocks: usize) -> usize {
        blocks.max(1).next_power_of_two().min(self.max_blocks)
    }

    /// Most logits rows one step may ask for.
    pub fn max_logit_rows(&self) -> usize {
        self.max_logit_rows
    }

    /// Copies whole KV blocks `src → dst` in every layer (copy-on-write of a shared block
    /// before a forked sequence appends to it). Runs before the next forward pass.
    pub fn copy_blocks(&mut self, copies: &[[u32; 2]]) -> Result<(), GpuError> {
        if copies.is_empty() {
            return Ok(());
        }
        check_pairs(copies, self.rc.num_blocks)?;
        if let KvStorage::Texture(layout) = self.kv_storage {
            let mut enc = self
                .ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("copy blocks"),
                });
            let textures: Vec<&wgpu::Texture> = (self.k_pools.iter().chain(&self.v_pools))
                .filter_map(|pool| match pool {
                    KvPool::Texture { texture, .. } => Some(texture),
                    KvPool::Buffer(_) => None,
                })
                .collect();
            let bs = self.rc.block_size as u32;
            copy_texture_blocks(&self.ctx, &mut enc, &textures, layout, bs, copies);
            self.ctx.queue.submit([enc.finish()]);
            return Ok(());
        }
        let wpb = words_per_block(self.rc.block_size, self.cfg.kv_dim(), self.rc.kv_dtype);
        // write_buffer lands before the next submit, so each chunk of pairs gets its own submit.
        for chunk in copies.chunks(MAX_BLOCK_COPIES) {
            let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
            self.ctx
                .queue
                .write_buffer(&self.copy_pairs, 0, bytemuck::cast_slice(&flat));
            let mut enc = self
                .ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("copy blocks"),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("copy blocks"),
                    timestamp_writes: None,
                });
                for bg in &self.copy_binds {
                    self.kernels
                        .copy_blocks
                        .encode(&mut pass, bg, chunk.len(), wpb);
                }
            }
            self.ctx.queue.submit([enc.finish()]);
        }
        Ok(())
    }
}

fn quant_kernel(kernels: &Kernels, format: QuantFormat) -> &MatmulQuant {
    kernels
        .matmul_quant
        .iter()
        .find(|(f, _)| *f == format)
        .map(|(_, k)| k)
        .expect("a pipeline per quantized format the weights use")
}

/// The quantized format of a stacked gate|up weight the fused SwiGLU matmul can take (one
/// binding), if any.
fn fused_glu_format(w: &GpuMatrix) -> Option<QuantFormat> {
    match w.format {
        MatrixFormat::Quant(f) if w.parts.len() == 1 => Some(f),
        _ => None,
    }
}
