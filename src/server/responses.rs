//! `POST /v1/responses`: the text subset of OpenAI's Responses API that the official clients'
//! `responses.create(...)` uses: `input` as a string or a list of message items, `instructions`,
//! `max_output_tokens`, `temperature`, `top_p`, and `stream` (typed Server-Sent Events).
//!
//! `text.format` (`json_schema`, `json_object`) constrains the output as chat's
//! `response_format` does. Nothing is stored: `previous_response_id`, `conversation` and
//! `background` need stored state and are refused, as are tools and reasoning (400 naming the
//! field). The chat path's extensions (`seed`, `top_k`, `stop`, `logit_bias`, …) go through
//! [`openai::Common`], so they are honoured or refused exactly as there.

use super::*;
use openai::Common;
use serde_json::Map;

use crate::tokenizer::ChatMessage;

pub(super) async fn create(State(st): St, req: HttpRequest) -> Response {
    let (tally, body) = tally_and_body(req);
    match create_inner(st, tally, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(
    st: Arc<AppState>,
    tally: Option<Arc<Tally>>,
    body: Body,
) -> Result<Response, ApiError> {
    let b: Map<String, Value> = openai::parse(&read_body(&st.opts, body).await?)?;
    let req = parse_request(b)?;
    check_model(&st, &req.common.model)?;
    let p = req.common.params(true).map_err(|mut e| {
        // `text.format` reached the shared checks as `response_format`.
        if req.text_format && e.param == Some("response_format") {
            e.param = Some("text.format");
        }
        e
    })?;
    // Refused above when not 1; one handle is what the answer below reads.
    if p.n != 1 {
        return Err(ApiError::param("n must be 1", "n"));
    }
    let bytes = req
        .messages
        .iter()
        .map(|m| m.role.len() + m.text().len())
        .sum();
    check_prompt_bytes(&st.opts, bytes, "input")?;
    let ids = tokenize(&st, Prompt::Chat(req.messages)).await?;
    let max_tokens = completion_budget(&st, ids.len(), &p).map_err(|mut e| {
        // The shared check speaks chat's name for the budget.
        if e.param == Some("max_tokens") {
            e.param = Some("max_output_tokens");
            e.message = e.message.replace("completion length", "max_output_tokens");
        }
        e
    })?;
    let job = submit(&st, Kind::Chat, ids, max_tokens, &p, None, tally)?;
    let meta = Meta {
        id: format!("resp_{:016x}{:016x}", random_u64(), random_u64()),
        msg_id: format!("msg_{:016x}{:016x}", random_u64(), random_u64()),
        created_at: job.created,
        model: job.model.clone(),
        echo: req.echo,
    };
    let prompt_tokens = job.prompt_tokens;
    let tally = job.tally.clone();
    let Some(handle) = job.handles.into_iter().next() else {
        return Err(failed("the engine returned no request handle".into()));
    };
    let g = Gen {
        st,
        handle,
        meta,
        prompt_tokens,
        tally,
        last: None,
        text: String::new(),
        tokens: 0,
    };
    if p.stream {
        Ok(sse(g))
    } else {
        collect(g).await.map(|v| axum::Json(v).into_response())
    }
}

/// A validated request: the messages to render, the knobs for [`Common::params`], and what
/// the Response object echoes back.
struct Parsed {
    messages: Vec<ChatMessage>,
    common: Common,
    echo: Map<String, Value>,
    /// `text.format` asked for structured output.
    text_format: bool,
}

/// Responses fields that change nothing about the text generated (logged nowhere).
const INFORMATIONAL: &[&str] = &[
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "stream_options",
    "max_tool_calls",
];

const NO_TOOLS: &str =
    "function tools are not implemented on /v1/responses yet (/v1/chat/completions has them)";

fn unsupported(field: &'static str, why: &str) -> ApiError {
    ApiError::param(
        format!("`{field}` is not supported by this server: {why}"),
        field,
    )
    .code("unsupported_parameter")
}

fn parse_request(mut b: Map<String, Value>) -> Result<Parsed, ApiError> {
    let mut take = |k: &str| b.remove(k).unwrap_or(Value::Null);
    let model = match take("model") {
        Value::Null => None,
        Value::String(s) => Some(s),
        _ => return Err(ApiError::param("model must be a string", "model")),
    };
    let instructions = match take("instructions") {
        Value::Null => None,
        Value::String(s) => Some(s),
        _ => {
            return Err(ApiError::param(
                "instructions must be a string",
                "instructions",
            ));
        }
    };
    let input = take("input");
    let max_output_tokens = match take("max_output_tokens") {
        Value::Null => None,
        v => match v.as_i64() {
            Some(m) if m >= 1 => Some(m),
            _ => {
                return Err(ApiError::param(
                    format!("max_output_tokens must be an integer of at least 1, got {v}"),
                    "max_output_tokens",
                ));
            }
        },
    };
    let number = |v: Value, name: &'static str| match v {
        Value::Null => Ok(None),
        v => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::param(format!("{name} must be a number"), name)),
    };
    let temperature = number(take("temperature"), "temperature")?;
    let top_p = number(take("top_p"), "top_p")?;
    let stream = match take("stream") {
        Value::Null => None,
        Value::Bool(s) => Some(s),
        _ => return Err(ApiError::param("stream must be a boolean", "stream")),
    };
    let metadata = match take("metadata") {
        Value::Null => json!({}),
        v @ Value::Object(_) => v,
        _ => return Err(ApiError::param("metadata must be an object", "metadata")),
    };
    let (format, format_echo) = text_format(take("text"))?;
    let tools = take("tools");
    if !(tools.is_null() || tools.as_array().is_some_and(Vec::is_empty)) {
        return Err(unsupported("tools", NO_TOOLS));
    }
    let tool_choice = match take("tool_choice") {
        Value::Null => json!("auto"),
        v if v == "auto" || v == "none" => v,
        _ => {
            return Err(unsupported("tool_choice", NO_TOOLS));
        }
    };
    // Each needs state this server does not keep, or work it does not do.
    for (field, why) in [
        ("previous_response_id", "responses are not stored"),
        ("conversation", "conversations are not stored"),
        ("prompt", "stored prompt templates are not available"),
    ] {
        if !take(field).is_null() {
            return Err(unsupported(field, why));
        }
    }
    if !matches!(take("background"), Value::Null | Value::Bool(false)) {
        return Err(unsupported(
            "background",
            "responses run in the foreground only",
        ));
    }
    let reasoning = take("reasoning");
    let asks_reasoning = |k: &str| !matches!(reasoning.get(k), None | Some(Value::Null));
    if !(reasoning.is_null() || reasoning.is_object()) {
        return Err(ApiError::param("reasoning must be an object", "reasoning"));
    }
    // `effort: "none"` asks for no reasoning, which is what this server does anyway.
    if (asks_reasoning("effort") && reasoning["effort"] != "none")
        || asks_reasoning("summary")
        || asks_reasoning("generate_summary")
    {
        return Err(unsupported(
            "reasoning",
            "reasoning effort and summaries are not implemented",
        ));
    }
    let include = take("include");
    if !(include.is_null() || include.as_array().is_some_and(Vec::is_empty)) {
        return Err(unsupported(
            "include",
            "no extra output items are available",
        ));
    }
    // 0 asks for nothing; any more would add logprobs to the answer.
    let top_logprobs = take("top_logprobs");
    if !(top_logprobs.is_null() || top_logprobs.as_i64() == Some(0)) {
        return Err(unsupported(
            "top_logprobs",
            "logprobs are not implemented here",
        ));
    }
    // Chat and completions names that would change the answer: refused rather than ignored.
    for (field, use_instead) in [
        ("max_tokens", "max_output_tokens"),
        ("max_completion_tokens", "max_output_tokens"),
        ("messages", "input"),
        ("logprobs", "nothing (logprobs are not implemented here)"),
        ("echo", "nothing"),
    ] {
        let v = take(field);
        if !matches!(v, Value::Null | Value::Bool(false)) {
            return Err(ApiError::param(
                format!("`{field}` is not a /v1/responses parameter; use {use_instead}"),
                field,
            )
            .code("unsupported_parameter"));
        }
    }
    for field in ["n", "best_of"] {
        let v = take(field);
        if !(v.is_null() || v.as_i64() == Some(1)) {
            return Err(ApiError::param(
                format!("`{field}` must be 1: a response has one output message"),
                field,
            )
            .code("unsupported_parameter"));
        }
    }
    let truncation = match take("truncation") {
        Value::Null => json!("disabled"),
        v if v == "auto" || v == "disabled" => v,
        _ => {
            return Err(ApiError::param(
                "truncation must be \"auto\" or \"disabled\"",
                "truncation",
            ));
        }
    };
    let parallel_tool_calls = take("parallel_tool_calls").as_bool().unwrap_or(true);
    let user = take("user");
    for k in INFORMATIONAL {
        b.remove(*k);
    }
    let text_format = format.is_some();
    if let Some(rf) = format {
        if !b.get("response_format").is_none_or(Value::is_null) {
            return Err(ApiError::param(
                "`text.format` and `response_format` both constrain the output: send one",
                "text.format",
            ));
        }
        b.insert("response_format".into(), rf);
    }
    // The rest goes to `Common`: it honours the chat path's extensions, refuses the fields it
    // knows would change the answer, and logs the others at debug level.
    let mut common: Common = serde_json::from_value(Value::Object(b))
        .map_err(|e| ApiError::bad(format!("invalid request: {e}")))?;
    common.model = model;
    common.max_tokens = max_output_tokens;
    common.temperature = temperature;
    common.top_p = top_p;
    common.stream = stream;

    let mut messages = Vec::new();
    if let Some(i) = &instructions {
        messages.push(ChatMessage::new("system", i.clone()));
    }
    messages.extend(input_messages(&input)?);

    let mut echo = Map::new();
    echo.insert("instructions".into(), json!(instructions));
    echo.insert("max_output_tokens".into(), json!(max_output_tokens));
    echo.insert("metadata".into(), metadata);
    echo.insert("parallel_tool_calls".into(), json!(parallel_tool_calls));
    echo.insert("temperature".into(), json!(temperature.unwrap_or(1.0)));
    echo.insert("top_p".into(), json!(top_p.unwrap_or(1.0)));
    echo.insert("tool_choice".into(), tool_choice);
    echo.insert("truncation".into(), truncation);
    echo.insert(
        "text".into(),
        json!({ "format": format_echo, "verbosity": "medium" }),
    );
    echo.insert(
        "user".into(),
        if user.is_string() { user } else { Value::Null },
    );
    Ok(Parsed {
        messages,
        common,
        echo,
        text_format,
    })
}

