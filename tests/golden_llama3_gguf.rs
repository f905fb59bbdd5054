//! A Llama 3.x GGUF carries its RoPE scaling as the tensor `rope_freqs.weight` (llama.cpp's
//! converter computes it from config.json's `llama3` parameters). The GGUFs of tiny-llama3
//! in tests/fixtures/arch/gguf/ hold K-quants, which wllm cannot load yet; so this test
//! takes what llama.cpp wrote into tiny-llama3.Q4_K_M.gguf — its metadata and its
//! `rope_freqs.weight`, copied verbatim by gguf-py into tiny-llama3.rope_freqs.gguf
//! (scripts/extract_rope_freqs.py) — adds the checkpoint's exact f16 weights laid out as the
//! converter lays out Llama (q and k rows permuted for interleaved RoPE, llama.cpp's tensor
//! names), and compares the model with transformers' reference for the checkpoint
//! (golden.stored.json). The same file without `rope_freqs.weight` must be far off: the
//! factors are used, not ignored.

mod common;
#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{fixtures, floats, gpu, ids, read_json};
use gguf_writer::GgufBuilder;
use wllm::loader::gguf::GgufFile;
use wllm::{Generator, ModelOptions, WeightDType};

/// ggml's type ids of the two tensor types written here.
const GGML_F32: u32 = 0;
const GGML_F16: u32 = 1;

/// llama.cpp's `permute` of q/k rows: within each head, the rows of the first half and the
/// second half interleave (row h·d + 2i + j ← row h·d + j·d/2 + i), so that rotating
/// neighbouring pairs equals transformers' rotate_half.
fn permute_rows(rows: &[Vec<u8>], heads: usize) -> Vec<Vec<u8>> {
    let d = rows.len() / heads;
    let half = d / 2;
    (0..rows.len())
        .map(|r| {
            let (h, i, j) = (r / d, (r % d) / 2, r % 2);
            rows[h * d + j * half + i].clone()
        })
        .collect()
}

/// tiny-llama3's checkpoint as llama.cpp's converter writes it, with `rope_freqs` (the
/// llama.cpp-written tensor) or without.
fn llama3_gguf(with_rope_freqs: bool) -> PathBuf {
    let dir = fixtures().join("arch/tiny-llama3");
    let reference =
        GgufFile::open(fixtures().join("arch/gguf/tiny-llama3.rope_freqs.gguf")).unwrap();
    let st_bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let cfg = read_json(&dir.join("config.json"));
    let (heads, kv_heads) = (
        cfg["num_attention_heads"].as_u64().unwrap() as usize,
        cfg["num_key_value_heads"].as_u64().unwrap() as usize,
    );

    let mut names: HashMap<String, String> = HashMap::from([
        (
            "model.embed_tokens.weight".into(),
            "token_embd.weight".into(),
        ),
        ("model.norm.weight".into(), "output_norm.weight".into()),
    ]);
    for l in 0..cfg["num_hidden_layers"].as_u64().unwrap() {
        for (hf, gg) in [
            ("input_layernorm", "attn_norm"),
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("post_attention_layernorm", "ffn_norm"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
        ] {
            names.insert(
                format!("model.layers.{l}.{hf}.weight"),
                format!("blk.{l}.{gg}.weight"),
            );
        }
    }

    let mut b = GgufBuilder::new();
    b.metadata_from(&reference.metadata);
    let mut hf_names: Vec<String> = st.names().into_iter().map(String::from).collect();
    hf_names.sort();
    for hf in hf_names {
        let t = st.tensor(&hf).unwrap();
        let gg = names
            .get(&hf)
            .unwrap_or_else(|| panic!("no GGUF name for {hf}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F16);
        let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
        let data = t.data();
        let data = if hf.ends_with("q_proj.weight") || hf.ends_with("k_proj.weight") {
            let h = if hf.ends_with("q_proj.weight") {
                heads
            } else {
                kv_heads
            };
            let row = data.len() / t.shape()[0];
            let rows: Vec<Vec<u8>> = data.chunks(row).map(|r| r.to_vec()).collect();
            permute_rows(&rows, h).concat()
        } else {
            data.to_vec()
        };
        b.tensor(gg, &shape, GGML_F16, data);
    }
    if with_rope_freqs {
        let info = reference.tensor_info("rope_freqs.weight").unwrap();
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        b.tensor(
            "rope_freqs.weight",
            &shape,
            GGML_F32,
            reference
                .tensor_bytes("rope_freqs.weight")
                .unwrap()
                .to_vec(),
        );
    }
    let path = std::env::temp_dir().join(format!(
        "wllm-tiny-llama3-{}-{}.gguf",
        std::process::id(),
        if with_rope_freqs { "freqs" } else { "plain" }
    ));
    std::fs::write(&path, b.build().bytes).unwrap();
    path
}

/// The worst |Δ| of the logit differences `logit[top1] − logit[id]` over the reference's
/// top-8 at every teacher-forced position, and whether top-1 agrees wherever the reference's
/// margin exceeds 0.3.
fn compare(model: &Path, dtype: WeightDType) -> (f32, bool) {
    let golden = read_json(&fixtures().join("arch/tiny-llama3/golden.stored.json"));
    let mut opts = ModelOptions::new(model);
    opts.dtype = dtype;
    opts.max_batch_tokens = 48;
    let mut g = Generator::load(gpu(), &opts, &mut |_, _| {}).unwrap();
    let (mut worst, mut top1_agrees) = (0f32, true);
    for case in golden["cases"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let mut all = prompt.clone();
        all.extend(ids(&case["greedy_ids"]));
        let logits = g.logits(&all[..all.len() - 1]).unwrap();
        for (i, tk) in case["topk"].as_array().unwrap().iter().enumerate() {
            let row = &logits[prompt.len() - 1 + i];
            let (ref_ids, ref_logits) = (ids(&tk["ids"]), floats(&tk["logits"]));
            let top = row[ref_ids[0] as usize];
            for (id, l) in ref_ids.iter().zip(&ref_logits) {
                worst = worst.max(((top - row[*id as usize]) - (ref_logits[0] - l)).abs());
            }
            let ours = (0..row.len()).max_by(|a, b| row[*a].total_cmp(&row[*b]));
            if ref_logits[0] - ref_logits[1] > 0.3 && ours != Some(ref_ids[0] as usize) {
                top1_agrees = false;
            }
        }
    }
    assert_eq!(g.pool().num_used(), 0, "KV blocks leaked");
    (worst, top1_agrees)
}

#[test]
fn llama3_gguf_rope_freqs_match_transformers() {
    let with = llama3_gguf(true);
    let without = llama3_gguf(false);
    let f32 = compare(&with, WeightDType::F32);
    let f16 = compare(&with, WeightDType::F16);
    let plain = compare(&without, WeightDType::F32);
    for p in [&with, &without] {
        std::fs::remove_file(p).ok();
    }
    eprintln!(
        "worst logit-difference error: f32 {f32:?}, f16 {f16:?}, without rope_freqs {plain:?}"
    );
    assert!(f32.0 <= 5e-4 && f32.1, "f32: {f32:?}");
    assert!(f16.0 <= 0.05 && f16.1, "f16: {f16:?}");
    // Without the factors the positions past the original context (64) rotate wrongly.
    assert!(plain.0 > 0.05, "the RoPE factors change nothing? {plain:?}");
}
