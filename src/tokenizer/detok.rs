//! Incremental detokenization: token ids in one at a time, text deltas out, never half a
//! character.
//!
//! Byte-level BPE tokens are byte strings, and a multi-byte character (é, 你, 😀) can be split
//! across tokens. Two modes:
//! - **byte-level** (every GGUF vocabulary — byte-level BPE, SentencePiece's `▁`/`<0xNN>`
//!   pieces — and HF tokenizers whose decoder is `ByteLevel`): each token's bytes are appended
//!   to a small pending buffer, and the complete UTF-8 prefix is emitted; only an unfinished
//!   character's 1–3 bytes are held back. Invalid bytes become U+FFFD exactly where
//!   `String::from_utf8_lossy` puts them, so the concatenation of all deltas plus
//!   [`Detokenizer::finish`] equals [`Tokenizer::decode`] of all ids — except that for a GGUF
//!   SentencePiece vocabulary the stream keeps the first token's leading space, which `decode`
//!   drops: streamed tokens continue a prompt (" Paris" after "The capital is"), and llama.cpp's
//!   server streams `token_to_piece` without that strip too. O(token length) per token.
//! - **window** (other decoders, e.g. SentencePiece's `▁`/byte-fallback): vLLM's prefix/read
//!   offsets — decode the last emitted tokens alone and with the new ones, emit the difference
//!   unless it ends in U+FFFD (an unfinished byte sequence). The window holds only the tokens
//!   since the last emission, so the cost per token is bounded by the longest run of tokens that
//!   did not complete a character.

use std::sync::Arc;

use super::{Backend, TokenBytes, Tokenizer, TokenizerError};

/// Streaming detokenizer for one sequence; see the module docs.
pub struct Detokenizer {
    mode: Mode,
}

enum Mode {
    Bytes {
        table: Arc<TokenBytes>,
        stream: Utf8Stream,
    },
    Window(Window),
}

impl Detokenizer {
    /// A detokenizer for `tokenizer` (it shares the vocabulary; no borrow is kept).
    pub fn new(tokenizer: &Tokenizer) -> Detokenizer {
        let bytes = |table: &Arc<TokenBytes>| Mode::Bytes {
            table: Arc::clone(table),
            stream: Utf8Stream::default(),
        };
        let mode = match (&tokenizer.token_bytes, &tokenizer.backend) {
            (Some(table), _) => bytes(table),
            (None, Backend::Spm(m)) => bytes(m.token_bytes()),
            (None, Backend::Hf { inner, .. }) => Mode::Window(Window {
                inner: Arc::clone(inner),
                vocab_size: tokenizer.vocab_size,
                ids: Vec::new(),
                prefix: 0,
                read: 0,
            }),
        };
        Detokenizer { mode }
    }

    /// Feed one token; returns the text it completed (often empty while a character is split).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        match &mut self.mode {
            Mode::Bytes { table, stream } => {
                let vocab_size = table.len();
                let bytes = table
                    .get(id as usize)
                    .and_then(|b| b.as_deref())
                    .ok_or(TokenizerError::UnknownTokenId { id, vocab_size })?;
                Ok(stream.push(bytes))
            }
            Mode::Window(w) => w.push(id),
        }
    }

    /// End of sequence: the text still held back (an unfinished character becomes U+FFFD).
    /// The detokenizer is empty afterwards and can be reused.
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        match &mut self.mode {
            Mode::Bytes { stream, .. } => Ok(stream.finish()),
            Mode::Window(w) => w.finish(),
        }
    }
}

/// Bytes in, complete UTF-8 text out. Holds at most the 3 bytes of an unfinished character.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Append bytes; returns every character they complete. A byte sequence that can no longer
    /// become a character is emitted as one U+FFFD per maximal invalid subpart, as
    /// `String::from_utf8_lossy` does.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid_end = start + e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + n;
                        }
                        // The tail could still become a character: wait for more bytes.
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Flush: whatever is held back, as U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Bytes held back (0–3).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// vLLM-style window over a generic `tokenizers` decoder.
struct Window {
    inner: Arc<tokenizers::Tokenizer>,
    vocab_size: usize,
    /// Tokens from the start of the last emitted chunk on.
    ids: Vec<u32>,
    /// `ids[prefix..read]` is the chunk already emitted (kept as left context for the decoder).
    prefix: usize,
    read: usize,
}