/// `text`: the output format, as chat's `response_format` (`None` for plain text), and the
/// format to echo; only the default verbosity.
fn text_format(text: Value) -> Result<(Option<Value>, Value), ApiError> {
    let plain = json!({ "type": "text" });
    let t = match text {
        Value::Null => return Ok((None, plain)),
        Value::Object(t) => t,
        _ => return Err(ApiError::param("text must be an object", "text")),
    };
    match t.get("verbosity") {
        None | Some(Value::Null) => {}
        Some(v) if v == "medium" => {}
        Some(_) => {
            return Err(unsupported(
                "text.verbosity",
                "only the default (\"medium\") is implemented",
            ));
        }
    }
    let p = "text.format";
    let f = match t.get("format") {
        None | Some(Value::Null) => return Ok((None, plain)),
        Some(f) => f,
    };
    // Responses spell json_schema flat (`{type, name, schema, strict}`); chat nests it.
    let rf = match f.get("type").and_then(Value::as_str) {
        Some("text") => None,
        Some("json_object") => Some(json!({ "type": "json_object" })),
        Some("json_schema") => {
            if !f.get("schema").is_some_and(Value::is_object) {
                return Err(ApiError::param(
                    "text.format of type json_schema needs a `schema` object",
                    p,
                ));
            }
            if !matches!(f.get("name"), None | Some(Value::String(_))) {
                return Err(ApiError::param("text.format.name must be a string", p));
            }
            if !matches!(f.get("strict"), None | Some(Value::Null | Value::Bool(_))) {
                return Err(ApiError::param("text.format.strict must be a boolean", p));
            }
            let mut js = serde_json::Map::new();
            for k in ["name", "schema", "strict"] {
                if let Some(v) = f.get(k) {
                    js.insert(k.into(), v.clone());
                }
            }
            Some(json!({ "type": "json_schema", "json_schema": js }))
        }
        Some(other) => {
            return Err(ApiError::param(
                format!(
                    "text.format type {other:?} is not supported (text, json_object or \
                     json_schema)"
                ),
                p,
            ));
        }
        None => return Err(ApiError::param("text.format needs a string `type`", p)),
    };
    Ok((rf, f.clone()))
}

