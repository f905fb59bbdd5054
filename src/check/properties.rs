//! `wllm check`'s properties: what must hold bit for bit whatever else the kernels compute.
//!
//! 1. Batch invariance: a request's rows are the same bits alone and inside a batch of others
//!    (the dense matmul, whose rows-per-thread pipeline depends on the batch's rows, and paged
//!    attention, whose lanes, grid and partitions depend on the batch).
//! 2. Paged attention over blocks scattered through the pool equals it over contiguous blocks.
//! 3. The GPU sampler (argmax then sample, as the runner records them) picks what the CPU
//!    [`Sampler`] picks for the same seeds, draw after draw, on a real vocabulary's row.
//!
//! Each counts mismatching output words (limit 0).

use super::cases::{floats, forms, mismatches, normals, result, run_pass, words};
use super::cases_attention::{self as ca, Attn, SHAPES, STEP, SeqData};
use super::{CaseResult, Target};
use crate::gpu::kernels::{self, Argmax, Matmul, MatmulParams, Sample};
use crate::gpu::tensor::read_words;
use crate::gpu::{GpuContext, GpuError, GpuTensor, WeightDType};
use crate::sampling::{Rng, Sampler, SamplingParams};

const BATCH: &str = "property: batch invariance";
const LAYOUT: &str = "property: block layout invariance";
const SAMPLER: &str = "property: gpu sampler = cpu sampler";

