//! The model-level check of `wllm check`: a whole model on the GPU against the same model on
//! the CPU ([`CpuForward`]: the graph the runner records, each op computed by its kernel's CPU
//! reference). The CPU picks greedy tokens from a prompt; the GPU is fed the same tokens in
//! one teacher-forced pass (prefilled in chunks through the paged KV cache); at every position
//! the two logits rows are compared: top-1 agreement and the largest absolute difference.
//!
//! The limit is relative to the logits' scale (the largest |logit| of the reference): the GPU
//! differs only in f32 rounding (its sums' order, f32 norms and exponentials), which grows with
//! depth but stays far below 1e-3 of the scale; a wrong kernel, layout or fusion is off by
//! tenths. A top-1 miss counts only where the reference's own margin between its first two
//! tokens is wider than the limit.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::Status;
use super::cpu_forward::CpuForward;
use super::tiny_model;
use crate::error::{Error, Result};
use crate::generate::{Generator, ModelOptions, model_config};
use crate::gpu::{GpuContext, WeightDType};
use crate::model::ModelFiles;
use crate::model::weights::load_weights_with;
use crate::sampling::{Rng, argmax};

/// Largest |GPU − CPU| logit over the largest |CPU logit|, f32 weights and KV.
const F32_LIMIT: f64 = 1e-4;
/// The same with f16 weights or KV (both sides see the same rounded values; the rounding of
/// K and V after the GPU's own f32 arithmetic can land one f16 step away).
const F16_LIMIT: f64 = 2e-3;

/// How a model's GPU forward compared with the CPU's.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCheck {
    pub model: String,
    /// Storage type of the dense weights and the KV cache.
    pub dtype: String,
    /// Positions compared (prompt and greedy continuation).
    pub positions: usize,
    /// Positions where the GPU's top-1 token is the CPU's.
    pub top1_agree: usize,
    /// Positions where they differ although the CPU's top-1 leads its second by more than
    /// the limit.
    pub top1_clear_misses: usize,
    /// max |GPU − CPU| over every logit of every position.
    pub max_logit_error: f64,
    /// max |CPU logit|.
    pub logit_scale: f64,
    /// `max_logit_error` may reach `limit · max(1, logit_scale)`.
    pub limit: f64,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Seconds of the CPU forward (the check's cost on big models).
    pub cpu_seconds: f64,
}

impl ModelCheck {
    fn unsupported(model: &str, dtype: WeightDType, feature: &str) -> ModelCheck {
        ModelCheck {
            model: model.to_string(),
            dtype: format!("{dtype:?}").to_lowercase(),
            positions: 0,
            top1_agree: 0,
            top1_clear_misses: 0,
            max_logit_error: 0.0,
            logit_scale: 0.0,
            limit: 0.0,
            status: Status::Unsupported,
            detail: Some(feature.to_string()),
            cpu_seconds: 0.0,
        }
    }
}

/// The built-in random models (f32, and f16 where the adapter has shader-f16: UNSUPPORTED
/// elsewhere), or the model
/// at `path` in wllm's default storage type; `tokens` greedy tokens after the prompt.
pub fn check_models(
    ctx: &GpuContext,
    path: Option<&Path>,
    tokens: usize,
) -> Result<Vec<ModelCheck>> {
    let mut out = Vec::new();
    match path {
        Some(p) => {
            let opts = ModelOptions::new(p);
            let dtype = opts.dtype;
            out.push(check_model(
                ctx,
                opts,
                &p.display().to_string(),
                dtype,
                tokens,
            )?);
        }
        None => {
            for (i, m) in tiny_model::all().iter().enumerate() {
                let dir = m
                    .write(7 + i as u64)
                    .map_err(|e| Error::Check(format!("writing {}: {e}", m.name)))?;
                for dtype in [WeightDType::F32, WeightDType::F16] {
                    if dtype == WeightDType::F16 && !ctx.adapter_info.shader_f16 {
                        out.push(ModelCheck::unsupported(m.name, dtype, "shader-f16"));
                        continue;
                    }
                    let mut opts = ModelOptions::new(&dir.dir);
                    opts.dtype = dtype;
                    out.push(check_model(ctx, opts, m.name, dtype, tokens)?);
                }
            }
        }
    }
    Ok(out)
}

/// A model on the CPU: the forward pass its family writes, run op by op through the kernels'
/// CPU references over the weights as the GPU would see them (dense ones in the options'
/// storage type, GGUF blocks dequantized by the loader). What the model-level check compares
/// the GPU with; slow (f64 sums, one thread), for checks and tests.
pub struct CpuReference {
    forward: CpuForward,
}

