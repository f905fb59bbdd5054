//! Hostile or wrong model files fail cleanly, before anything big is allocated: absurd sizes,
//! sizes that disagree with the tensors present, overlapping tensor data, a quantized norm,
//! special token ids past the vocabulary, NaN/Inf weights; a chat template that cannot
//! render falls back to ChatML. Synthetic GGUF files (a complete tiny Llama with a byte-level
//! vocabulary, written to a temp dir) and copies of the Hugging Face fixtures.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use wllm::generate::load_tokenizer;
use wllm::loader::hf::HfModelDir;
use wllm::loader::{LoadError, MetaValue};
use wllm::model::{ModelError, ModelFiles, load_weights};
use wllm::tokenizer::ChatMessage;
use wllm::tokenizer::chat::CHATML_TEMPLATE;
use wllm::{Generator, ModelOptions, WeightDType};

#[path = "loader/support.rs"]
#[allow(dead_code)]
mod support;
use support::{GgufWriter, TempDir, f16_bytes};

// ---------------------------------------------------------------------------------------------
// A complete tiny Llama GGUF

const HIDDEN: u64 = 32;
const HEAD_DIM: u64 = 16;
const KV_DIM: u64 = HEAD_DIM; // 2 query heads, 1 KV head
const INNER: u64 = 64;
const VOCAB: u64 = 8;
const GGML_F32: u32 = 0;
const GGML_F16: u32 = 1;
const GGML_Q8_0: u32 = 8;

struct Tensor {
    name: String,
    shape: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

/// The files' contents, editable before writing: metadata by key, tensors by name.
struct Tiny {
    kvs: Vec<(String, MetaValue)>,
    tensors: Vec<Tensor>,
}

/// `n` f32 values in (-scale, scale) from a fixed LCG (never zero, never a round number).
fn values(n: u64, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `rows` × 32 Q8_0 weights: one block per row, d = 0.01, q = i − 16.
fn q8_0_rows(rows: u64) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..rows {
        b.extend_from_slice(&f16_bytes(0.01));
        b.extend((0..32).map(|i| (i - 16) as i8 as u8));
    }
    b
}

fn strs(v: &[&str]) -> MetaValue {
    MetaValue::Array(v.iter().map(|s| MetaValue::String(s.to_string())).collect())
}

impl Tiny {
    /// Two layers, hidden 32, two heads of 16 over one KV head, MLP 64, a vocabulary of 8
    /// byte-level BPE tokens, tied head, context 64, all weights f32.
    fn new() -> Tiny {
        use MetaValue::*;
        let kvs = vec![
            ("general.architecture", String("llama".into())),
            ("llama.embedding_length", U32(HIDDEN as u32)),
            ("llama.block_count", U32(2)),
            ("llama.feed_forward_length", U32(INNER as u32)),
            ("llama.context_length", U32(64)),
            ("llama.attention.head_count", U32(2)),
            ("llama.attention.head_count_kv", U32(1)),
            ("llama.attention.layer_norm_rms_epsilon", F32(1e-5)),
            ("llama.rope.freq_base", F32(10000.0)),
            ("tokenizer.ggml.model", String("gpt2".into())),
            ("tokenizer.ggml.pre", String("smollm".into())),
            (
                "tokenizer.ggml.tokens",
                strs(&["<|end|>", "a", "b", "ab", "Ġ", "Ġab", "1", "2"]),
            ),
            (
                "tokenizer.ggml.token_type",
                Array([3, 1, 1, 1, 1, 1, 1, 1].map(I32).to_vec()),
            ),
            ("tokenizer.ggml.merges", strs(&["a b", "Ġ ab"])),
            ("tokenizer.ggml.eos_token_id", U32(0)),
            ("tokenizer.chat_template", String(CHATML_TEMPLATE.into())),
        ];
        let mut t = Tiny {
            kvs: kvs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            tensors: Vec::new(),
        };
        let mut seed = 0;
        let mut matrix = |t: &mut Tiny, name: &str, rows: u64, cols: u64| {
            seed += 1;
            let data = f32_bytes(&values(rows * cols, seed, 0.1));
            t.tensor(name, &[rows, cols], GGML_F32, data);
        };
        matrix(&mut t, "token_embd.weight", VOCAB, HIDDEN);
        for i in 0..2 {
            let norm = f32_bytes(&vec![1.0; HIDDEN as usize]);
            t.tensor(
                &format!("blk.{i}.attn_norm.weight"),
                &[HIDDEN],
                GGML_F32,
                norm.clone(),
            );
            t.tensor(
                &format!("blk.{i}.ffn_norm.weight"),
                &[HIDDEN],
                GGML_F32,
                norm,
            );
            matrix(
                &mut t,
                &format!("blk.{i}.attn_q.weight"),
                2 * HEAD_DIM,
                HIDDEN,
            );
            matrix(&mut t, &format!("blk.{i}.attn_k.weight"), KV_DIM, HIDDEN);
            matrix(&mut t, &format!("blk.{i}.attn_v.weight"), KV_DIM, HIDDEN);
            matrix(
                &mut t,
                &format!("blk.{i}.attn_output.weight"),
                HIDDEN,
                2 * HEAD_DIM,
            );
            matrix(&mut t, &format!("blk.{i}.ffn_gate.weight"), INNER, HIDDEN);
            matrix(&mut t, &format!("blk.{i}.ffn_up.weight"), INNER, HIDDEN);
            matrix(&mut t, &format!("blk.{i}.ffn_down.weight"), HIDDEN, INNER);
        }
        let norm = f32_bytes(&vec![1.0; HIDDEN as usize]);
        t.tensor("output_norm.weight", &[HIDDEN], GGML_F32, norm);
        t
    }

