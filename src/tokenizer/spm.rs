//! llama.cpp's SentencePiece tokenizer, for GGUF vocabularies with `tokenizer.ggml.model =
//! "llama"` (Llama 1/2, Mistral, Phi-3, Baichuan, …).
//!
//! This is not Hugging Face's `tokenizers` Unigram or BPE model: llama.cpp merges adjacent
//! symbols greedily by the *score* of the merged string, and that is what the GGUF's ids were
//! checked against. The steps, as llama.cpp takes them:
//! 1. special-token text is cut out of the input first ([`SpecialTokens`]): user-defined tokens
//!    always, control and unknown tokens only when special text is parsed;
//! 2. each remaining text piece gets a leading space when it starts the input or follows a
//!    special token (`add_space_prefix`), and every space becomes `▁` (U+2581);
//! 3. the piece is split into characters; the adjacent pair whose concatenation is the
//!    highest-scoring vocabulary entry is merged (ties: leftmost), repeatedly, with a heap —
//!    O(n log n) for n characters;
//! 4. a final symbol that is no token is emitted as its bytes' `<0xNN>` tokens (byte fallback).
//!
//! Decoding is a byte table ([`piece_bytes`]): `▁` → space, `<0xNN>` → the byte, control and
//! user-defined tokens → their text. [`super::Tokenizer::decode`] also drops the one leading
//! space step 2 added, as llama.cpp's detokenizer does.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use super::{TokenBytes, TokenizerError};

/// SentencePiece's visible space.
pub const SPACE_MARK: char = '\u{2581}';

/// A GGUF `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`), after llama.cpp's
/// text-based corrections (`gguf_vocab::token_kinds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
    Undefined,
}

impl TokenKind {
    pub fn from_gguf(token_type: i64) -> TokenKind {
        match token_type {
            1 => TokenKind::Normal,
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Undefined,
        }
    }

    /// Whether the token's text is cut out of the input before tokenization.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            TokenKind::Control | TokenKind::UserDefined | TokenKind::Unknown
        )
    }
}

/// `<0xNN>` → the byte (either hex case, as llama.cpp parses it).
pub fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The bytes token `id` decodes to, special tokens rendered (llama.cpp's `token_to_piece` with
/// `special = true`). `escape_spaces`: normal tokens spell spaces as `▁`.
pub fn piece_bytes(
    id: usize,
    text: &str,
    kind: TokenKind,
    escape_spaces: bool,
) -> Result<Vec<u8>, TokenizerError> {
    Ok(match kind {
        TokenKind::Control | TokenKind::Unknown | TokenKind::UserDefined => {
            text.as_bytes().to_vec()
        }
        TokenKind::Normal if escape_spaces => text.replace(SPACE_MARK, " ").into_bytes(),
        TokenKind::Normal => text.as_bytes().to_vec(),
        TokenKind::Byte => vec![parse_byte_token(text).ok_or_else(|| {
            TokenizerError::InvalidVocab(format!(
                "token {id} {text:?} has the byte type but is not `<0xNN>`"
            ))
        })?],
        // llama.cpp renders nothing for these.
        TokenKind::Unused | TokenKind::Undefined => Vec::new(),
    })
}

/// One special token as the matcher sees it.
#[derive(Debug, Clone, Copy)]
struct Special {
    id: u32,
    /// Control or unknown: matched only when special text is parsed.
    parse_only: bool,
    /// Whitespace after the token's text is dropped.
    rstrip: bool,
}

/// A piece of input after special tokens are cut out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Token(u32),
}

/// Cuts special tokens out of text, longest texts first, as llama.cpp's
/// `tokenizer_st_partition` does: all occurrences of the longest special texts are cut from
/// every text piece, then the next length in what remains, and so on. Tokens of one length are
/// found in a single left-to-right scan (llama.cpp takes them one by one, in an unspecified
/// order; the two differ only when two equal-length special texts overlap in the input).
/// Cost: O(text length × distinct special-text lengths).
#[derive(Debug, Default)]
pub struct SpecialTokens {
    /// Longest text first.
    by_len: Vec<SameLength>,
}

