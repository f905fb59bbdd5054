//! `wllm bench spec`: speculative decoding on versus off, in the same engine and run. Per
//! workload — text the model mostly repeats (fixing a paragraph's typos, adding comments to
//! code) and free-form writing — the decode speed of each (tokens after the first per second
//! of decoding), the drafts' acceptance rate, the steps taken, and whether the two outputs are
//! identical (they must be: greedy speculation never changes a token).

use anyhow::{Result, bail};
use serde_json::json;
use wllm::GpuContext;
use wllm::engine::{Engine, Prompt, Request};
use wllm::tokenizer::ChatMessage;

use super::EngineArgs;

#[derive(clap::Args)]
pub struct SpecArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Tokens generated per request
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Runs of each workload per mode (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Copies of each request run at once (speculation pays while decode is memory-bound:
    /// raise this to find the batch where it stops paying)
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    #[arg(long)]
    pub json: bool,
}

const TYPO_TEXT: &str = "The paged attention kernal reads each sequences keys and values \
    from fixed-size blocks, so the cache never needs to be contigous. A block table maps every \
    logical block of a sequence to a physical block in the pool, and blocks are alocated only \
    when a sequence grows into them. When the pool runs out, the scheduler preempts the \
    sequence admited last and recomputes it later, so no request is ever droped.";

const CODE: &str = "def merge_sorted(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) \
    and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i])\n            i += 1\n        \
    else:\n            out.append(b[j])\n            j += 1\n    out.extend(a[i:])\n    \
    out.extend(b[j:])\n    return out\n";

/// (name, prompt) of each workload.
fn workloads() -> Vec<(&'static str, String)> {
    vec![
        (
            "fix typos (repetitive)",
            format!(
                "Rewrite this text with its spelling mistakes fixed. Output only the text.\n\n{TYPO_TEXT}"
            ),
        ),
        (
            "comment code (repetitive)",
            format!(
                "Add a comment above each line of this Python function. Output only the code.\n\n{CODE}"
            ),
        ),
        (
            "story (free-form)",
            "Write a short story about a dragon who learns to bake bread.".into(),
        ),
    ]
}

/// `n` copies of one greedy request at once, speculating or not.
fn run_one(e: &Engine, prompt: &str, a: &SpecArgs, spec: bool) -> Result<Run> {
    let before = e.stats();
    let mut r = Request::new(Prompt::Chat(vec![ChatMessage::user(prompt)]));
    r.max_tokens = a.max_tokens;
    r.ignore_eos = true;
    r.speculative = Some(spec);
    let started = std::time::Instant::now();
    let handles = (0..a.concurrency)
        .map(|_| e.submit(r.clone()))
        .collect::<wllm::Result<Vec<_>>>()?;
    let done = handles
        .into_iter()
        .map(|h| h.wait())
        .collect::<wllm::Result<Vec<_>>>()?;
    let wall = started.elapsed().as_secs_f64();
    let after = e.stats();
    // Decode speed per request: the tokens after the first over the time after it.
    let per_request: Vec<f64> = done
        .iter()
        .map(|c| {
            let first = c.usage.time_to_first_token.unwrap_or_default();
            let decode_s = (c.usage.total_time - first).as_secs_f64();
            c.output_ids.len().saturating_sub(1) as f64 / decode_s.max(1e-9)
        })
        .collect();
    let tokens: usize = done.iter().map(|c| c.output_ids.len()).sum();
    Ok(Run {
        ids: done.iter().map(|c| c.output_ids.clone()).collect(),
        tok_s: median(per_request),
        total_tok_s: tokens as f64 / wall,
        drafted: after.spec_drafted_tokens - before.spec_drafted_tokens,
        accepted: after.spec_accepted_tokens - before.spec_accepted_tokens,
        steps: after.steps - before.steps,
    })
}

struct Run {
    /// Each copy's output.
    ids: Vec<Vec<u32>>,
    /// Median decode tok/s of one request.
    tok_s: f64,
    /// Output tokens of all copies over the wall time (prefill included).
    total_tok_s: f64,
    drafted: u64,
    accepted: u64,
    steps: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: SpecArgs) -> Result<()> {
    if a.repeats == 0 || a.concurrency == 0 {
        bail!("--repeats and --concurrency must be at least 1");
    }
    let mut cfg = a.engine.config()?;
    // Requests choose: the engine's setting (n-gram unless --speculative draft) supplies
    // the method and k.
    if cfg.speculative.is_none() {
        cfg.speculative = Some(wllm::SpecConfig::ngram(a.engine.spec_tokens));
    }
    let k = a.engine.spec_tokens;
    let ctx = GpuContext::new(&cfg.adapter)?;
    let adapter = format!("{} ({})", ctx.adapter_info.name, ctx.adapter_info.backend);
    let engine = super::start_engine_on(&ctx, cfg)?;
    let mut rows = Vec::new();
    for (name, prompt) in workloads() {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        // Alternate the modes so drift in the machine's speed hits both alike.
        for _ in 0..a.repeats {
            off.push(run_one(&engine, &prompt, &a, false)?);
            on.push(run_one(&engine, &prompt, &a, true)?);
        }
        let identical = (off.iter().chain(&on))
            .flat_map(|r| &r.ids)
            .all(|ids| *ids == off[0].ids[0]);
        let (drafted, accepted): (u64, u64) = on
            .iter()
            .fold((0, 0), |(d, acc), r| (d + r.drafted, acc + r.accepted));
        let tok_s = |v: &[Run]| median(v.iter().map(|r| r.tok_s).collect());
        let total = |v: &[Run]| median(v.iter().map(|r| r.total_tok_s).collect());
        let (off_tok_s, on_tok_s) = (tok_s(&off), tok_s(&on));
        let row = json!({
            "workload": name,
            "output_tokens": off[0].ids[0].len(),
            "off_total_tok_s": total(&off),
            "on_total_tok_s": total(&on),
            "off_decode_tok_s": off_tok_s,
            "on_decode_tok_s": on_tok_s,
            "speedup": on_tok_s / off_tok_s,
            "drafted": drafted,
            "accepted": accepted,
            "acceptance": if drafted == 0 { 0.0 } else { accepted as f64 / drafted as f64 },
            "off_steps": off[0].steps,
            "on_steps": on[0].steps,
            "identical": identical,
        });
        if !a.json {
            println!(
                "{name:28} decode {off_tok_s:7.2} → {on_tok_s:7.2} tok/s ({:.2}×), all requests \
                 {:.1} → {:.1} tok/s, acceptance {:.0}% of {} drafted, steps {} → {}, identical: \
                 {identical}",
                on_tok_s / off_tok_s,
                total(&off),
                total(&on),
                100.0 * row["acceptance"].as_f64().unwrap_or(0.0),
                drafted,
                off[0].steps,
                on[0].steps
            );
        }
        rows.push(row);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": a.engine.model.display().to_string(),
                "adapter": adapter,
                "spec_tokens": k,
                "max_tokens": a.max_tokens,
                "repeats": a.repeats,
                "concurrency": a.concurrency,
                "workloads": rows,
            }))?
        );
    }
    if rows.iter().any(|r| r["identical"] != true) {
        bail!("speculative output differed from the plain decode's");
    }
    Ok(())
}
