//! `wllm bench tiers`: time to first token of a request whose long prompt was seen before,
//! by where its KV comes from — computed (cold), the GPU's prefix cache, the host tier after
//! the GPU cache evicted it, and the disk tier after a restart — with each hit's ratio to cold
//! and the check that all four give the same tokens.
//!
//! Per repeat, a fresh random prompt of `--prompt-tokens`: cold (persisted to disk), again
//! (GPU hit), then after other prompts have filled the pool (host hit). After every repeat,
//! the engine is dropped and started again on the same disk directory, and each prompt is
//! asked once more (disk hit). Each engine first runs one unrelated request, so no figure
//! pays for warming up.
//!
//! Then the step time a running decode sees: a request decodes while the first prompt is
//! admitted once from the host tier (after the pool was filled again) and once from the GPU
//! cache; its gaps between tokens before the admission (the plain decode step) and the
//! longest gap during it (the admitting step, with or without the restore) are reported.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use anyhow::{Result, bail};
use serde_json::json;
use wllm::GpuContext;
use wllm::engine::{Completion, Engine, EngineStats, Event, Prompt, Request};

use super::EngineArgs;

#[derive(clap::Args)]
pub struct TiersArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Tokens of each prompt (all but the last block's worth is reusable)
    #[arg(long, default_value_t = 2048)]
    pub prompt_tokens: usize,
    /// Prompts measured (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long)]
    pub json: bool,
}

/// A prompt of `n` token ids drawn from the middle of the vocabulary (no special tokens).
fn random_prompt(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let (lo, span) = (vocab as u64 / 8, (vocab as u64 * 3 / 4).max(1));
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (lo + x % span) as u32
        })
        .collect()
}

/// Greedy, 4 tokens.
fn ask(e: &Engine, prompt: &[u32], persist: bool) -> Result<Completion> {
    let mut r = Request::new(Prompt::Ids(prompt.to_vec()));
    r.max_tokens = 4;
    r.ignore_eos = true;
    r.persist = persist;
    Ok(e.generate(r)?)
}

