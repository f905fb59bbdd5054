//! The `gguf` target: a whole GGUF file. Also a tiny but realistic llama GGUF (the base of
//! tests/gguf_mutation.rs and a seed) and a header re-writer (for seeds from real models).

use wllm::loader::gguf::GgufFile;
use wllm::loader::{MetaValue, TensorSource};
use wllm::model::ModelConfig;
use wllm::tokenizer::Tokenizer;

use super::{
    BuiltGguf, GgufBuilder, MAX_DEQUANT_ELEMS, SAMPLE_TEXT, Scratch, exercise_tokenizer, str_value,
};

/// A GGUF file: header, metadata, tensor table ([`GgufFile::open`]), every tensor's bytes
/// (small ones dequantized), [`ModelConfig::from_gguf`], and the tokenizer built from the
/// metadata with a short encode / decode.
pub fn gguf(data: &[u8]) -> Result<(), String> {
    let dir = Scratch::new("gguf");
    let path = dir.write("model.gguf", data);
    let file = GgufFile::open(&path).map_err(|e| format!("open: {e}"))?;
    check_gguf_tensors(&file);
    let config = ModelConfig::from_gguf(&file);
    if let Ok(c) = &config {
        // What the engine derives first; these must not overflow for an accepted config.
        let _ = (c.kv_dim(), c.q_dim());
    }
    let tok = Tokenizer::from_gguf_metadata(&file.metadata);
    if let Ok(t) = &tok {
        exercise_tokenizer(t, &[SAMPLE_TEXT], &[]);
    }
    config.map_err(|e| format!("config: {e}"))?;
    tok.map_err(|e| format!("tokenizer: {e}"))?;
    Ok(())
}

/// Every tensor of an opened GGUF must be readable, and small ones dequantize to numel values.
fn check_gguf_tensors(file: &GgufFile) {
    let mut budget = MAX_DEQUANT_ELEMS;
    for info in &file.tensors {
        let bytes = file.tensor_bytes(&info.name).unwrap_or_else(|e| {
            panic!(
                "tensor `{}` accepted by open but unreadable: {e}",
                info.name
            )
        });
        assert_eq!(bytes.len(), info.size, "tensor `{}`", info.name);
        let numel = info.numel();
        if numel <= budget && info.size <= budget {
            budget -= numel.max(info.size);
            let t = file.tensor(&info.name).expect("tensor after tensor_bytes");
            let v = t.to_f32().expect("dequantizing a tensor accepted by open");
            assert_eq!(v.len(), numel, "tensor `{}`", info.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny, realistic llama GGUF

/// SmolLM2-Instruct's chat template (ChatML), as its GGUF stores it.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A byte-level BPE vocabulary: 3 control tokens, the 256 byte characters, and a few merges.
pub fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3, 3, 3];
    for b in 0..=255u8 {
        tokens.push(wllm::tokenizer::gguf_vocab::byte_to_byte_level_char(b).to_string());
        types.push(1);
    }
    let mut merges = Vec::new();
    for (a, b) in [
        ("Ġ", "t"),
        ("h", "e"),
        ("Ġt", "he"),
        ("i", "n"),
        ("Ġ", "a"),
        ("e", "r"),
        ("o", "n"),
        ("l", "l"),
        ("He", "ll"),
        ("Hell", "o"),
    ] {
        let ab = format!("{a}{b}");
        // "He" and "Hell" come from merges whose parts must exist first.
        for part in [a, b] {
            if !tokens.iter().any(|t| t == part) {
                tokens.push(part.to_string());
                types.push(1);
            }
        }
        merges.push(format!("{a} {b}"));
        tokens.push(ab);
        types.push(1);
    }
    (tokens, types, merges)
}

/// A valid llama GGUF with SmolLM2-like metadata (scaled down), a byte-level BPE vocabulary,
/// the ChatML template, and one layer of tiny tensors in F32, F16, Q8_0, Q4_0 and Q4_1.
pub fn tiny_llama_gguf() -> BuiltGguf {
    let (tokens, types, merges) = tiny_vocab();
    let n_vocab = tokens.len() as u64;
    let hidden = 32u64;
    let ff = 64u64;
    let strs = |v: &[String]| MetaValue::Array(v.iter().map(|s| str_value(s)).collect());
    let mut g = GgufBuilder::new();
    g.kv("general.architecture", str_value("llama"))
        .kv("general.name", str_value("tiny-smollm2"))
        .kv("general.alignment", MetaValue::U32(32))
        .kv("llama.block_count", MetaValue::U32(1))
        .kv("llama.context_length", MetaValue::U32(2048))
        .kv("llama.embedding_length", MetaValue::U32(hidden as u32))
        .kv("llama.feed_forward_length", MetaValue::U32(ff as u32))
        .kv("llama.attention.head_count", MetaValue::U32(4))
        .kv("llama.attention.head_count_kv", MetaValue::U32(2))
        .kv("llama.rope.freq_base", MetaValue::F32(100000.0))
        .kv(
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-5),
        )
        .kv("llama.vocab_size", MetaValue::U32(n_vocab as u32))
        .kv("llama.rope.dimension_count", MetaValue::U32(8))
        .kv("general.file_type", MetaValue::U32(3))
        .kv("tokenizer.ggml.model", str_value("gpt2"))
        .kv("tokenizer.ggml.pre", str_value("smollm"))
        .kv("tokenizer.ggml.tokens", strs(&tokens))
        .kv(
            "tokenizer.ggml.token_type",
            MetaValue::Array(types.iter().map(|&t| MetaValue::I32(t)).collect()),
        )
        .kv("tokenizer.ggml.merges", strs(&merges))
        .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", MetaValue::U32(0))
        .kv("tokenizer.ggml.padding_token_id", MetaValue::U32(2))
        .kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(false))
        .kv("tokenizer.chat_template", str_value(CHATML_TEMPLATE))
        .kv("general.quantization_version", MetaValue::U32(2));
    let f32s = |n: u64| -> Vec<u8> {
        (0..n)
            .flat_map(|i| ((i % 7) as f32 * 0.01 - 0.03).to_le_bytes())
            .collect()
    };
    let f16_ones = |n: u64| -> Vec<u8> { (0..n).flat_map(|_| 0x3c00u16.to_le_bytes()).collect() };
    // Q8_0 / Q4_0 / Q4_1 blocks: scale 1.0 (f16 0x3c00), then quants.
    let blocks = |n_elems: u64, block_bytes: usize, head: &[u8]| -> Vec<u8> {
        let mut v = Vec::new();
        for k in 0..n_elems / 32 {
            v.extend_from_slice(head);
            v.extend((head.len()..block_bytes).map(|i| (i as u64 * 7 + k) as u8));
        }
        v
    };
    g.tensor(
        "token_embd.weight",
        &[n_vocab, hidden],
        1,
        f16_ones(n_vocab * hidden),
    )
    .tensor("output_norm.weight", &[hidden], 0, f32s(hidden))
    .tensor("blk.0.attn_norm.weight", &[hidden], 0, f32s(hidden))
    .tensor("blk.0.ffn_norm.weight", &[hidden], 0, f32s(hidden))
    .tensor(
        "blk.0.attn_q.weight",
        &[hidden, hidden],
        8,
        blocks(hidden * hidden, 34, &[0, 0x3c]),
    )
    .tensor(
        "blk.0.attn_k.weight",
        &[hidden / 2, hidden],
        2,
        blocks(hidden * hidden / 2, 18, &[0, 0x3c]),
    )
    .tensor(
        "blk.0.attn_v.weight",
        &[hidden / 2, hidden],
        3,
        blocks(hidden * hidden / 2, 20, &[0, 0x3c, 0, 0xbc]),
    )
    .tensor(
        "blk.0.attn_output.weight",
        &[hidden, hidden],
        0,
        f32s(hidden * hidden),
    )
    .tensor(
        "blk.0.ffn_gate.weight",
        &[ff, hidden],
        3,
        blocks(ff * hidden, 20, &[0, 0x3c, 0, 0]),
    )
    .tensor(
        "blk.0.ffn_up.weight",
        &[ff, hidden],
        8,
        blocks(ff * hidden, 34, &[0, 0x3c]),
    )
    .tensor(
        "blk.0.ffn_down.weight",
        &[hidden, ff],
        1,
        f16_ones(ff * hidden),
    );
    g.build()
}

