//! Reading a chat answer: `<think>` reasoning apart from the content, and tool calls out of
//! it, for a whole answer or delta by delta. Text that may still become a marker is held back;
//! a call's id and name go out once its name is written and its arguments follow as they are
//! written; text that turns out not to be a call is given back as content.

use serde_json::{Value, json};

use super::{ToolFormat, call_id};

mod scan;

use scan::{
    Found, HERMES_OPEN, MISTRAL, PYTHON_TAG, Pending, Scan, call_head, object_prefix, prefix_of,
    scan, scan_complete,
};

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
