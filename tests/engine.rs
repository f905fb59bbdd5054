//! The batching engine end to end: golden outputs through the engine, batch invariance with
//! preemption, aborts, refusals, stop strings.

mod common;

use std::time::Duration;

use common::{fixtures, gpu, gpu_other_forms, ids, read_json, smollm2_path};
use futures::StreamExt;
use wllm::engine::{Engine, EngineConfig, Event, Prompt, Request};
use wllm::{Error, SamplingParams, WeightDType};

fn engine(
    dir: &str,
    dtype: WeightDType,
    blocks: Option<usize>,
    block_size: usize,
    max_seqs: usize,
    max_tokens_per_step: usize,
) -> Engine {
    let path = fixtures().join(dir);
    let shape = (blocks, block_size, max_seqs, max_tokens_per_step);
    engine_on(gpu(), &path, dtype, shape)
}

/// An engine on `ctx` for the model at `path`; `shape` is (KV blocks, block size, most
/// sequences, most tokens per step).
fn engine_on(
    ctx: &wllm::GpuContext,
    path: &std::path::Path,
    dtype: WeightDType,
    shape: (Option<usize>, usize, usize, usize),
) -> Engine {
    let (blocks, block_size, max_seqs, max_tokens_per_step) = shape;
    let mut cfg = EngineConfig::new(path);
    cfg.model.dtype = dtype;
    cfg.model.num_blocks = blocks;
    cfg.model.block_size = block_size;
    cfg.model.max_seqs = max_seqs;
    cfg.model.max_batch_tokens = max_tokens_per_step;
    // Overlapped steps (off by default on CPU adapters), so these tests cover them too.
    cfg.overlap_steps = Some(true);
    Engine::with_context(ctx, cfg, &mut |_, _| {}).unwrap()
}

fn req(prompt: Vec<u32>, max_tokens: usize, sampling: SamplingParams) -> Request {
    let mut r = Request::new(Prompt::Ids(prompt));
    r.max_tokens = max_tokens;
    r.sampling = sampling;
    r
}

/// The golden cases of a tiny model, greedy, plus two sampled variants.
fn requests(dir: &str) -> Vec<Request> {
    let golden = read_json(&fixtures().join(dir).join("golden.json"));
    let mut out = Vec::new();
    for (i, case) in golden["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        out.push(req(prompt.clone(), 24, SamplingParams::default()));
        let sampled = SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            seed: i as u64,
            ..Default::default()
        };
        out.push(req(prompt, 20, sampled));
    }
    out
}

