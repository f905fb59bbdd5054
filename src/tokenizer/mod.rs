//! Text ↔ token ids: a wrapper around the `tokenizers` crate that also carries what a model
//! needs around its vocabulary — BOS/EOS policy, stop tokens, the chat template
//! ([`chat`]) and an incremental, UTF-8-safe detokenizer ([`detok`]).
//!
//! Two sources:
//! - a Hugging Face `tokenizer.json` (+ optional `tokenizer_config.json`): [`Tokenizer::from_hf_files`];
//! - a GGUF file's `tokenizer.ggml.*` metadata: [`Tokenizer::from_gguf_metadata`] builds an
//!   equivalent `tokenizers` pipeline for BPE (`gpt2`, `gemma4`) and WordPiece (`bert`)
//!   vocabularies, and llama.cpp's own SentencePiece tokenizer ([`spm`]) for `llama` ones (see
//!   [`gguf_vocab`]); all of them tokenize as llama.cpp does.
//!
//! Invariants:
//! - every id below [`Tokenizer::vocab_size`] that the vocabulary defines decodes; any other id is
//!   [`TokenizerError::UnknownTokenId`], never a panic and never silently dropped (the
//!   `tokenizers` crate itself drops unknown ids).
//! - for vocabularies with a byte table (every GGUF one, and HF byte-level BPE), `decode(ids)` is
//!   `String::from_utf8_lossy` of the concatenated token bytes — exactly what the `tokenizers`
//!   ByteLevel decoder computes — which is what lets the [`Detokenizer`] stream text whose
//!   concatenation equals `decode(ids)`. (SentencePiece: `decode` also drops the one space the
//!   encoder put in front of the text; the stream keeps it, see [`detok`].)

pub mod chat;
mod chat_limits;
pub mod detok;
pub mod gguf_vocab;
pub mod spm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::loader::gguf_meta::MetaError;

pub use chat::ChatMessage;
pub use detok::Detokenizer;

/// Everything that can go wrong loading a tokenizer, encoding, decoding or rendering a chat.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// An error from the `tokenizers` crate (loading, encoding, saving).
    #[error("tokenizers: {context}: {source}")]
    Hf {
        context: &'static str,
        #[source]
        source: tokenizers::Error,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A GGUF vocabulary kind that wllm cannot tokenize.
    #[error(
        "unsupported tokenizer model `{model}` (tokenizer.ggml.model); supported: `gpt2` and `gemma4` (BPE), `llama` (SentencePiece), `bert` (WordPiece)"
    )]
    UnsupportedTokenizer { model: String },
    /// The operation needs a Hugging Face `tokenizers` pipeline, and this vocabulary (llama.cpp's
    /// SentencePiece) has no exact one.
    #[error(
        "{what} needs a Hugging Face `tokenizers` pipeline; this SentencePiece vocabulary has none"
    )]
    NoHfPipeline { what: &'static str },
    /// The GGUF vocabulary metadata is inconsistent (lengths differ, bad merge, id out of range).
    #[error("invalid GGUF vocabulary: {0}")]
    InvalidVocab(String),
    #[error("token id {id} is not in the vocabulary (size {vocab_size})")]
    UnknownTokenId { id: u32, vocab_size: usize },
    /// A special token id in the metadata (BOS, EOS, EOT, …) past the end of the vocabulary.
    #[error("`{key}` = {id} is outside the vocabulary ({vocab_size} tokens)")]
    SpecialTokenOutOfRange {
        key: String,
        id: u64,
        vocab_size: usize,
    },
    /// The tokenizer can produce ids the model has no embedding row for.
    #[error(
        "the tokenizer defines {tokenizer} token ids, more than the model's vocabulary of {model}"
    )]
    LargerThanModel { tokenizer: usize, model: usize },
    #[error("the model has no chat template")]
    NoChatTemplate,
    /// The chat template failed to compile or render (including `raise_exception` calls).
    #[error("chat template: {0}")]
    Template(#[from] minijinja::Error),
}

impl TokenizerError {
    fn hf(context: &'static str) -> impl FnOnce(tokenizers::Error) -> TokenizerError {
        move |source| TokenizerError::Hf { context, source }
    }
}

/// Texts of end-of-turn markers used by common chat models. A control/special token with one of
/// these texts is a stop token even when the metadata names another EOS (SmolLM2's GGUF says
/// EOS 2 `<|im_end|>`, other conversions say `<|endoftext|>`; the model ends turns with `<|im_end|>`).
pub const END_OF_TURN_MARKERS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "</s>",
    "<|end_of_text|>",
    "<end_of_turn>",
];

