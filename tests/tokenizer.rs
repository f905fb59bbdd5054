//! Tokenizer against the Hugging Face reference fixtures for SmolLM2-135M-Instruct: the GGUF's
//! own vocabulary and chat template must reproduce HF's rendering, prompt ids and decoded text
//! exactly, and the streaming detokenizer must agree with whole-sequence decoding.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use wllm::loader::gguf::GgufFile;
use wllm::loader::gguf_meta::{GgufMetadata, MetaValue};
use wllm::tokenizer::gguf_vocab::byte_to_byte_level_char;
use wllm::tokenizer::{ChatMessage, Tokenizer, TokenizerError};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    chat: bool,
    rendered: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    greedy_text: String,
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let path = Path::new(FIXTURES).join("smollm2-135m-public.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
        let f: Fixture = serde_json::from_str(&text).expect("fixture JSON");
        assert!(!f.cases.is_empty(), "fixture has no cases");
        f.cases
    })
}

fn gguf() -> &'static GgufFile {
    static FILE: OnceLock<GgufFile> = OnceLock::new();
    FILE.get_or_init(|| {
        assert!(
            Path::new(MODEL).is_file(),
            "{MODEL} is missing: run models/fetch_smollm2.sh to download it"
        );
        GgufFile::open(MODEL).unwrap_or_else(|e| panic!("opening {MODEL}: {e}"))
    })
}

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_gguf_metadata(&gguf().metadata).expect("GGUF tokenizer"))
}

/// Deterministic xorshift64*, so random-sequence failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Stream `ids` through a fresh detokenizer; returns the deltas (finish() last).
fn stream(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut d = t.detokenizer();
    let mut out: Vec<String> = ids.iter().map(|&id| d.push(id).expect("push")).collect();
    out.push(d.finish().expect("finish"));
    out
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wllm-tok-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn gguf_vocabulary_facts() {
    let t = tok();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos_token_id(), Some(1));
    assert_eq!(t.bos_token(), Some("<|im_start|>"));
    assert_eq!(t.eos_token_id(), Some(2));
    assert_eq!(t.eos_token(), Some("<|im_end|>"));
    // The file says add_bos_token=false, and HF's prompt_ids carry no BOS.
    assert!(!t.adds_bos());
    assert!(t.is_byte_level());
    let stops = t.stop_token_ids();
    assert!(stops.contains(&2), "stop ids {stops:?} lack <|im_end|>");
    assert!(stops.contains(&0), "stop ids {stops:?} lack <|endoftext|>");
    assert!(!stops.contains(&1), "<|im_start|> must not stop generation");
    assert!(t.is_stop_token(2) && !t.is_stop_token(198));
    assert_eq!(t.token_text(3575).unwrap(), "Ġcapital");
    assert_eq!(t.token_id("<|im_end|>"), Some(2));
    assert!(t.chat_template().is_some());
}

#[test]
fn fixtures_render_encode_and_decode_exactly() {
    let t = tok();
    for c in cases() {
        if c.chat {
            let rendered = t.render_chat(&[ChatMessage::user(&c.text)], true).unwrap();
            assert_eq!(rendered, c.rendered, "case {}: rendered chat", c.name);
        } else {
            assert_eq!(c.rendered, c.text, "case {}: plain text", c.name);
        }
        let ids = t.encode(&c.rendered).unwrap();
        assert_eq!(ids, c.prompt_ids, "case {}: prompt ids", c.name);
        assert_eq!(
            t.decode(&c.prompt_ids).unwrap(),
            c.rendered,
            "case {}",
            c.name
        );
        let text = t.decode(&c.greedy_ids).unwrap();
        assert_eq!(text, c.greedy_text, "case {}: greedy text", c.name);
        // The byte-table decode is the same as the tokenizers crate's own ByteLevel decoder.
        let hf = t
            .hf_tokenizer()
            .expect("a BPE pipeline")
            .decode(&c.greedy_ids, false)
            .unwrap();
        assert_eq!(hf, c.greedy_text, "case {}: tokenizers decode", c.name);
    }
}

#[test]
fn detokenizer_deltas_concatenate_to_decode_over_fixtures() {
    let t = tok();
    for c in cases() {
        let all: Vec<u32> = c.prompt_ids.iter().chain(&c.greedy_ids).copied().collect();
        let deltas = stream(t, &all);
        assert_eq!(deltas.concat(), t.decode(&all).unwrap(), "case {}", c.name);
        assert_eq!(
            stream(t, &c.greedy_ids).concat(),
            c.greedy_text,
            "case {}",
            c.name
        );
    }
}