pub(super) fn run(t: &Target, out: &mut Vec<CaseResult>) {
    for ctx in [t.ctx, t.other] {
        matmul_batch(ctx, out);
    }
    attention(t, out);
    ca::forget(t);
    for ctx in [t.ctx, t.other] {
        sampler(ctx, out);
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The dense matmul: a decode row and a 3-row chunk alone, and at rows 5.. of a batch of 13
/// (the batch takes another rows-per-thread pipeline than either alone).
fn matmul_batch(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let (n, k, batch) = (130usize, 576usize, 13usize);
    let mut rng = Rng::new(31);
    for dtype in [WeightDType::F32, WeightDType::F16] {
        let form = format!("matmul, {}, {}", forms(ctx), dtype.name());
        if dtype == WeightDType::F16 && !ctx.adapter_info.shader_f16 {
            let e = Err(GpuError::MissingFeature("shader-f16".into()));
            out.push(result(BATCH, form, "all shapes".into(), 0.0, e));
            continue;
        }
        let mm = Matmul::new(ctx, dtype);
        let w = normals(&mut rng, n * k, 0.2);
        let xb = normals(&mut rng, batch * k, 1.0);
        let packed = kernels::matmul::pack_weight(&w, n, k, dtype);
        let shape = [k, kernels::matmul::padded_cols(n)];
        let wt = GpuTensor::from_words(ctx, "w", &packed, &shape, dtype);
        let matmul = |x: &[f32], m: usize| -> Result<Vec<f32>, GpuError> {
            let wt = wt.as_ref().map_err(ca::clone_err)?;
            let xt = floats(ctx, "x", x)?;
            let bias = floats(ctx, "bias", &[0.0])?;
            let y = floats(ctx, "y", &vec![0.0; m * n])?;
            let bg = mm.bind(ctx, &xt.buffer, &wt.buffer, &bias.buffer, &y.buffer);
            run_pass(ctx, |p| mm.encode(p, &bg, &MatmulParams::plain(m, n, k)));
            y.read_f32(ctx)
        };
        for rows in [1usize, 3] {
            let (from, to) = (5, 5 + rows);
            let err = (|| {
                let alone = matmul(&xb[from * k..to * k], rows)?;
                let all = matmul(&xb, batch)?;
                Ok(mismatches(&bits(&alone), &bits(&all[from * n..to * n])))
            })();
            let case = format!("{rows} of {batch} rows × {n} × {k}: alone vs in the batch");
            out.push(result(BATCH, form.clone(), case, 0.0, err));
        }
    }
}

/// Paged attention, every kernel of the attention cases on the first shape (GQA 4, f16 KV,
/// blocks of 16) and the second (one-token blocks, a sliding window): a decode token and a
/// prefill chunk alone vs in the step of [`STEP`]; the step over scattered vs contiguous
/// blocks.
fn attention(t: &Target, out: &mut Vec<CaseResult>) {
    for (si, (shape, kinds)) in SHAPES.iter().enumerate() {
        let data: Vec<SeqData> = STEP
            .iter()
            .enumerate()
            .map(|(i, &sq)| SeqData::new(shape, sq, 700 + 10 * si as u64 + i as u64))
            .collect();
        let step: Vec<&SeqData> = data.iter().collect();
        let q_dim = shape.nh * shape.hd;
        for &(name, kind, texture) in kinds {
            let form = format!("paged_attention, {name}, {} KV", shape.kv.name());
            let attn = ca::kernel(t, si, kind, texture);
            let ctx = ca::with_forms(t, ca::kind_forms(kind));
            let with = |f: &dyn Fn(&Attn) -> Result<f64, GpuError>| match &attn {
                Ok(a) => f(a),
                Err(e) => Err(ca::clone_err(e)),
            };
            // The decode token (the step's first, 1 token) and the chunk (its next 8).
            for (i, rows, what) in [
                (0usize, 0..1usize, "decode token"),
                (1, 1..9, "8-token chunk"),
            ] {
                let err = with(&|a| {
                    let (all, _) = a.run(ctx, &step, Some(1))?;
                    let (alone, _) = a.run(ctx, &[step[i]], Some(2))?;
                    let batch = &all[rows.start * q_dim..rows.end * q_dim];
                    Ok(mismatches(&bits(&alone), &bits(batch)))
                });
                let case = format!(
                    "bs {}, {}/{} heads × {}{}: {what} alone vs in a step of 20",
                    shape.bs,
                    shape.nh,
                    shape.nkv,
                    shape.hd,
                    shape
                        .window
                        .map_or(String::new(), |w| format!(", window {w}"))
                );
                out.push(result(BATCH, form.clone(), case, 0.0, err));
            }
            let err = with(&|a| {
                let (contiguous, _) = a.run(ctx, &step, None)?;
                let (shuffled, _) = a.run(ctx, &step, Some(3))?;
                Ok(mismatches(&bits(&contiguous), &bits(&shuffled)))
            });
            let case = format!(
                "bs {}, {}/{} heads × {}: step of 20 over shuffled vs contiguous blocks",
                shape.bs, shape.nh, shape.nkv, shape.hd
            );
            out.push(result(LAYOUT, form, case, 0.0, err));
        }
    }
}

/// The GPU's picks against [`Sampler::sample`]'s over rows of a 49157-token vocabulary: for
/// each setting, two sequences (seeds) drawing twice each (the second key from the stream).
/// A pick differing only where the race on the GPU's own weights is a near tie (best two
/// scores within 1e-5 relative: exp and ln may differ by ulps between devices) is allowed;
/// any other is counted.
fn sampler(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let vocab = 49157usize;
    // (temperature, top_k, top_p, min_p)
    let settings: [(f32, usize, f32, f32); 5] = [
        (0.0, 0, 1.0, 0.0),
        (0.7, 0, 1.0, 0.0),
        (1.0, 40, 0.9, 0.0),
        (1.3, 0, 0.95, 0.05),
        (2.0, 1000, 1.0, 0.02),
    ];
    let (argmax, sample) = (Argmax::new(ctx), Sample::new(ctx));
    let mut rng = Rng::new(41);
    for (temperature, top_k, top_p, min_p) in settings {
        let params = |seed| SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            seed,
            ..Default::default()
        };
        // Rows (sequence, draw): the GPU's key from row_sampling, the CPU's own draw.
        let (mut rows, mut cpu, mut logits) = (Vec::new(), Vec::new(), Vec::new());
        for seed in [1u64, 0xdead_beef_cafe] {
            let (mut gpu_s, mut cpu_s) = (Sampler::new(params(seed)), Sampler::new(params(seed)));
            for _ in 0..2 {
                let mut row = normals(&mut rng, vocab, 3.0);
                // A tie at the top: the lower id must win where greedy.
                row[7] = 20.0;
                row[vocab - 3] = 20.0;
                rows.push(gpu_s.row_sampling().expect("no penalties"));
                cpu.push(cpu_s.sample(&row, &[], &[]));
                logits.extend(row);
            }
        }
        let n = rows.len();
        let err = (|| -> Result<f64, GpuError> {
            let l = floats(ctx, "logits", &logits)?;
            let ids = words(ctx, "ids", &vec![0; n])?;
            let p = words(ctx, "params", bytemuck::cast_slice(&rows))?;
            let (bg_a, bg_s) = (
                argmax.bind(ctx, &l.buffer, &ids.buffer),
                sample.bind(ctx, &l.buffer, &ids.buffer, &p.buffer),
            );
            run_pass(ctx, |pass| {
                argmax.encode(pass, &bg_a, n, vocab);
                sample.encode(pass, &bg_s, n, vocab);
            });
            let got = read_words(ctx, &ids.buffer)?;
            let weights = l.read_f32(ctx)?;
            let mut bad = 0usize;
            for (r, rs) in rows.iter().enumerate() {
                if got[r] == cpu[r] {
                    continue;
                }
                let w = &weights[r * vocab..(r + 1) * vocab];
                let near_tie = !rs.is_greedy() && {
                    let race = kernels::sample::race(w, &kernels::sample::kept(w, rs), rs.key);
                    race.winner == got[r] && race.best - race.runner_up <= 1e-5 * race.best
                };
                bad += usize::from(!near_tie);
            }
            Ok(bad as f64)
        })();
        let form = format!("sample, {}", forms(ctx));
        let case =
            format!("{n} × {vocab}: T {temperature}, top-k {top_k}, top-p {top_p}, min-p {min_p}");
        out.push(result(SAMPLER, form, case, 0.0, err));
    }
}
