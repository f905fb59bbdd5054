//! Bit-exact logits snapshot: the model layer may be restructured (forward pass moved,
//! kernels fused differently), but the logits of the existing models must stay
//! bit-identical. This test records, per adapter, a hash of the exact f32 bit patterns of
//! every logits row (plus the argmax and max logit per row, for diagnostics) of:
//!
//! * tiny-gpt2-public and tiny-llama-gqa-public (HF, random weights) in f32 and f16, on a
//!   37-token prompt prefilled in one step, in chunks of 5 (chunked prefill) and one token
//!   at a time (decode-shaped steps);
//! * SmolLM2-135M-Instruct (Q4_1 GGUF) with f32 and f16 activations/KV, on a 21-token
//!   prompt prefilled in chunks of 8 (8 + 8 + 5);
//! * batched paths on the tiny models, recorded as token ids: `Generator::lockstep` (three
//!   prompts of 37, 5 and 13 tokens packed into shared prefill steps of 5 tokens, then 9
//!   lockstep decode steps picked on the GPU: greedy one step at a time, greedy overlapped,
//!   and sampled with a fixed seed, overlapped), and on
//!   tiny-llama-gqa `Engine::submit_n` (two seeded sampled completions of one prompt decoded
//!   in one batch, with logprobs, i.e. full logits rows read back to the CPU; their bits go
//!   into a hash);
//!
//! each with both kernel families (`common::gpu()` and `common::gpu_other_forms()`).
//!
//! Record (on the code *before* the change):
//!     WLLM_RECORD_SNAPSHOT=1 cargo test --release --test logits_snapshot
//! Check (after the change):
//!     cargo test --release --test logits_snapshot
//!
//! The snapshot (tests/fixtures/snapshots/logits.json) is keyed by adapter (name, driver,
//! driver info, backend): other drivers may legitimately round differently. An adapter with
//! no record fails, it does not skip. Recording also dumps the full rows under
//! `target/tmp/logits-snapshot/`; when that dump is present (same checkout, recorded
//! before the change) a failure also reports the exact max |Δ| over the differing rows.

mod common;
#[path = "logits_snapshot/store.rs"]
mod store;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use common::{fixtures, gpu, gpu_other_forms, smollm2_path};
use store::*;
use wllm::{
    Engine, EngineConfig, Generator, GpuContext, KernelForms, ModelOptions, Prompt, Request,
    SamplingParams, WeightDType,
};

const RECORD_VAR: &str = "WLLM_RECORD_SNAPSHOT";
const RECORD_CMD: &str = "WLLM_RECORD_SNAPSHOT=1 cargo test --release --test logits_snapshot";

/// 37 token ids for the tiny models (vocabulary 512): an awkward length (not a multiple of
/// the block size 16, nor of the chunk sizes).
const TINY_PROMPT: [u32; 37] = [
    345, 265, 153, 374, 377, 342, 17, 237, 311, 127, 51, 416, 366, 306, 86, 186, 127, 31, 207, 334,
    3, 240, 307, 308, 425, 410, 215, 473, 383, 422, 252, 57, 264, 379, 285, 386, 233,
];
const TINY_PROMPT_B: [u32; 5] = [223, 154, 438, 56, 385];
const TINY_PROMPT_C: [u32; 13] = [30, 336, 415, 370, 97, 425, 451, 339, 61, 119, 184, 63, 297];

/// 21 SmolLM2 ids ("Once upon a time, in a small village by the sea, there lived" followed
/// by the first 6 ids of "def fibonacci(n):", from tests/fixtures/smollm2-135m-public.json),
/// fixed so that tokenizer changes do not move the snapshot.
const SMOLLM2_PROMPT: [u32; 21] = [
    6403, 1980, 253, 655, 28, 281, 253, 1165, 6560, 411, 260, 3426, 28, 665, 4161, 1604, 3987,
    46477, 24, 94, 727,
];

// ---------------------------------------------------------------------------------------
// Hashing and row summaries

/// FNV-1a 64 over the little-endian bytes of each value's bit pattern.
fn fnv1a64_bits(values: impl IntoIterator<Item = u32>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn hash_row(row: &[f32]) -> u64 {
    fnv1a64_bits(row.iter().map(|x| x.to_bits()))
}

/// First index of the largest non-NaN value (0 for an all-NaN row).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    let mut seen = false;
    for (i, &v) in row.iter().enumerate() {
        if !v.is_nan() && (!seen || v > best_v) {
            best = i;
            best_v = v;
            seen = true;
        }
    }
    best
}

