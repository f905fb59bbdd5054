//! GGUF `tokenizer.ggml.*` metadata → a [`Tokenizer`], reproducing llama.cpp's tokenization.
//!
//! By `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen, StarCoder, DeepSeek, Falcon, …) as a
//!   `tokenizers` BPE pipeline; `pre` picks how text is split into words first
//!   ([`PreTokenizerScheme`]);
//! - `gemma4`: BPE over raw UTF-8 with SentencePiece's `▁` for spaces and `<0xNN>` byte
//!   fallback, split at newlines only ([`PreTokenizerScheme::Gemma4`]);
//! - `llama`: SentencePiece, with llama.cpp's own score-merging algorithm ([`spm`]);
//! - `bert`: WordPiece, as a `tokenizers` WordPiece pipeline (see [`build_wpm`]).
//!
//! Anything else (`t5`, `rwkv`, …) is [`TokenizerError::UnsupportedTokenizer`]. Keys read:
//! - `tokens` (id → vocabulary string), `token_type` (control / user-defined / byte / …;
//!   corrected by text as llama.cpp does: see [`token_kinds`]), `merges` (BPE, `"a b"` pairs in
//!   rank order), `scores` (SentencePiece), `pre`, `add_space_prefix`;
//! - `bos_token_id`, `eos_token_id`, `eot_token_id`, `eom_token_id`, `unknown_token_id` (each
//!   -1 for none, else inside the vocabulary: [`TokenizerError::SpecialTokenOutOfRange`]),
//!   `add_bos_token`;
//! - `tokenizer.chat_template`, and `general.name` (llama.cpp strips whitespace after Phi-3's
//!   special tokens).
//!
//! Control and user-defined tokens are matched in the raw text before anything else, so
//! `<|im_start|>` in a rendered chat becomes its one id; [`Tokenizer::encode_plain`] (llama.cpp's
//! `parse_special = false`) matches only the user-defined ones. Every vocabulary gets an exact
//! byte table (what llama.cpp's `token_to_piece` renders), so decoding and streaming are exact.
//! Cost: one pass over the vocabulary and merges, once per model load.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::spm::{self, SpmConfig, SpmModel, TokenKind};
use super::{Backend, Parts, TokenBytes, Tokenizer, TokenizerError};
use crate::loader::gguf_meta::GgufMetadata;

/// GPT-2's word-splitting regex (contractions, letters, digits, other symbols, whitespace).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's: contractions in either case, a letter run may take one leading non-letter, digits
/// in groups of up to three, newlines kept with the preceding whitespace. (The case-insensitive
/// group is spelled out as llama.cpp does: `(?i:'s)` would also match `'ſ`.)
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's with every digit on its own.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 3.5's: Qwen2's with combining marks (`\p{M}`) kept inside letter runs.
const QWEN35_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's fallback for `default` / unknown `pre`: punctuation runs, then GPT-2's regex,
/// then digit runs, then groups of three ASCII digits, each splitting the previous pieces.
const DEFAULT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];
/// Falcon's: punctuation runs (backtick included), GPT-2's regex, groups of three digits.
const FALCON_REGEXES: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_REGEX, r"[0-9][0-9][0-9]"];
/// CJK ideographs (and the ranges DeepSeek's tokenizers group with them), Hangul. llama.cpp
/// matches these regexes with every non-ASCII whitespace character replaced by U+000B, so
/// whitespace never matches a literal class: the range U+0800..=U+4E00 is written without its
/// whitespace (U+1680, U+2000..=U+200A, U+2028, U+2029, U+202F, U+205F, U+3000).
const DEEPSEEK_CJK: &str = concat!(
    r"[\x{4E00}-\x{9FA5}\x{800}-\x{167F}\x{1681}-\x{1FFF}\x{200B}-\x{2027}\x{202A}-\x{202E}",
    r"\x{2030}-\x{205E}\x{2060}-\x{2FFF}\x{3001}-\x{4E00}\x{AC00}-\x{D7FF}]+"
);
/// DeepSeek LLM's: newlines alone, then runs of (Latin, Greek, Cyrillic, … cased) letters, runs
/// of ASCII and full-width punctuation, trailing whitespace, CJK runs, digit runs — each with
/// at most one leading whitespace character.
const DEEPSEEK_LLM_REGEXES: &[&str] = &[
    r"[\r\n]",
    concat!(
        r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}",
        r"\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}",
        r"\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}",
        r"\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}",
        r"\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}",
        r"\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}",
        r"\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}",
        r"\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}",
        r"\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}",
        r"\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}",
        r"\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}",
        r"\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}",
        r"\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}",
        r"\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}",
        r"\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}",
        r"\x{1E900}-\x{1E943}]+"
    ),
    // (U+3000, the ideographic space, left out: see DEEPSEEK_CJK.)
    r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3001}-\x{3002}]+",
    r"\s+$",
    DEEPSEEK_CJK,
    r"\p{N}+",
];
/// DeepSeek Coder's: newlines alone, letter runs, punctuation runs (each with at most one
/// leading whitespace character), CJK runs, single digits.
const DEEPSEEK_CODER_REGEXES: &[&str] = &[
    r"[\r\n]",
    r"\s?\p{L}+",
    r"\s?\p{P}+",
    DEEPSEEK_CJK,
    r"\p{N}",
];

