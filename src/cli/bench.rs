//! `wllm bench throughput`: a burst of synthetic requests through the batching engine, and the
//! same workload one request at a time (max_num_seqs = 1) as the baseline, in one run.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use wllm::engine::{Event, Prompt, Request};
use wllm::sampling::Rng;
use wllm::{Engine, GpuContext};

use super::EngineArgs;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Output tokens/s, requests/s, time to first token and inter-token latency
    Throughput(ThroughputArgs),
    /// Time to first token for a burst sharing a long prefix, prefix cache on versus off,
    /// and a sweep over block sizes
    Prefix(PrefixArgs),
    /// One prompt prefilled in one step (llama-bench's pp): tok/s, optional per-kernel profile
    Prefill(super::bench_model::PrefillArgs),
    /// Sequences decoding in lockstep (llama-batched-bench): tok/s per batch size, optional
    /// per-kernel profile
    Decode(super::bench_model::DecodeArgs),
}

#[derive(clap::Args)]
pub struct PrefixArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, default_value_t = 32)]
    pub requests: usize,
    #[arg(long, default_value_t = 1024)]
    pub shared_prefix_len: usize,
    #[arg(long, default_value_t = 32)]
    pub suffix_len: usize,
    #[arg(long, default_value_t = 16)]
    pub output_len: usize,
    /// Block sizes for the sweep (cache on); empty to skip
    #[arg(long, value_delimiter = ',', default_value = "2,8,16,64")]
    pub sweep: Vec<usize>,
    #[arg(long)]
    pub json: bool,
}

/// A burst of requests that share their first `shared` tokens, each with its own suffix.
fn prefix_workload(a: &PrefixArgs, vocab: usize) -> Vec<Request> {
    let mut rng = Rng::new(99);
    let mut tok = move || 100 + (rng.next_u64() % (vocab as u64 - 100).max(1)) as u32;
    let shared: Vec<u32> = (0..a.shared_prefix_len).map(|_| tok()).collect();
    (0..a.requests)
        .map(|_| {
            let mut ids = shared.clone();
            ids.extend((0..a.suffix_len.max(1)).map(|_| tok()));
            let mut r = Request::new(Prompt::Ids(ids));
            r.max_tokens = a.output_len.max(1);
            r.ignore_eos = true;
            r
        })
        .collect()
}

fn prefix_run(
    ctx: &GpuContext,
    a: &PrefixArgs,
    cache: bool,
    block_size: usize,
) -> Result<RunFigures> {
    let mut cfg = a.engine.config()?;
    cfg.model.enable_prefix_cache = cache;
    cfg.model.block_size = block_size;
    cfg.max_waiting = cfg.max_waiting.max(a.requests);
    let engine = super::start_engine_on(ctx, cfg)?;
    let reqs = prefix_workload(a, engine.model_config().vocab_size);
    let label = format!(
        "cache {} block {block_size}",
        if cache { "on" } else { "off" }
    );
    drive(&engine, reqs, a.engine.max_num_seqs, &label)
}