impl CpuReference {
    /// Loads the model `opts` names (its weights pass through the GPU's upload, then stay on
    /// the host only).
    pub fn load(ctx: &GpuContext, opts: &ModelOptions) -> Result<CpuReference> {
        let files = ModelFiles::open(&opts.path)?;
        let cfg = model_config(&files, opts)?;
        let weights = load_weights_with(ctx, &files, &cfg, opts.dtype, true, &mut |_, _| {})?;
        let mut graph = crate::model::forward(&cfg, weights)?;
        let forward = CpuForward::from_graph(ctx, &mut graph, opts.dtype).map_err(Error::Check)?;
        Ok(CpuReference { forward })
    }

    /// The logits after each prefix `ids[..=i]` of a new sequence.
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.forward.reset();
        self.forward.forward(ids).map_err(Error::Check)
    }
}

fn check_model(
    ctx: &GpuContext,
    mut opts: ModelOptions,
    name: &str,
    dtype: WeightDType,
    tokens: usize,
) -> Result<ModelCheck> {
    // Small chunks: the prompt prefills over several steps, each reading the KV the steps
    // before wrote. A pool just big enough for the one sequence.
    opts.max_batch_tokens = 16;
    opts.max_seqs = 2;
    opts.num_blocks = Some((MAX_PROMPT + tokens).div_ceil(opts.block_size) + 1);
    let mut cpu = CpuReference::load(ctx, &opts)?.forward;
    let mut g = Generator::load(ctx, &opts, &mut |_, _| {})?;
    let vocab = g.config().vocab_size;
    let prompt = prompt(&g, vocab);
    let limit = match dtype {
        WeightDType::F32 => F32_LIMIT,
        WeightDType::F16 => F16_LIMIT,
    };

    // The CPU's greedy continuation, and its logits at every position.
    let started = Instant::now();
    let mut fed = prompt.clone();
    let mut want = cpu.forward(&prompt).map_err(Error::Check)?;
    for _ in 1..tokens.max(1) {
        let next = argmax(want.last().expect("a row per position"));
        fed.push(next);
        want.extend(cpu.forward(&[next]).map_err(Error::Check)?);
    }
    let cpu_seconds = started.elapsed().as_secs_f64();
    let got = g.logits(&fed)?;

    let logit_scale = want
        .iter()
        .flatten()
        .fold(0f64, |m, v| m.max(v.abs() as f64));
    let bound = limit * logit_scale.max(1.0);
    let (mut agree, mut clear_misses, mut max_err, mut worst_at) = (0, 0, 0f64, 0);
    for (pos, (g, w)) in got.iter().zip(&want).enumerate() {
        let err = g
            .iter()
            .zip(w)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .fold(
                if g.len() == w.len() {
                    0.0
                } else {
                    f64::INFINITY
                },
                f64::max,
            );
        if err.is_nan() || err > max_err {
            max_err = if err.is_nan() { f64::INFINITY } else { err };
            worst_at = pos;
        }
        if argmax(g) == argmax(w) {
            agree += 1;
        } else if margin(w) > bound {
            clear_misses += 1;
        }
    }
    let ok = got.len() == want.len() && max_err <= bound && clear_misses == 0;
    let detail = (!ok).then(|| {
        format!(
            "logit error {max_err:.3e} at position {worst_at} (bound {bound:.3e}), {clear_misses} \
             clear top-1 miss(es), {} of {} rows",
            got.len(),
            want.len()
        )
    });
    log::info!(
        "{name} ({dtype:?}): {agree}/{} top-1, max logit error {max_err:.2e} (scale {logit_scale:.2})",
        want.len()
    );
    Ok(ModelCheck {
        model: name.to_string(),
        dtype: format!("{dtype:?}").to_lowercase(),
        positions: want.len(),
        top1_agree: agree,
        top1_clear_misses: clear_misses,
        max_logit_error: max_err,
        logit_scale,
        limit,
        status: if ok { Status::Pass } else { Status::Fail },
        detail,
        cpu_seconds,
    })
}

/// The prompt's most tokens (the KV pool is sized for it).
const MAX_PROMPT: usize = 64;

/// A fixed prompt: text through the model's tokenizer, or fixed ids without one.
fn prompt(g: &Generator, vocab: usize) -> Vec<u32> {
    const TEXT: &str = "The quick brown fox jumps over the lazy dog. Paged attention keeps";
    if let Some(mut ids) = g.tokenizer().and_then(|t| t.encode(TEXT).ok())
        && ids.len() >= 4
    {
        ids.truncate(MAX_PROMPT);
        return ids;
    }
    let mut rng = Rng::new(11);
    (0..20)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

/// The lead of a row's top-1 over its second.
fn margin(row: &[f32]) -> f64 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in row {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    (a - b) as f64
}
