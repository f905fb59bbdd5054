//! Giving back the KV blocks every layer's sliding window has passed, end to end on the GPU,
//! with tiny-mistral (tests/fixtures/arch/tiny-mistral: window 24 on both layers) and its
//! 100-token golden prompt plus 24 generated tokens (123 tokens of KV).
//!
//! - The scheduler driven by hand over the runner, with blocks of 4 and 8-token steps: the
//!   logits of every step are bit for bit those of a run that keeps every block, while every
//!   free block of the pool (the given-back ones included) is overwritten with another
//!   sequence's KV after each step; and a pool of 9 blocks — less than the 31 the whole
//!   sequence takes, enough for the window's peak — runs it without a preemption.
//! - The engine (overlapped steps, prefix cache off so a given-back block is the next one
//!   handed out): two requests at once reuse each other's given-back blocks, each greedy
//!   token is the argmax of a teacher-forced run that keeps all its blocks (`Generator`),
//!   and the pool's peak use stays within the window's bound.

mod common;

use common::{fixtures, gpu, ids, read_json};
use wllm::batch::StepBatch;
use wllm::engine::{Engine, EngineConfig, Prompt, Request};
use wllm::kv::{BlockPool, BlockTable, window_peak_blocks};
use wllm::scheduler::{Scheduler, SchedulerConfig, SeqId};
use wllm::{FinishReason, Generator, ModelOptions, WeightDType};

const WINDOW: usize = 24;
const BLOCK: usize = 4;
/// Tokens per step: the 100-token prompt runs in chunks of 8.
const STEP_TOKENS: usize = 8;
const MAX_TOKENS: usize = 24;
/// Blocks the runner's KV pool has (positions up to 256): the scheduler's pools below use
/// the first ones, and the last holds the garbage KV the poisoning copies.
const RUNNER_BLOCKS: usize = 64;

fn model() -> std::path::PathBuf {
    fixtures().join("arch/tiny-mistral")
}

/// The golden case's prompts: (name, ids).
fn prompts() -> Vec<(String, Vec<u32>)> {
    let golden = read_json(&model().join("golden.stored.json"));
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                ids(&c["prompt_ids"]),
            )
        })
        .collect()
}

fn prompt(name: &str) -> Vec<u32> {
    prompts().into_iter().find(|(n, _)| n == name).unwrap().1
}

fn generator() -> Generator {
    let mut opts = ModelOptions::new(model());
    opts.dtype = WeightDType::F32;
    opts.block_size = BLOCK;
    opts.num_blocks = Some(RUNNER_BLOCKS);
    opts.max_batch_tokens = STEP_TOKENS;
    opts.max_seqs = 4;
    let g = Generator::load(gpu(), &opts, &mut |_, _| {}).unwrap();
    assert_eq!(g.config().layer_windows, vec![Some(WINDOW); 2]);
    g
}

/// What one hand-driven run produced.
struct Run {
    /// Greedy tokens.
    tokens: Vec<u32>,
    /// The logits row of every sampling step.
    rows: Vec<Vec<f32>>,
    /// Most blocks in use after any `schedule`.
    peak_used: usize,
    preemptions: u64,
}

/// Fills the runner's last block with the KV of unrelated tokens (a table of its own pool
/// whose first 63 blocks are taken, so its block is number 63) and returns its id.
fn garbage_block(g: &mut Generator) -> u32 {
    let mut pool = BlockPool::new(RUNNER_BLOCKS, BLOCK).unwrap();
    for _ in 0..RUNNER_BLOCKS - 1 {
        pool.allocate().unwrap();
    }
    let mut t = BlockTable::new();
    t.grow_to(&mut pool, BLOCK).unwrap();
    let id = t.blocks()[0].0;
    assert_eq!(id as usize, RUNNER_BLOCKS - 1);
    let runner = g.runner_mut();
    let mut batch = StepBatch::new(runner.max_blocks());
    batch
        .push_sequence(
            &[401, 17, 333, 250],
            0,
            &t,
            BLOCK,
            wllm::batch::LogitRows::None,
        )
        .unwrap();
    runner.forward(&batch).unwrap();
    id
}

