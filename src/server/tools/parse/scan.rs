//! Tool calls at the start of a call region, in the way each format writes them: the complete
//! calls and the bytes they took, the call still being written, or not calls at all.

use serde_json::{Value, json};

use crate::server::tools::ToolFormat;

/// A call found in the text.
pub(super) struct Found {
    pub(super) name: String,
    args: Value,
    /// The arguments' own text, where the model wrote them as an object after the name: sent as
    /// written, so streamed fragments and the whole call agree byte for byte.
    pub(super) raw: Option<String>,
}

impl Found {
    pub(super) fn arguments(&self) -> String {
        match (&self.raw, &self.args) {
            (Some(r), _) => r.clone(),
            // Some models write the arguments as a JSON string already.
            (None, Value::String(s)) => s.clone(),
            (None, Value::Null) => "{}".into(),
            (None, v) => v.to_string(),
        }
    }
}

/// Where the call being written starts (its arguments are streamed once its name is known).
pub(super) enum Pending {
    /// A call object `{"name": .., "arguments": ..}` starts here.
    Object(usize),
    /// The arguments of this function start here (Mistral's `name[ARGS]{..}`).
    Args(String, usize),
}

/// How scanning a call region went.
pub(super) enum Scan {
    /// Complete calls and the bytes they took; what follows is plain content.
    Done(Vec<Found>, usize),
    /// These calls so far, and the one being written if it can be located; more text is
    /// needed to know the rest.
    Partial(Vec<Found>, Option<Pending>),
    /// Not a call: the region is content.
    Invalid,
}

/// One JSON value at the start of `s` (after whitespace): `Ok(Some((value, bytes)))`,
/// `Ok(None)` when `s` may be an incomplete value, `Err` when it cannot be one.
fn json_prefix(s: &str) -> Result<Option<(Value, usize)>, ()> {
    let mut it = serde_json::Deserializer::from_str(s).into_iter::<Value>();
    match it.next() {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some((v, it.byte_offset()))),
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(_)) => Err(()),
    }
}

/// A complete JSON string at the start of `s`: its value and length.
fn json_string(s: &str) -> Option<(String, usize)> {
    if !s.starts_with('"') {
        return None;
    }
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return serde_json::from_str(&s[..=i]).ok().map(|v| (v, i + 1)),
            _ => {}
        }
    }
    None
}

fn eat(s: &str, at: usize, lit: &str) -> Option<usize> {
    s[at..].starts_with(lit).then_some(at + lit.len())
}

/// The head of a call object written name first, `{"name": "<n>", "arguments": {` (or
/// `"parameters"`): the name and where the arguments object starts; `None` until all of it is
/// there, or when the call is written another way (then it is sent whole when complete).
pub(super) fn call_head(s: &str) -> Option<(String, usize)> {
    let at = eat(s, skip_ws(s, 0), "{")?;
    let at = eat(s, skip_ws(s, at), "\"name\"")?;
    let at = skip_ws(s, eat(s, skip_ws(s, at), ":")?);
    let (name, n) = json_string(&s[at..])?;
    let at = skip_ws(s, eat(s, skip_ws(s, at + n), ",")?);
    let at = eat(s, at, "\"arguments\"").or_else(|| eat(s, at, "\"parameters\""))?;
    let at = skip_ws(s, eat(s, skip_ws(s, at), ":")?);
    // Only an object is streamed piece by piece (a string would be sent escaped).
    s[at..].starts_with('{').then_some((name, at))
}

/// How much of the JSON object at the start of `s` is there: all of it once it closes.
pub(super) fn object_prefix(s: &str) -> (usize, bool) {
    let (mut depth, mut in_str, mut escaped) = (0i64, false, false);
    for (i, c) in s.char_indices() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                if depth <= 0 {
                    return (i + c.len_utf8(), true);
                }
            }
            _ => {}
        }
    }
    (s.len(), false)
}

/// Whether an unfinished object may still be a call: its first key, once written, is one a
/// call object has.
fn may_be_call(s: &str) -> bool {
    let Some(at) = eat(s, skip_ws(s, 0), "{") else {
        return false;
    };
    let at = skip_ws(s, at);
    match json_string(&s[at..]) {
        Some((key, _)) => matches!(key.as_str(), "name" | "arguments" | "parameters"),
        None => true,
    }
}