/// The special tokens whose texts have one length.
#[derive(Debug)]
struct SameLength {
    /// Bytes.
    len: usize,
    /// Bytes that can start such a text: a quick test before hashing a slice.
    first: Box<[bool; 256]>,
    tokens: HashMap<Box<str>, Special>,
    /// Some are user-defined, i.e. matched even when special text is not parsed.
    any_user_defined: bool,
}

/// C's `isspace` in the "C" locale, which llama.cpp's rstrip uses.
fn c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

impl SpecialTokens {
    /// `tokens`: (id, text, kind, rstrip) of every special token (see [`TokenKind::is_special`]).
    pub fn new(tokens: impl IntoIterator<Item = (u32, String, TokenKind, bool)>) -> SpecialTokens {
        let mut groups: HashMap<usize, SameLength> = HashMap::new();
        for (id, text, kind, rstrip) in tokens {
            if text.is_empty() || !kind.is_special() {
                continue;
            }
            let g = groups.entry(text.len()).or_insert_with(|| SameLength {
                len: text.len(),
                first: Box::new([false; 256]),
                tokens: HashMap::new(),
                any_user_defined: false,
            });
            g.first[text.as_bytes()[0] as usize] = true;
            let parse_only = kind != TokenKind::UserDefined;
            g.any_user_defined |= !parse_only;
            let special = Special {
                id,
                parse_only,
                rstrip,
            };
            g.tokens.insert(text.into_boxed_str(), special);
        }
        let mut by_len: Vec<SameLength> = groups.into_values().collect();
        by_len.sort_by_key(|g| std::cmp::Reverse(g.len));
        SpecialTokens { by_len }
    }

    /// Split `text` into text pieces and special tokens.
    pub fn split<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Piece<'a>> {
        let mut pieces = Vec::new();
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        for g in &self.by_len {
            if !parse_special && !g.any_user_defined {
                continue;
            }
            let mut out = Vec::with_capacity(pieces.len());
            for piece in pieces {
                match piece {
                    Piece::Text(t) => g.cut(t, parse_special, &mut out),
                    token => out.push(token),
                }
            }
            pieces = out;
        }
        pieces
    }
}

impl SameLength {
    /// Cut this group's texts out of `t`.
    fn cut<'a>(&self, t: &'a str, parse_special: bool, out: &mut Vec<Piece<'a>>) {
        let len = self.len;
        let bytes = t.as_bytes();
        let (mut start, mut i) = (0, 0);
        while i + len <= bytes.len() {
            let hit = self.first[bytes[i] as usize]
                .then(|| t.get(i..i + len).and_then(|w| self.tokens.get(w)))
                .flatten()
                .filter(|s| parse_special || !s.parse_only);
            let Some(s) = hit else {
                i += 1;
                continue;
            };
            if start < i {
                out.push(Piece::Text(&t[start..i]));
            }
            out.push(Piece::Token(s.id));
            i += len;
            if s.rstrip {
                while i < bytes.len() && c_space(bytes[i]) {
                    i += 1;
                }
            }
            start = i;
        }
        if start < bytes.len() {
            out.push(Piece::Text(&t[start..]));
        }
    }
}

/// What [`SpmModel::new`] needs; `texts`, `kinds` and `scores` are indexed by token id.
pub struct SpmConfig {
    pub texts: Vec<String>,
    pub kinds: Vec<TokenKind>,
    pub scores: Vec<f32>,
    /// Prepend a space to text at the start of the input and after special tokens.
    pub add_space_prefix: bool,
    /// Emitted for a character without a token when the vocabulary has no `<0xNN>` tokens.
    pub unk: Option<u32>,
    /// Special tokens whose following whitespace is dropped (llama.cpp's Phi-3 rule).
    pub rstrip: Vec<bool>,
}

/// A SentencePiece vocabulary, ready to encode; see the module docs.
#[derive(Debug)]
pub struct SpmModel {
    texts: Vec<Box<str>>,
    kinds: Vec<TokenKind>,
    scores: Vec<f32>,
    /// Text → id; a repeated text keeps its last id, as llama.cpp's map does.
    ids: HashMap<Box<str>, u32>,
    /// The token for each byte in byte fallback (`<0xNN>`, or the byte's own one-char token).
    byte_ids: [Option<u32>; 256],
    unk: Option<u32>,
    specials: SpecialTokens,
    add_space_prefix: bool,
    table: Arc<TokenBytes>,
}