/// `input`: a string (one user message) or a list of message items.
fn input_messages(input: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![ChatMessage::new("user", s.clone())]),
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => return Err(ApiError::param("input must not be empty", "input")),
        Value::Null => return Err(ApiError::param("input is required", "input")),
        _ => {
            return Err(ApiError::param(
                "input must be a string or a list of message items",
                "input",
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let bad = |what: String| ApiError::param(format!("input[{i}]: {what}"), "input");
            if !item.is_object() {
                return Err(bad("an item must be an object".into()));
            }
            match item.get("type").and_then(Value::as_str) {
                None | Some("message") => {}
                Some(t) => {
                    return Err(bad(format!(
                        "items of type {t:?} are not supported (messages only)"
                    )));
                }
            }
            let role = match item.get("role").and_then(Value::as_str) {
                // Chat templates know `system`; `developer` is OpenAI's newer name for it.
                Some("system" | "developer") => "system",
                Some(r @ ("user" | "assistant")) => r,
                Some(r) => return Err(bad(format!("role {r:?} is not supported"))),
                None => return Err(bad("role must be a string".into())),
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut s = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("input_text" | "output_text"), Some(Value::String(t))) => {
                                s.push_str(t)
                            }
                            (Some(t @ ("input_text" | "output_text")), _) => {
                                return Err(bad(format!(
                                    "content[{j}]: a {t} part needs a string `text`"
                                )));
                            }
                            (Some(t), _) => {
                                return Err(bad(format!(
                                    "content[{j}]: parts of type {t:?} are not supported \
                                     (input_text and output_text only)"
                                )));
                            }
                            (None, _) => {
                                return Err(bad(format!("content[{j}]: a part needs a `type`")));
                            }
                        }
                    }
                    s
                }
                _ => {
                    return Err(bad(
                        "content must be a string or a list of input_text parts".into(),
                    ));
                }
            };
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// What the Response object carries besides its output.
struct Meta {
    id: String,
    msg_id: String,
    created_at: u64,
    model: String,
    /// The request's own values (instructions, metadata, sampling...), answered as sent.
    echo: Map<String, Value>,
}