/// Greedy generation of `prompt` by a scheduler over `pool_blocks` blocks (the runner's
/// first ones) with `window`; with `poison`, every free block is overwritten with `garbage`
/// after each step.
fn run(
    g: &mut Generator,
    prompt: &[u32],
    pool_blocks: usize,
    window: Option<usize>,
    poison: Option<u32>,
) -> Run {
    let cfg = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: STEP_TOKENS,
        max_model_len: g.config().max_context,
        watermark_blocks: Some(0),
        enable_prefix_cache: false,
        sliding_window: window,
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(cfg, BlockPool::new(pool_blocks, BLOCK).unwrap()).unwrap();
    let id = SeqId(1);
    s.add(id, prompt.to_vec(), MAX_TOKENS).unwrap();
    let mut r = Run {
        tokens: Vec::new(),
        rows: Vec::new(),
        peak_used: 0,
        preemptions: 0,
    };
    let runner = g.runner_mut();
    loop {
        let out = s.schedule();
        if out.is_empty() {
            break;
        }
        r.peak_used = r.peak_used.max(s.pool().num_used());
        let widest = s.block_table(id).unwrap().blocks().len();
        let batch = s.step_batch(&out, runner.block_columns(widest)).unwrap();
        let copies: Vec<[u32; 2]> = out
            .block_copies
            .iter()
            .map(|c| [c.src.0, c.dst.0])
            .collect();
        runner.copy_blocks(&copies).unwrap();
        let logits = runner.forward(&batch).unwrap();
        let mut sampled = Vec::new();
        if out.sampling_ids().next().is_some() {
            let tok = logits.token(0);
            r.rows.push(logits.row(0).unwrap().to_vec());
            r.tokens.push(tok);
            sampled.push((id, tok));
        }
        let capped = s.update(&out, &sampled).unwrap();
        if let Some(src) = poison {
            let free: Vec<[u32; 2]> = (0..pool_blocks as u32)
                .filter(|b| s.pool().ref_count(wllm::kv::BlockId(*b)) == 0)
                .map(|b| [src, b])
                .collect();
            runner.copy_blocks(&free).unwrap();
        }
        if capped.contains(&id) {
            break;
        }
    }
    r.preemptions = s.num_preemptions();
    s.finish(id).unwrap();
    assert_eq!(s.pool().num_used(), 0, "blocks leaked");
    r
}

#[test]
fn given_back_blocks_change_no_logit_even_when_overwritten_and_a_small_pool_suffices() {
    let mut g = generator();
    let p = prompt("rand_len100");
    let garbage = garbage_block(&mut g);
    // 100 + 24 tokens: the KV holds 123 = 31 blocks of 4. Without a window every one stays.
    let whole = BlockTable::blocks_needed(p.len() + MAX_TOKENS - 1, BLOCK);
    assert_eq!(whole, 31);
    let t0 = std::time::Instant::now();
    let keep = run(&mut g, &p, whole + 1, None, None);
    assert_eq!(keep.tokens.len(), MAX_TOKENS);
    assert_eq!(keep.peak_used, whole);
    // With the window, chunks of 8: at most ceil((24 + 8 + 4 - 2) / 4) = 9 blocks at once.
    let bound = window_peak_blocks(WINDOW, BLOCK, STEP_TOKENS);
    assert_eq!(bound, 9);
    let freed = run(&mut g, &p, whole + 1, Some(WINDOW), Some(garbage));
    // A 9-block pool (36 slots for a 123-token KV), everything free overwritten each step.
    let small = run(&mut g, &p, bound, Some(WINDOW), Some(garbage));
    for (what, r) in [("freed", &freed), ("small pool", &small)] {
        assert_eq!(r.tokens, keep.tokens, "{what}: tokens differ");
        for (i, (a, b)) in r.rows.iter().zip(&keep.rows).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{what}: logits of step {i} differ");
        }
        assert_eq!(r.preemptions, 0, "{what}");
        assert!(r.peak_used <= bound, "{what}: {} blocks used", r.peak_used);
    }
    eprintln!(
        "124-token tiny-mistral case, blocks of {BLOCK}, {STEP_TOKENS}-token steps: peak blocks \
         held {} keeping every block, {} giving back (pool of {}), {} in a {bound}-block pool \
         ({:.1} s)",
        keep.peak_used,
        freed.peak_used,
        whole + 1,
        small.peak_used,
        t0.elapsed().as_secs_f64()
    );
    // The poison reaches the kernels: a scheduler that takes the window for 16 gives back
    // blocks the queries still read, and the overwritten KV changes the logits.
    let wrong = run(&mut g, &p, whole + 1, Some(WINDOW - 8), Some(garbage));
    assert_ne!(wrong.rows, keep.rows, "poisoning changed nothing");
    // Without a window the small pool refuses the request outright.
    let cfg = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: STEP_TOKENS,
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(cfg, BlockPool::new(bound, BLOCK).unwrap()).unwrap();
    assert!(s.add(SeqId(1), p, MAX_TOKENS).is_err());
}

