//! SmolLM2-135M-Instruct (Q4_1 GGUF) against transformers' float32 reference
//! (tests/fixtures/smollm2-135m-public.json): tokenizer ids identical, teacher-forced
//! logits within the tolerances in f32 and f16, greedy text identical in f32 up to
//! the first position where the reference itself is nearly tied.

mod common;

use common::{floats, gpu, gpu_other_forms, ids, read_json, smollm2_path};
use wllm::tokenizer::ChatMessage;
use wllm::{
    Engine, EngineConfig, Generator, GpuContext, ModelOptions, Prompt, Request, WeightDType,
};

struct Stats {
    /// Mean |(top1 − other)ours − (top1 − other)ref| over all compared pairs.
    mean_err: f64,
    /// Positions whose reference margin (top1 − top2) exceeds 0.3, and how many agree on top-1.
    clear: usize,
    clear_agree: usize,
}

fn compare(ctx: &GpuContext, dtype: WeightDType) -> Stats {
    let fx = read_json(&common::fixtures().join("smollm2-135m-public.json"));
    let mut opts = ModelOptions::new(smollm2_path());
    opts.dtype = dtype;
    opts.max_batch_tokens = 64;
    let mut g = Generator::load(ctx, &opts, &mut |_, _| {}).unwrap();
    let mut cfg = EngineConfig::new(smollm2_path());
    cfg.model = opts.clone();
    let engine = Engine::with_context(ctx, cfg, &mut |_, _| {}).unwrap();
    let tok = g.tokenizer().expect("GGUF tokenizer").clone();
    let (mut sum, mut n, mut clear, mut clear_agree) = (0f64, 0usize, 0usize, 0usize);
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let rendered = if case["chat"].as_bool().unwrap() {
            tok.render_chat(&[ChatMessage::user(text)], true).unwrap()
        } else {
            text.to_string()
        };
        assert_eq!(
            rendered,
            case["rendered"].as_str().unwrap(),
            "{name}: chat rendering"
        );
        let prompt = ids(&case["prompt_ids"]);
        assert_eq!(
            tok.encode(&rendered).unwrap(),
            prompt,
            "{name}: tokenizer ids"
        );
        let greedy = ids(&case["greedy_ids"]);
        let mut all = prompt.clone();
        all.extend(&greedy);
        let logits = g.logits(&all[..all.len() - 1]).unwrap();
        let mut first_tie = greedy.len();
        for (i, tk) in case["topk"].as_array().unwrap().iter().enumerate() {
            let row = &logits[prompt.len() - 1 + i];
            let ref_ids = ids(&tk["ids"]);
            let ref_l = floats(&tk["logits"]);
            let top = row[ref_ids[0] as usize];
            for (id, l) in ref_ids.iter().zip(&ref_l).skip(1) {
                let ours = (top - row[*id as usize]) as f64;
                let theirs = (ref_l[0] - l) as f64;
                sum += (ours - theirs).abs();
                n += 1;
            }
            let margin = ref_l[0] - ref_l[1];
            if margin > 0.3 {
                clear += 1;
                if wllm::sampling::argmax(row) == ref_ids[0] {
                    clear_agree += 1;
                }
            } else {
                first_tie = first_tie.min(i);
            }
        }
        if dtype == WeightDType::F32 && first_tie > 0 {
            // The engine stops at EOS, which the reference keeps as its last id: compare prefixes.
            let mut req = Request::new(Prompt::Ids(prompt.clone()));
            req.max_tokens = first_tie;
            let out = engine.generate(req).unwrap();
            assert_eq!(
                out.output_ids,
                greedy[..out.output_ids.len()],
                "{name}: greedy ids"
            );
            assert!(
                out.output_ids.len() == first_tie || out.output_ids.last() == Some(&2),
                "{name}: stopped early"
            );
        }
    }
    assert_eq!(g.pool().num_used(), 0, "KV blocks leaked");
    Stats {
        mean_err: sum / n as f64,
        clear,
        clear_agree,
    }
}

#[test]
fn smollm2_f32_matches_transformers() {
    check_f32(gpu());
}

/// The kernel forms the default device does not build (the GPU forms on lavapipe: split-k
/// quantized matmul, split attention, tree norms) meet the same f32 bar.
#[test]
fn smollm2_f32_matches_transformers_in_the_other_kernel_forms() {
    check_f32(gpu_other_forms());
}

fn check_f32(ctx: &GpuContext) {
    let s = compare(ctx, WeightDType::F32);
    eprintln!(
        "f32 ({:?} forms): mean error {:.4}, top-1 agrees at {}/{} clear positions",
        ctx.profile.kernel_forms, s.mean_err, s.clear_agree, s.clear
    );
    assert!(
        s.mean_err <= 0.02,
        "mean logit-difference error {}",
        s.mean_err
    );
    assert!(s.clear > 100);
    assert_eq!(s.clear_agree, s.clear);
}

#[test]
fn smollm2_f16_within_tolerance() {
    let s = compare(gpu(), WeightDType::F16);
    eprintln!(
        "f16: mean error {:.4}, top-1 agrees at {}/{} clear positions",
        s.mean_err, s.clear_agree, s.clear
    );
    assert!(
        s.mean_err <= 0.15,
        "mean logit-difference error {}",
        s.mean_err
    );
    assert!(s.clear_agree as f64 >= 0.95 * s.clear as f64);
}