/// Waits (at most a minute) until nothing runs and every offload has landed.
fn settle(e: &Engine) -> EngineStats {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = e.stats();
        let idle = st.requests_running == 0 && st.kv_tiers.host.writing == 0;
        if idle || std::time::Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One measured request: TTFT in ms, prompt tokens reused, its tokens.
struct Probe {
    ttft_ms: f64,
    cached: usize,
    ids: Vec<u32>,
}

fn probe(e: &Engine, prompt: &[u32], persist: bool) -> Result<Probe> {
    settle(e);
    let c = ask(e, prompt, persist)?;
    Ok(Probe {
        ttft_ms: c
            .usage
            .time_to_first_token
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3,
        cached: c.usage.cached_tokens,
        ids: c.output_ids,
    })
}

/// Other prompts fill the pool, so every block of earlier prompts is evicted to the host tier.
fn fill_pool(
    e: &Engine,
    prompt_tokens: usize,
    pool_tokens: usize,
    vocab: usize,
    seed: u64,
) -> Result<()> {
    for f in 0..pool_tokens.div_ceil(prompt_tokens) + 1 {
        ask(
            e,
            &random_prompt(prompt_tokens, vocab, seed + f as u64),
            false,
        )?;
    }
    Ok(())
}

/// A decode's step time around the admission of `prompt`: (median gap between its tokens
/// before the admission, longest gap while `prompt` waits for its first token), in ms.
fn decode_gaps(e: &Engine, prompt: &[u32], vocab: usize) -> Result<(f64, f64)> {
    let st = settle(e);
    let mut bg = Request::new(Prompt::Ids(random_prompt(32, vocab, 4242)));
    // Room for `prompt` beside it in any pool the bench accepts.
    bg.max_tokens = 256.min(st.blocks_total * st.block_size / 4);
    bg.ignore_eos = true;
    let mut handle = e.submit(bg)?;
    let (count, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let reader = {
        let (count, stop) = (count.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut times = Vec::new();
            futures::executor::block_on(async {
                while let Some(ev) = handle.next().await {
                    match ev {
                        Event::Delta { .. } => {
                            times.push(Instant::now());
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => break,
                    }
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
            });
            times
        })
    };
    // Until `n` tokens came, or the request ended (its reader then has finished).
    let wait_for = |n: usize, reader: &std::thread::JoinHandle<Vec<Instant>>| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while count.load(Ordering::SeqCst) < n && !reader.is_finished() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for(16, &reader);
    let t0 = Instant::now();
    let c = ask(e, prompt, false)?;
    let t1 = t0 + c.usage.time_to_first_token.unwrap_or_default();
    let after = count.load(Ordering::SeqCst) + 4;
    wait_for(after, &reader);
    stop.store(true, Ordering::SeqCst);
    let times = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the decode reader panicked"))?;
    let gaps: Vec<(Instant, Instant)> = times.windows(2).map(|w| (w[0], w[1])).collect();
    let ms = |(a, b): &(Instant, Instant)| (*b - *a).as_secs_f64() * 1e3;
    let before: Vec<f64> = gaps.iter().filter(|g| g.1 <= t0).map(ms).collect();
    let during = (gaps.iter())
        .filter(|g| g.1 > t0 && g.0 < t1)
        .map(ms)
        .fold(0.0, f64::max);
    if before.is_empty() {
        bail!("the background decode produced no tokens before the admission");
    }
    Ok((median(before), during))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: TiersArgs) -> Result<()> {
    if a.repeats == 0 || a.prompt_tokens < 2 {
        bail!("--repeats must be at least 1 and --prompt-tokens at least 2");
    }
    let mut cfg = a.engine.config()?;
    let scratch = std::env::temp_dir().join(format!("wllm-bench-tiers-{}", std::process::id()));
    let own_dir = cfg.kv_tiers.disk_dir.is_none();
    if own_dir {
        cfg.kv_tiers.disk_dir = Some(scratch.clone());
    }
    let ctx = GpuContext::new(&cfg.adapter)?;
    let adapter = format!("{} ({})", ctx.adapter_info.name, ctx.adapter_info.backend);
    let engine = super::start_engine_on(&ctx, cfg.clone())?;
    let vocab = engine.model_config().vocab_size;
    let st = engine.stats();
    let pool_tokens = st.blocks_total * st.block_size;
    if a.prompt_tokens + st.block_size > pool_tokens {
        bail!(
            "--prompt-tokens {} does not fit the KV pool of {pool_tokens} tokens with room to \
             spare: raise --kv-memory or --kv-blocks",
            a.prompt_tokens
        );
    }
    ask(&engine, &random_prompt(64, vocab, 999), false)?;
    let prompts: Vec<Vec<u32>> = (0..a.repeats)
        .map(|r| random_prompt(a.prompt_tokens, vocab, r as u64 + 1))
        .collect();
    let (mut cold, mut gpu, mut host) = (Vec::new(), Vec::new(), Vec::new());
    for (r, p) in prompts.iter().enumerate() {
        cold.push(probe(&engine, p, true)?);
        gpu.push(probe(&engine, p, false)?);
        fill_pool(
            &engine,
            a.prompt_tokens,
            pool_tokens,
            vocab,
            1000 + r as u64 * 100,
        )?;
        host.push(probe(&engine, p, false)?);
    }
    // A running decode's steps while the first prompt is admitted: restored, then cached.
    fill_pool(&engine, a.prompt_tokens, pool_tokens, vocab, 9000)?;
    let (step_ms, host_step_ms) = decode_gaps(&engine, &prompts[0], vocab)?;
    let (_, gpu_step_ms) = decode_gaps(&engine, &prompts[0], vocab)?;
    let before_restart = settle(&engine);
    drop(engine);
    let engine = super::start_engine_on(&ctx, cfg)?;
    ask(&engine, &random_prompt(64, vocab, 998), false)?;
    let mut disk = Vec::new();
    for p in &prompts {
        disk.push(probe(&engine, p, false)?);
    }
    let after_restart = settle(&engine);
    drop(engine);
    if own_dir {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let identical = (0..a.repeats).all(|i| {
        [&gpu[i], &host[i], &disk[i]]
            .iter()
            .all(|p| p.ids == cold[i].ids)
    });
    let summary = |name: &str, v: &[Probe]| {
        let ms = median(v.iter().map(|p| p.ttft_ms).collect());
        let cached = median(v.iter().map(|p| p.cached as f64).collect());
        (name.to_string(), ms, cached)
    };
    let rows = [
        summary("cold", &cold),
        summary("gpu hit", &gpu),
        summary("host hit", &host),
        summary("disk hit after restart", &disk),
    ];
    let cold_ms = rows[0].1;
    let t = &before_restart.kv_tiers;
    let image_mib = t.image_bytes as f64 / (1 << 20) as f64;
    if a.json {
        let modes: Vec<_> = (rows.iter())
            .map(|(n, ms, cached)| {
                json!({"mode": n, "ttft_ms": ms, "cached_tokens": cached, "speedup_vs_cold": cold_ms / ms})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": a.engine.model.display().to_string(),
                "adapter": adapter,
                "prompt_tokens": a.prompt_tokens,
                "block_size": before_restart.block_size,
                "repeats": a.repeats,
                "block_image_bytes": t.image_bytes,
                "modes": modes,
                "host_restores": t.host.restores,
                "host_restore_bytes": t.restore_bytes,
                "offloads": t.host.offloads,
                "disk_loaded_tokens": after_restart.kv_tiers.disk_loaded_tokens,
                "disk_rejected": after_restart.kv_tiers.disk.rejected,
                "decode_step_ms": step_ms,
                "decode_step_admitting_gpu_hit_ms": gpu_step_ms,
                "decode_step_admitting_host_hit_ms": host_step_ms,
                "identical": identical,
            }))?
        );
    } else {
        println!(
            "{adapter}: {} prompt tokens, blocks of {} ({image_mib:.2} MiB of KV each), median of {}",
            a.prompt_tokens, before_restart.block_size, a.repeats
        );
        for (name, ms, cached) in &rows {
            println!(
                "  {name:24} TTFT {ms:9.1} ms  ({:6.1}× cold)  reused {cached:.0} tokens",
                cold_ms / ms
            );
        }
        println!(
            "  host tier: {} blocks offloaded, {} restored ({:.1} MiB); disk: {} tokens loaded; \
             same tokens in every mode: {identical}",
            t.host.offloads,
            t.host.restores,
            t.restore_bytes as f64 / (1 << 20) as f64,
            after_restart.kv_tiers.disk_loaded_tokens
        );
        println!(
            "  a running decode's step: {step_ms:.1} ms; while the prompt is admitted from the GPU \
             cache {gpu_step_ms:.1} ms, from the host tier {host_step_ms:.1} ms"
        );
    }
    if !identical {
        bail!("a restored prefix gave other tokens than computing it");
    }
    Ok(())
}
