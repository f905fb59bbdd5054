//! GGUF `tokenizer.ggml.*` metadata → a `tokenizers` BPE pipeline.
//!
//! Supported: `tokenizer.ggml.model == "gpt2"`, i.e. byte-level BPE (GPT-2, SmolLM, Llama 3,
//! Qwen2, StarCoder, …). Keys read:
//! - `tokens` (id → vocabulary string, byte-level encoded: a space is `Ġ`), `merges` (`"a b"`
//!   pairs in rank order), `token_type` (3 = control, 4 = user-defined: registered as added
//!   tokens so their text in a prompt encodes to the single id), `pre` (the pre-tokenizer: which
//!   regex splits text into words before BPE — see [`PreTokenizerScheme`]),
//! - `bos_token_id`, `eos_token_id`, `eot_token_id`, `eom_token_id` (each -1 for none, else
//!   inside the vocabulary: [`TokenizerError::SpecialTokenOutOfRange`]), `add_bos_token`,
//! - `tokenizer.chat_template`.
//!
//! Anything else (`llama` = SentencePiece, `bert` = WordPiece, `t5`, `rwkv`) is
//! [`TokenizerError::UnsupportedTokenizer`]. Cost: one pass over the vocabulary and merges
//! (≈ 50k entries each for SmolLM2), done once per model load.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::{Parts, Tokenizer, TokenizerError};
use crate::loader::gguf_meta::GgufMetadata;

/// GGUF `token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// GPT-2's word-splitting regex (contractions, letters, digits, other symbols, whitespace).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's: case-insensitive contractions, a letter run may take one leading non-letter,
/// digits in groups of up to three, newlines kept with the preceding whitespace.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with every digit on its own.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's fallback for `default` / unknown `pre`: punctuation runs, then GPT-2's regex,
/// then digit runs, then groups of three ASCII digits, each splitting the previous pieces.
const DEFAULT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// How a `tokenizer.ggml.pre` name splits text before BPE, with llama.cpp's per-name defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerScheme {
    /// GPT-2 regex (`gpt-2`, `gpt2`, `phi-2`, `mpt`, `olmo`, `jais`, …).
    Gpt2,
    /// Every digit alone, then the GPT-2 regex (`smollm`, `starcoder`, `refact`, `command-r`, …).
    DigitsThenGpt2,
    /// Llama 3 regex; whole words found in the vocabulary skip merging (`llama-bpe`, `llama3`, …).
    Llama3,
    /// Qwen2 regex (`qwen2`, `stablelm2`, `deepseek-r1-qwen`, `megrez`).
    Qwen2,
    /// llama.cpp's fallback sequence of regexes (`default`, and any name not known here).
    Default,
}

impl PreTokenizerScheme {
    /// The scheme for a `tokenizer.ggml.pre` value; unknown names fall back to
    /// [`PreTokenizerScheme::Default`] with a warning, as llama.cpp does.
    pub fn from_pre(pre: &str) -> PreTokenizerScheme {
        use PreTokenizerScheme::*;
        match pre {
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "jina-es" | "jina-de"
            | "jina-v1-en" | "jina-v2-es" | "jina-v2-de" | "jina-v2-code" | "roberta-bpe"
            | "gigachat" | "exaone4" | "mellum" | "trillion" | "granite-docling" => Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => DigitsThenGpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "dbrx" | "smaug-bpe" => Llama3,
            "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "megrez" | "hunyuan" => Qwen2,
            "default" => Default,
            other => {
                log::warn!(
                    "unknown tokenizer.ggml.pre `{other}`: using llama.cpp's default pre-tokenizer; \
                     tokenization may differ from the original model's"
                );
                Default
            }
        }
    }

    /// Whether a word that is itself a vocabulary entry is emitted whole, skipping merges
    /// (Llama 3's tokenizer.json sets `ignore_merges`).
    fn ignore_merges(self) -> bool {
        self == PreTokenizerScheme::Llama3
    }

