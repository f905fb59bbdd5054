//! The `gguf_vocab` target: the GGUF tokenizer builder, from a GGUF file or a line format.

use wllm::loader::gguf::GgufFile;
use wllm::loader::{GgufMetadata, MetaValue};
use wllm::tokenizer::Tokenizer;

use super::{SAMPLE_TEXT, Scratch, exercise_tokenizer, str_value};

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
