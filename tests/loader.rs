//! Loader integration tests: synthetic GGUF files (valid, truncated, hostile), the real
//! SmolLM2 GGUF, and the Hugging Face fixtures (single file and a re-sharded copy).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use wllm::loader::gguf::GgufFile;
use wllm::loader::hf::HfModelDir;
use wllm::loader::{LoadError, MetaValue, TensorDType, TensorSource};
use wllm::model::{Architecture, ModelConfig, RopeStyle};

mod common;
#[path = "loader/support.rs"]
mod support;
use support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SMOLLM2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

fn round_trip(version: u32) {
    let dir = TempDir::new("roundtrip");
    let (bytes, _) = sample_writer(version).build();
    let path = dir.write("m.gguf", &bytes);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version, version);
    assert_eq!(f.alignment, if version == 3 { 64 } else { 32 });
    assert_eq!(f.data_start % f.alignment, 0);
    assert_eq!(f.architecture().unwrap(), "llama");
    for (k, v) in all_value_types() {
        assert_eq!(f.metadata.get(k), Some(&v), "metadata key {k}");
    }
    assert_eq!(
        f.metadata.get_str_array("t.str_array").unwrap(),
        vec!["a", "<s>", ""]
    );
    let samples = sample_tensors();
    assert_eq!(f.tensors.len(), samples.len());
    let mut names: Vec<String> = samples.iter().map(|s| s.name.to_string()).collect();
    names.sort();
    assert_eq!(f.tensor_names(), names);
    for s in samples {
        let name = s.name;
        assert!(f.has_tensor(name));
        let t = f.tensor(name).unwrap();
        let shape: Vec<usize> = s.shape.iter().map(|&d| d as usize).collect();
        assert_eq!(
            (&t.shape, t.dtype, &t.data),
            (&shape, s.dtype, &s.bytes),
            "{name}"
        );
        let got = t.to_f32().unwrap();
        assert_eq!(got.len(), s.values.len(), "{name}");
        for (i, (g, e)) in got.iter().zip(&s.values).enumerate() {
            assert_eq!(g, e, "{name}: failed at index {i}: {g} vs {e}");
        }
    }
    assert!(!f.has_tensor("nope"));
    assert!(matches!(
        f.tensor("nope"),
        Err(LoadError::MissingTensor { .. })
    ));
}

#[test]
fn gguf_v3_round_trips_every_value_and_tensor_type() {
    round_trip(3);
}

#[test]
fn gguf_v2_round_trips_every_value_and_tensor_type() {
    round_trip(2);
}

#[test]
fn gguf_bad_magic_and_version() {
    let dir = TempDir::new("magic");
    let (mut bytes, _) = sample_writer(3).build();
    bytes[..4].copy_from_slice(b"GGML");
    let p = dir.write("bad.gguf", &bytes);
    match GgufFile::open(&p) {
        Err(LoadError::BadMagic { found, .. }) => assert_eq!(&found, b"GGML"),
        other => panic!("expected BadMagic, got {other:?}"),
    }
    let p = dir.write("short.gguf", b"GG");
    assert!(matches!(
        GgufFile::open(&p),
        Err(LoadError::Truncated { .. })
    ));
    let p = dir.write("empty.gguf", b"");
    assert!(GgufFile::open(&p).is_err());
    let p = dir.write("nope.gguf", b"{}");
    assert!(matches!(
        GgufFile::open(&p),
        Err(LoadError::BadMagic { .. })
    ));

    let (mut bytes, _) = sample_writer(3).build();
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    let p = dir.write("v1.gguf", &bytes);
    assert!(matches!(
        GgufFile::open(&p),
        Err(LoadError::UnsupportedVersion { version: 1, .. })
    ));
    assert!(matches!(
        GgufFile::open(dir.0.join("missing.gguf")),
        Err(LoadError::Io { .. })
    ));
}

#[test]
fn gguf_every_truncation_is_an_error() {
    let dir = TempDir::new("trunc");
    let (bytes, s) = sample_writer(3).build();
    // Named cut points first, each with the error it must give.
    for (what, cut) in [
        ("inside header", 10),
        ("inside metadata", s.metadata_start + 20),
        ("end of metadata", s.tensor_infos_start - 3),
        ("inside tensor info", s.tensor_infos_start + 10),
        ("inside tensor data", s.data_start + 3),
        ("one byte short", bytes.len() - 1),
    ] {
        let p = dir.write("cut.gguf", &bytes[..cut]);
        match GgufFile::open(&p) {
            Err(LoadError::Truncated { what: msg, .. }) => {
                assert!(!msg.is_empty(), "{what}")
            }
            other => panic!("{what} (cut at {cut}): expected Truncated, got {other:?}"),
        }
    }
    // Then every prefix: the last tensor ends at EOF, so each one is missing something.
    for cut in 0..bytes.len() {
        let p = dir.write("cut.gguf", &bytes[..cut]);
        assert!(GgufFile::open(&p).is_err(), "prefix of {cut} bytes parsed");
    }
}