impl Window {
    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(TokenizerError::hf("decoding"))
    }

    fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        if self.inner.id_to_token(id).is_none() {
            return Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.ids.push(id);
        let before = self.decode(&self.ids[self.prefix..self.read])?;
        let after = self.decode(&self.ids[self.prefix..])?;
        if after.len() <= before.len() || after.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(String::new());
        }
        let delta = match after.get(before.len()..) {
            Some(d) => d.to_string(),
            None => return Ok(String::new()),
        };
        // The new tokens become the left context; drop what is before them.
        self.ids.drain(..self.read);
        self.prefix = 0;
        self.read = self.ids.len();
        Ok(delta)
    }

    fn finish(&mut self) -> Result<String, TokenizerError> {
        let before = self.decode(&self.ids[self.prefix..self.read])?;
        let after = self.decode(&self.ids[self.prefix..])?;
        self.ids.clear();
        self.prefix = 0;
        self.read = 0;
        Ok(after.get(before.len()..).unwrap_or_default().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream_all(chunks: &[&[u8]]) -> (Vec<String>, String) {
        let mut s = Utf8Stream::default();
        let deltas: Vec<String> = chunks.iter().map(|c| s.push(c)).collect();
        let tail = s.finish();
        (deltas, tail)
    }

    #[test]
    fn split_characters_are_held_until_complete() {
        // "é" = C3 A9, "€" = E2 82 AC, "😀" = F0 9F 98 80, "你" = E4 BD A0.
        let (d, tail) = stream_all(&[b"caf\xC3", b"\xA9 \xE2", b"\x82", b"\xAC!"]);
        assert_eq!(d, ["caf", "é ", "", "€!"]);
        assert_eq!(tail, "");
        let (d, tail) = stream_all(&[b"\xF0", b"\x9F", b"\x98", b"\x80\xE4\xBD", b"\xA0"]);
        assert_eq!(d, ["", "", "", "😀", "你"]);
        assert_eq!(tail, "");
    }

    #[test]
    fn invalid_bytes_become_replacement_chars_like_from_utf8_lossy() {
        // A stray continuation byte and an impossible byte: replaced at once.
        let (d, _) = stream_all(&[b"a\x80", b"\xFFb"]);
        assert_eq!(d, ["a\u{FFFD}", "\u{FFFD}b"]);
        // A started sequence broken by ASCII: one U+FFFD for the two bytes, then the ASCII.
        let (d, _) = stream_all(&[b"\xE2\x82", b"A"]);
        assert_eq!(d, ["", "\u{FFFD}A"]);
        // Unfinished at the end: flushed by finish() as one U+FFFD.
        let (d, tail) = stream_all(&[b"ok\xF0\x9F"]);
        assert_eq!((d[0].as_str(), tail.as_str()), ("ok", "\u{FFFD}"));
        assert_eq!(tail, String::from_utf8_lossy(b"\xF0\x9F"));
    }

    #[test]
    fn never_holds_more_than_three_bytes() {
        let mut s = Utf8Stream::default();
        for b in "a😀é你".bytes().chain([0xF0, 0x9F, 0x98]) {
            let _ = s.push(&[b]);
            assert!(s.pending_len() <= 3);
        }
        assert_eq!(s.pending_len(), 3);
    }

    proptest! {
        #[test]
        fn any_byte_chunks_concatenate_to_lossy_decode(
            chunks in prop::collection::vec(
                prop::collection::vec(
                    prop_oneof![
                        Just(0xE4u8), Just(0xBD), Just(0xA0), Just(0xF0), Just(0x9F), Just(0x98),
                        Just(0x80), Just(0xC3), Just(0xA9), Just(b'a'), any::<u8>(),
                    ],
                    0..6,
                ),
                0..40,
            )
        ) {
            let mut s = Utf8Stream::default();
            let mut text = String::new();
            for c in &chunks {
                let delta = s.push(c);
                text.push_str(&delta);
            }
            text.push_str(&s.finish());
            let all: Vec<u8> = chunks.concat();
            prop_assert_eq!(text, String::from_utf8_lossy(&all).into_owned());
        }
    }

    /// A SentencePiece-style `tokenizer.json` (byte fallback, `▁` for space): window mode.
    fn sentencepiece_tokenizer() -> Tokenizer {
        let mut vocab = serde_json::Map::new();
        for (i, t) in ["<unk>", "<s>", "</s>", "▁a", "b", "▁"].iter().enumerate() {
            vocab.insert(t.to_string(), i.into());
        }
        for b in 0..=255u32 {
            vocab.insert(format!("<0x{b:02X}>"), (6 + b).into());
        }
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
            "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "vocab": vocab, "merges": []}
        });
        let path = std::env::temp_dir().join(format!("wllm-detok-sp-{}.json", std::process::id()));
        std::fs::write(&path, json.to_string()).unwrap();
        let t = Tokenizer::from_hf_files(&path, None).unwrap();
        let _ = std::fs::remove_file(&path);
        t
    }

    #[test]
    fn window_mode_holds_split_characters_for_generic_decoders() {
        let t = sentencepiece_tokenizer();
        assert!(!t.is_byte_level());
        let byte = |b: u32| 6 + b;
        // "a" "b" " a" "€"(E2 82 AC) "b"
        let ids = [3, 4, 3, byte(0xE2), byte(0x82), byte(0xAC), 4];
        let mut d = t.detokenizer();
        let deltas: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
        assert_eq!(deltas, ["a", "b", " a", "", "", "€", "b"]);
        assert_eq!(d.finish().unwrap(), "");
        assert_eq!(deltas.concat(), t.decode(&ids).unwrap());
        // An unfinished character at the end comes out of finish().
        let mut d = t.detokenizer();
        assert_eq!(d.push(3).unwrap(), "a");
        assert_eq!(d.push(byte(0xE2)).unwrap(), "");
        assert_eq!(d.finish().unwrap(), "\u{FFFD}");
        assert!(matches!(
            d.push(9999),
            Err(TokenizerError::UnknownTokenId { id: 9999, .. })
        ));
    }
}