/// How a `tokenizer.ggml.pre` name splits text before BPE, as llama.cpp does for that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerScheme {
    /// GPT-2 regex (`gpt-2`, `gpt2`, `phi-2`, `mpt`, `olmo`, `jais`, …).
    Gpt2,
    /// Every digit alone, then the GPT-2 regex (`smollm`, `starcoder`, `refact`, `command-r`, …).
    DigitsThenGpt2,
    /// Llama 3 regex; whole words found in the vocabulary skip merging (`llama-bpe`, `llama3`, …).
    Llama3,
    /// Llama 3 regex, merges always applied (`dbrx`, `smaug-bpe`).
    Llama3Merged,
    /// Qwen2 regex (`qwen2`, `stablelm2`, `deepseek-r1-qwen`, `megrez`, …).
    Qwen2,
    /// Qwen 3.5 regex (`qwen35`).
    Qwen35,
    /// Falcon's regexes (`falcon`).
    Falcon,
    /// DeepSeek LLM's regexes (`deepseek-llm`).
    DeepseekLlm,
    /// DeepSeek Coder's regexes (`deepseek-coder`).
    DeepseekCoder,
    /// Runs of newlines and runs of everything else (`gemma4` vocabularies, any `pre`).
    Gemma4,
    /// llama.cpp's fallback sequence of regexes (`default`, and any name not known here).
    Default,
}

impl PreTokenizerScheme {
    /// The scheme for a `tokenizer.ggml.pre` value; unknown names fall back to
    /// [`PreTokenizerScheme::Default`] with a warning. (llama.cpp refuses unknown names; wllm
    /// keeps loading, since the default split is usually close.)
    pub fn from_pre(pre: &str) -> PreTokenizerScheme {
        use PreTokenizerScheme::*;
        match pre {
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "jina-es" | "jina-de"
            | "jina-v1-en" | "jina-v2-es" | "jina-v2-de" | "jina-v2-code" | "roberta-bpe"
            | "gigachat" | "exaone4" | "mellum" | "trillion" | "granite-docling" => Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => DigitsThenGpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" => Llama3,
            "dbrx" | "smaug-bpe" => Llama3Merged,
            "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "megrez" | "hunyuan" => Qwen2,
            "qwen35" => Qwen35,
            "falcon" => Falcon,
            "deepseek-llm" => DeepseekLlm,
            "deepseek-coder" => DeepseekCoder,
            "gemma4" => Gemma4,
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
        use PreTokenizerScheme::*;
        let split = |re: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
            Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::from)
            .map_err(TokenizerError::hf("compiling a pre-tokenizer regex"))
        };
        // Regex splits, then the byte-level mapping alone (the split has already happened).
        let regexes = |res: &[&str]| -> Result<PreTokenizerWrapper, TokenizerError> {
            let mut seq = res
                .iter()
                .map(|re| split(re))
                .collect::<Result<Vec<_>, _>>()?;
            seq.push(ByteLevel::new(false, true, false).into());
            Ok(Sequence::new(seq).into())
        };
        let gpt2 = || ByteLevel::new(false, true, true).into();
        Ok(match self {
            Gpt2 => gpt2(),
            DigitsThenGpt2 => Sequence::new(vec![Digits::new(true).into(), gpt2()]).into(),
            Llama3 | Llama3Merged => regexes(&[LLAMA3_REGEX])?,
            Qwen2 => regexes(&[QWEN2_REGEX])?,
            Qwen35 => regexes(&[QWEN35_REGEX])?,
            Falcon => regexes(FALCON_REGEXES)?,
            DeepseekLlm => regexes(DEEPSEEK_LLM_REGEXES)?,
            DeepseekCoder => regexes(DEEPSEEK_CODER_REGEXES)?,
            Default => regexes(DEFAULT_REGEXES)?,
            // No byte-level mapping: these vocabularies hold raw UTF-8 and `<0xNN>` tokens.
            Gemma4 => split(r"\n+")?,
        })
    }
}