#[test]
fn detokenizer_matches_decode_on_random_id_sequences() {
    let t = tok();
    // Tokens whose bytes are not valid UTF-8 on their own (pieces of multi-byte characters):
    // drawn often, so sequences split and break characters in every way.
    let partial: Vec<u32> = (0..t.vocab_size() as u32)
        .filter(|&id| {
            t.token_bytes(id)
                .is_some_and(|b| std::str::from_utf8(b).is_err())
        })
        .collect();
    assert!(
        partial.len() > 100,
        "only {} partial-UTF-8 tokens",
        partial.len()
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..300 {
        let len = rng.below(48);
        let ids: Vec<u32> = (0..len)
            .map(|_| match rng.below(3) {
                0 => partial[rng.below(partial.len())],
                _ => rng.below(t.vocab_size()) as u32,
            })
            .collect();
        let deltas = stream(t, &ids);
        assert_eq!(
            deltas.concat(),
            t.decode(&ids).unwrap(),
            "round {round}: {ids:?}"
        );
    }
}

#[test]
fn detokenizer_never_emits_half_a_character() {
    let t = tok();
    let text = "Crabs 🦀 say 你好, café — 😀!";
    // 1) The vocabulary's own tokenization (byte-level BPE splits rare characters).
    let ids = t.encode(text).unwrap();
    let deltas = stream(t, &ids);
    assert_eq!(deltas.concat(), text);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    // 2) Every character spelled one byte-token at a time: text appears only when complete.
    let byte_id = |b: u8| {
        t.token_id(&byte_to_byte_level_char(b).to_string())
            .unwrap_or_else(|| panic!("no single-byte token for {b:#x}"))
    };
    let mut d = t.detokenizer();
    for ch in text.chars() {
        let mut buf = [0u8; 4];
        let bytes = ch.encode_utf8(&mut buf).as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let delta = d.push(byte_id(b)).unwrap();
            let want = if i + 1 == bytes.len() {
                ch.to_string()
            } else {
                String::new()
            };
            assert_eq!(delta, want, "byte {i} of {ch:?}");
        }
    }
    assert_eq!(d.finish().unwrap(), "");
    // 3) An emoji cut off mid-way: finish() flushes U+FFFD, as decode() does.
    let cut = [byte_id(0xF0), byte_id(0x9F)];
    assert_eq!(stream(t, &cut).concat(), "\u{FFFD}");
    assert_eq!(t.decode(&cut).unwrap(), "\u{FFFD}");
}

#[test]
fn unknown_ids_are_errors() {
    let t = tok();
    let bad = t.vocab_size() as u32;
    assert!(matches!(
        t.decode(&[1, bad]),
        Err(TokenizerError::UnknownTokenId { id, vocab_size: 49152 }) if id == bad
    ));
    assert!(t.token_text(u32::MAX).is_err());
    assert!(t.token_bytes(bad).is_none());
    let mut d = t.detokenizer();
    assert!(d.push(bad).is_err());
    assert_eq!(d.push(19556).unwrap(), "Hello");
}

#[test]
fn still_unsupported_vocabularies_are_clear_errors() {
    let mut meta = gguf().metadata.clone();
    meta.entries.insert(
        "tokenizer.ggml.model".into(),
        MetaValue::String("rwkv".into()),
    );
    let err = Tokenizer::from_gguf_metadata(&meta).unwrap_err();
    assert!(matches!(err, TokenizerError::UnsupportedTokenizer { ref model } if model == "rwkv"));
    assert!(err.to_string().contains("rwkv"), "{err}");
}