    /// Sets metadata `key` (replacing it when present).
    fn kv(mut self, key: &str, v: MetaValue) -> Tiny {
        self.kvs.retain(|(k, _)| k != key);
        self.kvs.push((key.to_string(), v));
        self
    }

    /// Adds tensor `name`, or replaces it in place.
    fn tensor(&mut self, name: &str, shape: &[u64], ggml_type: u32, data: Vec<u8>) {
        let t = Tensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            ggml_type,
            data,
        };
        match self.tensors.iter_mut().find(|t| t.name == name) {
            Some(old) => *old = t,
            None => self.tensors.push(t),
        }
    }

    fn with_tensor(mut self, name: &str, shape: &[u64], ggml_type: u32, data: Vec<u8>) -> Tiny {
        self.tensor(name, shape, ggml_type, data);
        self
    }

    /// Tensor `name` as f32 with element `at` replaced by `v`.
    fn with_f32_value(self, name: &str, at: usize, v: f32) -> Tiny {
        let t = self.tensors.iter().find(|t| t.name == name).unwrap();
        let (shape, mut data) = (t.shape.clone(), t.data.clone());
        data[at * 4..at * 4 + 4].copy_from_slice(&v.to_le_bytes());
        self.with_tensor(name, &shape, GGML_F32, data)
    }

    fn bytes(&self) -> Vec<u8> {
        let mut w = GgufWriter::new(3);
        for (k, v) in &self.kvs {
            w = w.kv(k, v.clone());
        }
        for t in &self.tensors {
            w = w.tensor(&t.name, &t.shape, t.ggml_type, t.data.clone());
        }
        w.build().0
    }

