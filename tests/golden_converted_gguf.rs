//! GGUF metadata as llama.cpp's converter writes it, against transformers, for families
//! whose only converted fixtures are quantized (tiny-llama3, tiny-qwen2): with the
//! checkpoints' exact f16 weights the comparison is tight (f32 5e-4) and isolates the
//! metadata from the quantization error (tests/golden_quant_formats.rs runs the quantized
//! files themselves). tests/fixtures/arch/gguf/<name>.meta.gguf is the metadata of <name>.Q4_K_M.gguf
//! and the tensors llama.cpp computed itself (Llama 3's `rope_freqs.weight`: its RoPE
//! scaling), copied verbatim by gguf-py (scripts/extract_gguf_metadata.py). This test adds
//! the checkpoint's exact weights laid out as the converter lays them out (llama.cpp's tensor
//! names; Llama's q and k rows permuted for interleaved RoPE; matrices f16, vectors f32) and
//! compares the model with transformers' reference for the checkpoint (golden.stored.json).
//! The Llama 3 file without `rope_freqs.weight` must be far off: the factors are used, not
//! ignored.

mod common;
#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::golden::{Deviation, compare_with_golden, tolerance};
use common::{fixtures, read_json};
use gguf_writer::GgufBuilder;
use wllm::WeightDType;
use wllm::loader::gguf::GgufFile;

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

/// The checkpoint `name` (tests/fixtures/arch/<name>) as llama.cpp's converter writes it,
/// with its metadata and computed tensors from <name>.meta.gguf; `drop` names a computed
/// tensor to leave out.
fn converted(name: &str, drop: Option<&str>) -> PathBuf {
    let dir = fixtures().join("arch").join(name);
    let meta = GgufFile::open(fixtures().join(format!("arch/gguf/{name}.meta.gguf"))).unwrap();
    let st_bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let cfg = read_json(&dir.join("config.json"));
    // The converter permutes q/k rows for the families llama.cpp rotates in pairs.
    let permute = cfg["model_type"] == "llama";
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
            for kind in ["weight", "bias"] {
                names.insert(
                    format!("model.layers.{l}.{hf}.{kind}"),
                    format!("blk.{l}.{gg}.{kind}"),
                );
            }
        }
    }

    let mut b = GgufBuilder::new();
    b.metadata_from(&meta.metadata);
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
        let q = hf.contains("q_proj.weight");
        let data = if permute && (q || hf.contains("k_proj.weight")) {
            let row = data.len() / t.shape()[0];
            let rows: Vec<Vec<u8>> = data.chunks(row).map(|r| r.to_vec()).collect();
            permute_rows(&rows, if q { heads } else { kv_heads }).concat()
        } else {
            data.to_vec()
        };
        if shape.len() == 1 {
            // Norm weights and biases: f32, widened exactly.
            let widened: Vec<u8> = data
                .chunks(2)
                .flat_map(|h| {
                    half::f16::from_le_bytes([h[0], h[1]])
                        .to_f32()
                        .to_le_bytes()
                })
                .collect();
            b.tensor(gg, &shape, GGML_F32, widened);
        } else {
            b.tensor(gg, &shape, GGML_F16, data);
        }
    }
    for info in &meta.tensors {
        if Some(info.name.as_str()) != drop {
            let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
            let bytes = meta.tensor_bytes(&info.name).unwrap().to_vec();
            b.tensor(&info.name, &shape, info.ggml_type, bytes);
        }
    }
    let path = std::env::temp_dir().join(format!(
        "wllm-{name}-{}-{}.gguf",
        std::process::id(),
        drop.unwrap_or("all")
    ));
    std::fs::write(&path, b.build().bytes).unwrap();
    path
}

/// How far `model` is from transformers' reference for checkpoint `name`.
fn compare(name: &str, model: &Path, dtype: WeightDType) -> Deviation {
    let golden = fixtures().join(format!("arch/{name}/golden.stored.json"));
    compare_with_golden(model, &golden, dtype)
}

#[test]
fn llama3_gguf_rope_freqs_match_transformers() {
    let with = converted("tiny-llama3", None);
    let without = converted("tiny-llama3", Some("rope_freqs.weight"));
    let f32 = compare("tiny-llama3", &with, WeightDType::F32);
    let f16 = compare("tiny-llama3", &with, WeightDType::F16);
    let plain = compare("tiny-llama3", &without, WeightDType::F32);
    for p in [&with, &without] {
        std::fs::remove_file(p).ok();
    }
    eprintln!(
        "worst logit-difference error: f32 {:.2e}, f16 {:.2e}, without rope_freqs {:.2e}",
        f32.worst, f16.worst, plain.worst
    );
    f32.assert_within("f32", tolerance(WeightDType::F32));
    f16.assert_within("f16", tolerance(WeightDType::F16));
    // Without the factors the positions past the original context (64) rotate wrongly.
    assert!(
        plain.worst > 0.05,
        "the RoPE factors change nothing? {plain:?}"
    );
}

#[test]
fn qwen2_gguf_matches_transformers() {
    let model = converted("tiny-qwen2", None);
    let f32 = compare("tiny-qwen2", &model, WeightDType::F32);
    let f16 = compare("tiny-qwen2", &model, WeightDType::F16);
    std::fs::remove_file(&model).ok();
    eprintln!(
        "worst logit-difference error: f32 {:.2e}, f16 {:.2e}",
        f32.worst, f16.worst
    );
    f32.assert_within("f32", tolerance(WeightDType::F32));
    f16.assert_within("f16", tolerance(WeightDType::F16));
}