#[test]
fn tokenizer_json_round_trip_gives_the_same_ids() {
    let t = tok();
    let dir = temp_dir("roundtrip");
    let json = dir.join("tokenizer.json");
    t.save_tokenizer_json(&json).unwrap();
    let texts: Vec<&str> = cases()
        .iter()
        .map(|c| c.rendered.as_str())
        .chain(["Crabs 🦀 say 你好 in 2024!\n\n\tdef f(x):  return x**2", ""])
        .collect();

    let plain = Tokenizer::from_hf_files(&json, None).unwrap();
    assert_eq!(plain.vocab_size(), t.vocab_size());
    assert!(plain.is_byte_level());
    assert!(plain.stop_token_ids().contains(&2));
    assert!(matches!(
        plain.render_chat(&[ChatMessage::user("x")], true),
        Err(TokenizerError::NoChatTemplate)
    ));
    for text in &texts {
        let ids = t.encode(text).unwrap();
        assert_eq!(plain.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(plain.decode(&ids).unwrap(), t.decode(&ids).unwrap());
    }

    // With a tokenizer_config.json: named template list, bos as {content}, eos as a string.
    let template = t.chat_template().unwrap();
    let config = serde_json::json!({
        "add_bos_token": false,
        "bos_token": {"content": "<|im_start|>", "special": true},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": template},
        ],
    });
    let config_path = dir.join("tokenizer_config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let hf = Tokenizer::from_hf_files(&json, Some(&config_path)).unwrap();
    assert_eq!((hf.bos_token_id(), hf.eos_token_id()), (Some(1), Some(2)));
    assert!(!hf.adds_bos());
    for c in cases().iter().filter(|c| c.chat) {
        let rendered = hf.render_chat(&[ChatMessage::user(&c.text)], true).unwrap();
        assert_eq!(rendered, c.rendered, "case {}", c.name);
        assert_eq!(
            hf.encode(&rendered).unwrap(),
            c.prompt_ids,
            "case {}",
            c.name
        );
    }

    // add_bos_token=true prepends BOS once, not before a text that already starts with it.
    let config = serde_json::json!({"add_bos_token": true, "bos_token": "<|im_start|>"});
    std::fs::write(&config_path, config.to_string()).unwrap();
    let with_bos = Tokenizer::from_hf_files(&json, Some(&config_path)).unwrap();
    assert_eq!(with_bos.encode("Hello").unwrap(), vec![1, 19556]);
    assert_eq!(
        with_bos.encode("<|im_start|>Hello").unwrap(),
        vec![1, 19556]
    );
    assert_eq!(with_bos.encode_raw("Hello").unwrap(), vec![19556]);
    // encode_plain (`wllm tokenize --no-special`): no BOS, and special-token text is text.
    assert_eq!(with_bos.encode_plain("Hello").unwrap(), vec![19556]);
    let plain = with_bos.encode_plain("<|im_start|>Hello").unwrap();
    assert!(!plain.contains(&1) && plain.len() > 2, "{plain:?}");
    assert_eq!(
        with_bos.decode(&plain).unwrap(),
        "<|im_start|>Hello",
        "split into ordinary tokens that spell the same text"
    );
    // The special tokens stay special for the ordinary encoder.
    assert_eq!(with_bos.encode_raw("<|im_start|>").unwrap(), vec![1]);

    // Malformed config values are errors naming the file.
    std::fs::write(&config_path, r#"{"chat_template": 7}"#).unwrap();
    let err = Tokenizer::from_hf_files(&json, Some(&config_path)).unwrap_err();
    assert!(matches!(err, TokenizerError::Config { .. }), "{err}");
    std::fs::write(&config_path, "{not json").unwrap();
    let err = Tokenizer::from_hf_files(&json, Some(&config_path)).unwrap_err();
    assert!(matches!(err, TokenizerError::Json { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_template_errors_and_missing_template() {
    let mut meta = gguf().metadata.clone();
    meta.entries.remove("tokenizer.chat_template");
    let t = Tokenizer::from_gguf_metadata(&meta).unwrap();
    assert!(matches!(
        t.render_chat(&[ChatMessage::user("hi")], true),
        Err(TokenizerError::NoChatTemplate)
    ));
    meta.entries.insert(
        "tokenizer.chat_template".into(),
        MetaValue::String("{{ raise_exception('no ' + messages[0].role) }}".into()),
    );
    let t = Tokenizer::from_gguf_metadata(&meta).unwrap();
    let err = t.render_chat(&[ChatMessage::user("hi")], true).unwrap_err();
    assert!(err.to_string().contains("no user"), "{err}");
    // A system message replaces the template's default system prompt.
    let rendered = tok()
        .render_chat(
            &[ChatMessage::system("Be brief."), ChatMessage::user("Hi")],
            false,
        )
        .unwrap();
    assert_eq!(
        rendered,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Tiny GGUF vocabularies built in memory: BPE (`gpt2`) and SentencePiece (`llama`).

fn strs(v: &[&str]) -> MetaValue {
    MetaValue::Array(v.iter().map(|s| MetaValue::String(s.to_string())).collect())
}

fn tiny_meta(model: &str) -> GgufMetadata {
    let mut m = GgufMetadata::default();
    let e = &mut m.entries;
    e.insert(
        "tokenizer.ggml.model".into(),
        MetaValue::String(model.into()),
    );
    e.insert(
        "tokenizer.ggml.pre".into(),
        MetaValue::String("smollm".into()),
    );
    e.insert(
        "tokenizer.ggml.tokens".into(),
        strs(&["<|end|>", "a", "b", "ab", "Ġ", "Ġab", "1", "2"]),
    );
    e.insert(
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array([3, 1, 1, 1, 1, 1, 1, 1].map(MetaValue::I32).to_vec()),
    );
    e.insert("tokenizer.ggml.merges".into(), strs(&["a b", "Ġ ab"]));
    e.insert("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(0));
    m
}

#[test]
fn tiny_bpe_vocabulary_encodes_decodes_and_stops() {
    let t = Tokenizer::from_gguf_metadata(&tiny_meta("gpt2")).unwrap();
    assert_eq!(t.vocab_size(), 8);
    assert_eq!(t.encode("ab ab<|end|>12").unwrap(), vec![3, 5, 0, 6, 7]);
    assert_eq!(t.decode(&[3, 5, 0, 6, 7]).unwrap(), "ab ab<|end|>12");
    assert_eq!(t.stop_token_ids(), &[0]);
    assert!(!t.adds_bos());
    assert!(matches!(
        t.decode(&[8]),
        Err(TokenizerError::UnknownTokenId {
            id: 8,
            vocab_size: 8
        })
    ));
    assert!(t.token_text(99).is_err());
    assert_eq!(t.token_text(5).unwrap(), "Ġab");
}

#[test]
fn special_ids_past_the_vocabulary_are_errors_and_minus_one_is_none() {
    let mut m = tiny_meta("gpt2");
    let key = "tokenizer.ggml.bos_token_id";
    m.entries.insert(key.into(), MetaValue::U32(8));
    let err = Tokenizer::from_gguf_metadata(&m).unwrap_err();
    assert!(
        matches!(
            &err,
            TokenizerError::SpecialTokenOutOfRange {
                id: 8,
                vocab_size: 8,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(key), "{err}");
    for none in [MetaValue::I32(-1), MetaValue::U32(u32::MAX)] {
        m.entries.insert(key.into(), none);
        assert_eq!(
            Tokenizer::from_gguf_metadata(&m).unwrap().bos_token_id(),
            None
        );
    }
}

#[test]
fn missing_keys_and_bad_merges_are_clear_errors() {
    let mut m = tiny_meta("gpt2");
    m.entries.remove("tokenizer.ggml.merges");
    let err = Tokenizer::from_gguf_metadata(&m).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
    let mut m = tiny_meta("gpt2");
    m.entries.insert(
        "tokenizer.ggml.merges".into(),
        MetaValue::Array(vec![MetaValue::String("ab".into())]),
    );
    assert!(matches!(
        Tokenizer::from_gguf_metadata(&m),
        Err(TokenizerError::InvalidVocab(_))
    ));
}

/// A SentencePiece vocabulary: `<unk>` `<s>` `</s>`, the 256 byte tokens (ids 3..=258), then
/// "▁" and every prefix of "▁Hello" and "▁world" (so those words merge step by step).
fn tiny_spm_meta() -> (GgufMetadata, impl Fn(&str) -> u32) {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).into();
    let mut types = vec![2, 3, 3];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend([6; 256]);
    let mut words = vec!["▁".to_string()];
    for w in ["▁Hello", "▁world"] {
        let chars: Vec<char> = w.chars().collect();
        words.extend((2..=chars.len()).map(|n| chars[..n].iter().collect::<String>()));
    }
    let first = tokens.len();
    tokens.extend(words.iter().cloned());
    types.extend(vec![1; words.len()]);
    let mut scores = vec![0.0f32; first];
    scores.extend((0..words.len()).map(|i| -(i as f32)));
    let mut m = GgufMetadata::default();
    let e = &mut m.entries;
    e.insert(
        "tokenizer.ggml.model".into(),
        MetaValue::String("llama".into()),
    );
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    e.insert("tokenizer.ggml.tokens".into(), strs(&refs));
    e.insert(
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
    );
    e.insert(
        "tokenizer.ggml.scores".into(),
        MetaValue::Array(scores.into_iter().map(MetaValue::F32).collect()),
    );
    e.insert(
        "tokenizer.chat_template".into(),
        MetaValue::String(
            "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}"
                .into(),
        ),
    );
    let id = move |w: &str| (first + words.iter().position(|x| x == w).unwrap()) as u32;
    (m, id)
}

#[test]
fn sentencepiece_gguf_encodes_decodes_streams_and_chats() {
    let (meta, id) = tiny_spm_meta();
    let t = Tokenizer::from_gguf_metadata(&meta).unwrap();
    let (hello, world) = (id("▁Hello"), id("▁world"));
    // llama.cpp's SentencePiece defaults: BOS 1 prepended, EOS 2 stops.
    assert!(t.adds_bos());
    assert_eq!((t.bos_token(), t.eos_token()), (Some("<s>"), Some("</s>")));
    assert!(t.is_stop_token(2));
    assert_eq!(t.encode("Hello world").unwrap(), [1, hello, world]);
    assert_eq!(t.encode("<s>Hello").unwrap(), [1, hello], "no second BOS");
    assert_eq!(t.encode_plain("Hello world").unwrap(), [hello, world]);
    // Control-token text is text for encode_plain: "▁<s>" spelled in bytes.
    let plain = t.encode_plain("<s>").unwrap();
    assert!(!plain.contains(&1) && plain.len() == 4, "{plain:?}");
    // Decoding drops the space the encoder added in front; special tokens render as text.
    assert_eq!(t.decode(&[hello, world]).unwrap(), "Hello world");
    assert_eq!(t.decode(&[1, hello, world]).unwrap(), "<s> Hello world");
    assert_eq!(t.decode(&plain).unwrap(), "<s>");
    // Byte fallback: an emoji is its four byte tokens, and decodes back.
    let crab = t.encode_plain("🦀!").unwrap();
    assert_eq!(crab.len(), 6, "{crab:?}");
    assert_eq!(t.decode(&crab).unwrap(), "🦀!");
    // Token facts.
    assert!(t.is_byte_level());
    assert_eq!(t.token_bytes(hello), Some(&b" Hello"[..]));
    assert_eq!(t.token_bytes(3 + 0xF0), Some(&[0xF0u8][..]));
    assert_eq!(t.token_text(hello).unwrap(), "▁Hello");
    assert_eq!(t.token_id("▁world"), Some(world));
    assert!(t.hf_tokenizer().is_none());
    assert!(matches!(
        t.save_tokenizer_json(&temp_dir("spm").join("tokenizer.json")),
        Err(TokenizerError::NoHfPipeline { .. })
    ));
    // The stream keeps the first token's space (it continues a prompt) and never splits the
    // emoji; otherwise it is decode's text.
    assert_eq!(stream(&t, &[hello, world]), [" Hello", " world", ""]);
    let deltas = stream(&t, &crab);
    assert_eq!(deltas, [" ", "", "", "", "🦀", "!", ""]);
    // A chat renders with the template's BOS, and encodes without a second one.
    let rendered = t.render_chat(&[ChatMessage::user("Hello")], true).unwrap();
    assert_eq!(rendered, "<s>[INST] Hello [/INST]");
    let ids = t.encode(&rendered).unwrap();
    assert_eq!(ids[..2], [1, id("▁")]);
    assert_eq!(t.decode(&ids).unwrap(), rendered.replace("<s>", "<s> "));
}

#[test]
fn hostile_sentencepiece_metadata_is_an_error_not_a_panic() {
    let bad = |edit: &dyn Fn(&mut GgufMetadata)| {
        let (mut meta, _) = tiny_spm_meta();
        edit(&mut meta);
        match Tokenizer::from_gguf_metadata(&meta) {
            Err(TokenizerError::InvalidVocab(msg)) => msg,
            other => panic!("expected InvalidVocab, got {other:?}"),
        }
    };
    let msg = bad(&|m| {
        m.entries.insert(
            "tokenizer.ggml.scores".into(),
            MetaValue::Array(vec![MetaValue::F32(0.0); 5]),
        );
    });
    assert!(msg.contains("5 scores"), "{msg}");
    let msg = bad(&|m| {
        m.entries
            .insert("tokenizer.ggml.scores".into(), strs(&["x"]));
    });
    assert!(msg.contains("scores"), "{msg}");
    // The byte token for 'A' renamed: byte fallback has a hole.
    let msg = bad(&|m| {
        let Some(MetaValue::Array(tokens)) = m.entries.get_mut("tokenizer.ggml.tokens") else {
            unreachable!()
        };
        tokens[3 + 0x41] = MetaValue::String("A?".into());
    });
    assert!(msg.contains("byte"), "{msg}");
    let (mut meta, _) = tiny_spm_meta();
    meta.entries.insert(
        "tokenizer.ggml.bos_token_id".into(),
        MetaValue::U32(100_000),
    );
    assert!(matches!(
        Tokenizer::from_gguf_metadata(&meta),
        Err(TokenizerError::SpecialTokenOutOfRange { .. })
    ));
}
