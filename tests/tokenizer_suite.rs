//! llama.cpp's own tokenizer test suite (`models/ggml-vocab-*.gguf` with `.inp`/`.out` cases,
//! fetched by `scripts/fetch_tokenizer_suite.sh`): every case of every vocabulary must encode to
//! exactly llama.cpp's ids, and the expected ids must decode back to the input text.
//!
//! The cases are what `tests/test-tokenizer-0.cpp` checks: `common_tokenize(ctx, text,
//! add_special = false, parse_special = false)` — no BOS, control-token text is plain text,
//! user-defined tokens still match — which is [`Tokenizer::encode_plain`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use wllm::loader::gguf::GgufFile;
use wllm::tokenizer::{Tokenizer, TokenizerError};

const SUITE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tokenizer-suite");
/// test-tokenizer-0.cpp's case separator in `.inp` files.
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

/// Vocabularies with test cases. Every one must pass every case.
const VOCABS: &[&str] = &[
    "llama-spm",
    "phi-3",
    "gemma-4",
    "llama-bpe",
    "qwen2",
    "qwen35",
    "gpt-2",
    "starcoder",
    "refact",
    "falcon",
    "deepseek-coder",
    "deepseek-llm",
    "command-r",
    "mpt",
    "bert-bge",
];

/// Vocabularies the suite ships without cases: each must load, or be refused as unsupported.
const VOCABS_WITHOUT_CASES: &[&str] = &["aquila", "baichuan", "gpt-neox", "nomic-bert-moe"];

struct Case {
    text: String,
    ids: Vec<u32>,
}

/// One vocabulary's results.
struct Report {
    name: &'static str,
    model: String,
    pre: String,
    passed: usize,
    total: usize,
    /// Cases whose expected ids do not decode to the input text.
    decode_failures: usize,
    /// Cases whose streamed text differs from `decode`.
    stream_failures: usize,
    /// Why the vocabulary could not be loaded, if it could not.
    load_error: Option<String>,
    /// Opening the GGUF and building the tokenizer; running every case.
    load_time: std::time::Duration,
    run_time: std::time::Duration,
    details: Vec<String>,
}

impl Report {
    fn ok(&self) -> bool {
        self.load_error.is_none()
            && self.passed == self.total
            && self.decode_failures == 0
            && self.stream_failures == 0
    }
}

fn suite_dir() -> &'static Path {
    let dir = Path::new(SUITE_DIR);
    assert!(
        dir.join("ggml-vocab-llama-spm.gguf.inp").is_file(),
        "llama.cpp's tokenizer suite is missing from {SUITE_DIR}: run scripts/fetch_tokenizer_suite.sh \
         (scripts/setup.sh runs it)"
    );
    dir
}

fn vocab_path(name: &str) -> PathBuf {
    suite_dir().join(format!("ggml-vocab-{name}.gguf"))
}

/// test-tokenizer-0.cpp's reader: `.inp` cases split at the separator (a trailing separator
/// ends the last case), `.out` one line of space-separated ids per case.
fn read_cases(name: &str) -> Vec<Case> {
    let gguf = vocab_path(name);
    let read = |ext: &str| {
        let p = PathBuf::from(format!("{}.{ext}", gguf.display()));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    };
    let inp = read("inp");
    let out = read("out");
    let mut texts = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.find(SEPARATOR) {
            Some(at) => {
                texts.push(rest[..at].to_string());
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => {
                texts.push(rest.to_string());
                rest = "";
            }
        }
    }
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        texts.len(),
        lines.len(),
        "{name}: .inp and .out case counts differ"
    );
    texts
        .into_iter()
        .zip(lines)
        .map(|(text, line)| Case {
            text,
            ids: line
                .split_whitespace()
                .map(|t| {
                    t.parse()
                        .unwrap_or_else(|e| panic!("{name}: id {t:?}: {e}"))
                })
                .collect(),
        })
        .collect()
}

fn load(name: &str) -> (GgufFile, Result<Tokenizer, TokenizerError>) {
    let path = vocab_path(name);
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let tok = Tokenizer::from_gguf_metadata(&file.metadata);
    (file, tok)
}

fn stream(t: &Tokenizer, ids: &[u32]) -> Result<String, TokenizerError> {
    let mut d = t.detokenizer();
    let mut text = String::new();
    for &id in ids {
        text.push_str(&d.push(id)?);
    }
    text.push_str(&d.finish()?);
    Ok(text)
}

