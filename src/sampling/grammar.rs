//! Structured output: a [`Grammar`] a request's text must follow, enforced token by token with
//! llguidance's matcher over this model's own vocabulary.
//!
//! [`GrammarCompiler`] is built once per model (lazily, at the first constrained request): a
//! token trie of every token's bytes (special tokens under llguidance's 0xFF marker, so a
//! grammar can only name them, never spell them), with the model's stop tokens as its EOS set.
//! Each request gets a [`GrammarState`]: after every generated token, [`GrammarState::mask`]
//! says which tokens may come next, as a bitmask (bit v % 32 of word v / 32), the form the GPU's
//! `logit_adjust` kernel and the CPU sampler both apply.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};

use crate::tokenizer::Tokenizer;

/// What a request's generated text must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this JSON Schema.
    JsonSchema(serde_json::Value),
    /// Text matching this regular expression (anchored at both ends).
    Regex(String),
    /// A grammar in llguidance's Lark syntax (may embed `%json {schema}`).
    Lark(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
}

/// JSON layout when a schema does not say (llguidance's `x-guidance`): OpenAI's separators and
/// no free whitespace, which a small model would otherwise fill with newlines until its budget
/// runs out.
fn json_layout() -> serde_json::Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

impl Grammar {
    fn top_level(&self) -> Result<TopLevelGrammar, String> {
        let schema = |mut s: serde_json::Value| -> Result<TopLevelGrammar, String> {
            match &mut s {
                serde_json::Value::Object(m) => {
                    m.entry("x-guidance").or_insert_with(json_layout);
                }
                serde_json::Value::Bool(_) => {}
                _ => return Err("a JSON schema must be an object or a boolean".into()),
            }
            Ok(TopLevelGrammar::from_json_schema(s))
        };
        match self {
            Grammar::JsonObject => schema(serde_json::json!({ "type": "object" })),
            Grammar::JsonSchema(s) => schema(s.clone()),
            Grammar::Regex(rx) => Ok(TopLevelGrammar::from_regex(rx)),
            Grammar::Lark(g) => Ok(TopLevelGrammar::from_lark(g.clone())),
            Grammar::Choice(choices) => {
                if choices.is_empty() {
                    return Err("a choice needs at least one string".into());
                }
                // Lark string literals take JSON's escapes.
                let alts: Vec<String> = choices
                    .iter()
                    .map(|c| serde_json::Value::String(c.clone()).to_string())
                    .collect();
                Ok(TopLevelGrammar::from_lark(format!(
                    "start: {}",
                    alts.join(" | ")
                )))
            }
        }
    }
}

/// llguidance's view of a [`Tokenizer`]: the trie, and tokenization for forced text.
struct VocabEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // Grammar text is plain text: `<|im_end|>` spelled in a grammar stays characters.
        self.tokenizer
            .encode_plain(&String::from_utf8_lossy(s))
            .unwrap_or_default()
    }
}

/// The bytes a token stands for, for vocabularies without a byte table (SentencePiece-style
/// `tokenizer.json`): `<0xAB>` is that byte, `▁` a space.
fn token_bytes_from_text(text: &str) -> Vec<u8> {
    if let Some(hex) = text.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'))
        && hex.len() == 2
        && let Ok(b) = u8::from_str_radix(hex, 16)
    {
        return vec![b];
    }
    text.replace('\u{2581}', " ").into_bytes()
}

/// Compiles [`Grammar`]s for one model's vocabulary.
pub struct GrammarCompiler {
    factory: ParserFactory,
    /// The model's vocabulary size (the logits' width), at least the tokenizer's.
    vocab: usize,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("vocab", &self.vocab)
            .finish()
    }
}