/// Re-writes a GGUF's metadata (as parsed) with tiny tensors in place of its weights, optionally
/// cutting the vocabulary to its first `keep_tokens` entries (merges kept only when both parts
/// and their concatenation survive). `header` may be any prefix of the file that holds the whole
/// metadata section: its tensor count is zeroed so that tensor infos are not read.
pub fn rewrite_gguf_header(header: &[u8], keep_tokens: Option<usize>) -> Result<Vec<u8>, String> {
    let mut h = header.to_vec();
    if h.len() < 24 {
        return Err("too short".into());
    }
    h[8..16].copy_from_slice(&0u64.to_le_bytes());
    let dir = Scratch::new("rewrite");
    let path = dir.write("h.gguf", &h);
    let file = GgufFile::open(&path).map_err(|e| e.to_string())?;
    let mut meta = file.metadata.clone();
    if let Some(n) = keep_tokens {
        let tokens: Vec<String> = meta
            .get_str_array("tokenizer.ggml.tokens")
            .map_err(|e| e.to_string())?
            .into_iter()
            .take(n)
            .map(String::from)
            .collect();
        let kept: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
        let merges: Vec<MetaValue> = meta
            .get_str_array("tokenizer.ggml.merges")
            .unwrap_or_default()
            .into_iter()
            .filter(|m| {
                m.split_once(' ').is_some_and(|(a, b)| {
                    kept.contains(a)
                        && kept.contains(b)
                        && kept.contains(format!("{a}{b}").as_str())
                })
            })
            .map(str_value)
            .collect();
        let e = &mut meta.entries;
        if let Some(MetaValue::Array(t)) = e.get_mut("tokenizer.ggml.token_type") {
            t.truncate(n);
        }
        let n_kept = tokens.len();
        e.insert(
            "tokenizer.ggml.tokens".into(),
            MetaValue::Array(tokens.iter().map(|t| str_value(t)).collect()),
        );
        e.insert("tokenizer.ggml.merges".into(), MetaValue::Array(merges));
        for k in [
            "bos",
            "eos",
            "eot",
            "eom",
            "unknown",
            "padding",
            "seperator",
        ] {
            let key = format!("tokenizer.ggml.{k}_token_id");
            if meta.get_u64(&key).is_ok_and(|id| id as usize >= n_kept) {
                meta.entries.remove(&key);
            }
        }
    }
    let mut g = GgufBuilder::new();
    g.metadata_from(&meta);
    g.tensor("token_embd.weight", &[4, 8], 0, vec![0; 4 * 8 * 4])
        .tensor("output_norm.weight", &[8], 0, 1f32.to_le_bytes().repeat(8))
        .tensor("blk.0.attn_q.weight", &[1, 32], 2, vec![0x11; 18])
        .tensor("blk.0.ffn_up.weight", &[1, 32], 3, vec![0x22; 20])
        .tensor("blk.0.ffn_down.weight", &[1, 32], 8, vec![0x33; 34])
        .tensor("blk.0.attn_k.weight", &[2, 4], 1, vec![0; 16]);
    Ok(g.build().bytes)
}