#[derive(Debug, Clone, PartialEq)]
struct RowRecord {
    hash: u64,
    argmax: usize,
    /// The value at `argmax` (None when not finite: JSON has no NaN/inf).
    max: Option<f32>,
}

fn summarize(row: &[f32]) -> RowRecord {
    let a = argmax(row);
    RowRecord {
        hash: hash_row(row),
        argmax: a,
        max: Some(row[a]).filter(|v| v.is_finite()),
    }
}

// ---------------------------------------------------------------------------------------
// What one case records

#[derive(Debug, Clone, PartialEq)]
enum Record {
    /// Teacher-forced logits, one row per prompt position.
    Logits {
        vocab: usize,
        rows: Vec<RowRecord>,
        /// The first four values of the last row, for a human reading the file.
        last_row_head: Vec<Option<f32>>,
    },
    /// Generated token ids per sequence, and (when logprobs were asked for) a hash of the
    /// bit patterns of every reported log-probability (chosen and top alternatives).
    Tokens {
        outputs: Vec<Vec<u32>>,
        logprobs_hash: Option<u64>,
    },
}

/// Full rows of a logits case (for the optional dump).
type Rows = Vec<Vec<f32>>;

struct Case {
    key: String,
    record: Record,
    rows: Option<Rows>,
}

fn logits_case(key: String, rows: Rows) -> Case {
    let vocab = rows.first().map_or(0, Vec::len);
    let last = rows.last().expect("at least one row");
    let record = Record::Logits {
        vocab,
        rows: rows.iter().map(|r| summarize(r)).collect(),
        last_row_head: last
            .iter()
            .take(4)
            .map(|v| Some(*v).filter(|v| v.is_finite()))
            .collect(),
    };
    Case {
        key,
        record,
        rows: Some(rows),
    }
}

fn forms_name(ctx: &GpuContext) -> &'static str {
    match ctx.profile.kernel_forms {
        KernelForms::Cpu => "cpu-forms",
        KernelForms::Gpu => "gpu-forms",
    }
}

fn dtype_name(d: WeightDType) -> &'static str {
    match d {
        WeightDType::F32 => "f32",
        WeightDType::F16 => "f16",
    }
}

fn adapter_key(ctx: &GpuContext) -> String {
    let a = &ctx.adapter_info;
    format!(
        "{} | {} | {} | {}",
        a.name, a.driver, a.driver_info, a.backend
    )
}

// ---------------------------------------------------------------------------------------
// Running the cases

/// Teacher-forced logits of `prompt` in one generator per chunk size (`max_batch_tokens`);
/// each generator is then handed to `then` (for further cases sharing the load).
#[allow(clippy::too_many_arguments)]
fn teacher_forced(
    ctx: &GpuContext,
    model: &str,
    path: &Path,
    dtype: WeightDType,
    prompt: &[u32],
    chunks: &[usize],
    out: &mut Vec<Case>,
    mut then: impl FnMut(usize, &mut Generator, &mut Vec<Case>),
) {
    for &chunk in chunks {
        let mut opts = ModelOptions::new(path);
        opts.dtype = dtype;
        opts.max_batch_tokens = chunk;
        opts.max_seqs = opts.max_seqs.min(chunk);
        let mut g = Generator::load(ctx, &opts, &mut |_, _| {}).unwrap();
        let rows = g.logits(prompt).unwrap();
        assert_eq!(rows.len(), prompt.len(), "{model}: one row per position");
        assert_eq!(g.pool().num_used(), 0, "{model}: KV blocks leaked");
        let chunk_name = if chunk >= prompt.len() {
            "one-step".to_string()
        } else {
            format!("chunks-of-{chunk}")
        };
        let key = format!(
            "{model}/{}/{}/logits-{chunk_name}",
            dtype_name(dtype),
            forms_name(ctx)
        );
        out.push(logits_case(key, rows));
        then(chunk, &mut g, out);
    }
}