/// The arguments' text of a complete call object.
fn raw_args(obj: &str, name: &str) -> Option<String> {
    let (n, at) = call_head(obj)?;
    let (len, closed) = object_prefix(&obj[at..]);
    (n == name && closed).then(|| obj[at..at + len].to_string())
}

/// A complete `{"name": .., <args>: ..}` object (and its text) as a call; `None` when it is not.
fn found(v: &Value, text: &str) -> Option<Found> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or(json!({}));
    let raw = raw_args(text, &name);
    Some(Found { name, args, raw })
}

/// `s` is a non-empty proper prefix of `of` (more text may complete it).
pub(super) fn prefix_of(s: &str, of: &str) -> bool {
    s.len() < of.len() && of.starts_with(s)
}

fn skip_ws(s: &str, at: usize) -> usize {
    at + (s[at..].len() - s[at..].trim_start().len())
}

/// Literals in sequence from `at`, whitespace allowed between them.
enum Seq {
    Done(usize),
    /// The text so far is a prefix of the sequence.
    Partial,
    Mismatch,
}

fn expect_seq(s: &str, mut at: usize, lits: &[&str]) -> Seq {
    for lit in lits {
        at = skip_ws(s, at);
        let rest = &s[at..];
        if rest.starts_with(lit) {
            at += lit.len();
        } else if lit.starts_with(rest) {
            return Seq::Partial;
        } else {
            return Seq::Mismatch;
        }
    }
    Seq::Done(at)
}

pub(super) const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
pub(super) const PYTHON_TAG: &str = "<|python_tag|>";
pub(super) const MISTRAL: &str = "[TOOL_CALLS]";

/// Calls parsed before a bad one stand; the rest is content.
fn give_up(calls: Vec<Found>, at: usize) -> Scan {
    if calls.is_empty() {
        Scan::Invalid
    } else {
        Scan::Done(calls, at)
    }
}

/// `rest` (from `at`) does not open another call with `tag`: more text is needed while it is
/// only whitespace or a possible start of `tag`, else the calls so far stand.
fn no_tag(calls: Vec<Found>, rest: &str, tag: &str, at: usize) -> Scan {
    if rest.is_empty() || prefix_of(rest, tag) {
        Scan::Partial(calls, None)
    } else {
        give_up(calls, at)
    }
}

/// A JSON array of call objects whose `[` ends at `at`, then `close` (the wrapper's end).
fn scan_array(s: &str, mut at: usize, close: &str) -> Scan {
    let mut calls = Vec::new();
    loop {
        let i = skip_ws(s, at);
        let rest = &s[i..];
        if rest.is_empty() {
            return Scan::Partial(calls, None);
        }
        let j = if calls.is_empty() {
            i
        } else if rest.starts_with(']') {
            let k = skip_ws(s, i + 1);
            let tail = &s[k..];
            return if close.is_empty() {
                Scan::Done(calls, i + 1)
            } else if tail.starts_with(close) {
                Scan::Done(calls, k + close.len())
            } else if tail.is_empty() || prefix_of(tail, close) {
                Scan::Partial(calls, None)
            } else {
                Scan::Done(calls, i + 1)
            };
        } else if rest.starts_with(',') {
            let j = skip_ws(s, i + 1);
            if j == s.len() {
                return Scan::Partial(calls, None);
            }
            j
        } else {
            return give_up(calls, i);
        };
        match json_prefix(&s[j..]) {
            Ok(None) => return Scan::Partial(calls, Some(Pending::Object(j))),
            Err(()) => return give_up(calls, j),
            Ok(Some((v, n))) => match found(&v, &s[j..j + n]) {
                Some(f) => {
                    calls.push(f);
                    at = j + n;
                }
                None => return give_up(calls, j),
            },
        }
    }
}

/// Single call objects from `at` (Llama 3, and the generic format written without its
/// wrapper), several separated by `;`.
fn scan_objects(s: &str, mut at: usize) -> Scan {
    let mut calls = Vec::new();
    loop {
        let i = skip_ws(s, at);
        let rest = &s[i..];
        if rest.is_empty() {
            return Scan::Partial(calls, None);
        }
        if !calls.is_empty() {
            // Llama 3.1 separates several calls with ';'.
            match rest.strip_prefix(';') {
                Some(_) => {
                    at = i + 1;
                    continue;
                }
                None if !rest.starts_with('{') => return give_up(calls, at),
                None => {}
            }
        }
        match json_prefix(rest) {
            Ok(Some((v, n))) => match found(&v, &rest[..n]) {
                Some(f) => {
                    calls.push(f);
                    at = i + n;
                }
                None => return give_up(calls, at),
            },
            // A JSON answer that is no call goes out as soon as its first key says so.
            Ok(None) if !may_be_call(rest) => return give_up(calls, at),
            Ok(None) => return Scan::Partial(calls, Some(Pending::Object(i))),
            Err(()) => return give_up(calls, at),
        }
    }
}