fn run_prefix(a: PrefixArgs) -> Result<()> {
    let ctx = GpuContext::new(&a.engine.config()?.adapter)?;
    let bs = a.engine.block_size;
    let on = prefix_run(&ctx, &a, true, bs)?;
    let off = prefix_run(&ctx, &a, false, bs)?;
    let ratio = off.ttft_ms_p50 / on.ttft_ms_p50.max(1e-9);
    let mut sweep = Vec::new();
    for &b in &a.sweep {
        let f = prefix_run(&ctx, &a, true, b)?;
        sweep.push(json!({
            "block_size": b,
            "ttft_ms_p50": f.ttft_ms_p50,
            "ttft_ms_p99": f.ttft_ms_p99,
            "hit_rate": f.prefix_hit_rate,
            "peak_blocks_used": f.peak_blocks_used,
            "mean_kv_waste_pct": f.mean_kv_waste_pct,
        }));
    }
    let side = |f: &RunFigures| json!({ "ttft_ms_p50": f.ttft_ms_p50, "ttft_ms_p99": f.ttft_ms_p99, "hit_rate": f.prefix_hit_rate });
    let adapter = format!("{} ({})", ctx.adapter_info.name, ctx.adapter_info.backend);
    if a.json {
        println!(
            "{}",
            json!({
                "adapter": adapter,
                "cache_on": side(&on),
                "cache_off": side(&off),
                "ttft_p50_ratio": ratio,
                "block_size_sweep": sweep,
            })
        );
    } else {
        println!(
            "adapter {adapter}; {} requests sharing {} tokens, +{} own, {} out, block {bs}",
            a.requests, a.shared_prefix_len, a.suffix_len, a.output_len
        );
        for (name, f) in [("cache on ", &on), ("cache off", &off)] {
            println!(
                "{name}: TTFT p50 {:9.1} ms p99 {:9.1} ms  hit rate {:5.1}%",
                f.ttft_ms_p50,
                f.ttft_ms_p99,
                f.prefix_hit_rate * 100.0
            );
        }
        println!("TTFT p50 ratio (off / on): {ratio:.2}×");
        for s in &sweep {
            println!(
                "block {:>3}: TTFT p50 {:9.1} ms  hit rate {:5.1}%  waste {:5.1}%",
                s["block_size"],
                s["ttft_ms_p50"].as_f64().unwrap_or(0.0),
                s["hit_rate"].as_f64().unwrap_or(0.0) * 100.0,
                s["mean_kv_waste_pct"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, default_value_t = 16)]
    pub requests: usize,
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 32)]
    pub output_len: usize,
    /// Runs of each configuration; figures are medians
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Skip the one-at-a-time baseline
    #[arg(long)]
    pub no_baseline: bool,
    #[arg(long)]
    pub json: bool,
}

/// Figures of one configuration (medians over repeats).
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub max_num_seqs: usize,
    pub wall_s: f64,
    pub output_tokens_per_s: f64,
    pub requests_per_s: f64,
    pub ttft_ms_p50: f64,
    pub ttft_ms_p99: f64,
    pub itl_ms_p50: f64,
    pub itl_ms_p99: f64,
    pub peak_blocks_used: usize,
    pub blocks_total: usize,
    pub mean_kv_waste_pct: f64,
    pub preemptions: u64,
    pub prefix_hit_rate: f64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

fn workload(n: usize, prompt_len: usize, output_len: usize, vocab: usize) -> Vec<Request> {
    let mut rng = Rng::new(1234);
    (0..n)
        .map(|_| {
            let ids = (0..prompt_len)
                .map(|_| 100 + (rng.next_u64() % (vocab as u64 - 100).max(1)) as u32)
                .collect();
            let mut r = Request::new(Prompt::Ids(ids));
            r.max_tokens = output_len;
            r.ignore_eos = true;
            r
        })
        .collect()
}

fn run_once(ctx: &GpuContext, args: &ThroughputArgs, max_num_seqs: usize) -> Result<RunFigures> {
    let mut cfg = args.engine.config()?;
    cfg.model.max_seqs = max_num_seqs;
    cfg.max_waiting = cfg.max_waiting.max(args.requests);
    let engine = super::start_engine_on(ctx, cfg)?;
    let vocab = engine.model_config().vocab_size;
    let reqs = workload(args.requests, args.prompt_len, args.output_len, vocab);
    drive(
        &engine,
        reqs,
        max_num_seqs,
        &format!("max_num_seqs {max_num_seqs}"),
    )
}

