//! Recording a step: every kernel call of every layer and the readback copies, into one
//! command buffer. A recording depends only on the step's [`StepShape`]; the batch's contents
//! reach the GPU through the runner's metadata buffers, so the runner can record the next
//! decode step while the GPU runs the current one.

use super::{EmbeddingKernel, Kernels, MatmulBinds, Readback, Runner, quant_kernel};
use crate::batch::StepBatch;
use crate::gpu::kernels::{AttentionParams, MatmulParams, RopeParams};
use crate::gpu::profile::{Profiler, Recorder};
use crate::model::Architecture;
use crate::model::weights::MatrixFormat;

impl Runner {
    /// Records a step of `shape` (every dispatch and the readback copies) into one command
    /// buffer. Nothing here reads the batch's contents: those reach the GPU through the
    /// metadata buffers.
    pub(super) fn record(
        &self,
        shape: &StepShape,
        readback: &Readback,
        staging: usize,
        profiler: Option<&mut Profiler>,
    ) -> wgpu::CommandBuffer {
        let cfg = &self.cfg;
        let k = &self.kernels;
        let t = shape.tokens;
        let r = shape.full_logits.len();
        let (d, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let qkv_dim = cfg.q_dim() + 2 * cfg.kv_dim();
        let mut rec = Recorder::new(&self.ctx, profiler);
        {
            if shape.fed_rows > 0 {
                k.feed_tokens
                    .encode(rec.pass("feed tokens"), &self.feed_bind, t, shape.fed_rows);
            }
            for (start, rows, bg) in &self.embed_binds {
                let pass = rec.pass("embedding");
                match &k.embedding {
                    EmbeddingKernel::Dense(e) => {
                        e.encode(pass, bg, t, d, *start, *rows, cfg.max_context)
                    }
                    EmbeddingKernel::Quant(e) => e.encode(pass, bg, t, d, *start, *rows),
                }
            }
            let attn = AttentionParams {
                num_tokens: t,
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
                row_stride: qkv_dim,
                block_size: self.rc.block_size,
                max_blocks: shape.block_cols,
                scale: 1.0 / (cfg.head_dim as f32).sqrt(),
                max_context_len: shape.max_context_len,
                window: None,
                softcap: None,
            };
            for lb in &self.layers {
                match (cfg.arch, &lb.norm1) {
                    (_, None) => {} // fused into the qkv matmul
                    (Architecture::Llama, Some(bg)) => {
                        k.rms_norm.encode(rec.pass("norm"), bg, t, d, cfg.norm_eps)
                    }
                    (Architecture::Gpt2, Some(bg)) => {
                        k.layer_norm
                            .encode(rec.pass("norm"), bg, t, d, cfg.norm_eps)
                    }
                }
                let qkv_label = match lb.qkv.norm_eps {
                    Some(_) => "norm+matmul qkv",
                    None => "matmul qkv",
                };
                encode_matmul(k, &mut rec, qkv_label, &lb.qkv, t);
                if self.has_rope {
                    let p = RopeParams {
                        num_tokens: t,
                        row_stride: qkv_dim,
                        num_heads: cfg.num_heads,
                        num_kv_heads: cfg.num_kv_heads,
                        head_dim: cfg.head_dim,
                        max_positions: self.max_positions,
                        style: cfg.rope_style,
                    };
                    k.rope_kv_write
                        .encode(rec.pass("rope+kv_write"), &lb.kv_write, &p);
                } else {
                    k.kv_write.encode(
                        rec.pass("kv_write"),
                        &lb.kv_write,
                        t,
                        qkv_dim,
                        cfg.q_dim(),
                        cfg.kv_dim(),
                    );
                }
                k.attention
                    .encode(rec.pass("attention"), &lb.attention, &attn);
                encode_matmul(k, &mut rec, "matmul out", &lb.out_proj, t);
                match cfg.arch {
                    Architecture::Llama => {
                        if let Some(bg) = &lb.norm2 {
                            k.rms_norm.encode(rec.pass("norm"), bg, t, d, cfg.norm_eps);
                        }
                        let up_label = match lb.up.norm_eps {
                            Some(_) => "norm+matmul up",
                            None => "matmul up",
                        };
                        encode_matmul(k, &mut rec, up_label, &lb.up, t);
                        if let Some(act) = &lb.act {
                            k.silu_mul.encode(
                                rec.pass("activation"),
                                act,
                                t,
                                cfg.intermediate_size,
                            );
                        }
                    }
                    Architecture::Gpt2 => {
                        if let Some(bg) = &lb.norm2 {
                            k.layer_norm
                                .encode(rec.pass("norm"), bg, t, d, cfg.norm_eps);
                        }
                        encode_matmul(k, &mut rec, "matmul up", &lb.up, t);
                        if let Some(act) = &lb.act {
                            k.gelu
                                .encode(rec.pass("activation"), act, t * cfg.intermediate_size);
                        }
                    }
                }
                encode_matmul(k, &mut rec, "matmul down", &lb.down, t);
            }
            if r > 0 {
                match cfg.arch {
                    Architecture::Llama => k.rms_norm_gather.encode(
                        rec.pass("final norm"),
                        &self.final_norm,
                        r,
                        d,
                        cfg.norm_eps,
                    ),
                    Architecture::Gpt2 => k.layer_norm_gather.encode(
                        rec.pass("final norm"),
                        &self.final_norm,
                        r,
                        d,
                        cfg.norm_eps,
                    ),
                }
                encode_matmul(k, &mut rec, "matmul lm_head", &self.lm_head, r);
                k.argmax
                    .encode(rec.pass("argmax"), &self.argmax_bind, r, vocab);
                if shape.samples_on_gpu {
                    k.sample
                        .encode(rec.pass("sample"), &self.sample_bind, r, vocab);
                }
            }
        }
        readback.record(
            rec.encoder(),
            &self.ids,
            &self.logits,
            &self.staging[staging],
        );
        rec.finish()
    }
}

fn encode_matmul(
    kernels: &Kernels,
    rec: &mut Recorder,
    label: &'static str,
    mb: &MatmulBinds,
    m: usize,
) {
    for (start, rows, bg) in &mb.parts {
        let p = MatmulParams {
            m,
            n: if mb.glu { *rows / 2 } else { *rows },
            k: mb.k,
            y_stride: mb.y_stride,
            y_col: *start,
            bias: mb.bias,
            accumulate: mb.accumulate,
        };
        let pass = rec.pass(label);
        match (mb.format, mb.norm_eps) {
            (MatrixFormat::Dense(_), _) => kernels.matmul.encode(pass, bg, &p),
            (MatrixFormat::Quant(f), None) if mb.glu => {
                quant_kernel(kernels, f).encode_glu(pass, bg, &p)
            }
            (MatrixFormat::Quant(f), None) => quant_kernel(kernels, f).encode(pass, bg, &p),
            (MatrixFormat::Quant(f), Some(eps)) if mb.glu => {
                quant_kernel(kernels, f).encode_glu_normed(pass, bg, &p, eps)
            }
            (MatrixFormat::Quant(f), Some(eps)) => {
                quant_kernel(kernels, f).encode_normed(pass, bg, &p, eps)
            }
        }
    }
}

/// What a step's recorded commands depend on; everything else about a batch reaches the GPU
/// through the metadata buffers, so two batches of one shape can share a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StepShape {
    tokens: usize,
    /// Sizes the split-attention grid.
    max_context_len: usize,
    /// One per logits row (`StepBatch::full_logits`).
    pub(super) full_logits: Vec<bool>,
    /// Whether the sampler runs after the argmax (`StepBatch::samples_on_gpu`).
    samples_on_gpu: bool,
    /// Logits rows of the step before, when this one takes tokens from it (else 0).
    fed_rows: usize,
    /// Columns of the block-table rows (`StepBatch::max_blocks`).
    block_cols: usize,
}

impl StepShape {
    /// The shape of `b`, submitted after a step of `prev_rows` logits rows.
    pub(super) fn of(b: &StepBatch, prev_rows: usize) -> Self {
        Self {
            tokens: b.num_tokens(),
            max_context_len: b.context_lens.iter().max().map_or(0, |&c| c as usize),
            full_logits: b.full_logits.clone(),
            samples_on_gpu: b.samples_on_gpu(),
            fed_rows: if b.has_fed_tokens() { prev_rows } else { 0 },
            block_cols: b.max_blocks,
        }
    }

    /// The shape of the next step if it decodes one token for each sequence that got logits
    /// here (after a decode step: every sequence goes on; after a prefill: the prompts that
    /// ended) and the longest sequence is among them; `fed`: its tokens come from this step
    /// (overlapped steps).
    pub(super) fn next_decode(&self, fed: bool) -> Option<Self> {
        (!self.full_logits.is_empty()).then(|| Self {
            tokens: self.full_logits.len(),
            max_context_len: self.max_context_len + 1,
            full_logits: self.full_logits.clone(),
            samples_on_gpu: self.samples_on_gpu,
            fed_rows: if fed { self.full_logits.len() } else { 0 },
            block_cols: self.block_cols,
        })
    }
}
