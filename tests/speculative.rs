//! Speculative decoding never changes the output: with n-gram drafting on, every request gets
//! the tokens (and logprobs) it gets with it off — greedy and seeded sampling, on the GPU and
//! the CPU sampling paths, alone and in mixed batches, with preemption — while drafted tokens
//! really are verified and accepted (the engine's counters say so).

mod common;

use common::{fixtures, gpu, ids, read_json, smollm2_path};
use wllm::engine::{Engine, EngineConfig, Prompt, Request};
use wllm::{Completion, SamplingParams, SpecConfig, WeightDType};

/// An engine over the tiny Llama fixture (f32): `blocks` KV blocks of 4 tokens (few enough to
/// preempt), 16 tokens a step.
fn engine(spec: Option<SpecConfig>, blocks: Option<usize>, gpu_sampling: bool) -> Engine {
    let mut cfg = EngineConfig::new(fixtures().join("tiny-llama-gqa-public"));
    cfg.model.dtype = WeightDType::F32;
    cfg.model.num_blocks = blocks;
    cfg.model.block_size = 4;
    cfg.model.max_seqs = 8;
    cfg.model.max_batch_tokens = 16;
    cfg.gpu_sampling = Some(gpu_sampling);
    cfg.overlap_steps = Some(true);
    cfg.speculative = spec;
    Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap()
}

/// The golden prompts (greedy, to 40 tokens) and seeded samples of them, some with
/// penalties and logprobs (the CPU path), and one long greedy generation.
fn requests() -> Vec<Request> {
    let golden = read_json(&fixtures().join("tiny-llama-gqa-public/golden.json"));
    let mut out = Vec::new();
    for (i, case) in golden["cases"].as_array().unwrap().iter().enumerate() {
        let mut r = Request::new(Prompt::Ids(ids(&case["prompt_ids"])));
        r.max_tokens = 40;
        out.push(r.clone());
        r.sampling = SamplingParams {
            temperature: 0.7,
            top_k: 20,
            seed: 100 + i as u64,
            repetition_penalty: if i % 2 == 0 { 1.0 } else { 1.1 },
            ..Default::default()
        };
        r.logprobs = (i % 3 == 0).then_some(2);
        r.max_tokens = 30;
        out.push(r);
    }
    // A long generation: 300 tokens after the shortest prompt.
    let mut long = out[0].clone();
    long.max_tokens = 300;
    out.push(long);
    out
}

/// Runs `reqs` all at once; the completions in order.
fn run_batched(e: &Engine, reqs: &[Request]) -> Vec<Completion> {
    let handles: Vec<_> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    handles.into_iter().map(|h| h.wait().unwrap()).collect()
}

fn same(a: &[Completion], b: &[Completion], what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.output_ids, y.output_ids, "{what}: request {i}");
        assert_eq!(x.finish_reason, y.finish_reason, "{what}: request {i}");
        let lp = |c: &Completion| -> Vec<(u32, u32)> {
            c.logprobs
                .iter()
                .map(|l| (l.token, l.logprob.to_bits()))
                .collect()
        };
        assert_eq!(lp(x), lp(y), "{what}: request {i} logprobs");
    }
}

