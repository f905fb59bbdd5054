//! Building a runner from a [`Graph`]: the kernels its ops need, one buffer per activation,
//! the KV pools, and every op's bind groups, after [`plan`] has decided the fusions.

use super::plan::{Planned, fused_glu_format, plan};
use super::{
    BoundPart, Dispatch, EmbeddingKernel, Kernels, MatmulBinds, Metadata, Runner, RunnerConfig,
    STAGING_LABELS, StepTiming, f32_buffer, logits, matmul_input, positions, quant_kernel,
    u32_buffer,
};
use crate::batch::{RowAdjust, TokenBias};
use crate::gpu::graph::{Act, Graph, Op, Rows};
use crate::gpu::kernels::attention::SplitLimits;
use crate::gpu::kernels::matmul_quant::{MatmulQuant, QuantFormat};
use crate::gpu::kernels::{
    Argmax, CopyBlocks, Embedding, EmbeddingQuant, FeedTokens, Gelu, KvWrite, LayerNorm,
    LogitAdjust, Matmul, PagedAttention, QkNorm, RmsNorm, RopeKvWrite, Sample, Scale, SiluMul,
    SoftCap, WeightData,
};
use crate::gpu::kv_pool::{KvPool, KvStorage};
use crate::gpu::pipeline::join_scoped;
use crate::gpu::profile::intern_label;
use crate::gpu::weights::{GpuMatrix, MatrixFormat, MatrixPart};
use crate::gpu::{GpuContext, GpuError};
use crate::sampling::{MAX_LOGIT_BIAS, RowSampling};