/// Three prompts (37, 5 and 13 tokens) packed into shared prefill steps of at most
/// `max_batch_tokens`, then 9 lockstep decode steps picked on the GPU.
fn lockstep_cases(
    ctx: &GpuContext,
    model: &str,
    dtype: WeightDType,
    g: &mut Generator,
    out: &mut Vec<Case>,
) {
    let prompts = vec![
        TINY_PROMPT.to_vec(),
        TINY_PROMPT_B.to_vec(),
        TINY_PROMPT_C.to_vec(),
    ];
    // Greedy (argmax) one step at a time and overlapped, and sampled on the GPU with a
    // fixed seed (more sensitive to small logit changes than greedy picks).
    let sampled = SamplingParams {
        temperature: 1.0,
        seed: 4242,
        ..SamplingParams::default()
    };
    for (name, overlap, sampling) in [
        ("greedy-serial", false, SamplingParams::default()),
        ("greedy-overlapped", true, SamplingParams::default()),
        ("sampled-overlapped", true, sampled),
    ] {
        g.set_overlap(overlap);
        let run = g.lockstep_sampled(&prompts, 9, &sampling).unwrap();
        assert_eq!(g.pool().num_used(), 0, "{model}: KV blocks leaked");
        let key = format!(
            "{model}/{}/{}/lockstep-3-seqs-{name}",
            dtype_name(dtype),
            forms_name(ctx),
        );
        out.push(Case {
            key,
            record: Record::Tokens {
                outputs: run.outputs,
                logprobs_hash: None,
            },
            rows: None,
        });
    }
}

fn engine_case(
    ctx: &GpuContext,
    model: &str,
    path: &Path,
    dtype: WeightDType,
    out: &mut Vec<Case>,
) {
    let mut cfg = EngineConfig::new(path);
    cfg.model.dtype = dtype;
    cfg.model.max_batch_tokens = 16;
    cfg.model.max_seqs = 4;
    let engine = Engine::with_context(ctx, cfg, &mut |_, _| {}).unwrap();
    let mut req = Request::new(Prompt::Ids(TINY_PROMPT.to_vec()));
    req.max_tokens = 10;
    req.ignore_eos = true;
    req.logprobs = Some(3);
    req.sampling = SamplingParams {
        temperature: 0.9,
        seed: 1234,
        ..SamplingParams::default()
    };
    let handles = engine.submit_n(req, 2).unwrap();
    let mut outputs = Vec::new();
    let mut lp_bits = Vec::new();
    for h in handles {
        let c = h.wait().unwrap();
        assert_eq!(
            c.logprobs.len(),
            c.output_ids.len(),
            "{model}: one logprob per token"
        );
        for lp in &c.logprobs {
            lp_bits.push(lp.token);
            lp_bits.push(lp.logprob.to_bits());
            for (id, p) in &lp.top {
                lp_bits.push(*id);
                lp_bits.push(p.to_bits());
            }
        }
        outputs.push(c.output_ids);
    }
    let key = format!(
        "{model}/{}/{}/engine-n2-sampled-logprobs",
        dtype_name(dtype),
        forms_name(ctx)
    );
    out.push(Case {
        key,
        record: Record::Tokens {
            outputs,
            logprobs_hash: Some(fnv1a64_bits(lp_bits)),
        },
        rows: None,
    });
}

