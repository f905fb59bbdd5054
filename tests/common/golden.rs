//! Comparing a model with a reference from transformers (the `golden*.json` fixtures: per
//! case `prompt_ids`, the reference's greedy continuation `greedy_ids` and, at every
//! continuation position, its top-8 `ids` and `logits`), and the batch-invariance check the
//! architecture tests share.

use std::path::Path;

use serde_json::Value;
use wllm::{Engine, EngineConfig, Generator, ModelOptions, Prompt, Request, WeightDType};

use super::{floats, gpu, ids, read_json};

/// How far teacher-forced logits are from the reference.
#[derive(Debug)]
pub struct Deviation {
    /// The worst |Δ| of the logit differences `logit[top1] − logit[id]` over the reference's
    /// top-8 at every continuation position (random models have small margins, so
    /// differences are compared, not ids).
    pub worst: f32,
    /// Where `worst` is: "case step i id n".
    pub worst_at: String,
    /// Positions where the reference's top-1/top-2 margin exceeds 0.3 and our top-1 differs.
    pub top1_misses: Vec<String>,
}

impl Deviation {
    /// Panics unless every difference is within `tol` and every clear top-1 agrees.
    pub fn assert_within(&self, what: &str, tol: f32) {
        assert!(
            self.worst <= tol,
            "{what}: logit-difference error {} at {} (tolerance {tol})",
            self.worst,
            self.worst_at
        );
        assert!(
            self.top1_misses.is_empty(),
            "{what}: top-1 differs where the reference's margin is clear: {:?}",
            self.top1_misses
        );
    }
}

/// Loads `model` (a checkpoint directory or a .gguf) with weights in `dtype`, runs the cases of
/// the golden file `golden` teacher-forced, and checks no KV block is left in use.
pub fn compare_with_golden(model: &Path, golden: &Path, dtype: WeightDType) -> Deviation {
    let golden = read_json(golden);
    let mut opts = ModelOptions::new(model);
    opts.dtype = dtype;
    opts.max_batch_tokens = 48;
    opts.max_seqs = 16;
    let mut g = Generator::load(gpu(), &opts, &mut |_, _| {}).unwrap();
    let cases: Vec<_> = golden["cases"].as_array().unwrap().iter().collect();
    let d = teacher_forced(&mut g, &cases);
    assert_eq!(g.pool().num_used(), 0, "KV blocks leaked");
    d
}

/// Runs every case teacher-forced (prompt and reference continuation in one pass) through
/// `g` and compares the logits of each continuation position with the reference's.
pub fn teacher_forced(g: &mut Generator, cases: &[&Value]) -> Deviation {
    teacher_forced_with(cases, |ids| g.logits(ids).unwrap())
}

/// [`teacher_forced`] with the logits after each prefix of the ids from `logits`.
pub fn teacher_forced_with(
    cases: &[&Value],
    mut logits: impl FnMut(&[u32]) -> Vec<Vec<f32>>,
) -> Deviation {
    let mut d = Deviation {
        worst: 0.0,
        worst_at: String::new(),
        top1_misses: Vec::new(),
    };
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let prompt = ids(&case["prompt_ids"]);
        let mut all = prompt.clone();
        all.extend(ids(&case["greedy_ids"]));
        let logits = logits(&all[..all.len() - 1]);
        for (i, tk) in case["topk"].as_array().unwrap().iter().enumerate() {
            let row = &logits[prompt.len() - 1 + i];
            let (ref_ids, ref_logits) = (ids(&tk["ids"]), floats(&tk["logits"]));
            let top = row[ref_ids[0] as usize];
            for (id, l) in ref_ids.iter().zip(&ref_logits) {
                let err = ((top - row[*id as usize]) - (ref_logits[0] - l)).abs();
                if err > d.worst || d.worst_at.is_empty() {
                    d.worst = err;
                    d.worst_at = format!("{name} step {i} id {id}");
                }
            }
            let ours = (0..row.len()).max_by(|a, b| row[*a].total_cmp(&row[*b]));
            if ref_logits[0] - ref_logits[1] > 0.3 && ours != Some(ref_ids[0] as usize) {
                d.top1_misses.push(format!("{name} step {i}"));
            }
        }
    }
    d
}

/// The tolerance of the architecture tests: f32 5e-4 (measured ≤ 1.3e-5 on lavapipe), f16
/// weights and activations 0.05.
pub fn tolerance(dtype: WeightDType) -> f32 {
    match dtype {
        WeightDType::F32 => 5e-4,
        _ => 0.05,
    }
}

/// Greedy continuations of `prompts`, each alone and all at once in an engine whose small
/// step budget and pool force chunked prefills and preemptions: identical. `configure` sets
/// anything else both engines share (e.g. the context length).
pub fn assert_batch_invariant(
    model: &Path,
    prompts: &[Vec<u32>],
    configure: impl Fn(&mut EngineConfig),
) {
    let engine = |max_batch_tokens: usize, kv_blocks: Option<usize>| {
        let mut cfg = EngineConfig::new(model);
        cfg.model.dtype = WeightDType::F32;
        cfg.model.max_batch_tokens = max_batch_tokens;
        cfg.model.max_seqs = 8;
        cfg.model.num_blocks = kv_blocks;
        configure(&mut cfg);
        Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap()
    };
    let run = |e: &Engine, p: &[u32]| {
        let mut req = Request::new(Prompt::Ids(p.to_vec()));
        req.max_tokens = 12;
        e.generate(req).unwrap().output_ids
    };
    let alone = engine(256, None);
    let want: Vec<Vec<u32>> = prompts.iter().map(|p| run(&alone, p)).collect();
    drop(alone);
    // 16 tokens a step, 12 blocks of 16: the 100-token prompt alone needs 8 blocks, so the
    // six sequences of the fixtures cannot all stay resident.
    let tight = engine(16, Some(12));
    let got: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts.iter().map(|p| s.spawn(|| run(&tight, p))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        got,
        want,
        "{}: batched output differs from alone",
        model.display()
    );
}