impl SpmModel {
    pub fn new(c: SpmConfig) -> Result<SpmModel, TokenizerError> {
        let n = c.texts.len();
        if c.kinds.len() != n || c.scores.len() != n || c.rstrip.len() != n {
            return Err(TokenizerError::InvalidVocab(format!(
                "{n} tokens but {} types, {} scores",
                c.kinds.len(),
                c.scores.len()
            )));
        }
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::InvalidVocab("more than 2^32 tokens".into()));
        }
        if let Some(i) = c.scores.iter().position(|s| s.is_nan()) {
            return Err(TokenizerError::InvalidVocab(format!(
                "token {i} has a NaN score"
            )));
        }
        if let Some(unk) = c.unk.filter(|&u| u as usize >= n) {
            return Err(TokenizerError::InvalidVocab(format!(
                "unknown token {unk} is outside the vocabulary"
            )));
        }
        let mut ids = HashMap::with_capacity(n);
        let mut table: TokenBytes = Vec::with_capacity(n);
        for (id, (text, &kind)) in c.texts.iter().zip(&c.kinds).enumerate() {
            table.push(Some(piece_bytes(id, text, kind, true)?.into_boxed_slice()));
            if !text.is_empty() {
                ids.insert(text.as_str().into(), id as u32);
            }
        }
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = ids
                .get(format!("<0x{b:02X}>").as_str())
                .copied()
                .or_else(|| {
                    // llama.cpp's fallback: the byte as a one-character token (ASCII only here:
                    // a lone byte above 0x7F is not a string a vocabulary can hold).
                    let c = char::from(b as u8);
                    (b < 0x80).then(|| ids.get(c.to_string().as_str()).copied())?
                });
        }
        // A vocabulary with byte tokens must cover every byte; one without (no byte fallback)
        // falls back to the unknown token.
        let has_byte_tokens = c.kinds.contains(&TokenKind::Byte);
        if has_byte_tokens && let Some(b) = byte_ids.iter().position(Option::is_none) {
            return Err(TokenizerError::InvalidVocab(format!(
                "the vocabulary has byte-fallback tokens but none for byte <0x{b:02X}>"
            )));
        }
        let specials = SpecialTokens::new(
            c.texts
                .iter()
                .zip(&c.kinds)
                .zip(&c.rstrip)
                .enumerate()
                .filter(|(_, ((_, k), _))| k.is_special())
                .map(|(id, ((t, &k), &r))| (id as u32, t.clone(), k, r)),
        );
        Ok(SpmModel {
            texts: c.texts.into_iter().map(String::into_boxed_str).collect(),
            kinds: c.kinds,
            // -0.0 and 0.0 compare equal in llama.cpp's heap; make them the same value here.
            scores: c.scores.into_iter().map(|s| s + 0.0).collect(),
            ids,
            byte_ids,
            unk: c.unk,
            specials,
            add_space_prefix: c.add_space_prefix,
            table: Arc::new(table),
        })
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// The vocabulary string of `id`.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(|t| &**t)
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// Every token's decoded bytes, indexed by id.
    pub fn token_bytes(&self) -> &Arc<TokenBytes> {
        &self.table
    }

    /// Encode `text`. `parse_special`: control-token text (`<s>`) becomes its id; otherwise it
    /// is tokenized as text (user-defined tokens are matched either way, as in llama.cpp).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut after_special = true;
        let mut escaped = String::new();
        for piece in self.specials.split(text, parse_special) {
            match piece {
                Piece::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Piece::Text(t) => {
                    escaped.clear();
                    if self.add_space_prefix && after_special {
                        escaped.push(SPACE_MARK);
                    }
                    escaped.extend(t.chars().map(|c| if c == ' ' { SPACE_MARK } else { c }));
                    self.encode_escaped(&escaped, &mut out)?;
                    after_special = false;
                }
            }
        }
        Ok(out)
    }

    /// Steps 3 and 4 of the module docs on one escaped text piece.
    fn encode_escaped(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            syms.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1).unwrap_or(NONE),
                next: i + 1,
            });
        }
        let Some(last) = syms.last_mut() else {
            return Ok(());
        };
        last.next = NONE;
        let mut heap = BinaryHeap::new();
        for right in 1..syms.len() {
            self.push_pair(text, &syms, right - 1, right, &mut heap);
        }
        while let Some(pair) = heap.pop() {
            let (l, r) = (pair.left, pair.right);
            // Stale: one side has been merged into something else since the pair was queued.
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != pair.len {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            let next = syms[r].next;
            syms[l].next = next;
            if next != NONE {
                syms[next].prev = l;
                self.push_pair(text, &syms, l, next, &mut heap);
            }
            if syms[l].prev != NONE {
                self.push_pair(text, &syms, syms[l].prev, l, &mut heap);
            }
        }
        let mut i = 0;
        while i != NONE {
            let s = &syms[i];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        out.push(self.byte_token(b)?);
                    }
                }
            }
            i = s.next;
        }
        Ok(())
    }

    /// Queue the merge of adjacent symbols `l` and `r` if their text is a token.
    fn push_pair(
        &self,
        text: &str,
        syms: &[Symbol],
        l: usize,
        r: usize,
        heap: &mut BinaryHeap<Pair>,
    ) {
        let len = syms[l].len + syms[r].len;
        let start = syms[l].start;
        if let Some(&id) = self.ids.get(&text[start..start + len]) {
            heap.push(Pair {
                score: self.scores[id as usize],
                left: l,
                right: r,
                len,
            });
        }
    }

    fn byte_token(&self, b: u8) -> Result<u32, TokenizerError> {
        self.byte_ids[b as usize].or(self.unk).ok_or_else(|| {
            TokenizerError::InvalidVocab(format!(
                "no token for byte <0x{b:02X}> and no unknown token to stand for it"
            ))
        })
    }
}