/// Stats are published after each step; wait (bounded) until the engine has gone idle.
fn idle_stats(e: &Engine) -> wllm::EngineStats {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = e.stats();
        if (st.blocks_used == 0 && st.requests_running == 0) || std::time::Instant::now() > deadline
        {
            return st;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run_together(e: &Engine, reqs: &[Request]) -> Vec<Vec<u32>> {
    let handles: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    handles
        .into_iter()
        .map(|h| h.wait().unwrap().output_ids)
        .collect()
}

fn run_alone(e: &Engine, reqs: &[Request]) -> Vec<Vec<u32>> {
    reqs.iter()
        .map(|r| e.generate(r.clone()).unwrap().output_ids)
        .collect()
}

#[test]
fn engine_greedy_matches_the_golden_ids() {
    for dir in ["tiny-llama-gqa-public", "tiny-gpt2-public"] {
        let golden = read_json(&fixtures().join(dir).join("golden.json"));
        let e = engine(dir, WeightDType::F32, None, 16, 8, 64);
        let cases = golden["cases"].as_array().unwrap();
        let reqs: Vec<_> = cases
            .iter()
            .map(|c| req(ids(&c["prompt_ids"]), 24, SamplingParams::default()))
            .collect();
        let outs = run_together(&e, &reqs);
        for (c, out) in cases.iter().zip(outs) {
            assert_eq!(out, ids(&c["greedy_ids"]), "{dir} {}", c["name"]);
        }
        assert_eq!(idle_stats(&e).blocks_used, 0);
    }
}

/// Same outputs alone (a roomy pool) and all together in a pool so small that sequences are
/// preempted and recomputed, with prompts prefilled in small chunks.
fn check_invariance(dir: &str, dtype: WeightDType) {
    check_invariance_on(gpu(), &fixtures().join(dir), &requests(dir), dtype);
}

fn check_invariance_on(
    ctx: &wllm::GpuContext,
    path: &std::path::Path,
    reqs: &[Request],
    dtype: WeightDType,
) {
    let dir = path.display();
    let alone = run_alone(&engine_on(ctx, path, dtype, (None, 16, 1, 256)), reqs);
    // 40 blocks of 4 = 160 slots for 12 requests of up to 124 tokens each.
    let tight = engine_on(ctx, path, dtype, (Some(40), 4, 12, 24));
    let together = run_together(&tight, reqs);
    let st = idle_stats(&tight);
    assert!(
        st.preemptions > 0,
        "the pool should force preemptions: {st:?}"
    );
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(
            a, b,
            "{dir} {dtype:?} request {i} differs between alone and batched"
        );
    }
    assert_eq!(st.blocks_used, 0, "blocks leaked: {st:?}");
}

#[test]
fn outputs_do_not_depend_on_the_batch_f32() {
    check_invariance("tiny-llama-gqa-public", WeightDType::F32);
    check_invariance("tiny-gpt2-public", WeightDType::F32);
}

/// The same in the kernel forms the default device does not build (see `gpu_other_forms`),
/// with the quantized reference model too (the split-k quantized matmul on lavapipe).
#[test]
fn outputs_do_not_depend_on_the_batch_in_the_other_kernel_forms() {
    let ctx = gpu_other_forms();
    let tiny = |dir| (fixtures().join(dir), requests(dir));
    let (path, reqs) = tiny("tiny-llama-gqa-public");
    check_invariance_on(ctx, &path, &reqs, WeightDType::F32);
    let (path, reqs) = tiny("tiny-gpt2-public");
    check_invariance_on(ctx, &path, &reqs, WeightDType::F16);
    // SmolLM2's golden prompts, greedy and sampled, 12 tokens each.
    let fx = read_json(&fixtures().join("smollm2-135m-public.json"));
    let mut reqs = Vec::new();
    for (i, case) in fx["cases"].as_array().unwrap().iter().take(4).enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        reqs.push(req(prompt.clone(), 12, SamplingParams::default()));
        let sampled = SamplingParams {
            temperature: 0.8,
            seed: i as u64,
            ..Default::default()
        };
        reqs.push(req(prompt, 12, sampled));
    }
    check_invariance_on(ctx, &smollm2_path(), &reqs, WeightDType::F32);
}

#[test]
fn outputs_do_not_depend_on_the_batch_f16() {
    check_invariance("tiny-llama-gqa-public", WeightDType::F16);
    check_invariance("tiny-gpt2-public", WeightDType::F16);
}

#[test]
fn bad_requests_are_refused_at_submit() {
    let e = engine(
        "tiny-llama-gqa-public",
        WeightDType::F32,
        Some(8),
        16,
        4,
        64,
    );
    let refused = |r: Request| match e.submit(r) {
        Err(Error::InvalidRequest(m)) => m,
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("accepted"),
    };
    assert!(refused(req(vec![], 4, SamplingParams::default())).contains("empty"));
    assert!(refused(req(vec![1, 2], 0, SamplingParams::default())).contains("max_tokens"));
    assert!(refused(req(vec![1, 99999], 4, SamplingParams::default())).contains("vocabulary"));
    // 8 blocks of 16 = 128 tokens: a 200-token prompt can never fit the pool
    assert!(refused(req(vec![3; 200], 4, SamplingParams::default())).contains("fit"));
    let bad_sampling = SamplingParams {
        temperature: -1.0,
        ..Default::default()
    };
    assert!(refused(req(vec![1, 2], 4, bad_sampling)).contains("sampling"));
    // Text prompts need a tokenizer, which the random-weight checkpoint lacks.
    assert!(matches!(
        e.submit(Request::new(Prompt::Text("hi".into()))),
        Err(Error::InvalidRequest(_))
    ));
    // The engine still works afterwards.
    assert_eq!(
        e.generate(req(vec![1, 2, 3], 3, SamplingParams::default()))
            .unwrap()
            .output_ids
            .len(),
        3
    );
}

