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
//! configuration, the tokenizer, the chat template. Each target's entry is in the file of its
//! name here, with the input framing and seed helpers that belong to it.
//!
//! Besides the entries: the GGUF writer of the loader tests (tests/common/gguf_writer.rs), which
//! records where every length / count / type tag sits (for targeted mutation), a tiny but
//! realistic llama GGUF (gguf.rs), a counting allocator (counting_alloc.rs), and scratch files
//! under `/dev/shm`.

#![allow(dead_code)]

mod chat_template;
mod counting_alloc;
mod gguf;
mod gguf_vocab;
#[path = "../common/gguf_writer.rs"]
mod gguf_writer;
mod hf;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use wllm::loader::MetaValue;
use wllm::tokenizer::Tokenizer;

// The harness's API, flat; each test binary and fuzz target uses a part of it.
#[allow(unused_imports)]
pub use {
    chat_template::chat_template,
    counting_alloc::{CountingAlloc, live_bytes, peak_bytes, reset_peak, set_limits},
    gguf::{CHATML_TEMPLATE, gguf, rewrite_gguf_header, tiny_llama_gguf, tiny_vocab},
    gguf_vocab::{LineVocab, gguf_vocab, vocab_from_lines, vocab_to_lines},
    gguf_writer::{BuiltGguf, Field, FieldKind, GgufBuilder},
    hf::{HF_SEPARATOR, empty_safetensors, hf, join_hf, safetensors_bytes, shard_name},
};

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

pub const SAMPLE_TEXT: &str =
    "Hello, world! It's 2024: café 你好 😀\n\t<|im_start|>user\nhi<|im_end|> <|endoftext|>";

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

fn str_value(s: &str) -> MetaValue {
    MetaValue::String(s.to_string())
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