    fn pre_tokenizer(self) -> Result<PreTokenizerWrapper, TokenizerError> {
        let split = |re: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
            Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::from)
            .map_err(TokenizerError::hf("compiling a pre-tokenizer regex"))
        };
        // Byte-level mapping only: the regex split has already happened.
        let bytes_only = || ByteLevel::new(false, true, false).into();
        let gpt2 = || ByteLevel::new(false, true, true).into();
        Ok(match self {
            PreTokenizerScheme::Gpt2 => gpt2(),
            PreTokenizerScheme::DigitsThenGpt2 => {
                Sequence::new(vec![Digits::new(true).into(), gpt2()]).into()
            }
            PreTokenizerScheme::Llama3 => {
                Sequence::new(vec![split(LLAMA3_REGEX)?, bytes_only()]).into()
            }
            PreTokenizerScheme::Qwen2 => {
                Sequence::new(vec![split(QWEN2_REGEX)?, bytes_only()]).into()
            }
            PreTokenizerScheme::Default => {
                let mut seq = DEFAULT_REGEXES
                    .iter()
                    .map(|re| split(re))
                    .collect::<Result<Vec<_>, _>>()?;
                seq.push(bytes_only());
                Sequence::new(seq).into()
            }
        })
    }
}

/// Build the tokenizer; see the module docs.
pub(super) fn build(meta: &GgufMetadata) -> Result<Tokenizer, TokenizerError> {
    let model = meta.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedTokenizer {
            model: model.to_string(),
        });
    }
    let tokens = meta.get_str_array("tokenizer.ggml.tokens")?;
    let n_tokens = tokens.len();
    let types = meta
        .opt(meta.get_i64_array("tokenizer.ggml.token_type"))?
        .unwrap_or_default();
    if !types.is_empty() && types.len() != n_tokens {
        return Err(TokenizerError::InvalidVocab(format!(
            "{} token types for {n_tokens} tokens",
            types.len()
        )));
    }
    let scheme = PreTokenizerScheme::from_pre(
        meta.opt(meta.get_str("tokenizer.ggml.pre"))?
            .unwrap_or("default"),
    );

    let mut vocab = Vocab::default();
    vocab.reserve(n_tokens);
    for (id, &text) in tokens.iter().enumerate() {
        let id = u32::try_from(id)
            .map_err(|_| TokenizerError::InvalidVocab("more than 2^32 tokens".into()))?;
        if text.is_empty() {
            log::warn!("GGUF vocabulary: token {id} is empty");
            continue;
        }
        // llama.cpp keeps the last id for a repeated string; encoding can produce only one of
        // them either way. Keep the first; the other still decodes (token_bytes has every id).
        if vocab.contains_key(text) {
            log::warn!("GGUF vocabulary: token {text:?} repeats at id {id}");
            continue;
        }
        vocab.insert(text.to_string(), id);
    }
    let merges = meta
        .get_str_array("tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(rank, m)| {
            split_merge(m).ok_or_else(|| {
                TokenizerError::InvalidVocab(format!(
                    "merge {rank} {m:?} is not two tokens separated by a space"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A merge must join two tokens into a third; one naming a string outside the vocabulary
    // could never apply (and makes the BPE builder panic), so it is dropped with a warning.
    let (merges, unknown): (Vec<_>, Vec<_>) = merges.into_iter().partition(|(a, b)| {
        vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
    });
    if let Some((a, b)) = unknown.first() {
        log::warn!(
            "GGUF vocabulary: {} merges name strings outside the vocabulary (first: {a:?} {b:?}); dropped",
            unknown.len()
        );
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(scheme.ignore_merges())
        .build()
        .map_err(TokenizerError::hf(
            "building the BPE model from GGUF tokens and merges",
        ))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(scheme.pre_tokenizer()?));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    // Control and user-defined tokens are matched in the raw text before pre-tokenization, so
    // "<|im_start|>" in a rendered chat becomes its one id instead of BPE pieces.
    let mut special = Vec::new();
    let mut user_defined = Vec::new();
    for (&text, &ty) in tokens.iter().zip(&types) {
        match ty {
            TOKEN_TYPE_CONTROL if !text.is_empty() => {
                special.push(AddedToken::from(text, true).normalized(false))
            }
            TOKEN_TYPE_USER_DEFINED if !text.is_empty() => {
                user_defined.push(AddedToken::from(text, false).normalized(false))
            }
            _ => {}
        }
    }
    inner
        .add_special_tokens(special)
        .map_err(TokenizerError::hf("registering control tokens"))?;
    inner
        .add_tokens(user_defined)
        .map_err(TokenizerError::hf("registering user-defined tokens"))?;

    let token_bytes = tokens
        .iter()
        .map(|t| (!t.is_empty()).then(|| byte_level_token_bytes(t).into_boxed_slice()))
        .collect();
    let id = |key: &str| special_id(meta, key, n_tokens);
    let extra_stop_ids = [
        id("tokenizer.ggml.eot_token_id")?,
        id("tokenizer.ggml.eom_token_id")?,
    ]
    .into_iter()
    .flatten()
    .collect();
    // BOS: the file's `add_bos_token` when present (convert_hf_to_gguf writes it from the HF
    // tokenizer), else llama.cpp's default for byte-level BPE, which is *no* BOS except for the
    // Llama 3 family. Byte-level BPE tokenizers on the Hugging Face side (GPT-2, SmolLM, Qwen,
    // StarCoder) have no post-processor that prepends BOS, and their chat templates write any
    // BOS they want into the text. So SmolLM2, whose bos id 1 is `<|im_start|>` and whose file
    // says add_bos_token=false, gets no extra `<|im_start|>` in front of every prompt — which is
    // what the HF reference fixtures (prompt_ids) show. Llama 3 GGUFs say add_bos_token=true, and
    // HF's Llama 3 tokenizer does prepend `<|begin_of_text|>`, so honouring the flag matches both.
    let add_bos = meta
        .opt(meta.get_bool("tokenizer.ggml.add_bos_token"))?
        .unwrap_or(scheme == PreTokenizerScheme::Llama3);
    Tokenizer::assemble(Parts {
        inner,
        token_bytes: Some(token_bytes),
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        add_bos,
        extra_stop_ids,
        chat_template: meta
            .opt(meta.get_str("tokenizer.chat_template"))?
            .map(str::to_string),
    })
}

/// The special token id under `key`, if any. Converters write -1 (an i32, or u32 0xFFFFFFFF)
/// for "no such token"; any other id past the vocabulary is an error. (llama.cpp warns and
/// keeps its default id there; a BOS or EOS that silently goes missing changes every prompt or
/// never stops a generation, so wllm refuses the file instead.)
fn special_id(
    meta: &GgufMetadata,
    key: &str,
    n_tokens: usize,
) -> Result<Option<u32>, TokenizerError> {
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    if v.as_i64() == Some(-1) || v.as_u64() == Some(u64::from(u32::MAX)) {
        return Ok(None);
    }
    let id = meta.get_u64(key)?;
    match u32::try_from(id) {
        Ok(small) if (small as usize) < n_tokens => Ok(Some(small)),
        _ => Err(TokenizerError::SpecialTokenOutOfRange {
            key: key.to_string(),
            id,
            vocab_size: n_tokens,
        }),
    }
}

/// `"Ġ t"` → `("Ġ", "t")`. The separator is the first space after the first character, so a
/// left side that is itself a space (possible in user-defined tokens) still parses.
fn split_merge(m: &str) -> Option<(String, String)> {
    let first = m.chars().next()?.len_utf8();
    let at = first + m[first..].find(' ')?;
    let (a, b) = (&m[..at], &m[at + 1..]);
    (!b.is_empty()).then(|| (a.to_string(), b.to_string()))
}

/// Whether the pipeline's decoder is plain byte-level, so token bytes can be computed per token.
pub(super) fn has_byte_level_decoder(t: &tokenizers::Tokenizer) -> bool {
    matches!(t.get_decoder(), Some(DecoderWrapper::ByteLevel(_)))
}

/// The byte a GPT-2 byte-level character stands for. GPT-2 maps the 188 printable bytes
/// (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) to the same code point and the other 68 bytes, in
/// increasing order, to U+0100.. so that every byte has a visible character.
pub fn byte_level_char_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    match c {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(c as u8),
        // The unprintable bytes are 0x00..=0x20 (33), 0x7F..=0xA0 (34), then 0xAD.
        0x100..=0x120 => Some((c - 0x100) as u8),
        0x121..=0x142 => Some((c - 0x121 + 0x7F) as u8),
        0x143 => Some(0xAD),
        _ => None,
    }
}

/// The character GPT-2's byte-level encoding writes for a byte (inverse of
/// [`byte_level_char_to_byte`]).
pub fn byte_to_byte_level_char(b: u8) -> char {
    let c = match b {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => b as u32,
        0x00..=0x20 => 0x100 + b as u32,
        0x7F..=0xA0 => 0x121 + (b as u32 - 0x7F),
        _ => 0x143, // 0xAD
    };
    char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The bytes a token decodes to under the `tokenizers` ByteLevel decoder: each character mapped
/// back to its byte, or — when some character is not a byte-level character, as in added
/// tokens written in plain text — the token's own UTF-8 bytes.
pub fn byte_level_token_bytes(token: &str) -> Vec<u8> {
    token
        .chars()
        .map(byte_level_char_to_byte)
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::gguf_meta::MetaValue;

    #[test]
    fn byte_level_mapping_is_a_bijection_over_256_bytes() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_byte_level_char(b);
            assert!(seen.insert(c), "byte {b} maps to a used char {c:?}");
            assert_eq!(byte_level_char_to_byte(c), Some(b), "byte {b} via {c:?}");
        }
        assert_eq!(byte_to_byte_level_char(b' '), 'Ġ');
        assert_eq!(byte_to_byte_level_char(b'\n'), 'Ċ');
        assert_eq!(byte_level_char_to_byte('Ā'), Some(0));
        assert_eq!(byte_level_char_to_byte('Ń'), Some(0xAD));
        assert_eq!(byte_level_char_to_byte('ń'), None);
        assert_eq!(byte_level_token_bytes("Ġhello"), b" hello");
        // Not all byte-level characters: decoded as the token's own text (HF's rule).
        assert_eq!(byte_level_token_bytes("a b"), b"a b");
    }

    #[test]
    fn merges_split_at_the_first_space_after_the_first_char() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ".into(), "t".into())));
        assert_eq!(split_merge("  x"), Some((" ".into(), "x".into())));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge("a "), None);
    }

    fn tiny_meta(model: &str) -> GgufMetadata {
        let strs = |v: &[&str]| {
            MetaValue::Array(v.iter().map(|s| MetaValue::String(s.to_string())).collect())
        };
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
    fn tiny_vocabulary_encodes_decodes_and_stops() {
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
    fn sentencepiece_and_missing_keys_are_clear_errors() {
        assert!(matches!(
            Tokenizer::from_gguf_metadata(&tiny_meta("llama")),
            Err(TokenizerError::UnsupportedTokenizer { model }) if model == "llama"
        ));
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

    #[test]
    fn pre_tokenizer_schemes_split_digits_as_their_models_do() {
        let words = |scheme: PreTokenizerScheme, text: &str| -> Vec<String> {
            use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
            let mut s = PreTokenizedString::from(text);
            scheme
                .pre_tokenizer()
                .unwrap()
                .pre_tokenize(&mut s)
                .unwrap();
            s.get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(w, _, _)| w.to_string())
                .collect()
        };
        use PreTokenizerScheme::*;
        assert_eq!(words(Gpt2, "in 2024"), ["in", "Ġ2024"]);
        assert_eq!(
            words(DigitsThenGpt2, "in 2024"),
            ["in", "Ġ", "2", "0", "2", "4"]
        );
        assert_eq!(words(Llama3, "in 12345"), ["in", "Ġ", "123", "45"]);
        assert_eq!(words(Qwen2, "I'LL 12"), ["I", "'LL", "Ġ", "1", "2"]);
        assert_eq!(words(Default, "x=12345!"), ["x", "=", "123", "45", "!"]);
        assert_eq!(PreTokenizerScheme::from_pre("no-such-pre"), Default);
    }
}
