//! Recording a step: every kernel call of every layer and the readback copies, into one
//! command buffer. A recording depends only on the step's [`StepShape`]; the batch's contents
//! reach the GPU through the runner's metadata buffers, so the runner can record the next
//! decode step while the GPU runs the current one.

use super::{
    Dispatch, EmbeddingKernel, Kernels, MatmulBinds, Readback, Runner, StepCommands, quant_kernel,
};
use crate::batch::StepBatch;
use crate::gpu::graph::Rows;
use crate::gpu::kernels::{AttentionParams, MatmulParams, QkNormParams, RopeParams};
use crate::gpu::profile::{Profiler, Recorder};
use crate::gpu::weights::MatrixFormat;

impl Runner {
    /// Records a step of `shape` (every dispatch and the readback copies) into one command
    /// buffer, or two when its masks follow the submit (the pick: logit adjust, argmax,
    /// sample, readback). Nothing here reads the batch's contents: those reach the GPU through the
    /// metadata buffers.
    pub(super) fn record(
        &self,
        shape: &StepShape,
        readback: &Readback,
        staging: usize,
        profiler: Option<&mut Profiler>,
    ) -> StepCommands {
        let k = &self.kernels;
        let heads = self.attention_shape;
        let t = shape.tokens;
        let r = shape.full_logits.len();
        let vocab = self.vocab;
        let rows_of = |rows: Rows| match rows {
            Rows::Tokens => t,
            Rows::Logits => r,
        };
        let mut rec = Recorder::new(&self.ctx, profiler);
        {
            if shape.fed_rows > 0 {
                k.feed_tokens
                    .encode(rec.pass("feed tokens"), &self.feed_bind, t, shape.fed_rows);
            }
            for d in &self.dispatches {
                match d {
                    Dispatch::Embed { parts, width } => {
                        for (start, rows, bg) in parts {
                            let pass = rec.pass("embedding");
                            match &k.embedding {
                                EmbeddingKernel::Dense(e) => {
                                    e.encode(pass, bg, t, *width, *start, *rows, self.max_context)
                                }
                                EmbeddingKernel::Quant(e) => {
                                    e.encode(pass, bg, t, *width, *start, *rows)
                                }
                            }
                        }
                    }
                    // Gathered norms run over the logits rows only, and not at all without.
                    Dispatch::RmsNorm { gather: true, .. }
                    | Dispatch::LayerNorm { gather: true, .. }
                        if r == 0 => {}
                    Dispatch::RmsNorm {
                        bg,
                        gather,
                        accumulate,
                        width,
                        eps,
                    } => {
                        let (kernel, label, rows) = match gather {
                            true => (&k.rms_norm_gather, "final norm", r),
                            false => (&k.rms_norm, "norm", t),
                        };
                        if *accumulate {
                            kernel.encode_accumulate(rec.pass(label), bg, rows, *width, *eps)
                        } else {
                            kernel.encode(rec.pass(label), bg, rows, *width, *eps)
                        }
                    }
                    Dispatch::QkNorm { bg, eps } => {
                        let p = QkNormParams {
                            num_tokens: t,
                            row_stride: heads.qkv_dim(),
                            num_heads: heads.num_heads,
                            num_kv_heads: heads.num_kv_heads,
                            head_dim: heads.head_dim,
                            eps: *eps,
                        };
                        k.qk_norm.encode(rec.pass("q/k norm"), bg, &p)
                    }
                    Dispatch::Scale { bg, rows, width, c } => {
                        let rows = rows_of(*rows);
                        if rows > 0 {
                            k.scale.encode(rec.pass("scale"), bg, rows, *width, *c)
                        }
                    }
                    Dispatch::SoftCap {
                        bg,
                        rows,
                        width,
                        cap,
                    } => {
                        let rows = rows_of(*rows);
                        if rows > 0 {
                            k.softcap
                                .encode(rec.pass("soft-cap"), bg, rows, *width, *cap)
                        }
                    }
                    Dispatch::LayerNorm {
                        bg,
                        gather,
                        width,
                        eps,
                    } => {
                        let (kernel, label, rows) = match gather {
                            true => (&k.layer_norm_gather, "final norm", r),
                            false => (&k.layer_norm, "norm", t),
                        };
                        kernel.encode(rec.pass(label), bg, rows, *width, *eps)
                    }
                    Dispatch::Matmul { label, rows, binds } => {
                        let m = rows_of(*rows);
                        if m > 0 {
                            encode_matmul(k, &mut rec, label, binds, m);
                        }
                    }
                    Dispatch::GatedAct { bg, width, act } => {
                        k.silu_mul
                            .encode_act(rec.pass("activation"), bg, t, *width, *act)
                    }
                    Dispatch::Gelu { bg, width } => {
                        k.gelu.encode(rec.pass("activation"), bg, t * width)
                    }
                    Dispatch::RopeKvWrite {
                        bg,
                        style,
                        rotary_dim,
                    } => {
                        let p = RopeParams {
                            num_tokens: t,
                            row_stride: heads.qkv_dim(),
                            num_heads: heads.num_heads,
                            num_kv_heads: heads.num_kv_heads,
                            head_dim: heads.head_dim,
                            max_positions: self.max_positions,
                            style: *style,
                        };
                        k.rope_kv_write.encode_partial(
                            rec.pass("rope+kv_write"),
                            bg,
                            &p,
                            *rotary_dim,
                        )
                    }
                    Dispatch::KvWrite(bg) => k.kv_write.encode(
                        rec.pass("kv_write"),
                        bg,
                        t,
                        heads.qkv_dim(),
                        heads.q_dim(),
                        heads.kv_dim(),
                    ),
                    Dispatch::Attention { bg, params } => {
                        let p = AttentionParams {
                            num_tokens: t,
                            num_heads: heads.num_heads,
                            num_kv_heads: heads.num_kv_heads,
                            head_dim: heads.head_dim,
                            row_stride: heads.qkv_dim(),
                            block_size: self.rc.block_size,
                            max_blocks: shape.block_cols,
                            scale: params.scale,
                            window: params.window.map(|w| w.min(u32::MAX as usize) as u32),
                            softcap: params.softcap,
                            max_context_len: shape.max_context_len,
                        };
                        k.attention.encode(rec.pass("attention"), bg, &p)
                    }
                }
            }
        }
        // With masks that follow the submit, the pick goes in a command buffer of its own.
        let (forward, mut pick) = if shape.adjusts_logits && shape.masks_later {
            (Some(rec.finish()), Recorder::new(&self.ctx, None))
        } else {
            (None, rec)
        };
        if r > 0 {
            if shape.adjusts_logits {
                k.logit_adjust
                    .encode(pick.pass("logit adjust"), &self.adjust_bind, r, vocab);
            }
            k.argmax
                .encode(pick.pass("argmax"), &self.argmax_bind, r, vocab);
            if shape.samples_on_gpu {
                k.sample
                    .encode(pick.pass("sample"), &self.sample_bind, r, vocab);
            }
        }
        readback.record(
            pick.encoder(),
            &self.ids,
            &self.logits,
            &self.staging[staging],
        );
        let pick = pick.finish();
        match forward {
            Some(forward) => StepCommands {
                forward,
                pick: Some(pick),
            },
            None => StepCommands {
                forward: pick,
                pick: None,
            },
        }
    }
}

fn encode_matmul(
    kernels: &Kernels,
    rec: &mut Recorder,
    label: &'static str,
    mb: &MatmulBinds,
    m: usize,
) {
    for part in &mb.parts {
        let (bg, rows) = (&part.bg, part.rows);
        let p = MatmulParams {
            m,
            n: if mb.glu { rows / 2 } else { rows },
            k: mb.k,
            y_stride: mb.y_stride,
            y_col: part.first_row,
            bias: mb.bias,
            accumulate: mb.accumulate,
        };
        let pass = rec.pass(label);
        match (part.format, mb.norm_eps) {
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
    /// Whether `logit_adjust` runs before the pick, and whether its masks follow the submit
    /// (`StepBatch::adjust`).
    pub(super) adjusts_logits: bool,
    pub(super) masks_later: bool,
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
            adjusts_logits: !b.adjust.is_empty(),
            masks_later: !b.adjust.is_empty() && b.adjust.masks_later,
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
            adjusts_logits: self.adjusts_logits,
            masks_later: self.masks_later,
            fed_rows: if fed { self.full_logits.len() } else { 0 },
            block_cols: self.block_cols,
        })
    }
}