/// Token texts llama.cpp treats as ending generation, and therefore as control tokens whatever
/// their GGUF type says (a user-defined `</s>` would otherwise be matched in plain text).
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>",
    "[e~[",
];

/// Each token's kind: its GGUF `token_type` (all normal when absent), corrected by text the
/// way llama.cpp corrects it, so that the same text is matched (or not) as special:
/// end-of-generation texts are control tokens; gpt-oss's `<|channel|>`, `<|message|>`,
/// `<|start|>`, `<|constrain|>` are user-defined; with `<|return|>` and `<|call|>` (or
/// `<|calls|>` and `<|flush|>`) present, `<|end|>` is user-defined; with `<|tool_response>`
/// present (Gemma 4), `</s>` is a normal token.
pub fn token_kinds(tokens: &[&str], types: &[i64]) -> Vec<TokenKind> {
    let has = |t: &str| tokens.contains(&t);
    let end_is_text =
        (has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>"));
    let s_is_text = has("<|tool_response>");
    tokens
        .iter()
        .enumerate()
        .map(|(i, &text)| {
            let kind = types
                .get(i)
                .map_or(TokenKind::Normal, |&t| TokenKind::from_gguf(t));
            match text {
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>" => {
                    TokenKind::UserDefined
                }
                "<|end|>" if end_is_text => TokenKind::UserDefined,
                "</s>" if s_is_text => TokenKind::Normal,
                t if END_OF_GENERATION_TEXTS.contains(&t) => TokenKind::Control,
                _ => kind,
            }
        })
        .collect()
}

