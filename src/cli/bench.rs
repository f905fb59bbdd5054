//! `wllm bench throughput`: synthetic requests (mixed lengths, arriving over time or all at
//! once) through the batching engine, and the identical workload one request at a time
//! (max_num_seqs = 1) as the baseline, in one run.

mod workload;

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use serde_json::json;
use wllm::engine::{Event, Prompt, Request};
use wllm::sampling::Rng;
use wllm::{Engine, GpuContext};

use super::{EngineArgs, SamplingArgs};
use workload::{LenSpec, Workload, parse_rate};

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
    /// Structured output's CPU cost per constrained row: the grammar mask and the matcher's
    /// advance at the model's vocabulary, beside a greedy pass over the row
    Grammar(super::bench_grammar::GrammarArgs),
    /// Speculative decoding on versus off in one run: decode tok/s, acceptance rate and
    /// steps on repetitive and free-form workloads (the outputs must be identical)
    Spec(super::bench_spec::SpecArgs),
    /// Time to first token of a repeated long prompt by where its KV comes from: computed,
    /// the GPU's prefix cache, the host tier, the disk tier after a restart
    Tiers(super::bench_tiers::TiersArgs),
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
    let arrivals = vec![0.0; reqs.len()];
    let label = format!(
        "cache {} block {block_size}",
        if cache { "on" } else { "off" }
    );
    drive(&engine, reqs, &arrivals, a.engine.max_num_seqs, &label)
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
    /// Prompt tokens per request: N, or a range sampled uniformly per request: A..B (B
    /// excluded) or A..=B (B included)
    #[arg(long, default_value = "32")]
    pub prompt_len: LenSpec,
    /// Output tokens per request (EOS ignored): N, A..B (B excluded) or A..=B (B included)
    #[arg(long, default_value = "32")]
    pub output_len: LenSpec,
    /// max_num_seqs of the batched configuration (default: --max-num-seqs); the baseline is
    /// always 1 on the identical workload
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Requests per second, Poisson arrivals (exponential gaps from --seed); inf = all at t = 0
    #[arg(long, default_value = "inf", value_parser = parse_rate)]
    pub request_rate: f64,
    /// Seeds the lengths, the arrival times and the prompt tokens
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Runs of each configuration; figures are those of the run with the median output tok/s
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Skip the one-at-a-time baseline
    #[arg(long)]
    pub no_baseline: bool,
    /// Every request's sampling (request i is seeded with --seed + i)
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Where sampled rows are drawn: gpu (one id read back per row) or cpu (the row read back);
    /// default: gpu on GPUs, cpu on CPU adapters. The tokens are the same
    #[arg(long, value_parser = ["gpu", "cpu"])]
    pub sample_on: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// Where the sampled rows are drawn ("gpu" or "cpu"), as the engine resolves it.
fn sample_on(ctx: &GpuContext, args: &ThroughputArgs) -> &'static str {
    match args.sample_on.as_deref() {
        Some("gpu") => "gpu",
        Some(_) => "cpu",
        None if ctx.profile.gpu_sampling => "gpu",
        None => "cpu",
    }
}

/// Figures of one run of one configuration. Latencies are measured at the client: TTFT and
/// end-to-end from each request's own submission (its arrival), ITL between its tokens.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub max_num_seqs: usize,
    pub wall_s: f64,
    pub output_tokens_per_s: f64,
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// (prompt tokens of completed requests + output tokens) per second.
    pub total_tokens_per_s: f64,
    pub ttft_ms_p50: f64,
    pub ttft_ms_p99: f64,
    pub itl_ms_p50: f64,
    pub itl_ms_p99: f64,
    pub e2e_ms_p50: f64,
    pub e2e_ms_p99: f64,
    pub peak_blocks_used: usize,
    pub blocks_total: usize,
    pub mean_kv_waste_pct: f64,
    pub preemptions: u64,
    pub prefix_hit_rate: f64,
    /// Engine steps, their mean wall time and its host part (the GPU idle between steps).
    pub steps: u64,
    pub step_us_mean: f64,
    pub host_us_per_step: f64,
    /// Steps submitted before the one ahead of them was read back.
    pub overlapped_steps: u64,
    /// Requests that ran to their end.
    pub completed: usize,
    /// Requests the engine refused at submission because its waiting queue was full.
    pub refused: usize,
    /// Requests rejected at submission for another reason, or that failed or were cut off.
    pub failed: usize,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
}