impl GrammarCompiler {
    /// The trie of `tokenizer`'s tokens, for logits `model_vocab` wide (ids past the
    /// tokenizer's vocabulary are never allowed). `stop_ids` end a grammar that is complete.
    pub fn new(
        tokenizer: &Tokenizer,
        model_vocab: usize,
        stop_ids: &[u32],
    ) -> Result<Self, String> {
        let n = tokenizer.vocab_size();
        let specials = tokenizer.special_token_ids();
        let mut words: Vec<Vec<u8>> = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let word = if specials.binary_search(&id).is_ok() {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend(tokenizer.token_text(id).unwrap_or_default().into_bytes());
                w
            } else if tokenizer.is_byte_level() {
                tokenizer
                    .token_bytes(id)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default()
            } else {
                token_bytes_from_text(&tokenizer.token_text(id).unwrap_or_default())
            };
            words.push(word);
        }
        let eos = *stop_ids
            .first()
            .ok_or("the model has no end-of-sequence token to end a grammar with")?;
        let trie = TokTrie::from(&TokRxInfo::new(n as u32, eos), &words).with_eos_tokens(stop_ids);
        let env: TokEnv = Arc::new(VocabEnv {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Self {
            factory,
            vocab: model_vocab.max(n),
        })
    }

    /// A fresh state for `grammar`, or why the grammar is refused (syntax, an unsupported
    /// schema keyword, over llguidance's size limits).
    pub fn compile(&self, grammar: &Grammar) -> Result<GrammarState, String> {
        let top = grammar.top_level()?;
        let parser = self.factory.create_parser(top).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(GrammarState {
            matcher,
            words: self.vocab.div_ceil(32),
        })
    }
}

/// Where one request is in its grammar.
#[derive(Clone)]
pub struct GrammarState {
    matcher: Matcher,
    /// Mask words per row: the model's vocabulary / 32, rounded up.
    words: usize,
}

impl std::fmt::Debug for GrammarState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarState")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl GrammarState {
    /// Words of one mask row.
    pub fn mask_words(&self) -> usize {
        self.words
    }

    /// Writes the tokens allowed next into `out` (`mask_words` words; bit v % 32 of word
    /// v / 32 set = token v allowed). A finished grammar allows only its stop tokens; one in an
    /// error state allows them too, so the request ends.
    pub fn fill_mask(&mut self, out: &mut [u32]) -> Result<(), String> {
        out.fill(0);
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())?;
        let src = mask.as_slice();
        let n = src.len().min(out.len());
        out[..n].copy_from_slice(&src[..n]);
        Ok(())
    }

    /// The mask as a new vector (see [`GrammarState::fill_mask`]).
    pub fn mask(&mut self) -> Result<Vec<u32>, String> {
        let mut m = vec![0; self.words];
        self.fill_mask(&mut m)?;
        Ok(m)
    }

    /// Advances past a generated token; an error when the grammar does not allow it.
    pub fn commit(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// The grammar is complete and allows nothing more (the request ends here).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Sets every logit the mask disallows to -inf (what `shaders/logit_adjust.wgsl` does on the
/// GPU).
pub fn apply_mask(logits: &mut [f32], mask: &[u32]) {
    for (v, l) in logits.iter_mut().enumerate() {
        let allowed = mask.get(v / 32).is_some_and(|w| w >> (v % 32) & 1 == 1);
        if !allowed {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// OpenAI's cap on `logit_bias` entries per request.
pub const MAX_LOGIT_BIAS: usize = 300;

/// `logit_bias` entries sorted by token with duplicates summed (the form the kernel binary
/// searches).
pub fn merge_biases(biases: &[(u32, f32)]) -> Vec<(u32, f32)> {
    let mut v = biases.to_vec();
    v.sort_by_key(|b| b.0);
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(v.len());
    for (t, b) in v {
        match out.last_mut() {
            Some(last) if last.0 == t => last.1 += b,
            _ => out.push((t, b)),
        }
    }
    out
}

/// Adds merged biases to their logits (after the mask: a banned token stays -inf).
pub fn apply_biases(logits: &mut [f32], biases: &[(u32, f32)]) {
    for &(t, b) in biases {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
}
