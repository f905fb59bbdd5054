//! Shared harness for the `cargo fuzz` targets in `fuzz/` and the normal-suite tests that replay
//! their findings (`tests/fuzz_regressions.rs`) or mutate GGUF headers (`tests/gguf_mutation.rs`).
//!
//! The fuzz crate includes this file with `#[path = "../../tests/fuzz_entry/mod.rs"]`, the tests
//! with `mod fuzz_entry;`, so the entry code a fuzz run exercised is exactly the code a
//! regression test replays. It depends on `wllm` and `std` only.
//!
//! Every entry function takes the raw fuzz input and returns `Ok(())` or `Err(clean error
//! text)`. A panic, an abort (allocation failure) or a hang is a finding. Entries stop at what a
//! model load does on the CPU before any GPU work: GGUF / safetensors headers, the model
//! configuration, the tokenizer, the chat template.
//!
//! Besides the entries: a small GGUF writer that records where every length / count / type tag
//! sits (for targeted mutation), a tiny but realistic llama GGUF, a counting allocator, and
//! scratch files under `/dev/shm`.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use wllm::loader::gguf::GgufFile;
use wllm::loader::hf::HfModelDir;
use wllm::loader::{GgufMetadata, MetaValue, TensorSource};
use wllm::model::ModelConfig;
use wllm::tokenizer::{ChatMessage, Tokenizer};

/// One fuzz target's entry: the raw input in, `Ok` or a clean error out.
pub type Entry = fn(&[u8]) -> Result<(), String>;

/// Every fuzz target, by the name of its `fuzz/fuzz_targets/<name>.rs` and of its regression
/// folder `tests/fixtures/fuzz-regressions/<name>/`.
pub const TARGETS: &[(&str, Entry)] = &[
    ("gguf", gguf),
    ("gguf_vocab", gguf_vocab),
    ("hf", hf),
    ("chat_template", chat_template),
];

/// Whether `WLLM_FUZZ_VERBOSE` is set (the fuzz targets then print each result).
pub fn verbose() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var_os("WLLM_FUZZ_VERBOSE").is_some())
}

pub fn entry(target: &str) -> Option<Entry> {
    TARGETS.iter().find(|(n, _)| *n == target).map(|(_, f)| *f)
}

/// Tensors whose data the GGUF / HF entries read and dequantize, at most this many elements
/// (and bytes) in all per input.
const MAX_DEQUANT_ELEMS: usize = 1 << 20;
/// Texts longer than this are cut before encoding (encoding cost is not what is fuzzed).
const MAX_TEXT: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Entries

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

/// The GGUF tokenizer builder. Input: a GGUF file (starts with `GGUF`; only its metadata is
/// used), or the line format of [`vocab_from_lines`], which reaches the builder without the
/// binary framing. Then encode / decode / stream-detokenize a few short strings.
pub fn gguf_vocab(data: &[u8]) -> Result<(), String> {
    let (meta, texts, ids) = if data.starts_with(b"GGUF") {
        let dir = Scratch::new("vocab");
        let path = dir.write("vocab.gguf", data);
        let file = GgufFile::open(&path).map_err(|e| format!("open: {e}"))?;
        (file.metadata, vec![SAMPLE_TEXT.to_string()], Vec::new())
    } else {
        let v = vocab_from_lines(data);
        (v.meta, v.texts, v.ids)
    };
    let tok = Tokenizer::from_gguf_metadata(&meta).map_err(|e| format!("tokenizer: {e}"))?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    exercise_tokenizer(&tok, &texts, &ids);
    Ok(())
}

