//! The architectures people run, against transformers (tests/fixtures/arch/, see its README):
//! random-weight checkpoints of each family in Hugging Face layout and, where llama.cpp's
//! converter can write them, as GGUF. The checkpoints are compared with `golden.stored.json`
//! (transformers on exactly their stored f16 weights; the shipped `golden.json` ran on other
//! weights and is off by up to 2.5e-2, see scripts/make_arch_goldens.py). Teacher-forced logits over the reference's greedy
//! continuation: every difference `logit[top1] − logit[id]` over the reference top-8 within
//! the tolerance (f32: 5e-4, measured ≤ 1.3e-5 on lavapipe; f16 weights and activations: 0.05), and the same top-1 wherever
//! the reference's top-1/top-2 margin exceeds 0.3 (random models have small margins, so
//! greedy ids are not required to match). Then the batch-invariance check: the greedy
//! continuations of all six prompts decoded together, in small chunks and with preemption,
//! equal each one's continuation alone.

mod common;

use std::path::Path;

use common::golden::{assert_batch_invariant, compare_with_golden, teacher_forced_with, tolerance};
use common::{fixtures, gpu, ids, read_json};
use wllm::{ModelOptions, WeightDType};

/// Compares `model` (a checkpoint directory or a .gguf) with `golden`.
fn check(model: &Path, golden: &Path, dtype: WeightDType) {
    let d = compare_with_golden(model, golden, dtype);
    let name = model.file_name().unwrap().to_string_lossy().into_owned();
    d.assert_within(&format!("{name} {dtype:?}"), tolerance(dtype));
    eprintln!(
        "{name} {dtype:?}: worst logit-difference error {:.2e}",
        d.worst
    );
}

/// The golden prompts' greedy continuations alone and batched: identical.
fn batch_invariant(model: &Path, golden: &Path) {
    let golden = read_json(golden);
    let prompts: Vec<Vec<u32>> = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ids(&c["prompt_ids"]))
        .collect();
    assert_batch_invariant(model, &prompts, |_| {});
}

fn hf(dir: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = fixtures().join("arch").join(dir);
    let golden = d.join("golden.stored.json");
    (d, golden)
}

fn gguf(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = fixtures().join("arch/gguf");
    (
        d.join(format!("{name}.gguf")),
        d.join(format!("{name}.golden.json")),
    )
}

fn hf_family(dir: &str) {
    let (model, golden) = hf(dir);
    check(&model, &golden, WeightDType::F32);
    check(&model, &golden, WeightDType::F16);
    batch_invariant(&model, &golden);
}

#[test]
fn llama3_hf_matches_transformers() {
    hf_family("tiny-llama3");
}

#[test]
fn qwen2_hf_matches_transformers() {
    hf_family("tiny-qwen2");
}

#[test]
fn qwen3_hf_matches_transformers() {
    hf_family("tiny-qwen3");
}

#[test]
fn phi3_hf_matches_transformers() {
    hf_family("tiny-phi3");
}

#[test]
fn qwen3_gguf_matches_transformers() {
    let (model, golden) = gguf("tiny-qwen3.f16");
    check(&model, &golden, WeightDType::F32);
    check(&model, &golden, WeightDType::F16);
}

#[test]
fn phi3_gguf_matches_transformers() {
    let (model, golden) = gguf("tiny-phi3.f16");
    check(&model, &golden, WeightDType::F32);
    check(&model, &golden, WeightDType::F16);
}

#[test]
fn mistral_hf_matches_transformers() {
    hf_family("tiny-mistral");
}

#[test]
fn gemma2_hf_matches_transformers() {
    hf_family("tiny-gemma2");
}

#[test]
fn gemma3_hf_matches_transformers() {
    hf_family("tiny-gemma3");
}

/// `wllm check`'s CPU reference forward (the graph each family's forward writes, run op by op
/// through the kernels' CPU references) against transformers on every family: the model-level
/// check compares GPUs with it, so it must itself be right.
#[test]
fn cpu_reference_forward_matches_transformers_on_every_family() {
    let mut models: Vec<_> = [
        "tiny-llama3",
        "tiny-qwen2",
        "tiny-qwen3",
        "tiny-phi3",
        "tiny-mistral",
        "tiny-gemma2",
        "tiny-gemma3",
    ]
    .into_iter()
    .map(hf)
    .collect();
    models.push(gguf("tiny-qwen3.f16"));
    models.push(gguf("tiny-phi3.f16"));
    for dir in ["tiny-llama-gqa-public", "tiny-gpt2-public"] {
        let d = fixtures().join(dir);
        let golden = d.join("golden.json");
        models.push((d, golden));
    }
    for (model, golden) in models {
        let golden = read_json(&golden);
        let cases: Vec<_> = golden["cases"].as_array().unwrap().iter().collect();
        let mut opts = ModelOptions::new(&model);
        opts.dtype = WeightDType::F32;
        let mut cpu = wllm::check::CpuReference::load(gpu(), &opts).unwrap();
        let d = teacher_forced_with(&cases, |ids| cpu.logits(ids).unwrap());
        let name = model.file_name().unwrap().to_string_lossy().into_owned();
        d.assert_within(
            &format!("{name} CPU reference"),
            tolerance(WeightDType::F32),
        );
        eprintln!(
            "{name} CPU reference: worst logit-difference error {:.2e}",
            d.worst
        );
    }
}