fn run_vocab(name: &'static str) -> Report {
    let cases = read_cases(name);
    let start = std::time::Instant::now();
    let (file, tok) = load(name);
    let load_time = start.elapsed();
    let meta = &file.metadata;
    let model = meta
        .get_str("tokenizer.ggml.model")
        .unwrap_or("?")
        .to_string();
    let pre = meta
        .get_str("tokenizer.ggml.pre")
        .unwrap_or("-")
        .to_string();
    let mut r = Report {
        name,
        model,
        pre,
        passed: 0,
        total: cases.len(),
        decode_failures: 0,
        stream_failures: 0,
        load_error: None,
        load_time,
        run_time: std::time::Duration::ZERO,
        details: Vec::new(),
    };
    let start = std::time::Instant::now();
    let t = match tok {
        Ok(t) => t,
        Err(e) => {
            r.load_error = Some(e.to_string());
            return r;
        }
    };
    // WordPiece lowercases, strips accents and drops spacing: its ids do not spell the text.
    let lossless = r.model != "bert";
    for c in &cases {
        match t.encode_plain(&c.text) {
            Ok(ids) if ids == c.ids => r.passed += 1,
            Ok(ids) => r.details.push(format!(
                "encode {:?}\n      want {:?}\n      got  {:?}",
                c.text, c.ids, ids
            )),
            Err(e) => r.details.push(format!("encode {:?}: {e}", c.text)),
        }
        let decoded = t.decode(&c.ids);
        match &decoded {
            Ok(text) if !lossless || *text == c.text => {}
            Ok(text) => {
                r.decode_failures += 1;
                r.details
                    .push(format!("decode {:?}\n      gave {text:?}", c.text));
            }
            Err(e) => {
                r.decode_failures += 1;
                r.details.push(format!("decode {:?}: {e}", c.text));
            }
        }
        // The streamed pieces are decode's text, except that decode drops the one leading
        // space a SentencePiece vocabulary adds in front of the text.
        let streamed = stream(&t, &c.ids);
        match (&streamed, &decoded) {
            (Ok(s), Ok(d)) if s == d || s.strip_prefix(' ') == Some(d.as_str()) => {}
            _ => {
                r.stream_failures += 1;
                r.details.push(format!(
                    "stream {:?}: {streamed:?} vs decode {decoded:?}",
                    c.text
                ));
            }
        }
    }
    r.run_time = start.elapsed();
    r
}

#[test]
fn llama_cpp_tokenizer_suite_passes_every_case() {
    suite_dir();
    let start = std::time::Instant::now();
    // One worker per core, each taking the next vocabulary (some hold 260k tokens).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut reports: Vec<(usize, Report)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.min(VOCABS.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&name) = VOCABS.get(i) else {
                            return done;
                        };
                        done.push((i, run_vocab(name)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("vocabulary thread panicked"))
            .collect()
    });
    reports.sort_by_key(|(i, _)| *i);
    let reports: Vec<Report> = reports.into_iter().map(|(_, r)| r).collect();

    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<16} {:<7} {:<16} {:>9} {:>7} {:>7} {:>8} {:>8}  note",
        "vocab", "model", "pre", "passed", "decode", "stream", "load", "cases"
    );
    let (mut passed, mut total) = (0, 0);
    for r in &reports {
        passed += r.passed;
        total += r.total;
        let _ = writeln!(
            table,
            "{:<16} {:<7} {:<16} {:>4}/{:<4} {:>7} {:>7} {:>6}ms {:>6}ms  {}",
            r.name,
            r.model,
            r.pre,
            r.passed,
            r.total,
            if r.decode_failures == 0 {
                "ok".to_string()
            } else {
                format!("{} bad", r.decode_failures)
            },
            if r.stream_failures == 0 {
                "ok".to_string()
            } else {
                format!("{} bad", r.stream_failures)
            },
            r.load_time.as_millis(),
            r.run_time.as_millis(),
            r.load_error.as_deref().unwrap_or(""),
        );
    }
    let _ = writeln!(
        table,
        "total {passed}/{total} cases in {:.2?}",
        start.elapsed()
    );
    println!("{table}");
    let failing: Vec<&Report> = reports.iter().filter(|r| !r.ok()).collect();
    for r in &failing {
        println!("--- {} ({} problems; first 8):", r.name, r.details.len());
        for d in r.details.iter().take(8) {
            println!("    {d}");
        }
    }
    assert!(
        failing.is_empty(),
        "vocabularies below 100%: {:?}\n{table}",
        failing.iter().map(|r| r.name).collect::<Vec<_>>()
    );
}

#[test]
fn vocabularies_without_cases_load_or_are_refused_clearly() {
    for &name in VOCABS_WITHOUT_CASES {
        let (file, tok) = load(name);
        let model = file.metadata.get_str("tokenizer.ggml.model").unwrap();
        match tok {
            Ok(t) => {
                let text = "Hello world! 你好 🦀\n\t  x";
                let ids = t.encode_plain(text).unwrap();
                assert!(!ids.is_empty(), "{name}");
                t.decode(&ids).unwrap();
            }
            Err(TokenizerError::UnsupportedTokenizer { model: m }) => assert_eq!(m, model),
            Err(e) => panic!("{name} ({model}): {e}"),
        }
    }
}