/// Build the tokenizer; see the module docs.
pub(super) fn build(meta: &GgufMetadata) -> Result<Tokenizer, TokenizerError> {
    let model = meta.get_str("tokenizer.ggml.model")?;
    match model {
        "gpt2" | "gemma4" | "llama" | "bert" => {}
        other => {
            return Err(TokenizerError::UnsupportedTokenizer {
                model: other.to_string(),
            });
        }
    }
    let tokens = meta.get_str_array("tokenizer.ggml.tokens")?;
    let types = meta
        .opt(meta.get_i64_array("tokenizer.ggml.token_type"))?
        .unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(TokenizerError::InvalidVocab(format!(
            "{} token types for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    if u32::try_from(tokens.len()).is_err() {
        return Err(TokenizerError::InvalidVocab("more than 2^32 tokens".into()));
    }
    let kinds = token_kinds(&tokens, &types);
    let v = GgufVocab {
        meta,
        tokens,
        kinds,
    };
    match model {
        "llama" => build_spm(&v),
        "bert" => build_wpm(&v),
        _ => build_bpe(&v, model == "gemma4"),
    }
}

/// The vocabulary keys every model kind reads.
struct GgufVocab<'a> {
    meta: &'a GgufMetadata,
    tokens: Vec<&'a str>,
    kinds: Vec<TokenKind>,
}

impl GgufVocab<'_> {
    /// The special token id under `key`, or `default` when the key is absent (and `default` is
    /// inside the vocabulary). Converters write -1 (an i32, or u32 0xFFFFFFFF) for "no such
    /// token"; any other id past the vocabulary is an error. (llama.cpp warns and keeps its
    /// default id there; a BOS or EOS that silently goes missing changes every prompt or never
    /// stops a generation, so wllm refuses the file instead.)
    fn special_id(&self, key: &str, default: Option<u32>) -> Result<Option<u32>, TokenizerError> {
        let n_tokens = self.tokens.len();
        let Some(v) = self.meta.get(key) else {
            return Ok(default.filter(|&d| (d as usize) < n_tokens));
        };
        if v.as_i64() == Some(-1) || v.as_u64() == Some(u64::from(u32::MAX)) {
            return Ok(None);
        }
        let id = self.meta.get_u64(key)?;
        match u32::try_from(id) {
            Ok(small) if (small as usize) < n_tokens => Ok(Some(small)),
            _ => Err(TokenizerError::SpecialTokenOutOfRange {
                key: key.to_string(),
                id,
                vocab_size: n_tokens,
            }),
        }
    }

    /// The exact bytes of each token. `escape_spaces`: normal tokens write a space as `▁`
    /// (SentencePiece-style); otherwise they are GPT-2 byte-level strings.
    fn token_bytes(&self, escape_spaces: bool) -> Result<TokenBytes, TokenizerError> {
        self.tokens
            .iter()
            .zip(&self.kinds)
            .enumerate()
            .map(|(id, (&text, &kind))| {
                if text.is_empty() {
                    return Ok(None);
                }
                let bytes = match kind {
                    TokenKind::Normal | TokenKind::Byte if !escape_spaces => {
                        byte_level_token_bytes(text)
                    }
                    _ => spm::piece_bytes(id, text, kind, escape_spaces)?,
                };
                Ok(Some(bytes.into_boxed_slice()))
            })
            .collect()
    }

    /// BOS/EOS/EOT/EOM, the BOS policy and the chat template around a backend.
    fn finish(
        &self,
        backend: Backend,
        token_bytes: TokenBytes,
        add_bos_default: bool,
        default_bos_eos: (Option<u32>, Option<u32>),
    ) -> Result<Tokenizer, TokenizerError> {
        let meta = self.meta;
        let extra_stop_ids = [
            self.special_id("tokenizer.ggml.eot_token_id", None)?,
            self.special_id("tokenizer.ggml.eom_token_id", None)?,
        ]
        .into_iter()
        .flatten()
        .collect();
        let add_bos = meta
            .opt(meta.get_bool("tokenizer.ggml.add_bos_token"))?
            .unwrap_or(add_bos_default);
        Tokenizer::assemble(Parts {
            backend,
            token_bytes: Some(token_bytes),
            bos_id: self.special_id("tokenizer.ggml.bos_token_id", default_bos_eos.0)?,
            eos_id: self.special_id("tokenizer.ggml.eos_token_id", default_bos_eos.1)?,
            add_bos,
            extra_stop_ids,
            chat_template: meta
                .opt(meta.get_str("tokenizer.chat_template"))?
                .map(str::to_string),
        })
    }
}

/// `gpt2` (byte-level) and `gemma4` (raw UTF-8, `▁` for spaces, byte fallback) BPE.
fn build_bpe(v: &GgufVocab, gemma4: bool) -> Result<Tokenizer, TokenizerError> {
    let meta = v.meta;
    let scheme = if gemma4 {
        PreTokenizerScheme::Gemma4
    } else {
        PreTokenizerScheme::from_pre(
            meta.opt(meta.get_str("tokenizer.ggml.pre"))?
                .unwrap_or("default"),
        )
    };
    let mut vocab = Vocab::default();
    vocab.reserve(v.tokens.len());
    for (id, &text) in v.tokens.iter().enumerate() {
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
        vocab.insert(text.to_string(), id as u32);
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
        .byte_fallback(gemma4)
        .build()
        .map_err(TokenizerError::hf(
            "building the BPE model from GGUF tokens and merges",
        ))?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(scheme.pre_tokenizer()?));
    if gemma4 {
        let to_mark = Replace::new(" ", spm::SPACE_MARK.to_string())
            .map_err(TokenizerError::hf("building the space normalizer"))?;
        inner
            .with_normalizer(Some(to_mark))
            .map_err(TokenizerError::hf("setting the space normalizer"))?;
        let from_mark = Replace::new(spm::SPACE_MARK.to_string(), " ")
            .map_err(TokenizerError::hf("building the space decoder"))?;
        inner.with_decoder(Some(DecoderSequence::new(vec![
            from_mark.into(),
            ByteFallback::default().into(),
            Fuse::default().into(),
        ])));
    } else {
        inner.with_decoder(Some(ByteLevelDecoder::default()));
    }
    add_special_tokens(&mut inner, v)?;
    let token_bytes = v.token_bytes(gemma4)?;
    // BOS: the file's `add_bos_token` when present (convert_hf_to_gguf writes it from the HF
    // tokenizer), else llama.cpp's default for byte-level BPE, which is *no* BOS except for the
    // Llama 3 family. Byte-level BPE tokenizers on the Hugging Face side (GPT-2, SmolLM, Qwen,
    // StarCoder) have no post-processor that prepends BOS, and their chat templates write any
    // BOS they want into the text. So SmolLM2, whose bos id 1 is `<|im_start|>` and whose file
    // says add_bos_token=false, gets no extra `<|im_start|>` in front of every prompt — which is
    // what the HF reference fixtures (prompt_ids) show. Llama 3 GGUFs say add_bos_token=true, and
    // HF's Llama 3 tokenizer does prepend `<|begin_of_text|>`, so honouring the flag matches both.
    // Gemma 4 always gets BOS (llama.cpp overrides the flag for it).
    let mut t = v.finish(
        Backend::hf(inner),
        token_bytes,
        scheme == PreTokenizerScheme::Llama3,
        (None, None),
    )?;
    if gemma4 {
        t.add_bos = t.bos.is_some();
    }
    Ok(t)
}