/// The exact bytes of every token, indexed by id; `None` for ids the vocabulary does not define.
pub(crate) type TokenBytes = Vec<Option<Box<[u8]>>>;

/// A model's tokenizer: vocabulary, special tokens, BOS policy, stop tokens, chat template.
///
/// Cheap to clone (the vocabulary is shared).
#[derive(Clone)]
pub struct Tokenizer {
    backend: Backend,
    /// Exact bytes of every token, indexed by id, when each token decodes to fixed bytes
    /// (byte-level BPE, every GGUF vocabulary); `None` entries are ids the vocabulary does not
    /// define. `None` as a whole: a generic `tokenizers` decoder (never for [`Backend::Spm`]).
    token_bytes: Option<Arc<TokenBytes>>,
    /// One past the largest id the vocabulary defines.
    vocab_size: usize,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    /// Prepend BOS in [`Tokenizer::encode`] (unless the text already starts with it).
    add_bos: bool,
    /// Sorted, deduplicated.
    stop_ids: Vec<u32>,
    /// Special (control) token ids, sorted, deduplicated.
    special_ids: Vec<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("byte_level", &self.token_bytes.is_some())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.stop_ids)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// The engine that turns text into ids.
#[derive(Clone)]
enum Backend {
    /// A `tokenizers` pipeline: HF `tokenizer.json`, and GGUF BPE / WordPiece vocabularies.
    Hf {
        inner: Arc<tokenizers::Tokenizer>,
        /// `inner` with special-token text encoded as ordinary text
        /// ([`Tokenizer::encode_plain`]), built on first use.
        plain: Arc<std::sync::OnceLock<tokenizers::Tokenizer>>,
    },
    /// llama.cpp's SentencePiece (GGUF `llama` vocabularies); HF's `tokenizers` has no model
    /// that merges by score as llama.cpp does.
    Spm(Arc<spm::SpmModel>),
}

impl Backend {
    fn hf(inner: tokenizers::Tokenizer) -> Backend {
        Backend::Hf {
            inner: Arc::new(inner),
            plain: Arc::default(),
        }
    }

    fn token_text(&self, id: u32) -> Option<String> {
        match self {
            Backend::Hf { inner, .. } => inner.id_to_token(id),
            Backend::Spm(m) => m.token_text(id).map(str::to_string),
        }
    }
}