/// How a response ended.
enum End {
    Done(FinishReason),
    Failed(String),
}

impl Meta {
    fn message(&self, status: &str, text: Option<&str>) -> Value {
        json!({
            "type": "message",
            "id": self.msg_id,
            "status": status,
            "role": "assistant",
            "content": match text {
                Some(t) => json!([part(t)]),
                None => json!([]),
            },
        })
    }

    /// The Response object; `text` and `usage` once generation has ended.
    fn response(&self, end: Option<&End>, text: &str, usage: Option<Value>) -> Value {
        let (status, incomplete, error, output) = match end {
            None => ("in_progress", Value::Null, Value::Null, json!([])),
            Some(End::Done(FinishReason::Stop)) => (
                "completed",
                Value::Null,
                Value::Null,
                json!([self.message("completed", Some(text))]),
            ),
            // Length: cut at max_output_tokens.
            Some(End::Done(_)) => (
                "incomplete",
                json!({ "reason": "max_output_tokens" }),
                Value::Null,
                json!([self.message("incomplete", Some(text))]),
            ),
            Some(End::Failed(e)) => (
                "failed",
                Value::Null,
                json!({ "code": "server_error", "message": e }),
                json!([]),
            ),
        };
        let mut v = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": error,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "previous_response_id": null,
            "reasoning": { "effort": null, "summary": null },
            "store": false,
            "tools": [],
            "top_logprobs": 0,
            "max_tool_calls": null,
            "usage": usage,
        });
        if status == "completed" {
            v["completed_at"] = json!(unix_now());
        }
        for (k, x) in &self.echo {
            v[k] = x.clone();
        }
        v
    }
}

fn part(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [] })
}

fn usage(prompt: usize, output: usize, cached: usize) -> Value {
    json!({
        "input_tokens": prompt,
        // The client's model requires `cache_write_tokens`; the prefix cache does not count them.
        "input_tokens_details": { "cached_tokens": cached, "cache_write_tokens": 0 },
        "output_tokens": output,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": prompt + output,
    })
}