const NONE: usize = usize::MAX;

/// A run of characters in the linked list of symbols being merged.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    /// Bytes; 0 once merged into the symbol on its left.
    len: usize,
    prev: usize,
    next: usize,
}

/// A candidate merge. The heap's greatest is the highest score, then the leftmost.
#[derive(Debug, Clone, Copy)]
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    /// Bytes of the merged text, to recognise stale entries.
    len: usize,
}

impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids: 0 `<unk>`, 1 `<s>`, 2 `</s>`, 3 `<|user|>` (user-defined), 4..=259 `<0x00>`..`<0xFF>`,
    /// then the normal tokens of [`NORMAL`] with their scores.
    const NORMAL: &[(&str, f32)] = &[
        ("▁", -1.0),
        ("a", -2.0),
        ("b", -2.0),
        ("▁a", -3.0),
        ("ab", -4.0),
        ("▁ab", -5.0),
        ("▁▁", -6.0),
        ("你", -7.0),
        ("好", -7.0),
        ("你好", -6.5),
        ("\n", -8.0),
        ("s", -8.0),
    ];
    const BYTE0: u32 = 4;
    const FIRST_NORMAL: u32 = 260;

    fn config() -> SpmConfig {
        let mut texts: Vec<String> = ["<unk>", "<s>", "</s>", "<|user|>"]
            .map(String::from)
            .into();
        let mut kinds = vec![
            TokenKind::Unknown,
            TokenKind::Control,
            TokenKind::Control,
            TokenKind::UserDefined,
        ];
        texts.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        kinds.extend([TokenKind::Byte; 256]);
        texts.extend(NORMAL.iter().map(|(t, _)| t.to_string()));
        kinds.extend([TokenKind::Normal; NORMAL.len()]);
        let mut scores = vec![0.0; FIRST_NORMAL as usize];
        scores.extend(NORMAL.iter().map(|&(_, s)| s));
        let n = texts.len();
        SpmConfig {
            texts,
            kinds,
            scores,
            add_space_prefix: true,
            unk: Some(0),
            rstrip: vec![false; n],
        }
    }

    fn model() -> SpmModel {
        SpmModel::new(config()).unwrap()
    }

    /// The id of a normal token.
    fn id(text: &str) -> u32 {
        FIRST_NORMAL + NORMAL.iter().position(|(t, _)| *t == text).unwrap() as u32
    }

    fn byte(b: u8) -> u32 {
        BYTE0 + b as u32
    }

    fn decode(m: &SpmModel, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| m.token_bytes()[i as usize].as_deref().unwrap().to_vec())
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn empty_input_gives_no_tokens() {
        let m = model();
        assert_eq!(m.encode("", true).unwrap(), Vec::<u32>::new());
        assert_eq!(m.encode("", false).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn spaces_become_marks_with_the_prefix_space_and_merge_leftmost_first() {
        let m = model();
        // " " → "▁▁": one merge.
        assert_eq!(m.encode(" ", false).unwrap(), [id("▁▁")]);
        // "   " → "▁▁▁▁": the three "▁▁" pairs tie; the leftmost merges first, then the
        // remaining right pair.
        assert_eq!(m.encode("   ", false).unwrap(), [id("▁▁"), id("▁▁")]);
        // Odd count: a lone mark is left at the end.
        assert_eq!(m.encode("  ", false).unwrap(), [id("▁▁"), id("▁")]);
        // Without the prefix space.
        let m = SpmModel::new(SpmConfig {
            add_space_prefix: false,
            ..config()
        })
        .unwrap();
        assert_eq!(m.encode(" ", false).unwrap(), [id("▁")]);
        assert_eq!(m.encode("ab", false).unwrap(), [id("ab")]);
    }

    #[test]
    fn higher_scores_merge_first() {
        let m = model();
        // "▁ab": "▁a" (-3) beats "ab" (-4); "▁a"+"b" is the token "▁ab".
        assert_eq!(m.encode("ab", false).unwrap(), [id("▁ab")]);
        assert_eq!(m.encode("abab", false).unwrap(), [id("▁ab"), id("ab")]);
        // Without "▁ab" the first merge decides: "▁a"+"b", or "▁"+"ab" once "ab" scores higher.
        let mut c = config();
        c.texts[id("▁ab") as usize] = "zz".into();
        assert_eq!(
            SpmModel::new(c).unwrap().encode("ab", false).unwrap(),
            [id("▁a"), id("b")]
        );
        let mut c = config();
        c.texts[id("▁ab") as usize] = "zz".into();
        c.scores[id("ab") as usize] = -0.5;
        assert_eq!(
            SpmModel::new(c).unwrap().encode("ab", false).unwrap(),
            [id("▁"), id("ab")]
        );
    }

    #[test]
    fn characters_without_a_token_fall_back_to_bytes() {
        let m = model();
        // 🦀 = F0 9F A6 80.
        let ids = m.encode("🦀", false).unwrap();
        assert_eq!(
            ids,
            [id("▁"), byte(0xF0), byte(0x9F), byte(0xA6), byte(0x80)]
        );
        assert_eq!(decode(&m, &ids), " 🦀");
        // CJK: "你好" is one token, "你" alone is another, "世" falls back.
        assert_eq!(m.encode("你好", false).unwrap(), [id("▁"), id("你好")]);
        let ids = m.encode("你世", false).unwrap();
        assert_eq!(ids, [id("▁"), id("你"), byte(0xE4), byte(0xB8), byte(0x96)]);
        assert_eq!(decode(&m, &ids), " 你世");
    }

    #[test]
    fn newlines_are_ordinary_characters() {
        let m = model();
        let ids = m.encode("a\nb\n\n", false).unwrap();
        assert_eq!(ids, [id("▁a"), id("\n"), id("b"), id("\n"), id("\n")]);
        assert_eq!(decode(&m, &ids), " a\nb\n\n");
    }

    #[test]
    fn control_token_text_is_one_id_only_when_special_text_is_parsed() {
        let m = model();
        assert_eq!(m.encode("<s>", true).unwrap(), [1]);
        // As text: "▁<s>" — "<" and ">" have no token; "s" has.
        assert_eq!(
            m.encode("<s>", false).unwrap(),
            [id("▁"), byte(b'<'), id("s"), byte(b'>')]
        );
        // Text after a special token gets the prefix space again.
        assert_eq!(
            m.encode("<s>a</s>a", true).unwrap(),
            [1, id("▁a"), 2, id("▁a")]
        );
        // The unknown token's text is special too.
        assert_eq!(m.encode("<unk>", true).unwrap(), [0]);
        // User-defined tokens match either way, and are followed by a prefixed piece.
        for parse in [true, false] {
            assert_eq!(
                m.encode("a<|user|>a", parse).unwrap(),
                [id("▁a"), 3, id("▁a")]
            );
        }
        // Control tokens decode to their text, byte tokens to their byte.
        assert_eq!(decode(&m, &[1, id("▁a"), byte(b'!')]), "<s> a!");
    }

    #[test]
    fn longer_special_texts_are_cut_first_and_rstrip_drops_whitespace() {
        let specials = SpecialTokens::new([
            (7, "<a>".to_string(), TokenKind::Control, false),
            (8, "<a><b>".to_string(), TokenKind::Control, true),
            (9, "<b>".to_string(), TokenKind::UserDefined, false),
            (10, "xyz".to_string(), TokenKind::Normal, false),
        ]);
        use Piece::*;
        assert_eq!(
            specials.split("<a><b> \n x<a>y<b>", true),
            [Token(8), Text("x"), Token(7), Text("y"), Token(9)]
        );
        // Not parsing special text: only the user-defined one is cut.
        assert_eq!(
            specials.split("<a><b> xyz", false),
            [Text("<a>"), Token(9), Text(" xyz")]
        );
        assert_eq!(specials.split("", true), []);
    }

    #[test]
    fn hostile_vocabularies_are_errors_not_panics() {
        let bad = |f: &dyn Fn(&mut SpmConfig)| {
            let mut c = config();
            f(&mut c);
            match SpmModel::new(c) {
                Err(TokenizerError::InvalidVocab(msg)) => msg,
                other => panic!("expected InvalidVocab, got {other:?}"),
            }
        };
        let msg = bad(&|c| {
            c.scores.pop();
        });
        assert!(msg.contains("scores"), "{msg}");
        // A hole in byte fallback: the token for 0x41 is renamed.
        let msg = bad(&|c| {
            c.texts[BYTE0 as usize + 0x41] = "A-byte".into();
            c.kinds[BYTE0 as usize + 0x41] = TokenKind::Normal;
        });
        assert!(msg.contains("<0x41>"), "{msg}");
        let msg = bad(&|c| c.texts[BYTE0 as usize + 0x80] = "<0x8>".into());
        assert!(msg.contains("byte"), "{msg}");
        let msg = bad(&|c| c.scores[FIRST_NORMAL as usize] = f32::NAN);
        assert!(msg.contains("NaN"), "{msg}");
        let msg = bad(&|c| c.unk = Some(100_000));
        assert!(msg.contains("100000"), "{msg}");

        // No byte tokens at all: the unknown token stands in; without one, encoding a
        // character outside the vocabulary is an error.
        let mut c = config();
        for b in 0..256 {
            c.texts[BYTE0 as usize + b] = format!("unused{b}");
            c.kinds[BYTE0 as usize + b] = TokenKind::Unused;
        }
        let m = SpmModel::new(c).unwrap();
        assert_eq!(m.encode("é", false).unwrap(), [id("▁"), 0, 0]);
        let mut c = config();
        for b in 0..256 {
            c.texts[BYTE0 as usize + b] = format!("unused{b}");
            c.kinds[BYTE0 as usize + b] = TokenKind::Unused;
        }
        c.unk = None;
        let m = SpmModel::new(c).unwrap();
        assert!(matches!(
            m.encode("é", false),
            Err(TokenizerError::InvalidVocab(_))
        ));
        assert_eq!(m.encode("ab", false).unwrap(), [id("▁ab")]);
    }

    #[test]
    fn long_inputs_stay_fast() {
        // 200k characters in one piece: the heap keeps this O(n log n).
        let m = model();
        let text = "ab 你好 ".repeat(40_000);
        let start = std::time::Instant::now();
        let ids = m.encode(&text, false).unwrap();
        assert_eq!(decode(&m, &ids), format!(" {text}"));
        assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
    }
}