#[test]
fn ngram_speculation_gives_the_plain_decodes_tokens_alone_batched_and_preempted() {
    let reqs = requests();
    let golden = read_json(&fixtures().join("tiny-llama-gqa-public/golden.json"));
    for gpu_sampling in [true, false] {
        let plain = engine(None, None, gpu_sampling);
        let want: Vec<Completion> = reqs
            .iter()
            .map(|r| plain.generate(r.clone()).unwrap())
            .collect();
        // The greedy ones are transformers' greedy continuations.
        for (c, case) in want
            .iter()
            .step_by(2)
            .zip(golden["cases"].as_array().unwrap())
        {
            let g = ids(&case["greedy_ids"]);
            assert_eq!(c.output_ids[..g.len()], g[..]);
        }
        drop(plain);
        let spec = SpecConfig::ngram(5);
        let e = engine(Some(spec.clone()), None, gpu_sampling);
        let alone: Vec<Completion> = reqs
            .iter()
            .map(|r| e.generate(r.clone()).unwrap())
            .collect();
        same(
            &alone,
            &want,
            &format!("alone, gpu sampling {gpu_sampling}"),
        );
        same(&run_batched(&e, &reqs), &want, "batched");
        let st = e.stats();
        assert!(st.spec_drafted_tokens > 100, "{st:?}");
        assert!(st.spec_accepted_tokens > 50, "{st:?}");
        assert!(st.spec_accepted_tokens <= st.spec_drafted_tokens);
        eprintln!(
            "gpu sampling {gpu_sampling}: {} drafted, {} accepted, {} steps",
            st.spec_drafted_tokens, st.spec_accepted_tokens, st.steps
        );
        drop(e);
        // 40 blocks of 4 tokens for the 12 requests of up to 140 tokens: preemptions.
        let e = engine(Some(spec), Some(40), gpu_sampling);
        let short = &reqs[..12];
        same(
            &run_batched(&e, short),
            &want[..12],
            "batched with preemption",
        );
        let st = e.stats();
        assert!(st.preemptions > 0, "{st:?}");
        assert!(st.spec_accepted_tokens > 0, "{st:?}");
        assert_eq!(st.blocks_used, 0, "KV blocks leaked");
    }
}

#[test]
fn requests_turn_speculation_on_and_off_and_grammars_run_without_it() {
    let reqs = requests();
    let e = engine(None, None, true);
    let mut on = reqs[0].clone();
    on.speculative = Some(true);
    let plain = e.generate(reqs[0].clone()).unwrap();
    assert_eq!(e.stats().spec_drafted_tokens, 0);
    assert_eq!(e.generate(on).unwrap().output_ids, plain.output_ids);
    assert!(e.stats().spec_drafted_tokens > 0);
    drop(e);
    let e = engine(Some(SpecConfig::ngram(4)), None, true);
    let mut off = reqs[0].clone();
    off.speculative = Some(false);
    assert_eq!(e.generate(off).unwrap().output_ids, plain.output_ids);
    assert_eq!(e.stats().spec_drafted_tokens, 0);
}

/// SmolLM2 copying a list it was given: most drafts are accepted, and the greedy text is the
/// plain decode's. A request with a grammar runs without drafts.
#[test]
fn smollm2_copies_text_with_fewer_steps_and_the_same_tokens() {
    let model = smollm2_path();
    let build = |spec: Option<SpecConfig>| {
        let mut cfg = EngineConfig::new(&model);
        cfg.model.max_seqs = 4;
        cfg.speculative = spec;
        Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap()
    };
    let text = "Copy this list exactly:\napples, pears, plums, cherries, grapes, lemons, limes, \
                figs, dates, melons\nCopy:\napples, pears,";
    let mut r = Request::new(Prompt::Text(text.into()));
    r.max_tokens = 32;
    r.ignore_eos = true;
    let plain = build(None);
    let want = plain.generate(r.clone()).unwrap();
    let plain_steps = plain.stats().steps;
    let plain_blocks = plain.kv_plan().num_blocks;
    drop(plain);
    // SmolLM2 drafting for itself (a real tokenizer, checked token for token): the same
    // tokens, and the memory-derived pool split between the two models' KV.
    let drafted = build(Some(SpecConfig::draft_model(&model, 4)));
    assert_eq!(
        drafted.generate(r.clone()).unwrap().output_ids,
        want.output_ids
    );
    // On lavapipe the pools together keep within the CPU adapter's 1 GiB of KV.
    let (blocks, per_block) = (
        drafted.kv_plan().num_blocks,
        drafted.stats().kv_bytes_per_block,
    );
    assert!(
        blocks < plain_blocks && blocks as u64 * 2 * per_block <= 1 << 30,
        "{blocks} blocks of {per_block} bytes with the draft model, {plain_blocks} without"
    );
    drop(drafted);
    let e = build(Some(SpecConfig::ngram(6)));
    let got = e.generate(r).unwrap();
    assert_eq!(
        got.output_ids, want.output_ids,
        "{:?} vs {:?}",
        got.text, want.text
    );
    let st = e.stats();
    eprintln!(
        "SmolLM2 copy: {} drafted, {} accepted, {} steps (plain {plain_steps}): {:?}",
        st.spec_drafted_tokens, st.spec_accepted_tokens, st.steps, got.text
    );
    assert!(
        st.spec_accepted_tokens * 2 >= st.spec_drafted_tokens,
        "{st:?}"
    );
    assert!(
        st.steps < plain_steps,
        "{} steps vs {plain_steps}",
        st.steps
    );
    let mut constrained = Request::new(Prompt::Text(text.into()));
    constrained.max_tokens = 12;
    constrained.grammar = Some(wllm::Grammar::Regex("[a-z, ]{1,40}".into()));
    constrained.speculative = Some(true);
    e.generate(constrained).unwrap();
    assert_eq!(e.stats().spec_drafted_tokens, st.spec_drafted_tokens);
}