/// One generation in flight: the engine's stream and what has come out of it so far.
/// Dropping it drops the handle, which aborts the request and frees its KV blocks.
struct Gen {
    st: Arc<AppState>,
    handle: RequestHandle,
    meta: Meta,
    prompt_tokens: usize,
    tally: Option<Arc<Tally>>,
    last: Option<Instant>,
    text: String,
    tokens: usize,
}

impl Gen {
    /// The next piece of text (possibly empty), or how it ended.
    async fn next(&mut self) -> Result<String, (End, Value)> {
        match self.handle.next().await {
            Some(Event::Delta {
                text, token_ids, ..
            }) => {
                self.count(token_ids.len());
                self.text.push_str(&text);
                Ok(text)
            }
            Some(Event::Finished { reason, usage: u }) => {
                if let Some(t) = u.time_to_first_token {
                    self.st.metrics.ttft.observe(t.as_secs_f64());
                }
                let usage = usage(self.prompt_tokens, self.tokens, u.cached_tokens);
                Err((End::Done(reason), usage))
            }
            Some(Event::Failed(e)) => Err((End::Failed(e), Value::Null)),
            None => Err((End::Failed("the engine stopped".into()), Value::Null)),
        }
    }

    /// The access log's and the metrics' token counts (as the chat path keeps them).
    fn count(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.tokens += n;
        if let Some(t) = &self.tally {
            t.generated(n);
        }
        let now = Instant::now();
        if let Some(prev) = self.last {
            let dt = now.duration_since(prev).as_secs_f64() / n as f64;
            for _ in 0..n {
                self.st.metrics.itl.observe(dt);
            }
        }
        self.last = Some(now);
        self.st
            .metrics
            .generation_tokens
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Waits for the whole text and answers the Response object.
async fn collect(mut g: Gen) -> Result<Value, ApiError> {
    loop {
        match g.next().await {
            Ok(_) => {}
            Err((End::Failed(e), _)) => return Err(failed(e)),
            Err((end, usage)) => return Ok(g.meta.response(Some(&end), &g.text, Some(usage))),
        }
    }
}

/// The Server-Sent Events of a streamed response: each frame `event: <type>` and a `data:`
/// object carrying the same `type` and an increasing `sequence_number`.
struct Events {
    out: String,
    seq: u64,
}

impl Events {
    fn push(&mut self, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.out.push_str("event: ");
        self.out.push_str(kind);
        self.out.push_str("\ndata: ");
        self.out.push_str(&data.to_string());
        self.out.push_str("\n\n");
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.out))
    }
}

/// The frames that end a stream: the text and message done, then the final Response.
fn finish(m: &Meta, text: &str, ev: &mut Events, end: End, usage: Value) {
    if let End::Failed(_) = end {
        ev.push(
            "response.failed",
            json!({ "response": m.response(Some(&end), text, None) }),
        );
        return;
    }
    let at = |v: Value| {
        let mut v = v;
        v["item_id"] = json!(m.msg_id);
        v["output_index"] = json!(0);
        v["content_index"] = json!(0);
        v
    };
    ev.push(
        "response.output_text.done",
        at(json!({ "text": text, "logprobs": [] })),
    );
    ev.push(
        "response.content_part.done",
        at(json!({ "part": part(text) })),
    );
    let (item_status, last) = match end {
        End::Done(FinishReason::Stop) => ("completed", "response.completed"),
        // As OpenAI: a response cut at max_output_tokens ends with `response.incomplete`.
        _ => ("incomplete", "response.incomplete"),
    };
    ev.push(
        "response.output_item.done",
        json!({ "output_index": 0, "item": m.message(item_status, Some(text)) }),
    );
    ev.push(
        last,
        json!({ "response": m.response(Some(&end), text, Some(usage)) }),
    );
}