#[test]
fn gguf_unsupported_tensor_type_names_the_tensor() {
    let (b, _) = GgufWriter::new(3)
        .kv("general.architecture", MetaValue::String("llama".into()))
        .tensor("ok.weight", &[32], 0, vec![0; 128])
        .tensor("blk.3.ffn_down.weight", &[256], 16, vec![0; 66])
        .build();
    let err = open_bytes("q4k", &b).unwrap_err();
    assert!(
        matches!(&err, LoadError::UnsupportedTensorType { tensor, type_name, .. }
            if tensor == "blk.3.ffn_down.weight" && type_name.contains("IQ2_XXS")),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("blk.3.ffn_down.weight") && msg.contains("IQ2_XXS"),
        "{msg}"
    );

    let (b, _) = GgufWriter::new(3)
        .tensor("odd", &[4], 1000, vec![0; 4])
        .build();
    let msg = open_bytes("odd", &b).unwrap_err().to_string();
    assert!(msg.contains("odd") && msg.contains("type id 1000"), "{msg}");
}

/// Each case must fail with an error whose message contains the fragment — proof that the
/// intended check fired, not an earlier one.
fn expect_err(what: &str, bytes: &[u8], fragment: &str) {
    match open_bytes("hostile", bytes) {
        Ok(_) => panic!("{what}: parsed"),
        Err(e) => {
            let ok = matches!(e, LoadError::Truncated { .. } | LoadError::Malformed { .. });
            let msg = e.to_string();
            assert!(
                ok && msg.contains(fragment),
                "{what}: expected `{fragment}`, got {e:?}"
            );
        }
    }
}

#[test]
fn gguf_hostile_counts_fail_cleanly() {
    // Counts of 2^60 and more must fail before anything is allocated for them.
    expect_err(
        "2^60 u8",
        &one_kv("huge", 9, &array_header(0, 1 << 60)),
        "element count of `huge`",
    );
    expect_err(
        "2^40 strings",
        &one_kv("s", 9, &array_header(8, 1 << 40)),
        "element count of `s`",
    );
    expect_err(
        "u64::MAX u32s",
        &one_kv("u", 9, &array_header(4, u64::MAX)),
        "element count of `u`",
    );
    expect_err(
        "2^62 string",
        &one_kv("s", 8, &(1u64 << 62).to_le_bytes()),
        "length of value of `s`",
    );
    let mut body = Vec::new();
    put_u64(&mut body, 1 << 62);
    body.extend_from_slice(&[b'k'; 64]);
    expect_err(
        "2^62 key",
        &raw_header(0, 1, &body),
        "length of key of metadata entry 0",
    );
    expect_err(
        "2^60 tensors",
        &raw_header(1 << 60, 0, &[0; 64]),
        "tensor count",
    );
    expect_err(
        "u64::MAX kvs",
        &raw_header(0, u64::MAX, &[0; 64]),
        "metadata entry count",
    );

    let mut nested = Vec::new();
    for _ in 0..100 {
        nested.extend_from_slice(&array_header(9, 1));
    }
    nested.extend_from_slice(&array_header(0, 0));
    expect_err(
        "100-deep arrays",
        &one_kv("deep", 9, &nested),
        "nested deeper",
    );
    expect_err(
        "value type 13",
        &one_kv("k", 13, &[]),
        "unknown value type 13",
    );
    expect_err(
        "element type 13",
        &one_kv("k", 9, &array_header(13, 1)),
        "unknown array element type",
    );
    expect_err("bool 2", &one_kv("b", 7, &[2]), "bool byte is 2");
    expect_err(
        "bad alignment",
        &one_kv("general.alignment", 4, &3u32.to_le_bytes()),
        "power of two",
    );
    let mut key = Vec::new();
    put_u64(&mut key, 2);
    key.extend_from_slice(&[0xff, 0xfe]);
    key.extend_from_slice(&[0; 64]);
    expect_err("non-UTF-8 key", &raw_header(0, 1, &key), "not valid UTF-8");
}