/// Submits every request at once and measures until all are done.
fn drive(
    engine: &Engine,
    reqs: Vec<Request>,
    max_num_seqs: usize,
    label: &str,
) -> Result<RunFigures> {
    let n = reqs.len();
    let bar = super::progress_bar(n as u64, "requests");
    bar.set_message(label.to_string());
    let start = Instant::now();
    let mut streams = Vec::new();
    for (i, r) in reqs.into_iter().enumerate() {
        streams.push(engine.submit(r)?.map(move |e| (i, e)).boxed());
    }
    let mut last_token: Vec<Option<Instant>> = vec![None; n];
    let mut ttft = Vec::new();
    let mut itl = Vec::new();
    let mut out_tokens = 0usize;
    let mut all = futures::stream::select_all(streams);
    futures::executor::block_on(async {
        while let Some((i, ev)) = all.next().await {
            match ev {
                Event::Delta { token_ids, .. } if !token_ids.is_empty() => {
                    let now = Instant::now();
                    match last_token[i] {
                        None => ttft.push((now - start).as_secs_f64() * 1e3),
                        Some(t) => itl.push((now - t).as_secs_f64() * 1e3),
                    }
                    last_token[i] = Some(now);
                    out_tokens += token_ids.len();
                }
                Event::Finished { .. } | Event::Failed(_) => bar.inc(1),
                _ => {}
            }
        }
    });
    let wall = start.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    bar.finish_and_clear();
    let st = engine.stats();
    Ok(RunFigures {
        max_num_seqs,
        wall_s: wall,
        output_tokens_per_s: out_tokens as f64 / wall,
        requests_per_s: n as f64 / wall,
        ttft_ms_p50: percentile(&mut ttft, 0.5),
        ttft_ms_p99: percentile(&mut ttft, 0.99),
        itl_ms_p50: percentile(&mut itl, 0.5),
        itl_ms_p99: percentile(&mut itl, 0.99),
        peak_blocks_used: st.peak_blocks_used,
        blocks_total: st.blocks_total,
        mean_kv_waste_pct: st.mean_kv_waste_pct,
        preemptions: st.preemptions,
        prefix_hit_rate: st.prefix_hit_rate,
    })
}

/// Runs a configuration `repeats` times and keeps the run with the median throughput.
fn run_config(ctx: &GpuContext, args: &ThroughputArgs, max_num_seqs: usize) -> Result<RunFigures> {
    let mut runs = Vec::new();
    for _ in 0..args.repeats.max(1) {
        runs.push(run_once(ctx, args, max_num_seqs)?);
    }
    let m = median(runs.iter().map(|r| r.output_tokens_per_s).collect());
    let best = runs.into_iter().min_by(|a, b| {
        (a.output_tokens_per_s - m)
            .abs()
            .total_cmp(&(b.output_tokens_per_s - m).abs())
    });
    best.ok_or_else(|| anyhow::anyhow!("no run"))
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Prefix(a) => run_prefix(a)?,
        BenchCommand::Prefill(a) => super::bench_model::run_prefill(a)?,
        BenchCommand::Decode(a) => super::bench_model::run_decode(a)?,
        BenchCommand::Throughput(args) => {
            let ctx = GpuContext::new(&args.engine.config()?.adapter)?;
            let batched = run_config(&ctx, &args, args.engine.max_num_seqs)?;
            let baseline = if args.no_baseline {
                None
            } else {
                Some(run_config(&ctx, &args, 1)?)
            };
            let ratio = baseline
                .as_ref()
                .map(|b| batched.output_tokens_per_s / b.output_tokens_per_s.max(1e-9));
            let adapter = format!("{} ({})", ctx.adapter_info.name, ctx.adapter_info.backend);
            if args.json {
                println!(
                    "{}",
                    json!({
                        "adapter": adapter,
                        "requests": args.requests,
                        "prompt_len": args.prompt_len,
                        "output_len": args.output_len,
                        "batched": batched,
                        "baseline": baseline,
                        "throughput_ratio": ratio,
                    })
                );
            } else {
                println!(
                    "adapter {adapter}; {} requests, prompt {} tokens, output {} tokens",
                    args.requests, args.prompt_len, args.output_len
                );
                for r in std::iter::once(&batched).chain(baseline.as_ref()) {
                    println!(
                        "max_num_seqs {:>3}: {:8.1} output tok/s {:6.2} req/s  TTFT p50 {:8.1} ms p99 {:8.1} ms  ITL p50 {:7.1} ms p99 {:7.1} ms  peak blocks {}/{}  waste {:.1}%  preemptions {}",
                        r.max_num_seqs,
                        r.output_tokens_per_s,
                        r.requests_per_s,
                        r.ttft_ms_p50,
                        r.ttft_ms_p99,
                        r.itl_ms_p50,
                        r.itl_ms_p99,
                        r.peak_blocks_used,
                        r.blocks_total,
                        r.mean_kv_waste_pct,
                        r.preemptions
                    );
                }
                if let Some(r) = ratio {
                    println!("batched / one-at-a-time throughput: {r:.2}×");
                }
            }
        }
    }
    Ok(())
}