fn sse(g: Gen) -> Response {
    let mut ev = Events {
        out: String::new(),
        seq: 0,
    };
    let m = &g.meta;
    let r = m.response(None, "", None);
    ev.push("response.created", json!({ "response": r }));
    ev.push("response.in_progress", json!({ "response": r }));
    ev.push(
        "response.output_item.added",
        json!({ "output_index": 0, "item": m.message("in_progress", None) }),
    );
    ev.push(
        "response.content_part.added",
        json!({ "item_id": m.msg_id, "output_index": 0, "content_index": 0, "part": part("") }),
    );
    let body = futures::stream::unfold(Some((g, ev)), |state| async move {
        let (mut g, mut ev) = state?;
        // The head frames go out before the first token: the client sees the response start.
        if !ev.out.is_empty() {
            let b = ev.take();
            return Some((Ok::<_, std::convert::Infallible>(b), Some((g, ev))));
        }
        loop {
            match g.next().await {
                Ok(delta) if delta.is_empty() => {}
                Ok(delta) => {
                    ev.push(
                        "response.output_text.delta",
                        json!({
                            "item_id": g.meta.msg_id,
                            "output_index": 0,
                            "content_index": 0,
                            "delta": delta,
                            "logprobs": [],
                        }),
                    );
                    let b = ev.take();
                    return Some((Ok(b), Some((g, ev))));
                }
                Err((end, usage)) => {
                    finish(&g.meta, &g.text, &mut ev, end, usage);
                    return Some((Ok(ev.take()), None));
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            id: "resp_1".into(),
            msg_id: "msg_1".into(),
            created_at: 1,
            model: "m".into(),
            echo: Map::new(),
        }
    }

    /// The (event name, data) frames written so far.
    fn frames(ev: &mut Events) -> Vec<(String, Value)> {
        let out = String::from_utf8(ev.take().to_vec()).unwrap();
        out.split("\n\n")
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (name, data) = f
                    .strip_prefix("event: ")
                    .and_then(|f| f.split_once("\ndata: "))
                    .unwrap();
                (name.to_string(), serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    #[test]
    fn an_engine_failure_mid_stream_ends_with_response_failed() {
        let mut ev = Events {
            out: String::new(),
            seq: 7,
        };
        finish(
            &meta(),
            "partial",
            &mut ev,
            End::Failed("boom".into()),
            Value::Null,
        );
        let f = frames(&mut ev);
        assert_eq!(f.len(), 1);
        let (name, data) = &f[0];
        assert_eq!(name, "response.failed");
        assert_eq!(data["type"], "response.failed");
        assert_eq!(data["sequence_number"], 7);
        let r = &data["response"];
        assert_eq!(r["status"], "failed");
        assert_eq!(r["error"]["code"], "server_error");
        assert_eq!(r["error"]["message"], "boom");
    }

    #[test]
    fn a_finished_stream_closes_text_part_item_then_response() {
        let mut ev = Events {
            out: String::new(),
            seq: 4,
        };
        finish(
            &meta(),
            "Paris.",
            &mut ev,
            End::Done(FinishReason::Stop),
            usage(3, 2, 0),
        );
        let f = frames(&mut ev);
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (i, (_, d)) in f.iter().enumerate() {
            assert_eq!(d["sequence_number"], 4 + i);
        }
        let r = &f[3].1["response"];
        assert_eq!(r["status"], "completed");
        assert_eq!(r["output"][0]["content"][0]["text"], "Paris.");
        assert_eq!(r["usage"]["total_tokens"], 5);
    }

    fn parsed(v: Value) -> Result<Parsed, ApiError> {
        parse_request(v.as_object().unwrap().clone())
    }

    #[test]
    fn instructions_come_first_and_developer_is_system() {
        let p = parsed(json!({
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Answer in French."},
                {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "Hi "}, {"type": "input_text", "text": "there"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Bonjour"}]},
            ],
        }))
        .unwrap();
        let got: Vec<(&str, &str)> = p
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.text()))
            .collect();
        assert_eq!(
            got,
            [
                ("system", "Be brief."),
                ("system", "Answer in French."),
                ("user", "Hi there"),
                ("assistant", "Bonjour"),
            ]
        );
        let p = parsed(json!({"input": "Hello"})).unwrap();
        assert_eq!(p.messages, [ChatMessage::user("Hello")]);
        assert!(!p.text_format);
    }

    #[test]
    fn text_format_becomes_chat_response_format() {
        let schema = json!({"type": "object"});
        let p = parsed(json!({"input": "x", "text": {"format":
            {"type": "json_schema", "name": "n", "schema": schema, "strict": true}}}))
        .unwrap();
        assert!(p.text_format);
        assert_eq!(
            p.common.response_format,
            Some(json!({"type": "json_schema",
                        "json_schema": {"name": "n", "schema": schema, "strict": true}}))
        );
        let p = parsed(json!({"input": "x", "text": {"format": {"type": "text"}}})).unwrap();
        assert!(!p.text_format);
        assert!(p.common.response_format.is_none());
    }
}