#[test]
fn gguf_bad_tensor_infos_fail_cleanly() {
    // Sanity: the helper makes a valid file.
    let f = open_bytes("ok", &one_tensor(&[4, 2], 0, 0, 32)).unwrap();
    assert_eq!(f.tensors[0].shape, vec![2, 4]);

    for (what, bytes, fragment) in [
        (
            "5 dims",
            one_tensor(&[1, 1, 1, 1, 1], 0, 0, 4),
            "5 dimensions",
        ),
        (
            "numel overflow",
            one_tensor(&[1 << 32, 1 << 32, 16], 0, 0, 64),
            "element count overflows",
        ),
        (
            "byte size overflow",
            one_tensor(&[1 << 62], 0, 0, 64),
            "byte size overflows",
        ),
        (
            "misaligned offset",
            one_tensor(&[4], 0, 4, 64),
            "not a multiple of the alignment",
        ),
        (
            "not whole blocks",
            one_tensor(&[33], 8, 0, 68),
            "whole number of Q8_0 blocks",
        ),
        (
            "past EOF",
            one_tensor(&[64], 0, 32, 256),
            "extends past the end",
        ),
    ] {
        expect_err(what, &bytes, fragment);
    }
    // Offsets far past EOF, and offset + size overflowing u64.
    assert!(matches!(
        open_bytes("eof", &one_tensor(&[8], 0, 1 << 40, 32)),
        Err(LoadError::Truncated { .. })
    ));
    assert!(open_bytes("wrap", &one_tensor(&[8], 0, u64::MAX - 31, 32)).is_err());
}

#[test]
fn gguf_synthetic_config_defaults_and_rejections() {
    let emb = sample_tensors().swap_remove(0).bytes; // 6 f32 values
    let base = || {
        GgufWriter::new(3)
            .kv("general.architecture", MetaValue::String("llama".into()))
            .kv("llama.embedding_length", MetaValue::U32(8))
            .kv("llama.block_count", MetaValue::U32(2))
            .kv("llama.feed_forward_length", MetaValue::U64(16))
            .kv("llama.context_length", MetaValue::U32(64))
            .kv(
                "llama.attention.layer_norm_rms_epsilon",
                MetaValue::F32(1e-5),
            )
    };
    // No vocab_size key and no token list: vocab comes from token_embd.weight's rows.
    let (b, _) = base()
        .kv("llama.attention.head_count", MetaValue::U32(2))
        .tensor("token_embd.weight", &[3, 2], 0, emb.clone())
        .tensor("output.weight", &[3, 2], 0, emb.clone())
        .build();
    let cfg = ModelConfig::from_gguf(&open_bytes("cfg", &b).unwrap()).unwrap();
    assert_eq!((cfg.vocab_size, cfg.num_heads, cfg.num_kv_heads), (3, 2, 2));
    assert_eq!(
        (cfg.head_dim, cfg.rope.as_ref().unwrap().theta),
        (4, 10000.0)
    );
    assert_eq!(cfg.rope.as_ref().unwrap().style, RopeStyle::Interleaved);
    assert!(!cfg.tie_word_embeddings);

    for (what, heads, kv) in [
        ("zero heads", 0, 0),
        ("8 not divisible", 3, 3),
        ("kv", 2, 3),
    ] {
        let (b, _) = base()
            .kv("llama.attention.head_count", MetaValue::U32(heads))
            .kv("llama.attention.head_count_kv", MetaValue::U32(kv))
            .kv("llama.vocab_size", MetaValue::U32(3))
            .build();
        let err = ModelConfig::from_gguf(&open_bytes("cfg", &b).unwrap()).unwrap_err();
        assert!(matches!(err, LoadError::Config { .. }), "{what}: {err:?}");
    }
    let (b, _) = GgufWriter::new(3)
        .kv("general.architecture", MetaValue::String("bert".into()))
        .build();
    assert!(matches!(
        ModelConfig::from_gguf(&open_bytes("cfg", &b).unwrap()),
        Err(LoadError::UnknownArchitecture { arch, .. }) if arch == "bert"
    ));
}

// ---------------------------------------------------------------------------------------------
// The real model