/// Register control and unknown tokens as special added tokens and user-defined ones as plain
/// added tokens: both are matched in the raw text before pre-tokenization, and only the
/// special ones are left alone by [`Tokenizer::encode_plain`].
fn add_special_tokens(
    inner: &mut tokenizers::Tokenizer,
    v: &GgufVocab,
) -> Result<(), TokenizerError> {
    let mut special = Vec::new();
    let mut user_defined = Vec::new();
    for (&text, &kind) in v.tokens.iter().zip(&v.kinds) {
        match kind {
            _ if text.is_empty() => {}
            TokenKind::Control | TokenKind::Unknown => {
                special.push(AddedToken::from(text, true).normalized(false))
            }
            TokenKind::UserDefined => {
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
    Ok(())
}

/// `llama`: llama.cpp's SentencePiece ([`spm`]).
fn build_spm(v: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
    let meta = v.meta;
    let n = v.tokens.len();
    // Without scores llama.cpp scores every token 0: merges go leftmost first.
    let scores: Vec<f32> = match meta.get("tokenizer.ggml.scores") {
        None => vec![0.0; n],
        Some(value) => value
            .as_array()
            .and_then(|a| a.iter().map(|s| s.as_f64().map(|s| s as f32)).collect())
            .ok_or_else(|| {
                TokenizerError::InvalidVocab(
                    "tokenizer.ggml.scores is not an array of numbers".into(),
                )
            })?,
    };
    if scores.len() != n {
        let msg = format!("{} scores for {n} tokens", scores.len());
        return Err(TokenizerError::InvalidVocab(msg));
    }
    // llama.cpp drops whitespace after Phi-3's special tokens (its HF tokenizer says rstrip),
    // except after these.
    let name = meta
        .get("general.name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_lowercase();
    let phi3 = name.contains("phi-3") || name.contains("phi3");
    let rstrip = v
        .tokens
        .iter()
        .zip(&v.kinds)
        .map(|(&t, k)| phi3 && k.is_special() && !matches!(t, "<unk>" | "<s>" | "<|endoftext|>"))
        .collect();
    let model = SpmModel::new(SpmConfig {
        texts: v.tokens.iter().map(|t| t.to_string()).collect(),
        kinds: v.kinds.clone(),
        scores,
        add_space_prefix: meta
            .opt(meta.get_bool("tokenizer.ggml.add_space_prefix"))?
            .unwrap_or(true),
        unk: v.special_id("tokenizer.ggml.unknown_token_id", Some(0))?,
        rstrip,
    })?;
    let token_bytes = (**model.token_bytes()).clone();
    // llama.cpp's SentencePiece defaults: BOS 1, EOS 2, and BOS prepended.
    v.finish(
        Backend::Spm(std::sync::Arc::new(model)),
        token_bytes,
        true,
        (Some(1), Some(2)),
    )
}

/// `bert`: WordPiece. llama.cpp lowercases and strips accents (unless the file says not to),
/// splits at whitespace and punctuation, then takes the longest vocabulary piece at each point
/// of a word; a word with a gap is the unknown token. The GGUF writes a word-initial piece as
/// `▁piece` and a continuation as the bare piece; `tokenizers`' WordPiece spells them `piece`
/// and `##piece`, so its vocabulary is renamed that way (and [`Tokenizer::token_text`] gives
/// those names). Exact on llama.cpp's test suite, but not everywhere: llama.cpp strips accents
/// by keeping the first code point of each character's decomposition (a Hangul syllable
/// becomes its initial consonant), while `tokenizers` decomposes fully (NFD) and drops only
/// nonspacing marks, with older Unicode tables.
fn build_wpm(v: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
    let meta = v.meta;
    let unk = v
        .special_id("tokenizer.ggml.unknown_token_id", Some(100))?
        .ok_or_else(|| {
            TokenizerError::InvalidVocab("WordPiece vocabulary without an unknown token".into())
        })?;
    let mut vocab = Vocab::default();
    let mut unk_text = String::new();
    for (id, (&text, kind)) in v.tokens.iter().zip(&v.kinds).enumerate() {
        let name = match text.strip_prefix(spm::SPACE_MARK) {
            _ if kind.is_special() => text.to_string(),
            Some(word_start) => word_start.to_string(),
            None => format!("##{text}"),
        };
        if id == unk as usize {
            unk_text.clone_from(&name);
        }
        if !text.is_empty() && !vocab.contains_key(&name) {
            vocab.insert(name, id as u32);
        }
    }
    let wordpiece = WordPiece::builder()
        .vocab(vocab)
        .unk_token(unk_text)
        .continuing_subword_prefix("##".into())
        // llama.cpp has no length limit.
        .max_input_chars_per_word(usize::MAX)
        .build()
        .map_err(TokenizerError::hf("building the WordPiece model"))?;
    let lowercase = meta
        .opt(meta.get_bool("tokenizer.ggml.normalizer.lowercase"))?
        .unwrap_or(true);
    let strip_accents = meta
        .opt(meta.get_bool("tokenizer.ggml.normalizer.strip_accents"))?
        .unwrap_or(lowercase);
    let mut inner = tokenizers::Tokenizer::new(wordpiece);
    inner
        .with_normalizer(Some(BertNormalizer::new(
            true,
            true,
            Some(strip_accents),
            lowercase,
        )))
        .map_err(TokenizerError::hf("setting the BERT normalizer"))?;
    inner.with_pre_tokenizer(Some(BertPreTokenizer));
    inner.with_decoder(Some(WordPieceDecoder::default()));
    add_special_tokens(&mut inner, v)?;
    let token_bytes = v.token_bytes(true)?;
    // llama.cpp's WordPiece defaults: BOS is [CLS] (101), prepended.
    v.finish(Backend::hf(inner), token_bytes, true, (Some(101), None))
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
        assert_eq!(words(Falcon, "x=12345`"), ["x", "=", "123", "45", "`"]);
        assert_eq!(words(DeepseekCoder, "ab 12\n"), ["ab", "Ġ", "1", "2", "Ċ"]);
        assert_eq!(words(DeepseekLlm, "Hi (x)"), ["Hi", "Ġ(", "x", ")"]);
        // Qwen 3.5 keeps a combining accent inside the word; Qwen2 starts a new piece at it.
        assert_eq!(words(Qwen35, "ke\u{301}x 1").len(), 3);
        assert_eq!(words(Qwen2, "ke\u{301}x 1").len(), 4);
        assert_eq!(words(Gemma4, "a b\n\nc"), ["a b", "\n\n", "c"]);
        assert_eq!(PreTokenizerScheme::from_pre("no-such-pre"), Default);
    }

    #[test]
    fn token_kinds_follow_llama_cpp_text_corrections() {
        use TokenKind::*;
        let tokens = [
            "</s>",
            "<|channel|>",
            "<|end|>",
            "<|return|>",
            "<|call|>",
            "x",
        ];
        let kinds = token_kinds(&tokens, &[4, 3, 3, 3, 3, 1]);
        assert_eq!(
            kinds,
            [Control, UserDefined, UserDefined, Control, Control, Normal]
        );
        let kinds = token_kinds(&["</s>", "<|tool_response>", "<|end|>"], &[]);
        assert_eq!(kinds, [Normal, Control, Control]);
    }
}