/// A Hugging Face directory: `config.json`, then either one `model.safetensors` or
/// `model.safetensors.index.json` plus shards. Input: the files joined by [`HF_SEPARATOR`]:
/// `config ␞ index ␞ shard1 ␞ shard2 …`. An empty (or missing) index part means a single
/// `model.safetensors` (the first shard part, or an empty safetensors file when there is none);
/// otherwise shard `i` is written as `model-0000i-of-0000n.safetensors`.
/// Runs [`HfModelDir::open`], every tensor's bytes (small ones widened to f32),
/// [`ModelConfig::from_hf`].
pub fn hf(data: &[u8]) -> Result<(), String> {
    let parts = split_hf(data);
    let dir = Scratch::new("hf");
    dir.write("config.json", parts.first().copied().unwrap_or(b""));
    let index = parts.get(1).copied().unwrap_or(b"");
    let shards = parts.get(2..).unwrap_or(&[]);
    if index.is_empty() {
        let empty = empty_safetensors();
        dir.write(
            "model.safetensors",
            shards.first().copied().unwrap_or(&empty),
        );
    } else {
        dir.write("model.safetensors.index.json", index);
        for (i, s) in shards.iter().enumerate() {
            dir.write(&shard_name(i, shards.len()), s);
        }
    }
    let model = HfModelDir::open(&dir.0).map_err(|e| format!("open: {e}"))?;
    let mut budget = MAX_DEQUANT_ELEMS;
    for info in model.tensor_infos() {
        let numel = info.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        match model.tensor_bytes(&info.name) {
            Ok((dtype, bytes)) => {
                let numel = numel.unwrap_or_else(|| {
                    panic!("tensor `{}` accepted with an overflowing shape", info.name)
                });
                assert_eq!(
                    dtype.bytes_for(numel),
                    Some(bytes.len()),
                    "tensor `{}`: {} bytes for {numel} {dtype:?} elements",
                    info.name,
                    bytes.len()
                );
                if numel <= budget {
                    budget -= numel;
                    let t = model.tensor(&info.name).expect("tensor after tensor_bytes");
                    let v = t.to_f32().expect("to_f32 of a tensor of the right size");
                    assert_eq!(v.len(), numel);
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let config = ModelConfig::from_hf(&model).map_err(|e| format!("config: {e}"))?;
    let _ = (config.kv_dim(), config.q_dim());
    Ok(())
}

/// A chat template (the whole input, if it is UTF-8) rendered with a fixed conversation through
/// the project's renderer, with and without the generation prompt.
pub fn chat_template(data: &[u8]) -> Result<(), String> {
    let Ok(template) = std::str::from_utf8(data) else {
        return Ok(());
    };
    let messages = [
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("What is the capital of France?"),
        ChatMessage::assistant("Paris."),
        ChatMessage::user("And of Italy? {{ not a template }} <|im_end|>"),
    ];
    wllm::tokenizer::chat::render_template(
        template,
        &messages,
        true,
        Some("<|im_start|>"),
        Some("<|im_end|>"),
    )
    .map_err(|e| format!("render: {e}"))?;
    Ok(())
}

pub const SAMPLE_TEXT: &str =
    "Hello, world! It's 2024: café 你好 😀\n\t<|im_start|>user\nhi<|im_end|> <|endoftext|>";

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

/// Encode each text (cut to [`MAX_TEXT`]), decode the ids back, stream them through the
/// detokenizer, and decode / look up the given ids; errors are fine, panics are not.
fn exercise_tokenizer(t: &Tokenizer, texts: &[&str], ids: &[u32]) {
    let _ = (
        t.vocab_size(),
        t.bos_token(),
        t.eos_token(),
        t.stop_token_ids(),
    );
    for text in texts {
        let text = cut(text, MAX_TEXT);
        if let Ok(enc) = t.encode(text) {
            let _ = t.decode(&enc);
            let mut d = t.detokenizer();
            for &id in &enc {
                let _ = d.push(id);
            }
            let _ = d.finish();
        }
        let _ = t.encode_raw(text);
    }
    let _ = t.decode(ids);
    let mut d = t.detokenizer();
    for &id in ids {
        let _ = t.token_text(id);
        let _ = t.token_bytes(id);
        let _ = t.is_stop_token(id);
        let _ = d.push(id);
    }
    let _ = d.finish();
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---------------------------------------------------------------------------------------------
// The line format of the vocabulary target

/// Tokenizer metadata described as text, one item per line (unknown lines are ignored):
/// - `t<D> <text>`: next token, `token_type` D (a digit; `t <text>` is type 1);
/// - `m <a b>`: next merge;
/// - `model=…`, `pre=…`, `template=…` (strings), `bos=`, `eos=`, `eot=`, `eom=` (integers, or a
///   string value when not a number), `add_bos=0|1`;
/// - `notypes` / `nomerges` / `notokens`: leave that key out;
/// - `kv <key> <u32|u64|i32|i64|f32|f64|bool|str|strs|ints> <value>`: any key, any type
///   (`strs` / `ints`: comma-separated);
/// - `text=…`: a string to encode (several allowed), `ids=1,2,3`: ids to decode.
///
/// In texts and tokens `\n`, `\t`, `\\` and `\xHH` (a byte, UTF-8 decoded lossily) are escapes.
pub struct LineVocab {
    pub meta: GgufMetadata,
    pub texts: Vec<String>,
    pub ids: Vec<u32>,
}

pub fn vocab_from_lines(data: &[u8]) -> LineVocab {
    let src = String::from_utf8_lossy(data);
    let (mut tokens, mut types, mut merges) = (Vec::new(), Vec::new(), Vec::new());
    let (mut texts, mut ids) = (Vec::new(), Vec::new());
    let (mut no_types, mut no_merges, mut no_tokens) = (false, false, false);
    let mut e = std::collections::BTreeMap::new();
    e.insert("tokenizer.ggml.model".to_string(), str_value("gpt2"));
    let int_or_str = |v: &str| match v.trim().parse::<i64>() {
        Ok(n) if n >= 0 => uint_value(n as u64),
        Ok(n) => MetaValue::I64(n),
        Err(_) => str_value(v),
    };
    for line in src.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(rest) = line.strip_prefix('t') {
            let mut chars = rest.chars();
            let (ty, text) = match chars.next() {
                Some(' ') => (1, chars.as_str()),
                Some(d) if d.is_ascii_digit() => match chars.as_str().strip_prefix(' ') {
                    Some(text) => (d as i32 - '0' as i32, text),
                    None => continue,
                },
                _ => continue,
            };
            tokens.push(unescape(text));
            types.push(ty);
        } else if let Some(m) = line.strip_prefix("m ") {
            merges.push(unescape(m));
        } else if let Some((k, v)) = line.split_once('=') {
            let key = |s: &str| format!("tokenizer.ggml.{s}");
            match k {
                "model" | "pre" => {
                    e.insert(key(k), str_value(v));
                }
                "template" => {
                    e.insert("tokenizer.chat_template".into(), str_value(&unescape(v)));
                }
                "bos" | "eos" | "eot" | "eom" => {
                    e.insert(key(&format!("{k}_token_id")), int_or_str(v));
                }
                "add_bos" => {
                    e.insert(key("add_bos_token"), MetaValue::Bool(v.trim() == "1"));
                }
                "text" => texts.push(unescape(v)),
                "ids" => ids.extend(v.split(',').filter_map(|n| n.trim().parse::<u32>().ok())),
                _ => {}
            }
        } else if line == "notypes" {
            no_types = true;
        } else if line == "nomerges" {
            no_merges = true;
        } else if line == "notokens" {
            no_tokens = true;
        } else if let Some(rest) = line.strip_prefix("kv ") {
            let mut it = rest.splitn(3, ' ');
            let (Some(k), Some(ty), v) = (it.next(), it.next(), it.next().unwrap_or("")) else {
                continue;
            };
            let num = || v.trim().parse::<f64>().unwrap_or(f64::NAN);
            let value = match ty {
                "u32" => MetaValue::U32(v.trim().parse().unwrap_or(u32::MAX)),
                "u64" => MetaValue::U64(v.trim().parse().unwrap_or(u64::MAX)),
                "i32" => MetaValue::I32(v.trim().parse().unwrap_or(i32::MIN)),
                "i64" => MetaValue::I64(v.trim().parse().unwrap_or(i64::MIN)),
                "f32" => MetaValue::F32(num() as f32),
                "f64" => MetaValue::F64(num()),
                "bool" => MetaValue::Bool(v.trim() == "true"),
                "strs" => MetaValue::Array(v.split(',').map(|s| str_value(&unescape(s))).collect()),
                "ints" => MetaValue::Array(
                    v.split(',')
                        .map(|s| MetaValue::I64(s.trim().parse().unwrap_or(-1)))
                        .collect(),
                ),
                _ => str_value(&unescape(v)),
            };
            e.insert(k.to_string(), value);
        }
    }
    if !no_tokens {
        e.entry("tokenizer.ggml.tokens".into())
            .or_insert_with(|| MetaValue::Array(tokens.iter().map(|t| str_value(t)).collect()));
    }
    if !no_types {
        e.entry("tokenizer.ggml.token_type".into())
            .or_insert_with(|| MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()));
    }
    if !no_merges {
        e.entry("tokenizer.ggml.merges".into())
            .or_insert_with(|| MetaValue::Array(merges.iter().map(|m| str_value(m)).collect()));
    }
    if texts.is_empty() {
        texts.push(SAMPLE_TEXT.to_string());
    }
    LineVocab {
        meta: GgufMetadata { entries: e },
        texts,
        ids,
    }
}

/// The inverse of [`vocab_from_lines`] for the tokenizer keys (used to write seeds).
pub fn vocab_to_lines(meta: &GgufMetadata, texts: &[&str]) -> String {
    let mut out = String::new();
    let s = |k: &str| meta.get_str(k).ok();
    for (k, key) in [
        ("model", "tokenizer.ggml.model"),
        ("pre", "tokenizer.ggml.pre"),
    ] {
        if let Some(v) = s(key) {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    for k in ["bos", "eos", "eot", "eom"] {
        if let Ok(v) = meta.get_u64(&format!("tokenizer.ggml.{k}_token_id")) {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    if let Ok(b) = meta.get_bool("tokenizer.ggml.add_bos_token") {
        out.push_str(&format!("add_bos={}\n", b as u8));
    }
    if let Some(t) = s("tokenizer.chat_template") {
        out.push_str(&format!("template={}\n", escape(t)));
    }
    let tokens = meta
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap_or_default();
    let types = meta
        .get_i64_array("tokenizer.ggml.token_type")
        .unwrap_or_default();
    for (i, t) in tokens.iter().enumerate() {
        match types.get(i) {
            Some(&d @ 0..=9) => out.push_str(&format!("t{d} {}\n", escape(t))),
            _ => out.push_str(&format!("t {}\n", escape(t))),
        }
    }
    for m in meta
        .get_str_array("tokenizer.ggml.merges")
        .unwrap_or_default()
    {
        out.push_str(&format!("m {}\n", escape(m)));
    }
    for t in texts {
        out.push_str(&format!("text={}\n", escape(t)));
    }
    out
}

fn str_value(s: &str) -> MetaValue {
    MetaValue::String(s.to_string())
}

/// `U32` when `v` fits, else `U64` (as converters write ids).
fn uint_value(v: u64) -> MetaValue {
    match u32::try_from(v) {
        Ok(v) => MetaValue::U32(v),
        Err(_) => MetaValue::U64(v),
    }
}

fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut bytes = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'n' => {
                    bytes.push(b'\n');
                    i += 2;
                    continue;
                }
                b't' => {
                    bytes.push(b'\t');
                    i += 2;
                    continue;
                }
                b'\\' => {
                    bytes.push(b'\\');
                    i += 2;
                    continue;
                }
                b'x' if i + 4 <= b.len() => {
                    if let Some(v) = std::str::from_utf8(&b[i + 2..i + 4])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        bytes.push(v);
                        i += 4;
                        continue;
                    }
                }
                _ => {}
            }
        }
        bytes.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\x0d"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The HF directory framing

/// Separates the files of one `hf` input.
pub const HF_SEPARATOR: &[u8] = b"\n--8<--\n";

fn split_hf(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    // config, index, and at most four shards.
    while parts.len() < 5 {
        match find(rest, HF_SEPARATOR) {
            Some(at) => {
                parts.push(&rest[..at]);
                rest = &rest[at + HF_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

/// Joins HF files into one `hf` input (for seeds).
pub fn join_hf(config: &[u8], index: &[u8], shards: &[&[u8]]) -> Vec<u8> {
    let mut out = config.to_vec();
    if index.is_empty() && shards.is_empty() {
        return out;
    }
    out.extend_from_slice(HF_SEPARATOR);
    out.extend_from_slice(index);
    for s in shards {
        out.extend_from_slice(HF_SEPARATOR);
        out.extend_from_slice(s);
    }
    out
}

pub fn empty_safetensors() -> Vec<u8> {
    safetensors_bytes(&[])
}

/// A safetensors file: `(name, dtype, shape, data)`; the header lists tensors in order with
/// contiguous offsets.
pub fn safetensors_bytes(tensors: &[(&str, &str, &[usize], &[u8])]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut off = 0usize;
    for (i, (name, dtype, shape, data)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
            shape.join(","),
            off + data.len()
        ));
        off += data.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Scratch files

/// A fresh directory under `/dev/shm` (or the temp dir), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = base.join(format!("wllm-fuzz-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a scratch directory");
        Scratch(p)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("writing a scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// A GGUF writer that remembers where each field sits

/// What a recorded header field holds (for targeted mutations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `u32` version.
    Version,
    /// `u64` tensor count / metadata entry count.
    HeaderCount,
    /// `u64` length of a key, string value or tensor name.
    StrLen,
    /// `u32` value type of a metadata entry, or element type of an array.
    TypeTag,
    /// `u64` element count of an array.
    ArrayCount,
    /// A scalar integer value (`width` bytes) of a metadata entry.
    IntValue,
    /// A float value (`width` bytes) of a metadata entry.
    FloatValue,
    /// `u32` n_dims of a tensor.
    NDims,
    /// `u64` dimension of a tensor.
    Dim,
    /// `u32` ggml type of a tensor.
    GgmlType,
    /// `u64` data offset of a tensor.
    Offset,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub pos: usize,
    /// 1, 2, 4 or 8 bytes, little endian.
    pub width: usize,
    pub kind: FieldKind,
    /// The metadata key or tensor name the field belongs to.
    pub owner: String,
}

/// A GGUF file as written, with its field map and section offsets.
#[derive(Debug, Clone)]
pub struct BuiltGguf {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
    pub tensor_infos_start: usize,
    pub data_start: usize,
}

#[derive(Debug, Clone, Default)]
pub struct GgufBuilder {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, MetaValue)>,
    /// Name, row-major shape (outermost first), ggml type id, data.
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

pub fn value_type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

impl GgufBuilder {
    pub fn new() -> Self {
        GgufBuilder {
            version: 3,
            alignment: 32,
            ..Default::default()
        }
    }

    pub fn kv(&mut self, k: &str, v: MetaValue) -> &mut Self {
        if k == "general.alignment" {
            if let Some(a) = v.as_u64() {
                self.alignment = a;
            }
        }
        self.kvs.push((k.to_string(), v));
        self
    }

    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[u64],
        ggml_type: u32,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors
            .push((name.to_string(), shape.to_vec(), ggml_type, data));
        self
    }

    /// Every metadata entry of an opened file, in key order.
    pub fn metadata_from(&mut self, meta: &GgufMetadata) -> &mut Self {
        for (k, v) in &meta.entries {
            self.kv(k, v.clone());
        }
        self
    }

    pub fn build(&self) -> BuiltGguf {
        let mut w = W {
            b: b"GGUF".to_vec(),
            fields: Vec::new(),
        };
        w.field(FieldKind::Version, "", &self.version.to_le_bytes());
        w.field(
            FieldKind::HeaderCount,
            "",
            &(self.tensors.len() as u64).to_le_bytes(),
        );
        w.field(
            FieldKind::HeaderCount,
            "",
            &(self.kvs.len() as u64).to_le_bytes(),
        );
        for (k, v) in &self.kvs {
            w.string(k, k);
            w.field(FieldKind::TypeTag, k, &value_type_id(v).to_le_bytes());
            w.payload(k, v);
        }
        let tensor_infos_start = w.b.len();
        let align = self.alignment.max(1);
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, shape, ty, data) in &self.tensors {
            w.string(name, name);
            w.field(FieldKind::NDims, name, &(shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                w.field(FieldKind::Dim, name, &d.to_le_bytes());
            }
            w.field(FieldKind::GgmlType, name, &ty.to_le_bytes());
            w.field(FieldKind::Offset, name, &offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).next_multiple_of(align);
        }
        let mut b = w.b;
        b.resize(b.len().next_multiple_of(align as usize), 0);
        let data_start = b.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            b.resize(data_start + off as usize, 0);
            b.extend_from_slice(data);
        }
        BuiltGguf {
            bytes: b,
            fields: w.fields,
            tensor_infos_start,
            data_start,
        }
    }
}

struct W {
    b: Vec<u8>,
    fields: Vec<Field>,
}

impl W {
    fn field(&mut self, kind: FieldKind, owner: &str, bytes: &[u8]) {
        self.fields.push(Field {
            pos: self.b.len(),
            width: bytes.len(),
            kind,
            owner: owner.to_string(),
        });
        self.b.extend_from_slice(bytes);
    }

    fn string(&mut self, owner: &str, s: &str) {
        self.field(FieldKind::StrLen, owner, &(s.len() as u64).to_le_bytes());
        self.b.extend_from_slice(s.as_bytes());
    }

    fn payload(&mut self, owner: &str, v: &MetaValue) {
        use FieldKind::{FloatValue as F, IntValue as I};
        match v {
            MetaValue::U8(x) => self.field(I, owner, &[*x]),
            MetaValue::I8(x) => self.field(I, owner, &[*x as u8]),
            MetaValue::U16(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::I16(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::U32(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::I32(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::F32(x) => self.field(F, owner, &x.to_le_bytes()),
            MetaValue::Bool(x) => self.field(I, owner, &[*x as u8]),
            MetaValue::String(s) => self.string(owner, s),
            MetaValue::Array(items) => {
                let elem = items.first().map_or(8, value_type_id);
                self.field(FieldKind::TypeTag, owner, &elem.to_le_bytes());
                self.field(
                    FieldKind::ArrayCount,
                    owner,
                    &(items.len() as u64).to_le_bytes(),
                );
                for it in items {
                    self.payload(owner, it);
                }
            }
            MetaValue::U64(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::I64(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::F64(x) => self.field(F, owner, &x.to_le_bytes()),
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

// ---------------------------------------------------------------------------------------------
// A counting (and optionally limiting) allocator

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LIMIT_ONE: AtomicUsize = AtomicUsize::new(usize::MAX);
static LIMIT_TOTAL: AtomicUsize = AtomicUsize::new(usize::MAX);
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Wraps [`System`], tracking live and peak bytes. With [`set_limits`], a request larger than
/// the single-allocation limit, or one that would take the live total past the total limit,
/// gets a null pointer: the process then aborts with "memory allocation of N bytes failed",
/// like libFuzzer's `-malloc_limit_mb` / `-rss_limit_mb`.
pub struct CountingAlloc;

fn admit(size: usize) -> bool {
    if size > LIMIT_ONE.load(Ordering::Relaxed) {
        REFUSED.store(true, Ordering::Relaxed);
        return false;
    }
    let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
    if now > LIMIT_TOTAL.load(Ordering::Relaxed) {
        CURRENT.fetch_sub(size, Ordering::Relaxed);
        REFUSED.store(true, Ordering::Relaxed);
        return false;
    }
    PEAK.fetch_max(now, Ordering::Relaxed);
    true
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old
            && (new_size > LIMIT_ONE.load(Ordering::Relaxed) || !admit(new_size - old))
        {
            REFUSED.store(true, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > old {
                CURRENT.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            CURRENT.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}

/// Live heap bytes (only meaningful where [`CountingAlloc`] is the global allocator).
pub fn live_bytes() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Resets the peak to the live bytes and returns them (the baseline of a measurement).
pub fn reset_peak() -> usize {
    let now = CURRENT.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Limits for [`CountingAlloc`] (`usize::MAX` = none).
pub fn set_limits(one: usize, total: usize) {
    LIMIT_ONE.store(one, Ordering::Relaxed);
    LIMIT_TOTAL.store(total, Ordering::Relaxed);
}