/// What a loader found besides the tokenizing backend; [`Tokenizer::assemble`] derives the rest.
struct Parts {
    backend: Backend,
    /// Byte-level token table, when the caller already has one (GGUF path).
    token_bytes: Option<TokenBytes>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    /// Extra stop ids named by the metadata (GGUF `eot_token_id`, `eom_token_id`).
    extra_stop_ids: Vec<u32>,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json`, plus `tokenizer_config.json` when given: chat
    /// template (a string, or a list of `{name, template}` where `default` wins), `bos_token` /
    /// `eos_token` (a string or `{content: ..}`), `add_bos_token`. Without `add_bos_token`, BOS is
    /// prepended exactly when `tokenizer.json`'s post-processor would prepend it. If the config has
    /// no template, a `chat_template.jinja` beside it is used (newer HF layout).
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config_json: Option<&Path>,
    ) -> Result<Tokenizer, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(TokenizerError::hf("loading tokenizer.json"))?;
        let config = match tokenizer_config_json {
            Some(p) => hf_config::HfTokenizerConfig::read(p)?,
            None => hf_config::HfTokenizerConfig::default(),
        };
        // A named BOS/EOS that the vocabulary lacks would silently never be added or stop
        // anything: refuse the file instead.
        let config_path = tokenizer_config_json.unwrap_or(tokenizer_json);
        let id_of = |key: &str, text: &Option<String>| -> Result<Option<u32>, TokenizerError> {
            let Some(text) = text else { return Ok(None) };
            match inner.token_to_id(text) {
                Some(id) => Ok(Some(id)),
                None => Err(TokenizerError::Config {
                    path: config_path.to_path_buf(),
                    message: format!("`{key}` {text:?} is not a token of tokenizer.json"),
                }),
            }
        };
        let bos_id = id_of("bos_token", &config.bos_token)?;
        let eos_id = id_of("eos_token", &config.eos_token)?;
        let add_bos = match config.add_bos_token {
            Some(v) => v,
            // What the post-processor adds around an empty input is exactly its special tokens.
            None => match (bos_id, inner.encode("", true)) {
                (Some(bos), Ok(enc)) => enc.get_ids().first() == Some(&bos),
                _ => false,
            },
        };
        Tokenizer::assemble(Parts {
            backend: Backend::hf(inner),
            token_bytes: None,
            bos_id,
            eos_id,
            add_bos,
            extra_stop_ids: Vec::new(),
            chat_template: config.chat_template,
        })
    }

    /// Build from GGUF `tokenizer.ggml.*` metadata. See [`gguf_vocab`] for what is supported.
    pub fn from_gguf_metadata(
        meta: &crate::loader::gguf_meta::GgufMetadata,
    ) -> Result<Tokenizer, TokenizerError> {
        gguf_vocab::build(meta)
    }

    fn assemble(p: Parts) -> Result<Tokenizer, TokenizerError> {
        let backend = p.backend;
        // Special tokens (HF special added tokens, GGUF control tokens) whose text ends a turn
        // stop generation.
        let mut specials: Vec<(u32, String)> = Vec::new();
        let (vocab_size, token_bytes) = match &backend {
            Backend::Hf { inner, .. } => {
                let vocab = inner.get_vocab(true);
                let vocab_size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
                let token_bytes = match p.token_bytes {
                    Some(t) => Some(t),
                    None if gguf_vocab::has_byte_level_decoder(inner) => {
                        let mut table: TokenBytes = vec![None; vocab_size];
                        for (text, &id) in &vocab {
                            table[id as usize] =
                                Some(gguf_vocab::byte_level_token_bytes(text).into());
                        }
                        Some(table)
                    }
                    None => None,
                };
                for (id, tok) in inner.get_added_tokens_decoder() {
                    if tok.special {
                        specials.push((id, tok.content));
                    }
                }
                (vocab_size, token_bytes.map(Arc::new))
            }
            Backend::Spm(m) => {
                for id in 0..m.len() as u32 {
                    if m.kind(id) == Some(spm::TokenKind::Control) {
                        specials.push((id, m.token_text(id).unwrap_or_default().to_string()));
                    }
                }
                (m.len(), Some(Arc::clone(m.token_bytes())))
            }
        };
        let vocab_size = token_bytes
            .as_ref()
            .map_or(vocab_size, |t| t.len().max(vocab_size));
        let text_of = |id: u32| -> Result<String, TokenizerError> {
            backend
                .token_text(id)
                .ok_or(TokenizerError::UnknownTokenId { id, vocab_size })
        };
        let bos = p
            .bos_id
            .map(|id| text_of(id).map(|t| (id, t)))
            .transpose()?;
        let eos = p
            .eos_id
            .map(|id| text_of(id).map(|t| (id, t)))
            .transpose()?;

        let mut stop_ids: Vec<u32> = p.eos_id.into_iter().chain(p.extra_stop_ids).collect();
        let mut special_ids: Vec<u32> = specials.iter().map(|(id, _)| *id).collect();
        special_ids.sort_unstable();
        special_ids.dedup();
        for (id, text) in specials {
            if END_OF_TURN_MARKERS.contains(&text.as_str()) {
                stop_ids.push(id);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(Tokenizer {
            backend,
            token_bytes,
            vocab_size,
            bos,
            eos,
            add_bos: p.add_bos && p.bos_id.is_some(),
            stop_ids,
            special_ids,
            chat_template: p.chat_template,
        })
    }

    /// Encode text; special-token text (e.g. `<|im_start|>`) becomes its single id. BOS is
    /// prepended when the model asks for it ([`Tokenizer::adds_bos`]) and the text does not
    /// already start with BOS (a rendered chat template often writes `{{ bos_token }}` itself).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.encode_raw(text)?;
        if let (true, Some((bos, _))) = (self.add_bos, &self.bos) {
            if ids.first() != Some(bos) {
                ids.insert(0, *bos);
            }
        }
        Ok(ids)
    }

    /// Encode text without adding BOS or any other post-processor token.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.backend {
            Backend::Hf { inner, .. } => {
                let enc = inner
                    .encode(text, false)
                    .map_err(TokenizerError::hf("encoding"))?;
                Ok(enc.get_ids().to_vec())
            }
            Backend::Spm(m) => m.encode(text, true),
        }
    }

    /// Encode text as llama.cpp's tokenizer tests do (`llama-tokenize --no-bos
    /// --no-parse-special`): no BOS or other added token, and the text of special tokens
    /// (`<|im_start|>`) split like any other text rather than matched as one token.
    /// User-defined (GGUF type 4, HF non-special added) tokens still match, as in llama.cpp.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.backend {
            Backend::Hf { inner, plain } => {
                let plain = plain.get_or_init(|| {
                    let mut t = (**inner).clone();
                    t.set_encode_special_tokens(true);
                    t
                });
                let enc = plain
                    .encode(text, false)
                    .map_err(TokenizerError::hf("encoding"))?;
                Ok(enc.get_ids().to_vec())
            }
            Backend::Spm(m) => m.encode(text, false),
        }
    }

    /// Decode ids to text, special tokens included. Unknown ids are an error. For a
    /// SentencePiece vocabulary that prefixes text with a space, the first token's leading
    /// space is dropped, as llama.cpp's detokenizer does.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        match &self.backend {
            Backend::Hf { inner, .. } if self.token_bytes.is_none() => {
                for &id in ids {
                    self.check_id(id)?;
                }
                inner
                    .decode(ids, false)
                    .map_err(TokenizerError::hf("decoding"))
            }
            _ => {
                let mut bytes = Vec::with_capacity(ids.len() * 4);
                for (i, &id) in ids.iter().enumerate() {
                    let mut b = self.bytes_of(id)?;
                    if i == 0 && self.strips_leading_space() {
                        b = b.strip_prefix(b" ").unwrap_or(b);
                    }
                    bytes.extend_from_slice(b);
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// Whether [`Tokenizer::decode`] drops the space the encoder put in front of the text.
    fn strips_leading_space(&self) -> bool {
        matches!(&self.backend, Backend::Spm(m) if m.add_space_prefix())
    }

    /// The token's string as the vocabulary stores it (byte-level BPE writes a leading space as
    /// `Ġ`: id 3575 of SmolLM2 is `"Ġcapital"`). For display text use [`Tokenizer::decode`].
    pub fn token_text(&self, id: u32) -> Result<String, TokenizerError> {
        self.backend
            .token_text(id)
            .ok_or(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size,
            })
    }

    /// The id of a vocabulary string (as [`Tokenizer::token_text`] writes it), if any.
    pub fn token_id(&self, token_text: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf { inner, .. } => inner.token_to_id(token_text),
            Backend::Spm(m) => m.token_id(token_text),
        }
    }

    /// The raw bytes a token decodes to, for vocabularies with a byte table (byte-level BPE,
    /// every GGUF vocabulary); `None` for unknown ids and for `tokenizer.json` decoders that are
    /// not byte-level (SentencePiece-style).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.as_ref()?.get(id as usize)?.as_deref()
    }

    /// Whether [`Tokenizer::token_bytes`] is available (every token decodes to fixed bytes).
    pub fn is_byte_level(&self) -> bool {
        self.token_bytes.is_some()
    }

    /// One past the largest token id (the size of the model's embedding table, normally).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|b| b.0)
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|e| e.0)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|b| b.1.as_str())
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|e| e.1.as_str())
    }

    /// Whether [`Tokenizer::encode`] prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Checks that every id this tokenizer can produce (special ids included: they lie below
    /// [`Tokenizer::vocab_size`]) has a row in a model's embedding of `model_vocab` rows.
    pub fn check_fits(&self, model_vocab: usize) -> Result<(), TokenizerError> {
        if self.vocab_size > model_vocab {
            return Err(TokenizerError::LargerThanModel {
                tokenizer: self.vocab_size,
                model: model_vocab,
            });
        }
        Ok(())
    }

    /// Ids that end generation: EOS, GGUF EOT/EOM, and special tokens whose text is an
    /// end-of-turn marker ([`END_OF_TURN_MARKERS`]). Sorted, no duplicates.
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Ids of special tokens (HF special added tokens, GGUF control tokens), ascending: text a
    /// grammar cannot spell, only name.
    pub fn special_token_ids(&self) -> &[u32] {
        &self.special_ids
    }

    pub fn is_stop_token(&self, id: u32) -> bool {
        self.stop_ids.binary_search(&id).is_ok()
    }

    /// The model's Jinja chat template, if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The underlying `tokenizers` pipeline; `None` for llama.cpp's SentencePiece, which has
    /// no exact `tokenizers` equivalent.
    pub fn hf_tokenizer(&self) -> Option<&tokenizers::Tokenizer> {
        match &self.backend {
            Backend::Hf { inner, .. } => Some(inner),
            Backend::Spm(_) => None,
        }
    }

    /// Write the pipeline as a Hugging Face `tokenizer.json` (BOS policy, stop ids and chat
    /// template are not part of that format; they live in `tokenizer_config.json`).
    pub fn save_tokenizer_json(&self, path: &Path) -> Result<(), TokenizerError> {
        match &self.backend {
            Backend::Hf { inner, .. } => inner
                .save(path, false)
                .map_err(TokenizerError::hf("saving tokenizer.json")),
            Backend::Spm(_) => Err(TokenizerError::NoHfPipeline {
                what: "saving tokenizer.json",
            }),
        }
    }

    /// A streaming detokenizer for one sequence.
    pub fn detokenizer(&self) -> Detokenizer {
        Detokenizer::new(self)
    }

    fn check_id(&self, id: u32) -> Result<(), TokenizerError> {
        match self.backend.token_text(id) {
            Some(_) => Ok(()),
            None => Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size,
            }),
        }
    }

    /// Bytes of a token of a byte-level vocabulary (empty slice if not byte-level).
    fn bytes_of(&self, id: u32) -> Result<&[u8], TokenizerError> {
        match &self.token_bytes {
            Some(table) => table.get(id as usize).and_then(|b| b.as_deref()).ok_or(
                TokenizerError::UnknownTokenId {
                    id,
                    vocab_size: self.vocab_size,
                },
            ),
            None => Ok(&[]),
        }
    }
}