#[test]
fn smollm2_gguf_parses() {
    assert!(
        Path::new(SMOLLM2).is_file(),
        "{SMOLLM2} is missing: run models/fetch_smollm2.sh to download it"
    );
    let f = GgufFile::open(SMOLLM2).unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    let cfg = ModelConfig::from_gguf(&f).unwrap();
    assert_eq!(cfg.arch, Architecture::Llama);
    assert_eq!(cfg.num_layers, 30);
    assert_eq!(cfg.hidden_size, 576);
    assert_eq!(cfg.num_heads, 9);
    assert_eq!(cfg.num_kv_heads, 3);
    assert_eq!(cfg.head_dim, 64);
    assert_eq!(cfg.vocab_size, 49152);
    assert_eq!(cfg.rope.as_ref().unwrap().theta, 100000.0);
    assert_eq!(cfg.rope.as_ref().unwrap().style, RopeStyle::Interleaved);
    assert!(cfg.tie_word_embeddings);
    assert!(cfg.norm_eps > 0.0 && cfg.norm_eps < 1e-3);

    let emb = f.tensor_info("token_embd.weight").unwrap();
    assert_eq!(emb.shape, vec![49152, 576]);
    assert_eq!(emb.dtype, TensorDType::Q8_0);

    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.shape, vec![576, 576]);
    assert_eq!(q.dtype, TensorDType::Q4_1);
    let w = q.to_f32().unwrap();
    assert_eq!(w.len(), 576 * 576);
    assert!(w.iter().all(|v| v.is_finite()));
    assert!(w.iter().any(|v| *v != 0.0));
    let k = f.tensor_info("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.shape, vec![192, 576]);
    // Every tensor's bytes are reachable.
    for t in &f.tensors {
        assert_eq!(f.tensor_bytes(&t.name).unwrap().len(), t.size, "{}", t.name);
    }
}

// ---------------------------------------------------------------------------------------------
// Hugging Face directories

fn fixture(name: &str) -> PathBuf {
    let p = Path::new(FIXTURES).join(name);
    assert!(p.is_dir(), "fixture {} is missing", p.display());
    p
}