impl Runner {
    /// Builds everything `graph` needs for steps of up to `rc.max_batch_tokens` tokens.
    pub fn new(ctx: &GpuContext, graph: Graph, rc: RunnerConfig) -> Result<Runner, GpuError> {
        let g = &graph;
        let heads = g.attention;
        let t = rc.max_batch_tokens.max(1);
        let vocab = g.vocab;
        let max_positions = positions::max_positions(g, &rc);
        let max_blocks = max_positions.div_ceil(rc.block_size);
        let max_logit_rows = t.min((ctx.max_binding_bytes() / (vocab as u64 * 4)).max(1) as usize);
        let wdt = g.weight_dtype;
        // Only the rows sampled next (one per sequence) are adjusted.
        let adjusted_rows = rc.max_seqs.clamp(1, max_logit_rows);
        let mask_words = vocab.div_ceil(32);

        let mut quant_formats: Vec<QuantFormat> = Vec::new();
        for f in g.matrices.iter().flat_map(|m| m.quant_formats()) {
            if !quant_formats.contains(&f) {
                quant_formats.push(f);
            }
        }
        // The widest input any matmul reads.
        let max_k = g.matrices.iter().map(|m| m.cols).max().unwrap_or(1);
        let quant_tuning = ctx.profile.quant_tuning(max_k);
        // Quantized weights sit in textures where the profile reads them there and their format
        // has texture planes, else in buffers (the loader's choice, made the same way).
        for p in g.matrices.iter().flat_map(|m| &m.parts) {
            if let MatrixFormat::Quant(f) = p.format {
                let in_texture = matches!(p.data, WeightData::Texture(_));
                if in_texture != (quant_tuning.w_texture && f.texture_layout()) {
                    return Err(GpuError::Shape {
                        op: "runner",
                        msg: "the quantized weights were uploaded for another device profile"
                            .into(),
                    });
                }
            }
        }
        let plan = plan(g, MatmulQuant::fuses_norm(quant_tuning));
        // The quantized formats whose matmul needs the fused SwiGLU or fused-norm variants.
        let mut glu_formats = Vec::new();
        let mut normed = false;
        for p in &plan {
            let (linear, glu) = match *p {
                Planned::Op(_) => continue,
                Planned::NormedLinear { linear, glu, .. } => {
                    normed = true;
                    (linear, glu.is_some())
                }
                Planned::GluLinear { linear, .. } => (linear, true),
            };
            if let (true, Op::Linear { w, .. }) = (glu, &g.ops[linear]) {
                glu_formats.extend(fused_glu_format(&g.matrices[w.0]));
            }
        }

        // Each kernel compiles on its own thread. Drivers that compile at pipeline creation
        // (llvmpipe: a fraction of a second each, most of a model's load) can then use more
        // cores. On 2 cores this measured level: the families' own threads keep both busy.
        let kv_dtype = rc.kv_dtype;
        let kv_storage =
            KvStorage::for_adapter(ctx, rc.num_blocks, rc.block_size, heads.kv_dim(), kv_dtype)?;
        let embed_table = g.ops.iter().find_map(|op| match op {
            Op::Embed {
                table, positions, ..
            } => Some((&g.matrices[table.0], positions.is_some())),
            _ => None,
        });
        let kernels = std::thread::scope(|s| -> Result<Kernels, GpuError> {
            let embedding =
                s.spawn(
                    || match embed_table.map(|(m, pos)| (m.single_format(), pos)) {
                        Some((Some(MatrixFormat::Quant(f)), _)) => EmbeddingKernel::Quant(
                            EmbeddingQuant::new(ctx, f, quant_tuning.w_texture),
                        ),
                        table => EmbeddingKernel::Dense(Embedding::new(
                            ctx,
                            wdt,
                            table.is_some_and(|(_, pos)| pos),
                        )),
                    },
                );
            let matmul_quant = s.spawn(|| {
                quant_formats
                    .iter()
                    .map(|&f| {
                        let glu = glu_formats.contains(&f);
                        let k = MatmulQuant::with_variants(ctx, f, quant_tuning, glu, normed);
                        (f, k)
                    })
                    .collect()
            });
            let attention = s.spawn(|| {
                PagedAttention::for_model(
                    ctx,
                    heads.head_dim,
                    kv_dtype,
                    heads.num_kv_heads,
                    SplitLimits {
                        max_tokens: t,
                        num_heads: heads.num_heads,
                        max_context: g.max_context,
                    },
                    kv_storage,
                )
            });
            let rms_norm = s.spawn(|| RmsNorm::new(ctx, false));
            let rms_norm_gather = s.spawn(|| RmsNorm::new(ctx, true));
            let layer_norm = s.spawn(|| LayerNorm::new(ctx, false));
            let layer_norm_gather = s.spawn(|| LayerNorm::new(ctx, true));
            let matmul = s.spawn(|| Matmul::new(ctx, wdt));
            let rope_kv_write =
                s.spawn(|| RopeKvWrite::new(ctx, kv_dtype, heads.head_dim, kv_storage));
            let kv_write = s.spawn(|| KvWrite::new(ctx, kv_dtype, kv_storage));
            let silu_mul = s.spawn(|| SiluMul::new(ctx));
            let qk_norm = s.spawn(|| QkNorm::new(ctx));
            let scale = s.spawn(|| Scale::new(ctx));
            let softcap = s.spawn(|| SoftCap::new(ctx));
            let gelu = s.spawn(|| Gelu::new(ctx));
            let copy_blocks = s.spawn(|| CopyBlocks::new(ctx));
            let argmax = s.spawn(|| Argmax::new(ctx));
            let sample = s.spawn(|| Sample::new(ctx));
            let logit_adjust = s.spawn(|| LogitAdjust::new(ctx));
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
                qk_norm: join_scoped(qk_norm),
                scale: join_scoped(scale),
                softcap: join_scoped(softcap),
                gelu: join_scoped(gelu),
                copy_blocks: join_scoped(copy_blocks),
                argmax: join_scoped(argmax),
                sample: join_scoped(sample),
                logit_adjust: join_scoped(logit_adjust),
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
            row_adjust: u32_buffer(
                ctx,
                "row_adjust",
                max_logit_rows * std::mem::size_of::<RowAdjust>() / 4,
            ),
            masks: u32_buffer(ctx, "logit masks", adjusted_rows * mask_words),
            biases: u32_buffer(
                ctx,
                "logit biases",
                adjusted_rows * MAX_LOGIT_BIAS * std::mem::size_of::<TokenBias>() / 4,
            ),
        };

        // One buffer per activation, (rows, width) f32; those an unfused matmul reads are
        // also bindable as the quantized matmul's x window (see [`MatmulQuant::bind`]).
        let logits_act = g.logits.ok_or_else(|| GpuError::Shape {
            op: "graph",
            msg: "the graph names no logits".into(),
        })?;
        let mut matmul_inputs = vec![false; g.acts.len()];
        for p in &plan {
            if let Planned::Op(i) | Planned::GluLinear { linear: i, .. } = *p {
                if let Op::Linear { x, .. } = g.ops[i] {
                    matmul_inputs[x.0] = true;
                }
            }
        }
        let acts = g
            .acts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let rows = match a.rows {
                    Rows::Tokens => t,
                    Rows::Logits => max_logit_rows,
                };
                if matmul_inputs[i] {
                    matmul_input(ctx, a.name, rows, a.width)
                } else {
                    f32_buffer(ctx, a.name, rows * a.width)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let buf = |a: Act| &acts[a.0];
        let logits = buf(logits_act).clone();
        // Sized for the picked ids of a full step; a step that keeps whole logits rows grows
        // its buffer when submitted (see `Runner::fit_staging`). Sized for every row kept,
        // the two would take 2 × 50 MB of mappable memory for SmolLM2 at 256 rows, which
        // a run sampling on the GPU never touches.
        let staging = STAGING_LABELS
            .map(|label| logits::staging_buffer(ctx, label, (max_logit_rows * 4) as u64));
        let ids = u32_buffer(ctx, "token ids", max_logit_rows);
        let argmax_bind = kernels.argmax.bind(ctx, &logits, &ids);
        let sample_bind = kernels.sample.bind(ctx, &logits, &ids, &meta.row_sampling);
        let adjust_bind =
            kernels
                .logit_adjust
                .bind(ctx, &logits, &meta.row_adjust, &meta.masks, &meta.biases);
        let feed_bind = kernels.feed_tokens.bind(ctx, &meta.token_ids, &ids);
        let dummy = u32_buffer(ctx, "unused binding", 1);

        // KV pools: one K and one V pool per layer, (num_blocks * block_size, kv_dim), in
        // buffers or textures (src/gpu/kv_pool.rs).
        let slots = rc.num_blocks * rc.block_size;
        let mut k_pools = Vec::new();
        let mut v_pools = Vec::new();
        for l in 0..g.num_layers {
            let pool = |name: &str| {
                KvPool::zeros(ctx, name, kv_storage, slots, heads.kv_dim(), rc.kv_dtype)
            };
            k_pools.push(pool(&format!("k_cache[{l}]"))?);
            v_pools.push(pool(&format!("v_cache[{l}]"))?);
        }
        let cos_sin = g
            .rotaries
            .iter()
            .map(|r| positions::rope_table(ctx, r, max_positions))
            .collect::<Result<Vec<_>, _>>()?;

        let mm = &kernels.matmul;
        let matmul_binds = |w: &GpuMatrix,
                            x: &wgpu::Buffer,
                            bias: Option<&wgpu::Buffer>,
                            y: &wgpu::Buffer,
                            y_stride: usize,
                            accumulate: bool|
         -> Result<MatmulBinds, GpuError> {
            // The kernels index the bias by the part's own columns: a part after the first
            // gets its slice of the bias in a buffer of its own.
            let part_bias = |p: &MatrixPart| match bias {
                Some(b) if w.parts.len() > 1 => bias_slice(ctx, b, p.first_row, p.rows),
                Some(b) => b.clone(),
                None => dummy.clone(),
            };
            let bind = |p: &MatrixPart| match (p.format, &p.data) {
                (MatrixFormat::Dense(_), WeightData::Buffer(buf)) => {
                    Ok(mm.bind(ctx, x, buf, &part_bias(p), y))
                }
                (MatrixFormat::Quant(f), data) => {
                    quant_kernel(&kernels, f).bind(ctx, x, data, &part_bias(p), y)
                }
                (MatrixFormat::Dense(_), WeightData::Texture(_)) => Err(GpuError::Shape {
                    op: "matmul",
                    msg: "dense weights are read from buffers".into(),
                }),
            };
            Ok(MatmulBinds {
                parts: w
                    .parts
                    .iter()
                    .map(|p| Ok(BoundPart::new(p, bind(p)?)))
                    .collect::<Result<_, GpuError>>()?,
                k: w.cols,
                y_stride,
                bias: bias.is_some(),
                accumulate,
                glu: false,
                norm_eps: None,
            })
        };
        let vector = |v: crate::gpu::graph::Vector| &g.vectors[v.0].buffer;

        let mut dispatches = Vec::with_capacity(plan.len());
        for p in &plan {
            let d = match *p {
                Planned::NormedLinear { norm, linear, glu } => {
                    let (Op::RmsNorm { x, w: gw, eps, .. }, Op::Linear { label, w, out, .. }) =
                        (&g.ops[norm], &g.ops[linear])
                    else {
                        unreachable!("the plan fuses an RMSNorm into a Linear")
                    };
                    let y = match glu.map(|i| &g.ops[i]) {
                        Some(Op::GatedAct { out, .. }) => *out,
                        _ => *out,
                    };
                    let m = &g.matrices[w.0];
                    let parts = m
                        .parts
                        .iter()
                        .map(|p| {
                            let MatrixFormat::Quant(f) = p.format else {
                                unreachable!("the plan fuses norms into quantized matmuls only")
                            };
                            let bg = quant_kernel(&kernels, f).bind_normed(
                                ctx,
                                buf(*x),
                                &p.data,
                                vector(*gw),
                                &dummy,
                                buf(y),
                            )?;
                            Ok(BoundPart::new(p, bg))
                        })
                        .collect::<Result<_, GpuError>>()?;
                    Dispatch::Matmul {
                        label: intern_label(format!("norm+matmul {label}")),
                        rows: g.acts[x.0].rows,
                        binds: MatmulBinds {
                            parts,
                            k: m.cols,
                            y_stride: g.acts[y.0].width,
                            bias: false,
                            accumulate: false,
                            glu: glu.is_some(),
                            norm_eps: Some(*eps),
                        },
                    }
                }
                Planned::GluLinear { linear, glu } => {
                    let (Op::Linear { label, x, w, .. }, Op::GatedAct { out, .. }) =
                        (&g.ops[linear], &g.ops[glu])
                    else {
                        unreachable!("the plan fuses a SiLU·mul into a Linear")
                    };
                    let y_stride = g.acts[out.0].width;
                    let binds =
                        matmul_binds(&g.matrices[w.0], buf(*x), None, buf(*out), y_stride, false)?;
                    Dispatch::Matmul {
                        label: intern_label(format!("matmul {label}")),
                        rows: g.acts[x.0].rows,
                        binds: MatmulBinds { glu: true, ..binds },
                    }
                }
                Planned::Op(i) => match &g.ops[i] {
                    Op::Embed {
                        table,
                        positions,
                        out,
                    } => {
                        let pos_table = positions.map_or(&dummy, |p| vector(p));
                        let parts = g.matrices[table.0]
                            .parts
                            .iter()
                            .map(|p| {
                                let bg = match (&kernels.embedding, &p.data) {
                                    (EmbeddingKernel::Dense(e), WeightData::Buffer(table)) => Ok(e
                                        .bind(
                                            ctx,
                                            &meta.token_ids,
                                            &meta.positions,
                                            table,
                                            pos_table,
                                            buf(*out),
                                        )),
                                    (EmbeddingKernel::Quant(e), data) => {
                                        e.bind(ctx, &meta.token_ids, data, buf(*out))
                                    }
                                    (EmbeddingKernel::Dense(_), WeightData::Texture(_)) => {
                                        Err(GpuError::Shape {
                                            op: "embedding",
                                            msg: "a dense table is read from a buffer".into(),
                                        })
                                    }
                                }?;
                                Ok((p.first_row, p.rows, bg))
                            })
                            .collect::<Result<_, GpuError>>()?;
                        Dispatch::Embed {
                            parts,
                            width: g.acts[out.0].width,
                        }
                    }
                    Op::RmsNorm {
                        x,
                        w,
                        eps,
                        out,
                        accumulate,
                    } => {
                        let gather = g.acts[out.0].rows == Rows::Logits;
                        let bg = if gather {
                            kernels.rms_norm_gather.bind(
                                ctx,
                                buf(*x),
                                vector(*w),
                                &meta.logit_rows,
                                buf(*out),
                            )
                        } else {
                            kernels
                                .rms_norm
                                .bind(ctx, buf(*x), vector(*w), &dummy, buf(*out))
                        };
                        Dispatch::RmsNorm {
                            bg,
                            gather,
                            accumulate: *accumulate,
                            width: g.acts[x.0].width,
                            eps: *eps,
                        }
                    }
                    Op::LayerNorm { x, w, b, eps, out } => {
                        let gather = g.acts[out.0].rows == Rows::Logits;
                        let (kernel, rows) = if gather {
                            (&kernels.layer_norm_gather, &meta.logit_rows)
                        } else {
                            (&kernels.layer_norm, &dummy)
                        };
                        let bg = kernel.bind(ctx, buf(*x), vector(*w), vector(*b), rows, buf(*out));
                        Dispatch::LayerNorm {
                            bg,
                            gather,
                            width: g.acts[x.0].width,
                            eps: *eps,
                        }
                    }
                    Op::Linear {
                        label,
                        x,
                        w,
                        bias,
                        out,
                        accumulate,
                    } => {
                        let binds = matmul_binds(
                            &g.matrices[w.0],
                            buf(*x),
                            bias.map(&vector),
                            buf(*out),
                            g.acts[out.0].width,
                            *accumulate,
                        )?;
                        Dispatch::Matmul {
                            label: intern_label(format!("matmul {label}")),
                            rows: g.acts[x.0].rows,
                            binds,
                        }
                    }
                    Op::GatedAct { x, out, act } => Dispatch::GatedAct {
                        bg: kernels.silu_mul.bind(ctx, buf(*x), buf(*out)),
                        width: g.acts[out.0].width,
                        act: *act,
                    },
                    Op::QkNorm { qkv, q_w, k_w, eps } => Dispatch::QkNorm {
                        bg: kernels
                            .qk_norm
                            .bind(ctx, buf(*qkv), vector(*q_w), vector(*k_w)),
                        eps: *eps,
                    },
                    Op::Scale { x, c } => Dispatch::Scale {
                        bg: kernels.scale.bind(ctx, buf(*x)),
                        rows: g.acts[x.0].rows,
                        width: g.acts[x.0].width,
                        c: *c,
                    },
                    Op::SoftCap { x, cap } => Dispatch::SoftCap {
                        bg: kernels.softcap.bind(ctx, buf(*x)),
                        rows: g.acts[x.0].rows,
                        width: g.acts[x.0].width,
                        cap: *cap,
                    },
                    Op::Gelu { x } => Dispatch::Gelu {
                        bg: kernels.gelu.bind(ctx, buf(*x)),
                        width: g.acts[x.0].width,
                    },
                    Op::RopeKvWrite { qkv, layer, rotary } => {
                        let (Some(cs), Some(rotary)) =
                            (cos_sin.get(rotary.0), g.rotaries.get(rotary.0))
                        else {
                            return Err(GpuError::Shape {
                                op: "rope",
                                msg: "a RoPE op names a rotary table the graph lacks".into(),
                            });
                        };
                        Dispatch::RopeKvWrite {
                            bg: kernels.rope_kv_write.bind(
                                ctx,
                                buf(*qkv),
                                &meta.positions,
                                cs,
                                &meta.slot_mapping,
                                &k_pools[*layer],
                                &v_pools[*layer],
                            ),
                            style: rotary.style,
                            rotary_dim: 2 * rotary.inv_freq.len(),
                        }
                    }
                    Op::KvWrite { qkv, layer } => Dispatch::KvWrite(kernels.kv_write.bind(
                        ctx,
                        buf(*qkv),
                        &meta.slot_mapping,
                        &k_pools[*layer],
                        &v_pools[*layer],
                    )),
                    Op::Attention {
                        qkv,
                        layer,
                        out,
                        params,
                    } => Dispatch::Attention {
                        bg: kernels.attention.bind(
                            ctx,
                            buf(*qkv),
                            &k_pools[*layer],
                            &v_pools[*layer],
                            &meta.block_tables,
                            &meta.token_seq,
                            &meta.positions,
                            buf(*out),
                        )?,
                        params: *params,
                    },
                },
            };
            dispatches.push(d);
        }

        let copy_pairs = u32_buffer(ctx, "block copy pairs", 2 * super::MAX_BLOCK_COPIES);
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
        let mut buffers = acts;
        buffers.push(dummy);
        buffers.extend(cos_sin);

        Ok(Runner {
            ctx: ctx.clone(),
            vocab,
            max_context: g.max_context,
            attention_shape: heads,
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
            adjust_bind,
            mask_words,
            feed_bind,
            staging,
            staging_step: [0; 2],
            submitted_steps: 0,
            next_staging: 0,
            last_rows: 0,
            dispatches,
            copy_pairs,
            copy_binds,
            kv_storage,
            k_pools,
            v_pools,
            profiler: None,
            last_profile: None,
            last_timing: StepTiming::default(),
            prerecorded: None,
            _weights: (graph.matrices, graph.vectors),
            _buffers: buffers,
        })
    }
}

/// Elements `first..first + len` of the f32 buffer `bias`, copied into a buffer of their own.
fn bias_slice(ctx: &GpuContext, bias: &wgpu::Buffer, first: usize, len: usize) -> wgpu::Buffer {
    let bytes = (len * 4) as u64;
    let slice = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bias slice"),
        size: bytes.max(4),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bias slice"),
        });
    encoder.copy_buffer_to_buffer(bias, (first * 4) as u64, &slice, 0, bytes);
    ctx.queue.submit(Some(encoder.finish()));
    slice
}