#[test]
fn a_full_queue_refuses_instead_of_dropping() {
    let mut cfg = EngineConfig::new(fixtures().join("tiny-llama-gqa-public"));
    cfg.max_waiting = 2;
    cfg.model.max_seqs = 1;
    let e = Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap();
    let mut handles = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match e.submit(req(vec![5; 40], 200, SamplingParams::default())) {
            Ok(h) => handles.push(h),
            Err(Error::QueueFull(2)) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert!(
        refused > 0,
        "40 submissions into a queue of 2 should see refusals"
    );
    // Every accepted request completes.
    for h in handles {
        let c = h.wait().unwrap();
        assert_eq!(c.output_ids.len(), 200);
    }
}

/// An engine with `max_seqs` running slots and `max_waiting` queue places.
fn engine_with_queue(max_seqs: usize, max_waiting: usize) -> Engine {
    let mut cfg = EngineConfig::new(fixtures().join("tiny-llama-gqa-public"));
    cfg.model.max_seqs = max_seqs;
    cfg.max_waiting = max_waiting;
    Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap()
}

/// A request that runs long enough to still be live when the submissions around it end.
fn long_request() -> Request {
    let mut r = req(vec![5; 8], 400, SamplingParams::default());
    r.ignore_eos = true;
    r
}

#[test]
fn free_running_slots_admit_requests_beyond_the_waiting_limit() {
    // 16 running slots + 4 waiting places: a burst of 12 is all admitted (it once got 4).
    let e = engine_with_queue(16, 4);
    let burst: Vec<_> = (0..12).map(|_| e.submit(long_request())).collect();
    assert!(
        burst.iter().all(Result::is_ok),
        "a burst of 12 into 16 + 4 was refused"
    );
    // 4 slots + 4 places: exactly 8 of 30 are held, the rest refused, none dropped.
    let e = engine_with_queue(4, 4);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        match e.submit(long_request()) {
            Ok(h) => held.push(h),
            Err(Error::QueueFull(4)) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((held.len(), refused), (8, 22));
    assert_eq!(e.capacity(), 8);
    // Parallel sampling counts each completion: 8 held, so n = 2 is refused until one ends.
    assert!(matches!(
        e.submit_n(long_request(), 2),
        Err(Error::QueueFull(4))
    ));
    // Two handles dropped: their places free within a step, and the pair is admitted.
    held.truncate(6);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let pair = loop {
        match e.submit_n(long_request(), 2) {
            Err(Error::QueueFull(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => break other,
        }
    };
    assert_eq!(pair.map(|h| h.len()).map_err(|e| e.to_string()), Ok(2));
}

#[test]
fn step_limits_and_pool_sizes_are_refused_not_changed() {
    let start = |seqs: usize, tokens: usize| {
        let mut cfg = EngineConfig::new(fixtures().join("tiny-llama-gqa-public"));
        cfg.model.max_seqs = seqs;
        cfg.model.max_batch_tokens = tokens;
        match Engine::with_context(gpu(), cfg, &mut |_, _| {}) {
            Err(Error::InvalidRequest(m)) => m,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("max_num_seqs {seqs}, max_num_batched_tokens {tokens} accepted"),
        }
    };
    assert!(start(0, 256).contains("max_num_seqs (0)"));
    assert!(start(4, 0).contains("max_num_batched_tokens (0)"));
    assert!(start(64, 32).contains("exceeds max_num_batched_tokens (32)"));
    // An explicit KV pool that no binding holds is refused, not shrunk.
    let mut cfg = EngineConfig::new(fixtures().join("tiny-llama-gqa-public"));
    cfg.model.num_blocks = Some(100_000_000);
    match Engine::with_context(gpu(), cfg, &mut |_, _| {}) {
        Err(Error::InvalidRequest(m)) => assert!(m.contains("100000000 blocks"), "{m}"),
        Err(other) => panic!("{other}"),
        Ok(e) => panic!(
            "a pool of {} blocks was used instead",
            e.stats().blocks_total
        ),
    }
}

#[test]
fn more_completions_than_the_engine_holds_are_a_bad_request() {
    let e = engine_with_queue(2, 3);
    match e.submit_n(long_request(), 6) {
        Err(Error::InvalidRequest(m)) => {
            assert!(
                m.contains("max_num_seqs 2") && m.contains("max_waiting 3"),
                "{m}"
            )
        }
        other => panic!("expected a bad request, got {:?}", other.map(|h| h.len())),
    }
    // n = 5 fits on an idle engine.
    assert_eq!(e.submit_n(long_request(), 5).map(|h| h.len()).ok(), Some(5));
}

#[test]
fn dropping_the_engine_fails_live_requests_promptly() {
    let e = engine_with_queue(4, 4);
    let mut running = e.submit(long_request()).unwrap();
    let waiting: Vec<_> = (0..6).map(|_| e.submit(long_request()).unwrap()).collect();
    // Wait for the first token, so a step is under way.
    futures::executor::block_on(async {
        while let Some(ev) = running.next().await {
            if matches!(ev, Event::Delta { .. }) {
                break;
            }
        }
    });
    let start = std::time::Instant::now();
    drop(e);
    // 400 tokens each would take seconds; the engine stops within a step or two.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        start.elapsed()
    );
    for h in std::iter::once(running).chain(waiting) {
        match h.wait() {
            Err(Error::InvalidRequest(m)) => assert!(m.contains("shut down"), "{m}"),
            Ok(c) => panic!(
                "a request ran on after the drop: {} tokens",
                c.output_ids.len()
            ),
            Err(other) => panic!("{other}"),
        }
    }
}

#[test]
fn abort_and_drop_free_blocks() {
    let e = engine("tiny-llama-gqa-public", WeightDType::F32, None, 4, 8, 64);
    let mut h = e
        .submit(req(vec![7; 30], 400, SamplingParams::default()))
        .unwrap();
    // Wait for the first token, then abort.
    futures::executor::block_on(async {
        while let Some(ev) = h.next().await {
            if matches!(ev, Event::Delta { .. }) {
                break;
            }
        }
    });
    h.abort();
    let dropped = e
        .submit(req(vec![8; 30], 400, SamplingParams::default()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(dropped);
    let st = idle_stats(&e);
    assert!(
        st.blocks_used == 0 && st.requests_running == 0,
        "blocks not freed: {st:?}"
    );
    // Still serving.
    assert_eq!(
        e.generate(req(vec![1, 2], 2, SamplingParams::default()))
            .unwrap()
            .output_ids
            .len(),
        2
    );
}

#[test]
fn stop_strings_and_eos_end_generation_without_emitting_the_stop_text() {
    let mut cfg = EngineConfig::new(smollm2_path());
    cfg.model.dtype = WeightDType::F32;
    let e = Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap();
    // Greedy reference continuation: " Paris.\n\nThe answer is: 2018-..."
    let mut r = Request::new(Prompt::Text("The capital of France is".into()));
    r.max_tokens = 12;
    r.stop = vec![".".into()];
    let c = e.generate(r).unwrap();
    assert_eq!(c.text, " Paris");
    assert_eq!(c.finish_reason, wllm::FinishReason::Stop);
    // Chat: the model ends its turn with <|im_end|> (id 2), a stop token.
    let mut r = Request::new(Prompt::Chat(vec![wllm::tokenizer::ChatMessage::user(
        "Say hi.",
    )]));
    r.max_tokens = 64;
    let c = e.generate(r).unwrap();
    assert_eq!(c.finish_reason, wllm::FinishReason::Stop, "{c:?}");
    assert_eq!(c.output_ids.last(), Some(&2));
    assert!(!c.text.contains("<|im_end|>"));
    assert_eq!(c.usage.completion_tokens, c.output_ids.len());
    assert!(c.usage.time_to_first_token.is_some());
}

#[test]
fn logprobs_report_the_chosen_token_and_alternatives() {
    let e = engine("tiny-llama-gqa-public", WeightDType::F32, None, 16, 4, 64);
    let mut r = req(vec![3, 1, 4, 1, 5], 6, SamplingParams::default());
    r.logprobs = Some(3);
    let c = e.generate(r).unwrap();
    assert_eq!(c.logprobs.len(), c.output_ids.len());
    for (lp, id) in c.logprobs.iter().zip(&c.output_ids) {
        assert_eq!(lp.token, *id);
        assert_eq!(lp.top.len(), 3);
        // greedy: the chosen token is the most likely one
        assert_eq!(lp.top[0].0, *id);
        assert_eq!(lp.top[0].1, lp.logprob);
        assert!(lp.logprob <= 0.0 && lp.top[1].1 <= lp.top[0].1);
    }
    // Plain greedy reads back only the GPU's argmax; with logprobs the CPU picks from the
    // full logits: the same tokens.
    let plain = e
        .generate(req(vec![3, 1, 4, 1, 5], 6, SamplingParams::default()))
        .unwrap();
    assert!(plain.logprobs.is_empty());
    assert_eq!(plain.output_ids, c.output_ids);
}

#[test]
fn parallel_sampling_shares_the_prompt_and_matches_separate_requests() {
    let e = engine("tiny-llama-gqa-public", WeightDType::F32, None, 4, 8, 64);
    let prompt: Vec<u32> = (0..23).map(|i| (i * 7 + 3) % 500).collect();
    let sampling = SamplingParams {
        temperature: 1.0,
        seed: 40,
        ..Default::default()
    };
    let handles = e
        .submit_n(req(prompt.clone(), 12, sampling.clone()), 3)
        .unwrap();
    assert_eq!(handles.len(), 3);
    let outs: Vec<Vec<u32>> = handles
        .into_iter()
        .map(|h| h.wait().unwrap().output_ids)
        .collect();
    for (i, out) in outs.iter().enumerate() {
        let alone = SamplingParams {
            seed: 40 + i as u64,
            ..sampling.clone()
        };
        let want = e
            .generate(req(prompt.clone(), 12, alone))
            .unwrap()
            .output_ids;
        assert_eq!(out, &want, "completion {i}");
    }
    assert!(
        outs[0] != outs[1] || outs[1] != outs[2],
        "different seeds should diverge"
    );
    // Greedy completions are identical.
    let g: Vec<_> = e
        .submit_n(req(prompt, 8, SamplingParams::default()), 2)
        .unwrap()
        .into_iter()
        .map(|h| h.wait().unwrap().output_ids)
        .collect();
    assert_eq!(g[0], g[1]);
    assert_eq!(idle_stats(&e).blocks_used, 0);
}

fn engine_with_cache(dtype: WeightDType, blocks: usize, cache: bool) -> Engine {
    let mut cfg = EngineConfig::new(fixtures().join("tiny-llama-gqa-public"));
    cfg.model.dtype = dtype;
    cfg.model.num_blocks = Some(blocks);
    cfg.model.block_size = 4;
    cfg.model.max_seqs = 4;
    cfg.model.max_batch_tokens = 32;
    cfg.model.enable_prefix_cache = cache;
    Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap()
}

/// Prompts sharing a 16-token "system prompt", ending exactly on a block boundary (20 tokens),
/// one past it (21), and a second turn that extends the first turn's prompt and output.
fn prefix_requests(first_turn: &[u32]) -> Vec<Vec<u32>> {
    let system: Vec<u32> = (0..16).map(|i| (i * 31 + 7) % 500).collect();
    let mut out = Vec::new();
    for (n, salt) in [(4usize, 1u32), (5, 2), (7, 3), (4, 1)] {
        let mut p = system.clone();
        p.extend((0..n as u32).map(|i| (i * 13 + salt * 101) % 500));
        out.push(p);
    }
    let mut second = out[0].clone();
    second.extend_from_slice(first_turn);
    second.extend([11, 12, 13]);
    out.push(second);
    out
}

fn check_prefix_cache(dtype: WeightDType) {
    // The first turn's output, computed without any cache.
    let cold = engine_with_cache(dtype, 64, false);
    let system_turn = prefix_requests(&[])[0].clone();
    let first = cold
        .generate(req(system_turn, 6, SamplingParams::default()))
        .unwrap()
        .output_ids;
    let prompts = prefix_requests(&first);
    let run = |e: &Engine| -> Vec<(Vec<u32>, usize)> {
        prompts
            .iter()
            .map(|p| {
                let c = e
                    .generate(req(p.clone(), 8, SamplingParams::default()))
                    .unwrap();
                (c.output_ids, c.usage.cached_tokens)
            })
            .collect()
    };
    let off = run(&cold);
    // 14 blocks of 4 tokens: small enough that later prompts evict earlier cached blocks.
    let on_engine = engine_with_cache(dtype, 14, true);
    let on = run(&on_engine);
    for (i, ((a, _), (b, cached))) in off.iter().zip(&on).enumerate() {
        assert_eq!(
            a, b,
            "{dtype:?} prompt {i}: output differs with the prefix cache on"
        );
        if i > 0 {
            assert!(
                *cached >= 16,
                "{dtype:?} prompt {i} reused only {cached} tokens"
            );
        }
    }
    assert!(off.iter().all(|(_, c)| *c == 0));
    // The identical repeat of prompt 0 (20 tokens, on a block boundary) reuses 16: the last
    // token is always computed, so the final full block is not taken.
    assert_eq!(on[3].1, 16);
    // The second turn reuses the first turn's prompt blocks.
    assert!(on[4].1 >= 20, "multi-turn reuse: {}", on[4].1);
    let st = idle_stats(&on_engine);
    assert!(st.evictions > 0, "{st:?}");
    assert!(st.prefix_hit_tokens > 0 && st.prefix_query_tokens >= st.prefix_hit_tokens);
    assert_eq!(st.blocks_used, 0);
}

#[test]
fn prefix_cache_reuses_without_changing_outputs_f32() {
    check_prefix_cache(WeightDType::F32);
}

#[test]
fn prefix_cache_reuses_without_changing_outputs_f16() {
    check_prefix_cache(WeightDType::F16);
}

#[test]
fn prefix_cache_keeps_batched_outputs_identical_under_eviction() {
    // Many requests sharing prefixes, all at once, in a pool that forces evictions and
    // preemptions: same greedy outputs with the cache on and off.
    let prompts: Vec<Vec<u32>> = (0..10)
        .map(|i| {
            let mut p: Vec<u32> = (0..12 + (i % 3) * 4)
                .map(|j| (j * 17 + (i % 2) * 5) as u32 % 500)
                .collect();
            p.push(100 + i as u32);
            p
        })
        .collect();
    let reqs: Vec<Request> = prompts
        .iter()
        .map(|p| req(p.clone(), 10, SamplingParams::default()))
        .collect();
    let off = run_together(&engine_with_cache(WeightDType::F32, 24, false), &reqs);
    let e = engine_with_cache(WeightDType::F32, 24, true);
    let on = run_together(&e, &reqs);
    assert_eq!(off, on);
    let st = idle_stats(&e);
    assert!(st.prefix_hit_tokens > 0 && st.evictions > 0, "{st:?}");
}

/// The GPU sampler and the CPU sampler run one algorithm on the same keys: requests sampled on
/// the GPU (one id read back per row) get the tokens the CPU picks from read-back rows, under
/// every processor the GPU takes, on a model with a real vocabulary. Also checks that sampled
/// requests do get different tokens from greedy (the GPU path is live).
#[test]
fn gpu_and_cpu_sampling_pick_the_same_tokens() {
    let fx = read_json(&fixtures().join("smollm2-135m-public.json"));
    let shapes = [
        (0.8, 0, 1.0, 0.0),
        (1.0, 40, 1.0, 0.0),
        (0.7, 0, 0.9, 0.0),
        (1.3, 50, 0.95, 0.05),
        (2.0, 0, 1.0, 0.1),
    ];
    let mut reqs = Vec::new();
    for (i, case) in fx["cases"].as_array().unwrap().iter().take(3).enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        for (j, &(temperature, top_k, top_p, min_p)) in shapes.iter().enumerate() {
            let sampling = SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                seed: (10 * i + j) as u64,
                ..Default::default()
            };
            reqs.push(req(prompt.clone(), 10, sampling));
        }
        reqs.push(req(prompt, 10, SamplingParams::default()));
    }
    let run = |gpu_sampling: bool| {
        let mut cfg = EngineConfig::new(smollm2_path());
        cfg.model.dtype = WeightDType::F32;
        cfg.model.max_seqs = 8;
        cfg.gpu_sampling = Some(gpu_sampling);
        let e = Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap();
        let out = run_together(&e, &reqs);
        assert_eq!(idle_stats(&e).blocks_used, 0);
        out
    };
    let on_gpu = run(true);
    let on_cpu = run(false);
    for (i, (g, c)) in on_gpu.iter().zip(&on_cpu).enumerate() {
        assert_eq!(g, c, "request {i}: GPU vs CPU sampling");
    }
    let greedy = &on_gpu[shapes.len()];
    let differ = on_gpu[..shapes.len()]
        .iter()
        .filter(|o| *o != greedy)
        .count();
    assert!(
        differ >= 3,
        "only {differ} sampled requests left the greedy path"
    );
}

/// Steps submitted before the step ahead of them is read back (the default) give exactly
/// the tokens, texts and finish reasons of steps run one at a time: through stop tokens and
/// stop strings seen a step late, max_tokens, GPU-sampled rows, and preemptions in a pool too
/// small for the batch. Nothing leaks.
#[test]
fn overlapped_steps_give_the_outputs_of_steps_one_at_a_time() {
    let fx = read_json(&fixtures().join("smollm2-135m-public.json"));
    let mut reqs = Vec::new();
    for (i, case) in fx["cases"].as_array().unwrap().iter().take(3).enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        reqs.push(req(prompt.clone(), 14, SamplingParams::default()));
        let sampling = SamplingParams {
            temperature: 0.9,
            top_k: 40,
            seed: i as u64,
            ..Default::default()
        };
        reqs.push(req(prompt, 11, sampling));
    }
    for (text, stop) in [
        ("Say hi.", None),
        ("Name a colour.", None),
        ("The capital of France is", Some(".")),
    ] {
        let mut r = match stop {
            None => Request::new(Prompt::Chat(vec![wllm::tokenizer::ChatMessage::user(text)])),
            Some(_) => Request::new(Prompt::Text(text.into())),
        };
        r.max_tokens = 40;
        r.stop = stop.into_iter().map(String::from).collect();
        reqs.push(r);
    }
    let run = |overlap: bool| {
        let mut cfg = EngineConfig::new(smollm2_path());
        cfg.model.dtype = WeightDType::F32;
        cfg.model.max_seqs = 9;
        // 24 blocks of 4 (96 slots) for 9 requests of up to ~70 tokens, prompts prefilled in
        // chunks of up to 32 tokens.
        cfg.model.num_blocks = Some(24);
        cfg.model.block_size = 4;
        cfg.model.max_batch_tokens = 32;
        cfg.gpu_sampling = Some(true);
        cfg.overlap_steps = Some(overlap);
        let e = Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap();
        let handles: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
        let outs: Vec<_> = handles
            .into_iter()
            .map(|h| {
                let c = h.wait().unwrap();
                (c.output_ids, c.text, c.finish_reason)
            })
            .collect();
        (outs, idle_stats(&e))
    };
    let (on, st_on) = run(true);
    let (off, st_off) = run(false);
    for (i, (a, b)) in on.iter().zip(&off).enumerate() {
        assert_eq!(a, b, "request {i}: overlapped vs one at a time");
    }
    assert!(st_on.overlapped_steps > 0, "{st_on:?}");
    assert_eq!(st_off.overlapped_steps, 0);
    assert!(
        st_on.preemptions > 0,
        "the pool should force preemptions: {st_on:?}"
    );
    for st in [&st_on, &st_off] {
        assert_eq!((st.blocks_used, st.requests_running), (0, 0), "{st:?}");
    }
    let stopped = on
        .iter()
        .filter(|o| o.2 == wllm::FinishReason::Stop)
        .count();
    assert!(
        stopped >= 2,
        "stop tokens and strings should end some requests: {on:?}"
    );
}
