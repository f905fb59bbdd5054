//! The model runner: owns the weights, the paged KV pools and the activation buffers, and
//! turns one [`StepBatch`] into logits with one command encoder and one submit.
//!
//! Every buffer and bind group is created once in [`Runner::new`]; a step only writes the
//! batch metadata, records the dispatches and reads back the logits rows it asked for.

use crate::gpu::graph::{AttentionOptions, AttentionShape, GateActivation, Rows};
use crate::gpu::kernels::copy_blocks::{check_pairs, words_per_block};
use crate::gpu::kernels::matmul_quant::{MatmulQuant, QuantFormat};
use crate::gpu::kernels::rope::RopeStyle;
use crate::gpu::kernels::{
    Argmax, CopyBlocks, Embedding, EmbeddingQuant, FeedTokens, Gelu, KvWrite, LayerNorm,
    LogitAdjust, Matmul, PagedAttention, QkNorm, RmsNorm, RopeKvWrite, Sample, Scale, SiluMul,
    SoftCap,
};
use crate::gpu::kv_pool::{KvPool, KvStorage, copy_texture_blocks};
use crate::gpu::profile::{Profiler, StepProfile};
use crate::gpu::weights::{GpuMatrix, MatrixFormat};
use crate::gpu::{GpuContext, GpuError, GpuTensor, WeightDType};

mod build;
mod check;
mod kv_transfer;
mod logits;
mod plan;
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
    qk_norm: QkNorm,
    scale: Scale,
    softcap: SoftCap,
    gelu: Gelu,
    copy_blocks: CopyBlocks,
    argmax: Argmax,
    logit_adjust: LogitAdjust,
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
    /// `StepBatch::adjust`: a `RowAdjust` per logits row, the masks (one per sequence at
    /// most, `mask_words` each) and the biases (`sampling::MAX_LOGIT_BIAS` per sequence at
    /// most). Written only when a step adjusts logits.
    row_adjust: wgpu::Buffer,
    masks: wgpu::Buffer,
    biases: wgpu::Buffer,
}

/// A matmul over a weight's parts: one bind group and column offset per part.
/// One part of a weight matrix with its bind group.
struct BoundPart {
    first_row: usize,
    rows: usize,
    format: MatrixFormat,
    bg: wgpu::BindGroup,
}

impl BoundPart {
    fn new(p: &crate::gpu::weights::MatrixPart, bg: wgpu::BindGroup) -> BoundPart {
        BoundPart {
            first_row: p.first_row,
            rows: p.rows,
            format: p.format,
            bg,
        }
    }
}

struct MatmulBinds {
    parts: Vec<BoundPart>,
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

/// One dispatch group of the plan (src/gpu/runner/plan.rs), with its bind groups: what the
/// recorder encodes for each step, in order.
enum Dispatch {
    /// The token-embedding gather, one bind group per part of the table.
    Embed {
        parts: Vec<(usize, usize, wgpu::BindGroup)>,
        width: usize,
    },
    /// Over the step's tokens, or gathered to its logits rows.
    RmsNorm {
        bg: wgpu::BindGroup,
        gather: bool,
        /// Adds to the output instead of writing it.
        accumulate: bool,
        width: usize,
        eps: f32,
    },
    QkNorm {
        bg: wgpu::BindGroup,
        eps: f32,
    },
    LayerNorm {
        bg: wgpu::BindGroup,
        gather: bool,
        width: usize,
        eps: f32,
    },
    Matmul {
        label: &'static str,
        /// The rows of x: the step's tokens, or its logits rows.
        rows: Rows,
        binds: MatmulBinds,
    },
    GatedAct {
        bg: wgpu::BindGroup,
        width: usize,
        act: GateActivation,
    },
    Scale {
        bg: wgpu::BindGroup,
        rows: Rows,
        width: usize,
        c: f32,
    },
    SoftCap {
        bg: wgpu::BindGroup,
        rows: Rows,
        width: usize,
        cap: f32,
    },
    Gelu {
        bg: wgpu::BindGroup,
        width: usize,
    },
    RopeKvWrite {
        bg: wgpu::BindGroup,
        style: RopeStyle,
        /// Leading dimensions of each head that rotate.
        rotary_dim: usize,
    },
    KvWrite(wgpu::BindGroup),
    Attention {
        bg: wgpu::BindGroup,
        params: AttentionOptions,
    },
}

pub struct Runner {
    ctx: GpuContext,
    vocab: usize,
    /// Positions the model allows (the embedding's learned-position rows, if it has them).
    max_context: usize,
    attention_shape: AttentionShape,
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
    /// `logit_adjust` over (logits, row_adjust, masks, biases).
    adjust_bind: wgpu::BindGroup,
    /// Words of one allowed-token mask (the vocabulary / 32, rounded up).
    mask_words: usize,
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
    /// The forward pass, in order.
    dispatches: Vec<Dispatch>,
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
    prerecorded: Option<(StepShape, usize, StepCommands)>,
    // Kept alive for the bind groups above.
    _weights: (Vec<GpuMatrix>, Vec<GpuTensor>),
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

/// A step's commands: one buffer, or two when its logits masks come after the submit (the
/// forward pass runs while the CPU computes them; the pick follows in `pick`).
pub(crate) struct StepCommands {
    forward: wgpu::CommandBuffer,
    pick: Option<wgpu::CommandBuffer>,
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
    /// The vocabulary size (width of a logits row).
    pub fn vocab_size(&self) -> usize {
        self.vocab
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

    /// Words of one allowed-token mask (`StepBatch::mask_row`): the vocabulary / 32, rounded up.
    pub fn mask_words(&self) -> usize {
        self.mask_words
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
        let wpb = words_per_block(
            self.rc.block_size,
            self.attention_shape.kv_dim(),
            self.rc.kv_dtype,
        );
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
