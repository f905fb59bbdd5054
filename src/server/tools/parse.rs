//! Reading a chat answer: `<think>` reasoning apart from the content, and tool calls out of
//! it, for a whole answer or delta by delta. Text that may still become a marker is held back;
//! a call's id and name go out once its name is written and its arguments follow as they are
//! written; text that turns out not to be a call is given back as content.

use serde_json::{Value, json};

use super::{ToolFormat, call_id};

/// One parsed call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text (OpenAI sends and expects a string).
    pub arguments: String,
}

impl ToolCall {
    /// The `tool_calls` entry of a message.
    pub fn message_json(&self) -> Value {
        json!({
            "id": self.id, "type": "function",
            "function": { "name": self.name, "arguments": self.arguments },
        })
    }

    /// The `delta.tool_calls` entry of a stream chunk.
    pub fn delta_json(&self, index: usize) -> Value {
        let mut v = self.message_json();
        v["index"] = json!(index);
        v
    }
}

/// A call found in the text.
struct Found {
    name: String,
    args: Value,
    /// The arguments' own text, where the model wrote them as an object after the name: sent as
    /// written, so streamed fragments and the whole call agree byte for byte.
    raw: Option<String>,
}

impl Found {
    fn arguments(&self) -> String {
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
enum Pending {
    /// A call object `{"name": .., "arguments": ..}` starts here.
    Object(usize),
    /// The arguments of this function start here (Mistral's `name[ARGS]{..}`).
    Args(String, usize),
}

/// How scanning a call region went.
enum Scan {
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
fn call_head(s: &str) -> Option<(String, usize)> {
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
fn object_prefix(s: &str) -> (usize, bool) {
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
fn prefix_of(s: &str, of: &str) -> bool {
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

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL: &str = "[TOOL_CALLS]";

/// Calls parsed before a bad one stand; the rest is content.
fn give_up(calls: Vec<Found>, at: usize) -> Scan {
    if calls.is_empty() {
        Scan::Invalid
    } else {
        Scan::Done(calls, at)
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
fn scan(format: ToolFormat, s: &str) -> Scan {
    match format {
        ToolFormat::Hermes => {
            let mut calls = Vec::new();
            let mut at = 0;
            loop {
                let i = skip_ws(s, at);
                let rest = &s[i..];
                let Some(body) = rest.strip_prefix(HERMES_OPEN) else {
                    return if rest.is_empty() || prefix_of(rest, HERMES_OPEN) {
                        // Only whitespace or a possible next call so far.
                        Scan::Partial(calls, None)
                    } else {
                        give_up(calls, at)
                    };
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
                    return if rest.is_empty() || prefix_of(rest, MISTRAL) {
                        Scan::Partial(calls, None)
                    } else {
                        give_up(calls, at)
                    };
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

/// Where a call region starts in `s`, or how much of `s` is surely content.
enum Marker {
    At(usize),
    /// No marker; the first `usize` bytes are content, the rest may start one.
    None(usize),
}

/// A call whose name went out, its arguments following as they are written.
struct Streaming {
    id: String,
    name: String,
    /// Where its arguments start in the buffer, and how many bytes of them went out.
    args_at: usize,
    sent: usize,
}

/// Streaming tool-call parser over the content text.
pub struct ToolStream {
    format: ToolFormat,
    /// Content text not yet sent, or the call region being scanned.
    buf: String,
    /// Content was sent already (formats whose calls must start the answer no longer look).
    started: bool,
    /// `buf` starts at a marker.
    in_call: bool,
    /// Calls of the current region already sent.
    sent_in_region: usize,
    /// The call being written, once its name went out.
    streaming: Option<Streaming>,
    /// A region turned out not to be calls: everything after is content.
    plain: bool,
    calls: Vec<ToolCall>,
}

/// What one step of parsing gives the client.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub reasoning: String,
    pub content: String,
    /// `delta.tool_calls` entries: a call's id, name and first arguments, then more of its
    /// arguments, by index.
    pub calls: Vec<Value>,
}

impl Parsed {
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty() && self.calls.is_empty()
    }
}

impl ToolStream {
    pub fn new(format: ToolFormat) -> Self {
        ToolStream {
            format,
            buf: String::new(),
            started: false,
            in_call: false,
            sent_in_region: 0,
            streaming: None,
            plain: false,
            calls: Vec::new(),
        }
    }

    pub fn calls(&self) -> &[ToolCall] {
        &self.calls
    }

    fn marker(&self, s: &str) -> Marker {
        let tagged = |m: &str| match s.find(m) {
            Some(i) => Marker::At(i),
            None => Marker::None(s.len() - held_prefix(s, m)),
        };
        match self.format {
            ToolFormat::Hermes => tagged(HERMES_OPEN),
            ToolFormat::MistralJson | ToolFormat::MistralArgs => tagged(MISTRAL),
            ToolFormat::Llama3 | ToolFormat::Generic => {
                if !self.started {
                    let t = s.trim_start();
                    if t.is_empty() {
                        return Marker::None(0);
                    }
                    if t.starts_with('{') {
                        return Marker::At(s.len() - t.len());
                    }
                }
                if self.format == ToolFormat::Llama3 {
                    tagged(PYTHON_TAG)
                } else {
                    Marker::None(s.len())
                }
            }
        }
    }

    /// Feeds content text; adds the content to send and the call deltas to `out`.
    pub fn feed(&mut self, text: &str, out: &mut Parsed) {
        self.buf.push_str(text);
        self.step(out, false);
    }

    /// The end of the answer: whatever is held is sent (an incomplete call as content, unless
    /// its name went out already: then it stays a call, cut where the text ended).
    pub fn finish(&mut self, out: &mut Parsed) {
        self.step(out, true);
    }

    fn emit_content(&mut self, upto: usize, out: &mut Parsed) {
        let s: String = self.buf.drain(..upto).collect();
        if !s.trim().is_empty() {
            self.started = true;
        }
        out.content.push_str(&s);
    }

    fn step(&mut self, out: &mut Parsed, end: bool) {
        loop {
            if self.plain {
                let n = self.buf.len();
                self.emit_content(n, out);
                return;
            }
            if !self.in_call {
                match self.marker(&self.buf) {
                    Marker::At(i) => {
                        self.emit_content(i, out);
                        self.in_call = true;
                        self.sent_in_region = 0;
                    }
                    Marker::None(n) => {
                        let n = if end { self.buf.len() } else { n };
                        self.emit_content(n, out);
                        return;
                    }
                }
            }
            // At the end, the text is all there is: "need more" becomes "done here".
            let scanned = if end {
                scan_complete(self.format, &self.buf)
            } else {
                scan(self.format, &self.buf)
            };
            let (calls, done, pending) = match scanned {
                Scan::Done(c, n) => (c, Some(n), None),
                Scan::Partial(c, _) if end => (c, Some(self.buf.len()), None),
                Scan::Partial(c, p) => (c, None, p),
                Scan::Invalid if self.streaming.is_some() => (Vec::new(), Some(0), None),
                Scan::Invalid => {
                    self.in_call = false;
                    self.plain = true;
                    continue;
                }
            };
            for f in calls.iter().skip(self.sent_in_region) {
                self.complete(f, out);
            }
            self.sent_in_region = calls.len();
            let Some(n) = done else {
                if let Some(p) = pending {
                    self.stream_pending(p, out);
                }
                return;
            };
            match self.streaming.take() {
                Some(s) => {
                    let arguments = self.buf[s.args_at..s.args_at + s.sent].to_string();
                    self.calls.push(ToolCall {
                        id: s.id,
                        name: s.name,
                        arguments,
                    });
                    self.buf.clear();
                }
                None => {
                    self.buf.drain(..n);
                }
            }
            self.in_call = false;
            self.started = true;
            // Text after the calls is content.
            self.plain = true;
        }
    }

    /// A call is complete: the rest of its arguments, or all of it when nothing went out yet.
    fn complete(&mut self, f: &Found, out: &mut Parsed) {
        let index = self.calls.len();
        let arguments = f.arguments();
        let call = match self.streaming.take() {
            Some(s) if f.raw.is_some() && s.name == f.name => {
                let rest = arguments.get(s.sent..).unwrap_or("");
                if !rest.is_empty() {
                    out.calls
                        .push(json!({ "index": index, "function": { "arguments": rest } }));
                }
                ToolCall {
                    id: s.id,
                    name: s.name,
                    arguments,
                }
            }
            _ => {
                let c = ToolCall {
                    id: call_id(self.format),
                    name: f.name.clone(),
                    arguments,
                };
                out.calls.push(c.delta_json(index));
                c
            }
        };
        self.calls.push(call);
    }

    /// The call being written: its head once its name is known, then its arguments so far.
    fn stream_pending(&mut self, p: Pending, out: &mut Parsed) {
        let head = match p {
            Pending::Object(o) => call_head(&self.buf[o..]).map(|(n, a)| (n, o + a)),
            Pending::Args(n, a) => self.buf[a..].starts_with('{').then_some((n, a)),
        };
        let Some((name, args_at)) = head else { return };
        let index = self.calls.len();
        if self.streaming.is_none() {
            let s = Streaming {
                id: call_id(self.format),
                name,
                args_at,
                sent: 0,
            };
            out.calls.push(json!({
                "index": index, "id": s.id, "type": "function",
                "function": { "name": s.name, "arguments": "" },
            }));
            self.streaming = Some(s);
        }
        let Some(s) = self.streaming.as_mut() else {
            return;
        };
        let (len, _) = object_prefix(&self.buf[s.args_at..]);
        if len > s.sent {
            let piece = &self.buf[s.args_at + s.sent..s.args_at + len];
            out.calls
                .push(json!({ "index": index, "function": { "arguments": piece } }));
            s.sent = len;
        }
    }
}

/// The bytes taken by the complete calls at the start of `s`, treating the end of `s` as the
/// end of the text.
fn scan_complete(format: ToolFormat, s: &str) -> Scan {
    // Appending a byte no call can contain turns "need more" into "done here".
    let mut t = s.to_string();
    t.push('\u{1}');
    match scan(format, &t) {
        Scan::Done(c, n) => Scan::Done(c, n.min(s.len())),
        other => other,
    }
}

/// How many bytes at the end of `s` are a proper prefix of `marker` (held back).
fn held_prefix(s: &str, marker: &str) -> usize {
    (1..marker.len().min(s.len() + 1))
        .rev()
        .find(|&k| s.is_char_boundary(s.len() - k) && marker.starts_with(&s[s.len() - k..]))
        .unwrap_or(0)
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Think {
    /// Nothing but whitespace yet: a `<think>` may open.
    Start,
    Inside,
    /// Just closed: whitespace before the answer is dropped.
    Closed,
    Content,
}

/// Splits `<think>…</think>` at the start of an answer into reasoning, the rest into content.
pub struct ReasoningSplit {
    state: Think,
    buf: String,
}

impl ReasoningSplit {
    /// `open`: the prompt already ends inside `<think>` (the template opened it).
    pub fn new(open: bool) -> Self {
        ReasoningSplit {
            state: if open { Think::Inside } else { Think::Start },
            buf: String::new(),
        }
    }

    /// Feeds text; appends to `reasoning` and `content`.
    pub fn feed(&mut self, text: &str, reasoning: &mut String, content: &mut String) {
        self.buf.push_str(text);
        loop {
            match self.state {
                Think::Start => {
                    let t = self.buf.trim_start();
                    if let Some(r) = t.strip_prefix(THINK_OPEN) {
                        self.buf = r.to_string();
                        self.state = Think::Inside;
                    } else if t.is_empty() || prefix_of(t, THINK_OPEN) {
                        return;
                    } else {
                        self.state = Think::Content;
                    }
                }
                Think::Inside => match self.buf.find(THINK_CLOSE) {
                    Some(i) => {
                        reasoning.push_str(&self.buf[..i]);
                        self.buf.drain(..i + THINK_CLOSE.len());
                        self.state = Think::Closed;
                    }
                    None => {
                        let keep = held_prefix(&self.buf, THINK_CLOSE);
                        let n = self.buf.len() - keep;
                        reasoning.extend(self.buf.drain(..n));
                        return;
                    }
                },
                Think::Closed => {
                    let t = self.buf.trim_start();
                    if t.is_empty() {
                        self.buf.clear();
                        return;
                    }
                    self.buf = t.to_string();
                    self.state = Think::Content;
                }
                Think::Content => {
                    content.push_str(&self.buf);
                    self.buf.clear();
                    return;
                }
            }
        }
    }

    /// The end: held text goes where it was heading (unclosed reasoning stays reasoning).
    pub fn finish(&mut self, reasoning: &mut String, content: &mut String) {
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            Think::Inside => reasoning.push_str(&rest),
            Think::Start | Think::Content => content.push_str(&rest),
            Think::Closed => {}
        }
    }
}

/// Whether a rendered prompt ends inside an open `<think>` (the answer starts as reasoning).
pub fn prompt_opens_thinking(rendered: &str) -> bool {
    rendered.trim_end().ends_with(THINK_OPEN)
}

/// Everything about how a chat answer is read.
#[derive(Debug, Clone, Copy)]
pub struct ChatOutput {
    /// Tool calls are parsed in this format (tools given and not `tool_choice: "none"`).
    pub tools: Option<ToolFormat>,
    /// The prompt ends inside `<think>`.
    pub thinking_open: bool,
}

/// One choice's parser: reasoning first, then tool calls in the content.
pub struct ChoiceParser {
    reasoning: ReasoningSplit,
    tools: Option<ToolStream>,
}

impl ChoiceParser {
    pub fn new(out: &ChatOutput) -> Self {
        ChoiceParser {
            reasoning: ReasoningSplit::new(out.thinking_open),
            tools: out.tools.map(ToolStream::new),
        }
    }

    pub fn feed(&mut self, text: &str) -> Parsed {
        let mut p = Parsed::default();
        let mut content = String::new();
        self.reasoning.feed(text, &mut p.reasoning, &mut content);
        self.content(&content, &mut p, false);
        p
    }

    pub fn finish(&mut self) -> Parsed {
        let mut p = Parsed::default();
        let mut content = String::new();
        self.reasoning.finish(&mut p.reasoning, &mut content);
        self.content(&content, &mut p, true);
        p
    }

    fn content(&mut self, text: &str, p: &mut Parsed, end: bool) {
        match &mut self.tools {
            Some(t) => {
                t.feed(text, p);
                if end {
                    t.finish(p);
                }
            }
            None => p.content.push_str(text),
        }
    }

    pub fn called(&self) -> bool {
        !self.calls().is_empty()
    }

    /// The calls so far.
    pub fn calls(&self) -> &[ToolCall] {
        self.tools.as_ref().map_or(&[], |t| t.calls())
    }
}

/// Parses a whole answer: (reasoning, content, calls).
pub fn parse_complete(out: &ChatOutput, text: &str) -> (String, String, Vec<ToolCall>) {
    let mut p = ChoiceParser::new(out);
    let mut a = p.feed(text);
    let b = p.finish();
    a.reasoning.push_str(&b.reasoning);
    a.content.push_str(&b.content);
    (a.reasoning, a.content, p.calls().to_vec())
}