fn run_all(ctx: &GpuContext, out: &mut Vec<Case>) {
    let t = std::time::Instant::now();
    for (model, dir) in [
        ("tiny-gpt2", "tiny-gpt2-public"),
        ("tiny-llama-gqa", "tiny-llama-gqa-public"),
    ] {
        let path = fixtures().join(dir);
        for dtype in [WeightDType::F32, WeightDType::F16] {
            teacher_forced(
                ctx,
                model,
                &path,
                dtype,
                &TINY_PROMPT,
                &[256, 5, 1],
                out,
                |chunk, g, out| {
                    if chunk == 5 {
                        lockstep_cases(ctx, model, dtype, g, out);
                    }
                },
            );
            if model == "tiny-llama-gqa" {
                engine_case(ctx, model, &path, dtype, out);
            }
            eprintln!(
                "  {model} {} {}: done at {:.1}s",
                dtype_name(dtype),
                forms_name(ctx),
                t.elapsed().as_secs_f64()
            );
        }
    }
    // 21 tokens in steps of 8, 8 and 5 (the tiny models cover the one-step prefill).
    for dtype in [WeightDType::F32, WeightDType::F16] {
        teacher_forced(
            ctx,
            "smollm2-135m-q4_1",
            &smollm2_path(),
            dtype,
            &SMOLLM2_PROMPT,
            &[8],
            out,
            |_, _, _| {},
        );
        eprintln!(
            "  smollm2 {} {}: done at {:.1}s",
            dtype_name(dtype),
            forms_name(ctx),
            t.elapsed().as_secs_f64()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Comparison

fn fmt_opt(v: Option<f32>) -> String {
    v.map_or("non-finite".into(), |v| format!("{v:?}"))
}

/// Whether two records agree on what is checked: the row hashes (argmax and max logit
/// are only diagnostics, and decimal floats may not read back bit-exactly) or the tokens.
fn same(a: &Record, b: &Record) -> bool {
    match (a, b) {
        (
            Record::Logits {
                vocab: va,
                rows: ra,
                ..
            },
            Record::Logits {
                vocab: vb,
                rows: rb,
                ..
            },
        ) => va == vb && ra.len() == rb.len() && ra.iter().zip(rb).all(|(x, y)| x.hash == y.hash),
        (Record::Tokens { .. }, Record::Tokens { .. }) => a == b,
        _ => false,
    }
}

fn compare_case(adapter: &str, key: &str, want: &Record, got: &Case) -> Option<String> {
    if same(want, &got.record) {
        return None;
    }
    match (want, &got.record) {
        (
            Record::Logits {
                vocab: wv,
                rows: wr,
                ..
            },
            Record::Logits {
                vocab: gv,
                rows: gr,
                ..
            },
        ) => {
            if wv != gv || wr.len() != gr.len() {
                return Some(format!(
                    "{key}: shape changed: recorded {} rows × {wv}, now {} rows × {gv}",
                    wr.len(),
                    gr.len()
                ));
            }
            let differing: Vec<usize> = (0..wr.len())
                .filter(|&i| wr[i].hash != gr[i].hash)
                .collect();
            if differing.is_empty() {
                // Unreachable after `same`; kept so that indexing below cannot panic.
                return Some(format!(
                    "{key}: summaries differ: {want:?} vs {:?}",
                    got.record
                ));
            }
            let p = differing[0];
            let (w, g) = (&wr[p], &gr[p]);
            let mut msg = format!(
                "{key}: {} of {} rows differ; first at position {p}: hash {} → {}, argmax {} → {}{}, \
                 max logit {} → {}",
                differing.len(),
                wr.len(),
                hex(w.hash),
                hex(g.hash),
                w.argmax,
                g.argmax,
                if w.argmax != g.argmax {
                    " (ARGMAX CHANGED)"
                } else {
                    ""
                },
                fmt_opt(w.max),
                fmt_opt(g.max),
            );
            if let (Some(a), Some(b)) = (w.max, g.max) {
                let _ = write!(msg, " (|Δ| {:.3e})", (a - b).abs());
            }
            let argmax_changed = differing
                .iter()
                .filter(|&&i| wr[i].argmax != gr[i].argmax)
                .count();
            let _ = write!(msg, "; argmax changed at {argmax_changed} rows");
            match (read_dump(adapter, key, wr, *wv), &got.rows) {
                (Some(old), Some(new)) => {
                    let row_max = |i: usize| {
                        old[i]
                            .iter()
                            .zip(&new[i])
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max)
                    };
                    let first = row_max(p);
                    let all = differing.iter().map(|&i| row_max(i)).fold(0f32, f32::max);
                    let _ = write!(
                        msg,
                        "; max |Δ| over the row {first:.3e}, over all rows {all:.3e} (from the full-row dump)"
                    );
                }
                _ => msg
                    .push_str("; (no full-row dump from the recording here, so no exact max |Δ|)"),
            }
            Some(msg)
        }
        (
            Record::Tokens {
                outputs: wo,
                logprobs_hash: wl,
            },
            Record::Tokens {
                outputs: go,
                logprobs_hash: gl,
            },
        ) => {
            let mut msg = format!("{key}:");
            if wo != go {
                for (s, (a, b)) in wo.iter().zip(go).enumerate() {
                    if a != b {
                        let i = a
                            .iter()
                            .zip(b)
                            .position(|(x, y)| x != y)
                            .unwrap_or(a.len().min(b.len()));
                        let _ = write!(
                            msg,
                            " sequence {s} first differs at output {i}: recorded {:?}, now {:?};",
                            a.get(i),
                            b.get(i)
                        );
                    }
                }
                if wo.len() != go.len() {
                    let _ = write!(msg, " {} sequences recorded, {} now;", wo.len(), go.len());
                }
            }
            if wl != gl {
                let _ = write!(
                    msg,
                    " logprobs hash {} → {} (the full rows read back for logprobs changed bits)",
                    wl.map_or("none".into(), hex),
                    gl.map_or("none".into(), hex)
                );
            }
            Some(msg)
        }
        _ => Some(format!("{key}: record kind changed")),
    }
}

#[test]
fn logits_are_bit_identical_to_the_snapshot() {
    let t0 = std::time::Instant::now();
    let adapter = adapter_key(gpu());
    assert_eq!(
        adapter,
        adapter_key(gpu_other_forms()),
        "both kernel families must run on the same adapter"
    );
    let recording = std::env::var_os(RECORD_VAR).is_some_and(|v| !v.is_empty() && v != "0");
    let mut snapshot = load_snapshot();
    let path = snapshot_path();
    // Fail before the (slow) runs when there is nothing to compare with.
    if !recording && !snapshot.contains_key(&adapter) {
        panic!(
            "no logits snapshot for adapter {adapter:?} in {} (recorded adapters: {:?}).\n\
             Bits may differ between drivers, so each adapter needs its own record. Record it on \
             the code BEFORE the change being checked (e.g. on the base commit), with\n    \
             {RECORD_CMD}\nthen keep the updated file and rerun without {RECORD_VAR}.",
            path.display(),
            snapshot.keys().collect::<Vec<_>>()
        );
    }

    let mut cases = Vec::new();
    run_all(gpu(), &mut cases);
    run_all(gpu_other_forms(), &mut cases);
    eprintln!(
        "{} cases on {adapter} in {:.1}s",
        cases.len(),
        t0.elapsed().as_secs_f64()
    );
    {
        let mut keys: Vec<&str> = cases.iter().map(|c| c.key.as_str()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), cases.len(), "case keys must be unique");
    }

    if recording {
        let section: BTreeMap<String, Record> = cases
            .iter()
            .map(|c| (c.key.clone(), c.record.clone()))
            .collect();
        snapshot.insert(adapter.clone(), section);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, render(&snapshot)).unwrap();
        // The file must read back as what was recorded.
        let back = load_snapshot();
        let back = back.get(&adapter).expect("the recorded adapter reads back");
        assert!(
            back.len() == cases.len()
                && cases
                    .iter()
                    .all(|c| back.get(&c.key).is_some_and(|r| same(r, &c.record))),
            "{}: the written snapshot does not read back",
            path.display()
        );
        for c in &cases {
            if let Some(rows) = &c.rows {
                write_dump(&adapter, &c.key, rows);
            }
        }
        eprintln!(
            "recorded {} cases for {adapter} in {} (full rows dumped under {})",
            cases.len(),
            path.display(),
            dump_dir(&adapter).display()
        );
        return;
    }

    let recorded = &snapshot[&adapter];
    let mut failures = Vec::new();
    for c in &cases {
        match recorded.get(&c.key) {
            None => failures.push(format!(
                "{}: not in the snapshot (a new case? record it)",
                c.key
            )),
            Some(want) => {
                if let Some(m) = compare_case(&adapter, &c.key, want, c) {
                    failures.push(m);
                }
            }
        }
    }
    for k in recorded.keys() {
        if !cases.iter().any(|c| &c.key == k) {
            failures.push(format!("{k}: recorded but no longer run"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from the snapshot for {adapter:?} ({}):\n  {}\n\
         If the change is meant to alter the bits, rerecord with {RECORD_CMD}",
        failures.len(),
        cases.len(),
        path.display(),
        failures.join("\n  ")
    );
    eprintln!(
        "all {} cases bit-identical ({:.1}s)",
        cases.len(),
        t0.elapsed().as_secs_f64()
    );
}
