//! `wllm bench prefill` and `wllm bench decode`: the model's raw speed under llama-bench's and
//! llama-batched-bench's workloads (no engine; greedy, or sampled on the GPU with `--temperature`), with an optional
//! per-kernel profile from timestamp queries.

use anyhow::{Context, Result};
use serde_json::json;
use wllm::generate::{Generator, LockstepRun, ModelOptions};
use wllm::gpu::StepProfile;
use wllm::sampling::{Rng, SamplingParams};
use wllm::{AdapterSelector, GpuContext};

use super::{SamplingArgs, parse_dtype, progress_bar};

#[derive(clap::Args, Clone)]
pub struct ModelBenchArgs {
    /// A .gguf file or a Hugging Face model directory
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Weight and KV-cache storage: f16 or f32 (default f16)
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Longest sequence to run, at most the model's context (default: the model's); picks
    /// LongRoPE's factors
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Timed runs; the median is reported (one untimed warm-up run comes first)
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// After the timed runs, one more run with a timestamp per kernel call
    #[arg(long)]
    pub profile: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct PrefillArgs {
    #[command(flatten)]
    pub common: ModelBenchArgs,
    /// Prompt tokens, prefilled in one step (llama-bench's pp)
    #[arg(long, default_value_t = 512)]
    pub len: usize,
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    pub common: ModelBenchArgs,
    /// Sequences decoding in lockstep (llama-batched-bench's npl), one run per value
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// Decode steps (each sequence generates this many tokens)
    #[arg(long, default_value_t = 128)]
    pub gen_len: usize,
    /// Every token sampled on the GPU with these (default greedy, as llama-batched-bench)
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// on: submit decode step k+1 (its tokens fed from step k on the GPU) before reading
    /// step k back, as the engine does; off: one step at a time. Default: on GPUs, off on CPU
    /// adapters (which run a step inside its submit)
    #[arg(long, value_parser = ["on", "off"])]
    pub overlap: Option<String>,
}

fn load(
    a: &ModelBenchArgs,
    ctx: &GpuContext,
    seqs: usize,
    step_tokens: usize,
    kv_tokens: usize,
) -> Result<Generator> {
    let mut opts = ModelOptions::new(&a.model);
    opts.dtype = parse_dtype(&a.dtype)?;
    opts.block_size = a.block_size;
    opts.max_model_len = a.max_model_len;
    opts.max_seqs = seqs;
    opts.max_batch_tokens = step_tokens;
    opts.num_blocks = Some(kv_tokens.div_ceil(a.block_size) + seqs);
    let bar = super::load_bar(&a.model);
    let g = Generator::load(ctx, &opts, &mut super::load_progress(&bar));
    bar.finish_and_clear();
    g.with_context(|| format!("loading {}", a.model.display()))
}