/// Scans calls at the start of `s` (which starts at a marker).
pub(super) fn scan(format: ToolFormat, s: &str) -> Scan {
    match format {
        ToolFormat::Hermes => {
            let mut calls = Vec::new();
            let mut at = 0;
            loop {
                let i = skip_ws(s, at);
                let rest = &s[i..];
                let Some(body) = rest.strip_prefix(HERMES_OPEN) else {
                    return no_tag(calls, rest, HERMES_OPEN, at);
                };
                let obj = skip_ws(s, i + HERMES_OPEN.len());
                let (v, n) = match json_prefix(body) {
                    Ok(Some(x)) => x,
                    Ok(None) => return Scan::Partial(calls, Some(Pending::Object(obj))),
                    Err(()) => return give_up(calls, at),
                };
                let end = i + HERMES_OPEN.len() + n;
                let Some(f) = found(&v, &s[obj..end]) else {
                    return give_up(calls, at);
                };
                let j = skip_ws(s, end);
                let tail = &s[j..];
                if tail.is_empty() || prefix_of(tail, HERMES_CLOSE) {
                    return Scan::Partial(calls, Some(Pending::Object(obj)));
                }
                calls.push(f);
                // A missing close tag is forgiven: the call itself was complete.
                at = eat(s, j, HERMES_CLOSE).unwrap_or(j);
            }
        }
        ToolFormat::Llama3 => scan_objects(s, eat(s, 0, PYTHON_TAG).unwrap_or(0)),
        ToolFormat::Generic => match expect_seq(s, 0, &["{", "\"tool_calls\"", ":", "["]) {
            Seq::Done(at) => scan_array(s, at, "}"),
            Seq::Partial => Scan::Partial(Vec::new(), None),
            Seq::Mismatch => scan_objects(s, 0),
        },
        ToolFormat::MistralJson => match expect_seq(s, 0, &[MISTRAL, "["]) {
            Seq::Done(at) => scan_array(s, at, ""),
            Seq::Partial => Scan::Partial(Vec::new(), None),
            Seq::Mismatch => match eat(s, 0, MISTRAL) {
                Some(at) => scan_objects(s, at),
                None => Scan::Invalid,
            },
        },
        ToolFormat::MistralArgs => {
            let mut calls = Vec::new();
            let mut at = 0;
            loop {
                let rest = &s[at..];
                let Some(r) = rest.strip_prefix(MISTRAL) else {
                    return no_tag(calls, rest, MISTRAL, at);
                };
                let Some(k) = r.find("[ARGS]") else {
                    let bad = r.len() > 64 || r.contains(|c: char| c.is_whitespace() || c == '{');
                    return if bad {
                        give_up(calls, at)
                    } else {
                        Scan::Partial(calls, None)
                    };
                };
                let name = r[..k].trim().to_string();
                if name.is_empty() {
                    return give_up(calls, at);
                }
                let args_at = skip_ws(s, at + MISTRAL.len() + k + "[ARGS]".len());
                let (v, n) = match json_prefix(&s[args_at..]) {
                    Ok(Some(x)) => x,
                    Ok(None) => return Scan::Partial(calls, Some(Pending::Args(name, args_at))),
                    Err(()) => return give_up(calls, at),
                };
                let text = &s[args_at..args_at + n];
                let raw = v.is_object().then(|| text.to_string());
                calls.push(Found { name, args: v, raw });
                at = args_at + n;
            }
        }
    }
}

/// The bytes taken by the complete calls at the start of `s`, treating the end of `s` as the
/// end of the text.
pub(super) fn scan_complete(format: ToolFormat, s: &str) -> Scan {
    // Appending a byte no call can contain turns "need more" into "done here".
    let mut t = s.to_string();
    t.push('\u{1}');
    match scan(format, &t) {
        Scan::Done(c, n) => Scan::Done(c, n.min(s.len())),
        other => other,
    }
}