#[test]
fn hf_tiny_llama_config_and_tensors() {
    let dir = HfModelDir::open(fixture("tiny-llama-gqa-public")).unwrap();
    assert_eq!(Architecture::of_hf(&dir).unwrap(), Architecture::Llama);
    let cfg = ModelConfig::from_hf(&dir).unwrap();
    assert_eq!(cfg.rope.as_ref().unwrap().theta, 10000.0);
    assert_eq!((cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), (4, 2, 16));
    assert_eq!(
        (cfg.hidden_size, cfg.num_layers, cfg.vocab_size),
        (64, 3, 512)
    );
    assert_eq!((cfg.intermediate_size, cfg.max_context), (160, 512));
    assert_eq!(cfg.norm_eps, 1e-6);
    assert_eq!(cfg.rope.as_ref().unwrap().style, RopeStyle::Half);
    assert!(!cfg.tie_word_embeddings);
    assert!(dir.tokenizer_json().is_none());

    let names = dir.tensor_names();
    assert!(!names.is_empty());
    for n in &names {
        let t = dir.tensor(n).unwrap();
        assert_eq!(t.dtype, TensorDType::F32, "{n}");
        assert_eq!(t.to_f32().unwrap().len(), t.numel(), "{n}");
    }
    let k = dir
        .tensor("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(k.shape, vec![32, 64]);
    assert!(dir.has_tensor("lm_head.weight"));
}

#[test]
fn hf_tiny_gpt2_config_and_tensors() {
    let dir = HfModelDir::open(fixture("tiny-gpt2-public")).unwrap();
    assert_eq!(Architecture::of_hf(&dir).unwrap(), Architecture::Gpt2);
    let cfg = ModelConfig::from_hf(&dir).unwrap();
    assert_eq!((cfg.hidden_size, cfg.num_layers, cfg.num_heads), (64, 3, 4));
    assert_eq!((cfg.num_kv_heads, cfg.head_dim), (4, 16));
    assert_eq!(cfg.intermediate_size, 256);
    assert_eq!((cfg.vocab_size, cfg.max_context), (512, 256));
    assert!(cfg.tie_word_embeddings);
    let names = dir.tensor_names();
    assert!(!names.is_empty());
    for n in &names {
        let t = dir.tensor(n).unwrap();
        assert_eq!(t.dtype, TensorDType::F32, "{n}");
        assert!(t.to_f32().unwrap().iter().all(|v| v.is_finite()), "{n}");
    }
}

#[test]
fn hf_sharded_directory_loads_the_same_tensors() {
    let src_path = fixture("tiny-llama-gqa-public");
    let src = HfModelDir::open(&src_path).unwrap();
    let names = src.tensor_names();
    let tensors: Vec<_> = names.iter().map(|n| src.tensor(n).unwrap()).collect();

    let tmp = TempDir::new("sharded");
    let config = std::fs::read(src_path.join("config.json")).unwrap();
    tmp.write("config.json", &config);
    let mut weight_map = serde_json::Map::new();
    let half = tensors.len() / 2;
    for (i, chunk) in [&tensors[..half], &tensors[half..]].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = chunk
            .iter()
            .map(|t| {
                let v = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    t.shape.clone(),
                    &t.data,
                )
                .unwrap();
                (t.name.clone(), v)
            })
            .collect();
        tmp.write(&file, &safetensors::serialize(views, None).unwrap());
        for t in chunk.iter() {
            weight_map.insert(t.name.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    tmp.write(
        "model.safetensors.index.json",
        serde_json::to_string(&index).unwrap().as_bytes(),
    );

    let sharded = HfModelDir::open(&tmp.0).unwrap();
    assert_eq!(sharded.tensor_names(), names);
    let by_name: HashMap<_, _> = tensors.iter().map(|t| (t.name.clone(), t)).collect();
    for n in &names {
        let t = sharded.tensor(n).unwrap();
        let o = by_name[n];
        assert_eq!(
            (&t.shape, t.dtype, &t.data),
            (&o.shape, o.dtype, &o.data),
            "{n}"
        );
    }
    assert_eq!(
        ModelConfig::from_hf(&sharded).unwrap(),
        ModelConfig::from_hf(&src).unwrap()
    );

    // A weight_map entry pointing outside the directory is refused.
    let bad = serde_json::json!({ "weight_map": { "x": "../model.safetensors" } });
    tmp.write(
        "model.safetensors.index.json",
        serde_json::to_string(&bad).unwrap().as_bytes(),
    );
    assert!(matches!(
        HfModelDir::open(&tmp.0),
        Err(LoadError::Malformed { .. })
    ));
}

fn tiny_safetensors() -> Vec<u8> {
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    safetensors::serialize([("w", v)], None).unwrap()
}

#[test]
fn hf_unknown_architecture_and_bad_files() {
    let tmp = TempDir::new("unknown");
    tmp.write(
        "config.json",
        br#"{"architectures": ["BertForMaskedLM"], "model_type": "bert"}"#,
    );
    tmp.write("model.safetensors", &tiny_safetensors());
    let dir = HfModelDir::open(&tmp.0).unwrap();
    assert!(matches!(
        Architecture::of_hf(&dir),
        Err(LoadError::UnknownArchitecture { ref arch, .. }) if arch == "BertForMaskedLM"
    ));
    assert!(matches!(
        ModelConfig::from_hf(&dir),
        Err(LoadError::UnknownArchitecture { .. })
    ));

    // model_type alone is enough.
    tmp.write("config.json", br#"{"model_type": "mistral"}"#);
    let dir = HfModelDir::open(&tmp.0).unwrap();
    assert_eq!(Architecture::of_hf(&dir).unwrap(), Architecture::Mistral);

    // A truncated safetensors file, and a missing one.
    let st = tiny_safetensors();
    tmp.write("model.safetensors", &st[..st.len() - 1]);
    assert!(HfModelDir::open(&tmp.0).is_err());
    std::fs::remove_file(tmp.0.join("model.safetensors")).unwrap();
    assert!(matches!(
        HfModelDir::open(&tmp.0),
        Err(LoadError::Io { .. })
    ));
}

#[test]
fn hf_config_rope_theta_top_level_and_rejections() {
    let tmp = TempDir::new("hfcfg");
    tmp.write("model.safetensors", &tiny_safetensors());
    let llama = |extra: &str| {
        format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
               "vocab_size": 100, "max_position_embeddings": 128 {extra}}}"#
        )
    };
    tmp.write(
        "config.json",
        llama(r#", "rope_theta": 500000.0"#).as_bytes(),
    );
    let cfg = ModelConfig::from_hf(&HfModelDir::open(&tmp.0).unwrap()).unwrap();
    assert_eq!(cfg.rope.as_ref().unwrap().theta, 500000.0);
    assert_eq!((cfg.num_kv_heads, cfg.head_dim), (4, 16));
    assert!(!cfg.tie_word_embeddings);

    for extra in [
        r#", "num_key_value_heads": 3"#,
        r#", "num_attention_heads": 5"#,
        r#", "num_hidden_layers": 0"#,
        r#", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#,
        r#", "hidden_size": "big""#,
    ] {
        // A later duplicate key overrides the earlier one in serde_json.
        tmp.write("config.json", llama(extra).as_bytes());
        let err = ModelConfig::from_hf(&HfModelDir::open(&tmp.0).unwrap()).unwrap_err();
        assert!(matches!(err, LoadError::Config { .. }), "{extra}: {err:?}");
    }
}