/// `tokenizer_config.json`: only the fields wllm uses.
mod hf_config {
    use super::TokenizerError;
    use serde_json::Value;
    use std::path::Path;

    #[derive(Debug, Default)]
    pub(super) struct HfTokenizerConfig {
        pub chat_template: Option<String>,
        pub bos_token: Option<String>,
        pub eos_token: Option<String>,
        pub add_bos_token: Option<bool>,
    }

    impl HfTokenizerConfig {
        pub fn read(path: &Path) -> Result<Self, TokenizerError> {
            let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let json: Value =
                serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
                    path: path.to_path_buf(),
                    source,
                })?;
            let bad = |message: String| TokenizerError::Config {
                path: path.to_path_buf(),
                message,
            };
            let token = |key: &str| -> Result<Option<String>, TokenizerError> {
                match json.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(Value::Object(o)) => match o.get("content") {
                        Some(Value::String(s)) => Ok(Some(s.clone())),
                        _ => Err(bad(format!(
                            "`{key}` is an object without a string `content`"
                        ))),
                    },
                    Some(_) => Err(bad(format!("`{key}` is neither a string nor an object"))),
                }
            };
            let add_bos_token = match json.get("add_bos_token") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err(bad("`add_bos_token` is not a bool".into())),
            };
            let mut chat_template = match json.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => Some(pick_named_template(list).ok_or_else(|| {
                    bad("`chat_template` list has no `{name, template}` entry".into())
                })?),
                Some(_) => {
                    return Err(bad("`chat_template` is neither a string nor a list".into()));
                }
            };
            if chat_template.is_none() {
                let jinja = path.with_file_name("chat_template.jinja");
                if jinja.is_file() {
                    chat_template = Some(std::fs::read_to_string(&jinja).map_err(|source| {
                        TokenizerError::Io {
                            path: jinja,
                            source,
                        }
                    })?);
                }
            }
            Ok(HfTokenizerConfig {
                chat_template,
                bos_token: token("bos_token")?,
                eos_token: token("eos_token")?,
                add_bos_token,
            })
        }
    }

    /// HF's list form: `[{"name": "default", "template": ..}, {"name": "tool_use", ..}]`.
    /// The one named `default` wins, else the first.
    fn pick_named_template(list: &[Value]) -> Option<String> {
        let entries: Vec<(&str, &str)> = list
            .iter()
            .filter_map(|e| Some((e.get("name")?.as_str()?, e.get("template")?.as_str()?)))
            .collect();
        entries
            .iter()
            .find(|(name, _)| *name == "default")
            .or_else(|| entries.first())
            .map(|(_, t)| t.to_string())
    }
}