#[test]
fn the_engine_reuses_given_back_blocks_across_requests_without_changing_tokens() {
    let p100 = prompt("rand_len100");
    let p40 = prompt("rand_len40");
    let mut cfg = EngineConfig::new(model());
    cfg.model.dtype = WeightDType::F32;
    cfg.model.block_size = BLOCK;
    cfg.model.num_blocks = Some(40);
    cfg.model.max_batch_tokens = STEP_TOKENS;
    cfg.model.max_seqs = 4;
    cfg.model.enable_prefix_cache = false;
    cfg.overlap_steps = Some(true);
    let e = Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap();
    let req = |p: &[u32]| {
        let mut r = Request::new(Prompt::Ids(p.to_vec()));
        r.max_tokens = MAX_TOKENS;
        r.ignore_eos = true;
        r
    };
    let handles: Vec<_> = [&p100, &p40]
        .iter()
        .map(|p| e.submit(req(p)).unwrap())
        .collect();
    let outputs: Vec<Vec<u32>> = handles
        .into_iter()
        .map(|h| h.wait().unwrap().output_ids)
        .collect();
    let st = e.stats();
    drop(e);
    // Two sequences, each within the window's peak: no chunk exceeds the 8-token step, so
    // each holds at most 9 blocks (without giving back: 31 + 16 = 47, more than the pool).
    let bound = window_peak_blocks(WINDOW, BLOCK, STEP_TOKENS);
    assert!(
        st.peak_blocks_used <= 2 * bound,
        "{} blocks used at the peak",
        st.peak_blocks_used
    );
    assert_eq!(st.preemptions, 0);
    eprintln!(
        "engine, 100- and 40-token prompts + 24 tokens each: peak {} blocks (whole KV: {} + {})",
        st.peak_blocks_used,
        BlockTable::blocks_needed(123, BLOCK),
        BlockTable::blocks_needed(63, BLOCK)
    );
    let mut g = generator();
    assert_teacher_forced_argmax(&mut g, &p100, &outputs[0]);
    assert_teacher_forced_argmax(&mut g, &p40, &outputs[1]);
}

/// Each greedy token of `out` is the argmax of a teacher-forced run that keeps every block.
fn assert_teacher_forced_argmax(g: &mut Generator, p: &[u32], out: &[u32]) {
    assert_eq!(out.len(), MAX_TOKENS);
    let mut all = p.to_vec();
    all.extend(out);
    let logits = g.logits(&all[..all.len() - 1]).unwrap();
    for (i, tok) in out.iter().enumerate() {
        let row = &logits[p.len() - 1 + i];
        let best = (0..row.len())
            .max_by(|a, b| row[*a].total_cmp(&row[*b]).then(b.cmp(a)))
            .unwrap();
        assert_eq!(best as u32, *tok, "prompt of {}: token {i}", p.len());
    }
}

/// Through the engine, a sequence longer than the whole pool: 100 + 24 tokens of KV in 10
/// blocks of 4 (40 slots). The runner's tables span the model's context for a model whose
/// every layer has a window, so the sequence is neither refused nor cut at the pool's size.
#[test]
fn the_engine_runs_a_sequence_longer_than_its_pool() {
    let p100 = prompt("rand_len100");
    let mut cfg = EngineConfig::new(model());
    cfg.model.dtype = WeightDType::F32;
    cfg.model.block_size = BLOCK;
    cfg.model.num_blocks = Some(10);
    cfg.model.max_batch_tokens = STEP_TOKENS;
    cfg.model.max_seqs = 1;
    cfg.model.enable_prefix_cache = false;
    let e = Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap();
    let mut r = Request::new(Prompt::Ids(p100.clone()));
    r.max_tokens = MAX_TOKENS;
    r.ignore_eos = true;
    let out = e.generate(r).unwrap();
    let st = e.stats();
    drop(e);
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(st.preemptions, 0);
    assert!(st.peak_blocks_used <= window_peak_blocks(WINDOW, BLOCK, STEP_TOKENS));
    let mut g = generator();
    assert_teacher_forced_argmax(&mut g, &p100, &out.output_ids);
}