/// Over HTTP: `"speculative": true` on a completion gives the text it gives without, and
/// /metrics counts the drafted and accepted tokens.
#[test]
fn the_server_takes_speculative_per_request_and_reports_it() {
    use common::server::{get, post, smol};
    let (s, _guard) = smol();
    let addr = s.srv.addr;
    let body = |spec: bool| {
        serde_json::json!({"model": s.name, "max_tokens": 24, "temperature": 0,
            "prompt": "Copy this list exactly:\nred, green, blue, cyan, magenta, yellow, black\nCopy:\nred,",
            "speculative": spec})
    };
    let plain = post(addr, "/v1/completions", &body(false)).json();
    let spec = post(addr, "/v1/completions", &body(true)).json();
    assert_eq!(
        spec["choices"][0]["text"], plain["choices"][0]["text"],
        "{spec}"
    );
    assert!(
        plain["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("blue")),
        "{plain}"
    );
    let metrics = get(addr, "/metrics").body;
    let counter = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).expect(name);
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert!(counter("wllm_spec_drafted_tokens_total") > 0.0, "{metrics}");
    assert!(
        counter("wllm_spec_accepted_tokens_total") > 0.0,
        "{metrics}"
    );
}

/// A draft model (here the tiny Llama drafting for itself, so nearly every draft is
/// accepted) gives the plain decode's tokens, alone, batched and preempted, from its own
/// paged KV; a draft model with another vocabulary is refused by name.
#[test]
fn a_draft_model_gives_the_plain_decodes_tokens() {
    let reqs = requests();
    let plain = engine(None, None, true);
    let want: Vec<Completion> = reqs
        .iter()
        .map(|r| plain.generate(r.clone()).unwrap())
        .collect();
    drop(plain);
    let spec = SpecConfig::draft_model(fixtures().join("tiny-llama-gqa-public"), 4);
    let e = engine(Some(spec.clone()), None, true);
    same(&run_batched(&e, &reqs), &want, "draft model, batched");
    let alone: Vec<Completion> = reqs
        .iter()
        .map(|r| e.generate(r.clone()).unwrap())
        .collect();
    same(&alone, &want, "draft model, alone");
    let st = e.stats();
    eprintln!(
        "draft model: {} drafted, {} accepted, {} steps",
        st.spec_drafted_tokens, st.spec_accepted_tokens, st.steps
    );
    assert!(st.spec_drafted_tokens > 500, "{st:?}");
    // Its own drafts: all but the sampled rows' disagreements are accepted.
    assert!(
        st.spec_accepted_tokens * 10 >= st.spec_drafted_tokens * 6,
        "{st:?}"
    );
    drop(e);
    let e = engine(Some(spec), Some(40), true);
    same(
        &run_batched(&e, &reqs[..12]),
        &want[..12],
        "draft model, preempted",
    );
    assert!(e.stats().preemptions > 0);
    drop(e);
    // SmolLM2's tokenizer against a model without one: refused, naming the draft.
    let mut cfg = EngineConfig::new(fixtures().join("tiny-llama-gqa-public"));
    cfg.speculative = Some(SpecConfig::draft_model(smollm2_path(), 4));
    let err = Engine::with_context(gpu(), cfg, &mut |_, _| {})
        .err()
        .expect("refused");
    assert!(err.to_string().contains("draft model"), "{err}");
}