    fn write(&self, dir: &TempDir) -> PathBuf {
        dir.write("tiny.gguf", &self.bytes())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Opens the written files and reads their config (no GPU needed).
fn config_err(tiny: &Tiny) -> LoadError {
    let dir = TempDir::new("hostile");
    let files = ModelFiles::open(&tiny.write(&dir)).unwrap();
    files.config().expect_err("config should be refused")
}

/// The error, as text, must name every fragment, and come quickly (no big allocation).
fn assert_names(what: &str, err: &dyn std::fmt::Display, started: Instant, fragments: &[&str]) {
    let msg = err.to_string();
    for f in fragments {
        assert!(msg.contains(f), "{what}: `{msg}` does not name `{f}`");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{what}: took {took:?}");
}

fn assert_config_refused(what: &str, tiny: Tiny, fragments: &[&str]) {
    let t0 = Instant::now();
    let err = config_err(&tiny);
    assert!(matches!(err, LoadError::Config { .. }), "{what}: {err:?}");
    assert_names(what, &err, t0, fragments);
}

/// Uploads the weights of the written files onto the test adapter.
fn load_weights_of(tiny: &Tiny) -> Result<(), ModelError> {
    let dir = TempDir::new("hostile-weights");
    let files = ModelFiles::open(&tiny.write(&dir))?;
    let cfg = files.config()?;
    load_weights(
        common::gpu(),
        &files,
        &cfg,
        WeightDType::F16,
        &mut |_, _| {},
    )
    .map(|_| ())
}

fn weights_err(what: &str, tiny: Tiny, fragments: &[&str]) -> ModelError {
    let t0 = Instant::now();
    let err = load_weights_of(&tiny).expect_err(what);
    assert_names(what, &err, t0, fragments);
    err
}

// ---------------------------------------------------------------------------------------------
// Sizes

#[test]
fn the_tiny_model_itself_loads() {
    let tiny = Tiny::new();
    let dir = TempDir::new("hostile-ok");
    let files = ModelFiles::open(&tiny.write(&dir)).unwrap();
    let cfg = files.config().unwrap();
    assert_eq!(
        (cfg.num_layers, cfg.hidden_size, cfg.vocab_size),
        (2, 32, 8)
    );
    let tok = load_tokenizer(&files).unwrap().unwrap();
    assert_eq!(tok.chat_template(), Some(CHATML_TEMPLATE));
    load_weights_of(&tiny).unwrap();
}

#[test]
fn context_length_2_pow_31_is_refused_naming_the_key() {
    let tiny = Tiny::new().kv("llama.context_length", MetaValue::U64(1 << 31));
    assert_config_refused("2^31", tiny, &["llama.context_length", "2147483648"]);
}

#[test]
fn context_length_2_pow_60_is_refused_naming_the_key() {
    let tiny = Tiny::new().kv("llama.context_length", MetaValue::U64(1 << 60));
    assert_config_refused("2^60", tiny, &["llama.context_length"]);
}

#[test]
fn context_length_2_pow_24_is_refused_at_once() {
    let tiny = Tiny::new().kv("llama.context_length", MetaValue::U32(1 << 24));
    assert_config_refused("2^24", tiny, &["llama.context_length", "4194304"]);
}

#[test]
fn block_count_2_pow_40_is_refused_naming_the_key() {
    let tiny = Tiny::new().kv("llama.block_count", MetaValue::U64(1 << 40));
    assert_config_refused("2^40 layers", tiny, &["llama.block_count"]);
}

#[test]
fn every_size_key_is_capped() {
    for key in [
        "llama.embedding_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.key_length",
        "llama.feed_forward_length",
        "llama.vocab_size",
    ] {
        let tiny = Tiny::new().kv(key, MetaValue::U64(1 << 40));
        assert_config_refused(key, tiny, &[key, "1099511627776"]);
    }
    let tiny = Tiny::new().kv("llama.expert_count", MetaValue::U32(8));
    assert_config_refused("experts", tiny, &["llama.expert_count"]);
}

#[test]
fn block_count_must_match_the_layers_present() {
    let tiny = Tiny::new().kv("llama.block_count", MetaValue::U32(3));
    assert_config_refused("3 of 2", tiny, &["llama.block_count", "blk.N", "2 layers"]);
    let tiny = Tiny::new().kv("llama.block_count", MetaValue::U32(1));
    assert_config_refused("1 of 2", tiny, &["llama.block_count", "{0, 1}"]);
    // Two layers claimed, tensors for layers 0 and 2: layer 1 is missing.
    let mut tiny = Tiny::new();
    for t in tiny.tensors.iter_mut() {
        t.name = t.name.replace("blk.1.", "blk.2.");
    }
    assert_config_refused("gap", tiny, &["llama.block_count", "{0, 2}"]);
}

#[test]
fn embedding_length_must_match_token_embd() {
    let tiny = Tiny::new().kv("llama.embedding_length", MetaValue::U32(48));
    let what = "hidden 48";
    assert_config_refused(what, tiny, &["llama.embedding_length", "token_embd.weight"]);
    // The vocabulary (here the token list) must be token_embd's row count too.
    let tiny = Tiny::new().kv("llama.vocab_size", MetaValue::U32(9));
    assert_config_refused("vocab 9", tiny, &["vocabulary size", "token_embd.weight"]);
    // And the head and MLP widths layer 0's projections.
    let tiny = Tiny::new().kv("llama.attention.head_count_kv", MetaValue::U32(2));
    let what = "2 KV heads";
    assert_config_refused(what, tiny, &["head_count_kv", "blk.0.attn_k.weight"]);
    let tiny = Tiny::new().kv("llama.feed_forward_length", MetaValue::U32(96));
    assert_config_refused(
        "ffn",
        tiny,
        &["feed_forward_length", "blk.0.ffn_gate.weight"],
    );
}

// ---------------------------------------------------------------------------------------------
// Tensor data

/// Byte offset of the `u64` data offset in tensor `name`'s info.
fn offset_field(bytes: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims + 4
}

#[test]
fn overlapping_gguf_tensor_data_is_refused() {
    let mut bytes = Tiny::new().bytes();
    // Point blk.0.ffn_norm at blk.0.attn_norm's bytes: each is well-formed alone.
    let src = offset_field(&bytes, "blk.0.attn_norm.weight");
    let dst = offset_field(&bytes, "blk.0.ffn_norm.weight");
    let offset: [u8; 8] = bytes[src..src + 8].try_into().unwrap();
    bytes[dst..dst + 8].copy_from_slice(&offset);
    let dir = TempDir::new("hostile-overlap");
    let t0 = Instant::now();
    let err = ModelFiles::open(&dir.write("x.gguf", &bytes))
        .err()
        .unwrap();
    assert!(matches!(err, LoadError::Malformed { .. }), "{err:?}");
    let names = ["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "overlap"];
    assert_names("overlap", &err, t0, &names);
}

#[test]
fn overlapping_safetensors_data_is_refused() {
    let header = serde_json::json!({
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    })
    .to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&[0; 24]);
    let dir = TempDir::new("hostile-st");
    dir.write("config.json", br#"{"model_type": "llama"}"#);
    dir.write("model.safetensors", &file);
    let t0 = Instant::now();
    let err = HfModelDir::open(&dir.0).err().unwrap();
    assert!(matches!(err, LoadError::Malformed { .. }), "{err:?}");
    assert_names("safetensors overlap", &err, t0, &["`b`", "overlap"]);
}

#[test]
fn a_quantized_norm_is_refused() {
    let tiny = Tiny::new().with_tensor("blk.0.attn_norm.weight", &[32], GGML_Q8_0, q8_0_rows(1));
    let err = weights_err("Q8_0 norm", tiny, &["blk.0.attn_norm.weight", "Q8_0"]);
    assert!(
        matches!(
            err,
            ModelError::Load(LoadError::UnexpectedTensorType { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn nan_and_inf_weights_are_refused_naming_the_tensor() {
    let tiny = Tiny::new().with_f32_value("blk.1.ffn_down.weight", 100, f32::NAN);
    let err = weights_err("f32 NaN", tiny, &["blk.1.ffn_down.weight", "element 100"]);
    assert!(
        matches!(err, ModelError::Load(LoadError::NonFinite { .. })),
        "{err:?}"
    );
    let tiny = Tiny::new().with_f32_value("output_norm.weight", 3, f32::INFINITY);
    weights_err("f32 norm inf", tiny, &["output_norm.weight", "element 3"]);

    // f16: the embedding with an infinity in row 2.
    let mut embd: Vec<u8> = values(VOCAB * HIDDEN, 99, 0.1)
        .iter()
        .flat_map(|v| f16_bytes(*v))
        .collect();
    embd[2 * 64..2 * 64 + 2].copy_from_slice(&[0x00, 0x7c]); // +inf
    let tiny = Tiny::new().with_tensor("token_embd.weight", &[VOCAB, HIDDEN], GGML_F16, embd);
    weights_err("f16 inf", tiny, &["token_embd.weight", "element 64"]);

    // Q8_0: row 5's block scale d is NaN.
    let mut q = q8_0_rows(2 * HEAD_DIM);
    q[5 * 34..5 * 34 + 2].copy_from_slice(&[0x00, 0x7e]);
    let tiny = Tiny::new().with_tensor("blk.0.attn_q.weight", &[32, 32], GGML_Q8_0, q);
    let fragments = ["blk.0.attn_q.weight", "scale", "160..192"];
    weights_err("Q8_0 scale NaN", tiny, &fragments);
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[test]
fn special_token_ids_past_the_vocabulary_are_refused() {
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
    ] {
        let tiny = Tiny::new().kv(key, MetaValue::U32(VOCAB as u32));
        let dir = TempDir::new("hostile-bos");
        let files = ModelFiles::open(&tiny.write(&dir)).unwrap();
        let t0 = Instant::now();
        let err = load_tokenizer(&files).expect_err(key);
        assert_names(key, &err, t0, &[key, "outside the vocabulary"]);
    }
    // -1 is how converters write "none".
    let tiny = Tiny::new().kv("tokenizer.ggml.bos_token_id", MetaValue::I32(-1));
    let dir = TempDir::new("hostile-bos");
    let files = ModelFiles::open(&tiny.write(&dir)).unwrap();
    let tok = load_tokenizer(&files).unwrap().unwrap();
    assert_eq!(tok.bos_token_id(), None);
}

#[test]
fn a_chat_template_that_fails_to_render_falls_back_to_chatml() {
    let chatml = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    for bad in [
        "{{ raise_exception('no chat here') }}",
        "{% for m in messages %}{{ m.content",
        "{{ messages[0].content | no_such_filter }}",
    ] {
        let tiny = Tiny::new().kv("tokenizer.chat_template", MetaValue::String(bad.into()));
        let dir = TempDir::new("hostile-template");
        let files = ModelFiles::open(&tiny.write(&dir)).unwrap();
        let tok = load_tokenizer(&files).unwrap().expect("loading succeeds");
        assert_eq!(tok.chat_template(), Some(CHATML_TEMPLATE), "{bad}");
        let prompt = tok.render_chat(&[ChatMessage::user("hi")], true).unwrap();
        assert_eq!(prompt, chatml, "{bad}");
    }
    // A template that renders is kept, even one that refuses some conversations.
    let picky =
        "{% if messages[0].role == 'system' %}{{ raise_exception('no system') }}{% endif %}U";
    let tiny = Tiny::new().kv("tokenizer.chat_template", MetaValue::String(picky.into()));
    let dir = TempDir::new("hostile-template");
    let files = ModelFiles::open(&tiny.write(&dir)).unwrap();
    let tok = load_tokenizer(&files).unwrap().unwrap();
    assert_eq!(tok.chat_template(), Some(picky));
}

#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused() {
    // 8 tokens, but the model says 6 and its embedding has 6 rows.
    let embd = f32_bytes(&values(6 * HIDDEN, 7, 0.1));
    let tiny = Tiny::new()
        .kv("llama.vocab_size", MetaValue::U32(6))
        .with_tensor("token_embd.weight", &[6, HIDDEN], GGML_F32, embd);
    let dir = TempDir::new("hostile-vocab");
    let files = ModelFiles::open(&tiny.write(&dir)).unwrap();
    assert_eq!(files.config().unwrap().vocab_size, 6);
    let t0 = Instant::now();
    let err = load_tokenizer(&files).expect_err("8 token ids for 6 rows");
    assert_names("vocab 8 > 6", &err, t0, &["8 token ids", "vocabulary of 6"]);
}

#[test]
fn hf_special_tokens_missing_from_the_vocabulary_are_refused() {
    let dir = hf_copy("arch/tiny-mistral", |_| {});
    let files = ModelFiles::open(&dir.0).unwrap();
    load_tokenizer(&files)
        .unwrap()
        .expect("the fixture has a tokenizer");
    for key in ["bos_token", "eos_token"] {
        let config = serde_json::json!({ key: "</s>" }).to_string();
        dir.write("tokenizer_config.json", config.as_bytes());
        let t0 = Instant::now();
        let err = load_tokenizer(&files).expect_err(key);
        assert_names(key, &err, t0, &[key, "</s>", "tokenizer_config.json"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Hugging Face config.json

/// A copy of fixture directory `name` (under the fixtures root) with its config.json edited
/// by `edit`.
fn hf_copy(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> TempDir {
    let src = common::fixtures().join(name);
    let dir = TempDir::new("hostile-hf");
    let mut config = common::read_json(&src.join("config.json"));
    edit(&mut config);
    dir.write("config.json", config.to_string().as_bytes());
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if file != "config.json" && file != "golden.json" {
            dir.write(&file, &std::fs::read(&path).unwrap());
        }
    }
    dir
}

fn assert_hf_refused(what: &str, dir: &TempDir, fragments: &[&str]) {
    let t0 = Instant::now();
    let files = ModelFiles::open(&dir.0).unwrap();
    let err = files.config().expect_err(what);
    assert!(matches!(err, LoadError::Config { .. }), "{what}: {err:?}");
    assert_names(what, &err, t0, fragments);
}

#[test]
fn hf_max_position_embeddings_2_pow_40_is_refused() {
    let dir = hf_copy("tiny-llama-gqa-public", |c| {
        c["max_position_embeddings"] = (1u64 << 40).into()
    });
    assert_hf_refused("2^40 positions", &dir, &["max_position_embeddings"]);
    let dir = hf_copy("tiny-gpt2-public", |c| {
        c["n_positions"] = (1u64 << 40).into()
    });
    assert_hf_refused("gpt2 2^40 positions", &dir, &["n_positions"]);
}

#[test]
fn hf_num_hidden_layers_must_match_the_layers_present() {
    let dir = hf_copy("tiny-llama-gqa-public", |c| {
        c["num_hidden_layers"] = 4.into()
    });
    assert_hf_refused(
        "4 of 3 layers",
        &dir,
        &["num_hidden_layers", "model.layers.N"],
    );
    let dir = hf_copy("tiny-llama-gqa-public", |c| c["hidden_size"] = 128.into());
    assert_hf_refused(
        "hidden 128",
        &dir,
        &["hidden_size", "model.embed_tokens.weight"],
    );
    let dir = hf_copy("tiny-gpt2-public", |c| c["n_layer"] = 7.into());
    assert_hf_refused("gpt2 layers", &dir, &["n_layer", "h.N"]);
    // The unedited fixtures pass.
    for name in ["tiny-llama-gqa-public", "tiny-gpt2-public"] {
        let dir = hf_copy(name, |_| {});
        ModelFiles::open(&dir.0).unwrap().config().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// A context at the cap runs, with tables sized by the KV pool

#[test]
fn a_context_at_the_cap_loads_with_pool_sized_tables_and_same_logits() {
    let logits_with_context = |context: u32| {
        let tiny = Tiny::new().kv("llama.context_length", MetaValue::U32(context));
        let dir = TempDir::new("hostile-context");
        let mut opts = ModelOptions::new(tiny.write(&dir));
        opts.dtype = WeightDType::F32;
        opts.num_blocks = Some(8); // 128 tokens of KV
        opts.max_batch_tokens = 16;
        opts.max_seqs = 4;
        let t0 = Instant::now();
        let mut g = Generator::load(common::gpu(), &opts, &mut |_, _| {}).unwrap();
        let took = t0.elapsed();
        assert_eq!(g.config().max_context, context as usize);
        let ids: Vec<u32> = (0..40).map(|i| (i * 5 % VOCAB) as u32).collect();
        (g.logits(&ids).unwrap(), took)
    };
    // Before: a (2^22 × 16) f32 RoPE table (256 MiB, past lavapipe's 128 MiB binding)
    // and 2^18 block-table columns per sequence. Now both stop at the pool's 128 tokens.
    let (at_cap, took) = logits_with_context(1 << 22);
    let (small, _) = logits_with_context(64);
    assert!(took < Duration::from_secs(20), "load took {took:?}");
    assert!(at_cap.iter().flatten().all(|v| v.is_finite()));
    assert_eq!(at_cap, small, "the table rows a sequence uses are the same");
}