impl RunFigures {
    fn all_completed(&self) -> bool {
        self.refused == 0 && self.failed == 0
    }
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

fn workload_of(args: &ThroughputArgs) -> Workload {
    Workload::synthetic(
        args.requests,
        args.prompt_len,
        args.output_len,
        args.request_rate,
        args.seed,
    )
}

fn run_once(ctx: &GpuContext, args: &ThroughputArgs, max_num_seqs: usize) -> Result<RunFigures> {
    let mut cfg = args.engine.config()?;
    cfg.model.max_seqs = max_num_seqs;
    // Room for every request in the queue: a refusal would measure the queue cap, not serving.
    cfg.max_waiting = cfg.max_waiting.max(args.requests);
    cfg.gpu_sampling = args.sample_on.as_deref().map(|s| s == "gpu");
    let engine = super::start_engine_on(ctx, cfg)?;
    let w = workload_of(args);
    let mut reqs = w.requests(engine.model_config().vocab_size);
    for (i, r) in reqs.iter_mut().enumerate() {
        r.sampling = args.sampling.params(args.seed.wrapping_add(i as u64))?;
    }
    // One untimed request first (as vLLM's serving benchmark does), so the first timed one
    // does not carry the engine's one-time costs (pipelines, buffers) in its TTFT. Its prompt
    // is token 0 alone (workload tokens start at 100), so it seeds no prefix-cache hit.
    let mut warm = Request::new(Prompt::Ids(vec![0]));
    warm.max_tokens = 2;
    warm.ignore_eos = true;
    engine.generate(warm)?;
    drive(
        &engine,
        reqs,
        &w.arrivals_s,
        max_num_seqs,
        &format!("max_num_seqs {max_num_seqs}"),
    )
}

/// What the event loop hears about request `i`.
enum Msg {
    /// Submitted (its arrival), with its prompt length.
    Arrived(Instant, usize),
    /// Not accepted: (queue full?, why).
    Refused(bool, String),
    Event(Event),
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    NotYet,
    Running,
    Done,
}

/// Submits request i at `arrivals_s[i]` seconds after the start, from a thread of its own so
/// that waiting for an arrival never holds up the loop that collects tokens, and measures
/// until every request has ended.
fn drive(
    engine: &Engine,
    reqs: Vec<Request>,
    arrivals_s: &[f64],
    max_num_seqs: usize,
    label: &str,
) -> Result<RunFigures> {
    let n = reqs.len();
    let bar = super::progress_bar(n as u64, "requests");
    bar.set_message(label.to_string());
    let (tx, rx) = futures::channel::mpsc::unbounded::<BoxStream<'static, (usize, Msg)>>();
    let mut state = vec![State::NotYet; n];
    let mut arrived: Vec<Option<Instant>> = vec![None; n];
    let mut prompt_len = vec![0usize; n];
    let mut last_token: Vec<Option<Instant>> = vec![None; n];
    let (mut ttft, mut itl, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
    let (mut out_tokens, mut prompt_tokens) = (0usize, 0usize);
    let (mut completed, mut refused, mut failed) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            for (i, (r, &t)) in reqs.into_iter().zip(arrivals_s).enumerate() {
                let due = start + Duration::from_secs_f64(t);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let at = Instant::now();
                let events = match engine.submit(r) {
                    Ok(h) => {
                        let p = h.prompt_ids().len();
                        futures::stream::once(async move { (i, Msg::Arrived(at, p)) })
                            .chain(h.map(move |e| (i, Msg::Event(e))))
                            .boxed()
                    }
                    Err(e) => {
                        let full = matches!(e, wllm::Error::QueueFull(_));
                        let m = Msg::Refused(full, e.to_string());
                        futures::stream::once(async move { (i, m) }).boxed()
                    }
                };
                if tx.unbounded_send(events).is_err() {
                    break;
                }
            }
            // Dropping `tx` ends the stream of streams once every request's stream has ended.
        });
        futures::executor::block_on(async {
            let mut all = rx.flatten_unordered(None);
            while let Some((i, msg)) = all.next().await {
                let now = Instant::now();
                match msg {
                    Msg::Arrived(at, p) => {
                        arrived[i] = Some(at);
                        prompt_len[i] = p;
                        state[i] = State::Running;
                    }
                    Msg::Refused(full, why) => {
                        if full {
                            refused += 1;
                        } else {
                            failed += 1;
                        }
                        state[i] = State::Done;
                        bar.suspend(|| eprintln!("request {i} refused: {why}"));
                        bar.inc(1);
                    }
                    Msg::Event(Event::Delta { token_ids, .. }) if !token_ids.is_empty() => {
                        let arrival = arrived[i].unwrap_or(start);
                        match last_token[i] {
                            None => ttft.push((now - arrival).as_secs_f64() * 1e3),
                            Some(t) => itl.push((now - t).as_secs_f64() * 1e3),
                        }
                        last_token[i] = Some(now);
                        out_tokens += token_ids.len();
                    }
                    Msg::Event(Event::Finished { .. }) => {
                        completed += 1;
                        prompt_tokens += prompt_len[i];
                        e2e.push((now - arrived[i].unwrap_or(start)).as_secs_f64() * 1e3);
                        state[i] = State::Done;
                        bar.inc(1);
                    }
                    Msg::Event(Event::Failed(why)) => {
                        failed += 1;
                        state[i] = State::Done;
                        bar.suspend(|| eprintln!("request {i} failed: {why}"));
                        bar.inc(1);
                    }
                    Msg::Event(_) => {}
                }
            }
        });
    });
    let wall = start.elapsed().max(Duration::from_micros(1)).as_secs_f64();
    bar.finish_and_clear();
    // A stream that ended without Finished or Failed: the engine stopped under it.
    let cut_off = state.iter().filter(|s| **s != State::Done).count();
    if cut_off > 0 {
        eprintln!("{cut_off} requests ended without finishing (engine stopped)");
    }
    failed += cut_off;
    let st = engine.stats();
    Ok(RunFigures {
        max_num_seqs,
        wall_s: wall,
        output_tokens_per_s: out_tokens as f64 / wall,
        requests_per_s: completed as f64 / wall,
        total_tokens_per_s: (prompt_tokens + out_tokens) as f64 / wall,
        ttft_ms_p50: percentile(&mut ttft, 0.5),
        ttft_ms_p99: percentile(&mut ttft, 0.99),
        itl_ms_p50: percentile(&mut itl, 0.5),
        itl_ms_p99: percentile(&mut itl, 0.99),
        e2e_ms_p50: percentile(&mut e2e, 0.5),
        e2e_ms_p99: percentile(&mut e2e, 0.99),
        peak_blocks_used: st.peak_blocks_used,
        blocks_total: st.blocks_total,
        mean_kv_waste_pct: st.mean_kv_waste_pct,
        preemptions: st.preemptions,
        prefix_hit_rate: st.prefix_hit_rate,
        steps: st.steps,
        step_us_mean: st.mean_step_us,
        host_us_per_step: st.mean_host_us_per_step,
        overlapped_steps: st.overlapped_steps,
        completed,
        refused,
        failed,
        prompt_tokens,
        output_tokens: out_tokens,
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

fn run_throughput(args: ThroughputArgs) -> Result<()> {
    let ctx = GpuContext::new(&args.engine.config()?.adapter)?;
    let concurrency = args.concurrency.unwrap_or(args.engine.max_num_seqs).max(1);
    let batched = run_config(&ctx, &args, concurrency)?;
    let baseline = if args.no_baseline {
        None
    } else {
        Some(run_config(&ctx, &args, 1)?)
    };
    let ratio = baseline
        .as_ref()
        .map(|b| batched.output_tokens_per_s / b.output_tokens_per_s.max(1e-9));
    let w = workload_of(&args);
    let adapter = format!("{} ({})", ctx.adapter_info.name, ctx.adapter_info.backend);
    let rate = if args.request_rate.is_finite() {
        format!("Poisson {} req/s", args.request_rate)
    } else {
        "all at t = 0".to_string()
    };
    for r in std::iter::once(&batched).chain(baseline.as_ref()) {
        if !r.all_completed() {
            eprintln!(
                "warning: max_num_seqs {}: {} of {} requests did not complete ({} refused: queue full, {} failed); its figures cover the rest",
                r.max_num_seqs,
                r.refused + r.failed,
                args.requests,
                r.refused,
                r.failed
            );
        }
    }
    if args.json {
        let range = |s: LenSpec| json!([s.min, s.max]);
        println!(
            "{}",
            json!({
                "adapter": adapter,
                "requests": args.requests,
                "prompt_len": args.prompt_len.to_json(),
                "output_len": args.output_len.to_json(),
                "prompt_len_range": range(args.prompt_len),
                "output_len_range": range(args.output_len),
                "concurrency": concurrency,
                "request_rate": args.request_rate.is_finite().then_some(args.request_rate),
                "seed": args.seed,
                "sampling": {
                    "temperature": args.sampling.temperature,
                    "top_p": args.sampling.top_p,
                    "top_k": args.sampling.top_k,
                    "on": sample_on(&ctx, &args),
                },
                "overlap": args.engine.overlap.as_deref().unwrap_or(if ctx.profile.overlap_steps { "on" } else { "off" }),
                "expected_output_tokens": w.output_lens.iter().sum::<usize>(),
                "workload": {
                    "prompt_lens": w.prompt_lens,
                    "output_lens": w.output_lens,
                    "arrival_s": w.arrivals_s,
                },
                "batched": batched,
                "baseline": baseline,
                "throughput_ratio": ratio,
            })
        );
        return Ok(());
    }
    println!(
        "adapter {adapter}; {} requests, prompt {} tokens, output {} tokens, arrivals {rate} (seed {})",
        args.requests, args.prompt_len, args.output_len, args.seed
    );
    if args.sampling.temperature > 0.0 {
        let s = &args.sampling;
        println!(
            "sampling: temperature {} top_p {} top_k {} on the {}",
            s.temperature,
            s.top_p,
            s.top_k,
            sample_on(&ctx, &args)
        );
    }
    println!(
        "workload: {} prompt + {} output tokens; last arrival at {:.2} s",
        w.prompt_lens.iter().sum::<usize>(),
        w.output_lens.iter().sum::<usize>(),
        w.arrivals_s.last().copied().unwrap_or(0.0)
    );
    let cols: Vec<&RunFigures> = std::iter::once(&batched).chain(baseline.as_ref()).collect();
    let row = |name: &str, f: &dyn Fn(&RunFigures) -> String| {
        let mut line = format!("{name:<20}");
        for c in &cols {
            line += &format!(" {:>16}", f(c));
        }
        println!("{line}");
    };
    row("", &|r| format!("max_num_seqs {}", r.max_num_seqs));
    row("output tok/s", &|r| format!("{:.1}", r.output_tokens_per_s));
    row("requests/s", &|r| format!("{:.2}", r.requests_per_s));
    row("total tok/s", &|r| format!("{:.1}", r.total_tokens_per_s));
    row("TTFT p50 / p99 ms", &|r| {
        format!("{:.0} / {:.0}", r.ttft_ms_p50, r.ttft_ms_p99)
    });
    row("ITL p50 / p99 ms", &|r| {
        format!("{:.1} / {:.1}", r.itl_ms_p50, r.itl_ms_p99)
    });
    row("e2e p50 / p99 ms", &|r| {
        format!("{:.0} / {:.0}", r.e2e_ms_p50, r.e2e_ms_p99)
    });
    row("peak KV blocks", &|r| {
        format!("{}/{}", r.peak_blocks_used, r.blocks_total)
    });
    row("mean KV waste", &|r| format!("{:.1}%", r.mean_kv_waste_pct));
    row("preemptions", &|r| r.preemptions.to_string());
    row("steps (overlapped)", &|r| {
        format!("{} ({})", r.steps, r.overlapped_steps)
    });
    row("step / host µs", &|r| {
        format!("{:.0} / {:.0}", r.step_us_mean, r.host_us_per_step)
    });
    row("completed", &|r| {
        format!("{}/{}", r.completed, args.requests)
    });
    row("refused / failed", &|r| {
        format!("{} / {}", r.refused, r.failed)
    });
    row("wall s", &|r| format!("{:.2}", r.wall_s));
    if let Some(r) = ratio {
        println!("batched / one-at-a-time output tok/s: {r:.2}×");
    }
    Ok(())
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Prefix(a) => run_prefix(a)?,
        BenchCommand::Prefill(a) => super::bench_model::run_prefill(a)?,
        BenchCommand::Decode(a) => super::bench_model::run_decode(a)?,
        BenchCommand::Throughput(args) => run_throughput(args)?,
        BenchCommand::Grammar(a) => super::bench_grammar::run(a)?,
        BenchCommand::Spec(a) => super::bench_spec::run(a)?,
        BenchCommand::Tiers(a) => super::bench_tiers::run(a)?,
    }
    Ok(())
}