fn prompts(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| 100 + (rng.next_u64() % (vocab as u64 - 100).max(1)) as u32)
                .collect()
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Warm-up, `repeat` timed runs, and the profiled run when asked.
fn timed(
    g: &mut Generator,
    a: &ModelBenchArgs,
    prompts: &[Vec<u32>],
    gen_len: usize,
    sampling: &SamplingParams,
    what: &str,
) -> Result<(Vec<LockstepRun>, Option<LockstepRun>)> {
    let bar = progress_bar((a.repeat + 1) as u64, "runs");
    bar.set_message(what.to_string());
    g.lockstep_sampled(prompts, gen_len, sampling)?;
    bar.inc(1);
    let mut runs = Vec::new();
    for _ in 0..a.repeat.max(1) {
        runs.push(g.lockstep_sampled(prompts, gen_len, sampling)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let profiled = if a.profile {
        g.set_profiling(true)?;
        let run = g.lockstep_sampled(prompts, gen_len, sampling);
        g.set_profiling(false)?;
        Some(run?)
    } else {
        None
    };
    Ok((runs, profiled))
}

fn profile_json(p: &StepProfile, steps: usize, cpu_encode_us: f64) -> serde_json::Value {
    let steps = steps.max(1) as f64;
    let kernels: Vec<_> = p
        .kernels
        .iter()
        .map(|(label, (us, n))| json!({ "kernel": label, "us_per_step": us / steps, "calls_per_step": *n as f64 / steps }))
        .collect();
    json!({
        "gpu_us_per_step": p.gpu_us() / steps,
        "calls_per_step": p.calls() as f64 / steps,
        "cpu_encode_us_per_step": cpu_encode_us,
        "kernels": kernels,
    })
}

fn print_profile(title: &str, p: &StepProfile, steps: usize, cpu_encode_us: f64) {
    let steps = steps.max(1) as f64;
    let total = p.gpu_us() / steps;
    println!(
        "{title}: GPU {total:.1} µs/step over {:.0} calls (timed passes), CPU encode {cpu_encode_us:.1} µs/step",
        p.calls() as f64 / steps
    );
    let mut rows: Vec<_> = p.kernels.iter().collect();
    rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    for (label, (us, n)) in rows {
        println!(
            "  {label:<16} {:10.1} µs/step {:5.1}%  {:5.0} calls/step",
            us / steps,
            100.0 * us / steps / total.max(1e-9),
            *n as f64 / steps
        );
    }
}

fn adapter_name(ctx: &GpuContext) -> String {
    format!("{} ({})", ctx.adapter_info.name, ctx.adapter_info.backend)
}

pub fn run_prefill(a: PrefillArgs) -> Result<()> {
    let ctx = GpuContext::new(&AdapterSelector::from_env()?)?;
    let len = a.len.max(1);
    let mut g = load(&a.common, &ctx, 1, len, len)?;
    let p = prompts(1, len, g.config().vocab_size, 7);
    let (runs, profiled) = timed(
        &mut g,
        &a.common,
        &p,
        0,
        &SamplingParams::default(),
        "prefill",
    )?;
    let ms = median(runs.iter().map(|r| r.prefill_s * 1e3).collect());
    let tok_per_s = len as f64 / (ms / 1e3);
    let adapter = adapter_name(&ctx);
    if a.common.json {
        let mut out = json!({ "adapter": adapter, "len": len, "repeat": runs.len(), "ms_median": ms, "tok_per_s": tok_per_s });
        if let Some(pr) = profiled.as_ref().and_then(|r| r.prefill_profile.as_ref()) {
            out["profile"] = profile_json(pr, 1, f64::NAN);
        }
        println!("{out}");
    } else {
        println!("adapter {adapter}");
        println!(
            "prefill {len} tokens: {ms:.1} ms (median of {}), {tok_per_s:.1} tok/s",
            runs.len()
        );
        if let Some(pr) = profiled.as_ref().and_then(|r| r.prefill_profile.as_ref()) {
            print_profile("profile (prefill step)", pr, 1, f64::NAN);
        }
    }
    Ok(())
}

pub fn run_decode(a: DecodeArgs) -> Result<()> {
    let sampling = a.sampling.params(1)?;
    let ctx = GpuContext::new(&AdapterSelector::from_env()?)?;
    let max_b = a.batch.iter().copied().max().unwrap_or(1).max(1);
    let (plen, gen_len) = (a.prompt_len.max(1), a.gen_len.max(1));
    let step_tokens = max_b.max(plen).max(256);
    let t0 = std::time::Instant::now();
    let mut g = load(
        &a.common,
        &ctx,
        max_b,
        step_tokens,
        max_b * (plen + gen_len),
    )?;
    // Opening the files, uploading the weights and building the kernels.
    let load_s = t0.elapsed().as_secs_f64();
    let weights_bytes = g.kv_plan().weights_bytes;
    if let Some(o) = &a.overlap {
        g.set_overlap(o == "on");
    }
    let adapter = adapter_name(&ctx);
    let mut results = Vec::new();
    if !a.common.json {
        println!(
            "adapter {adapter}; loaded in {load_s:.2} s ({} of weights on the GPU); prompt \
             {plen}, {gen_len} decode steps, median of {}",
            wllm::gpu::context::fmt_bytes(weights_bytes),
            a.common.repeat.max(1)
        );
        if a.sampling.temperature > 0.0 {
            let s = &a.sampling;
            println!(
                "sampled on the GPU: temperature {} top_p {} top_k {}",
                s.temperature, s.top_p, s.top_k
            );
        }
    }
    for &b in &a.batch {
        let p = prompts(b.max(1), plen, g.config().vocab_size, 11);
        let (runs, profiled) = timed(
            &mut g,
            &a.common,
            &p,
            gen_len,
            &sampling,
            &format!("batch {b}"),
        )?;
        let prefill_s = median(runs.iter().map(|r| r.prefill_s).collect());
        let decode_s = median(runs.iter().map(|r| r.decode_s).collect());
        let encode_us = median(runs.iter().map(|r| r.decode_encode_us).collect());
        let prerecorded = runs
            .iter()
            .map(|r| r.decode_prerecorded_steps)
            .min()
            .unwrap_or(0);
        let overlapped = runs
            .iter()
            .map(|r| r.decode_overlapped_steps)
            .min()
            .unwrap_or(0);
        let prefill_tps = (b * plen) as f64 / prefill_s;
        let decode_tps = (b * gen_len) as f64 / decode_s;
        let ms_step = decode_s * 1e3 / gen_len as f64;
        let mut row = json!({
            "batch": b,
            "prefill_tok_per_s": prefill_tps,
            "decode_tok_per_s": decode_tps,
            "decode_ms_per_step": ms_step,
            "cpu_encode_us_per_step": encode_us,
            "prerecorded_steps": prerecorded,
            "overlapped_steps": overlapped,
        });
        if !a.common.json {
            println!(
                "batch {b:4}: prefill {prefill_tps:9.1} tok/s  decode {decode_tps:9.1} tok/s ({ms_step:.2} ms/step, CPU before submit {encode_us:.0} µs, {prerecorded}/{gen_len} steps prerecorded, {overlapped} overlapped)"
            );
        }
        if let Some(pr) = profiled.as_ref().and_then(|r| r.decode_profile.as_ref()) {
            let cpu = profiled.as_ref().map_or(f64::NAN, |r| r.decode_encode_us);
            row["profile"] = profile_json(pr, gen_len, cpu);
            if !a.common.json {
                print_profile("  profile (decode steps)", pr, gen_len, cpu);
            }
        }
        results.push(row);
    }
    if a.common.json {
        println!(
            "{}",
            json!({
                "adapter": adapter,
                "load_s": load_s,
                "weights_bytes": weights_bytes,
                "prompt_len": plen,
                "gen_len": gen_len,
                "overlap": g.overlap(),
                "sampling": a.sampling.to_json(),
                "results": results,
            })
        );
    }
    Ok(())
}
