//! OpenAI request bodies, validated into engine requests; errors in OpenAI's JSON shape.
//!
//! A field that would change what is generated is honoured or refused (400 naming it), never
//! ignored; informational fields clients send are accepted, and any other unknown field is
//! ignored with a debug log line (as vLLM does).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::sampling::{Grammar, MAX_LOGIT_BIAS, SamplingParams};
use crate::tokenizer::ChatMessage;

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn param(message: impl Into<String>, param: &'static str) -> Self {
        Self {
            param: Some(param),
            ..Self::bad(message)
        }
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            503 => "service_unavailable",
            _ => "server_error",
        }
    }

    pub fn body(&self) -> Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        use crate::Error;
        match &e {
            Error::InvalidRequest(m) => ApiError::bad(m.clone()),
            Error::Tokenizer(_) | Error::Unsupported(_) => ApiError::bad(e.to_string()),
            Error::QueueFull(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            Error::EngineStopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// The fields chat and completions share.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Value>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// vLLM's extension: keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// wllm's: speculative decoding on or off for this request (default: the server's
    /// `--speculative`); the output is the same either way.
    pub speculative: Option<bool>,
    /// wllm's: `"persist"` keeps the prompt's KV in the server's disk tier
    /// (`--kv-cache-dir`) for later requests and restarts; `"default"` or absent: the
    /// server's rule (`--kv-persist-min-tokens`).
    pub cache: Option<Value>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub best_of: Option<i64>,
    /// Token id (as a string) → bias in [-100, 100].
    pub logit_bias: Option<Value>,
    /// Structured output: OpenAI's, then llama.cpp's, then vLLM's spellings (one at a time).
    pub response_format: Option<Value>,
    pub json_schema: Option<Value>,
    pub grammar: Option<Value>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<Value>,
    pub guided_choice: Option<Value>,
    pub guided_grammar: Option<Value>,
    pub structured_outputs: Option<Value>,
    /// Every other field: checked against [`UNSUPPORTED`] and [`INFORMATIONAL`].
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// Whether a field's value asks for nothing (so the field can be let through).
type AsksNothing = fn(&Value) -> bool;

/// Fields that constrain or change what is generated (or, for `prompt_logprobs`, what is
/// answered) which this engine does not implement yet, each with a test for the values that
/// ask for nothing (absent, null, empty, "none"...). Any other value is refused. Chat reads
/// [`CHAT_ONLY`] itself; they are refused here on the other endpoints.
const UNSUPPORTED: &[(&str, AsksNothing)] = &[
    ("tools", empty),
    ("tool_choice", no_tool_call),
    ("functions", empty),
    ("function_call", no_tool_call),
    ("suffix", empty),
    ("chat_template_kwargs", empty),
    // vLLM's sampling extensions.
    ("min_tokens", off),
    ("stop_token_ids", empty),
    ("allowed_token_ids", Value::is_null),
    ("bad_words", empty),
    ("use_beam_search", off),
    ("prompt_logprobs", Value::is_null),
];

/// Fields clients send that change nothing about the answer; accepted silently.
const INFORMATIONAL: &[&str] = &[
    "user",
    "metadata",
    "store",
    "parallel_tool_calls",
    "service_tier",
];

fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn off(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Bool(false)) || v.as_f64() == Some(0.0)
}

/// `tool_choice` / `function_call` values that call nothing (`auto` with no tools given).
fn no_tool_call(v: &Value) -> bool {
    v.is_null() || v == "none" || v == "auto"
}

/// Fields chat reads itself (they reach [`check_other_fields`] only on other endpoints).
const CHAT_ONLY: &[&str] = &["tools", "tool_choice", "chat_template_kwargs"];

fn where_(field: &str) -> &'static str {
    if CHAT_ONLY.contains(&field) {
        "on this endpoint (only on /v1/chat/completions)"
    } else {
        "by this server"
    }
}

/// Refuses the first field that asks for something unsupported; logs unknown ones.
fn check_other_fields(other: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    let mut unknown = Vec::new();
    for (name, value) in other {
        match UNSUPPORTED.iter().find(|(n, _)| n == name) {
            Some((n, asks_nothing)) if !asks_nothing(value) => {
                return Err(
                    ApiError::param(format!("`{n}` is not supported {}", where_(n)), n)
                        .code("unsupported_parameter"),
                );
            }
            Some(_) => {}
            None if INFORMATIONAL.contains(&name.as_str()) => {}
            None => unknown.push(name.as_str()),
        }
    }
    if !unknown.is_empty() {
        log::debug!("ignoring unknown request fields: {}", unknown.join(", "));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct ChatBody {
    pub messages: Vec<Value>,
    /// Chat only (completions refuse them through [`UNSUPPORTED`]).
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// More template variables (`enable_thinking`, …).
    #[serde(default)]
    pub chat_template_kwargs: Option<Value>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    pub prompt: Value,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub common: Common,
}

/// Parses a JSON body into `T`, any failure a 400 in OpenAI's shape.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("the request body must be a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("invalid request: {e}")))
}

/// Chat messages: content is a string, null, or an array of `{type: "text", text}` parts.
pub fn chat_messages(messages: &[Value]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::param("messages must not be empty", "messages"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let bad = |what: &str| ApiError::param(format!("messages[{i}]: {what}"), "messages");
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("role must be a string"))?;
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => s.push_str(t),
                            (Some(t), _) if t != "text" => {
                                return Err(bad(&format!(
                                    "content parts of type {t:?} are not supported (text only)"
                                )));
                            }
                            _ => return Err(bad("a text part needs a string `text`")),
                        }
                    }
                    s
                }
                Some(_) => return Err(bad("content must be a string or an array of parts")),
            };
            let mut msg = ChatMessage::new(role, content);
            match m.get("tool_calls") {
                None | Some(Value::Null) => {}
                Some(Value::Array(calls)) if role == "assistant" => {
                    for c in calls {
                        let ok = c.pointer("/function/name").is_some_and(Value::is_string)
                            && c.get("function").is_some_and(Value::is_object);
                        if !ok {
                            return Err(bad("each tool call needs function.name"));
                        }
                    }
                    if !calls.is_empty() {
                        msg.tool_calls = Some(super::tools::incoming_tool_calls(calls));
                        // A turn of calls only has no content (templates test for it).
                        if msg.text().is_empty() {
                            msg.content = None;
                        }
                    }
                }
                Some(Value::Array(_)) => {
                    return Err(bad("only assistant messages have tool_calls"));
                }
                Some(_) => return Err(bad("tool_calls must be an array")),
            }
            let string = |k: &str| match m.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(&format!("{k} must be a string"))),
            };
            msg.tool_call_id = string("tool_call_id")?;
            msg.name = string("name")?;
            msg.reasoning_content = string("reasoning_content")?;
            if role == "tool" && msg.tool_call_id.is_none() {
                return Err(bad("a tool message needs tool_call_id"));
            }
            Ok(msg)
        })
        .collect()
}

/// What a completions `prompt` may be.
pub enum PromptIn {
    Text(String),
    Ids(Vec<u32>),
}

pub fn completion_prompt(p: &Value) -> Result<PromptIn, ApiError> {
    let bad = || {
        ApiError::param(
            "prompt must be a string, an array of token ids, or an array of one string",
            "prompt",
        )
    };
    match p {
        Value::String(s) => Ok(PromptIn::Text(s.clone())),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => Ok(PromptIn::Text(
            a[0].as_str().unwrap_or_default().to_string(),
        )),
        Value::Array(a) if a.iter().any(Value::is_string) || a.iter().any(Value::is_array) => Err(
            ApiError::param("only one prompt per request is supported", "prompt"),
        ),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(bad)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(PromptIn::Ids),
        _ => Err(bad()),
    }
}

/// The validated knobs of one request.
pub struct Params {
    /// None: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    /// None: draw a fresh seed per choice.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// Speculative decoding for this request (None: the server's default).
    pub speculative: Option<bool>,
    /// `cache: "persist"`.
    pub persist: bool,
    /// Report each token's logprob and this many alternatives.
    pub logprobs: Option<usize>,
    /// Structured output: what the text must follow.
    pub grammar: Option<Grammar>,
    /// Which field asked for `grammar` (named when it cannot be combined with tools).
    pub grammar_param: Option<&'static str>,
    /// (token id, bias); ids are checked against the vocabulary at submit.
    pub logit_bias: Vec<(u32, f32)>,
}

pub const MAX_TOP_LOGPROBS: usize = 20;

pub const MAX_N: i64 = 64;

impl Common {
    /// Validates every value; `chat` picks which logprobs form is meant.
    pub fn params(&self, chat: bool) -> Result<Params, ApiError> {
        // Never silently ignore what would change the answer.
        check_other_fields(&self.other)?;
        let count = |v: &Value, name: &'static str| {
            v.as_u64()
                .filter(|k| *k <= MAX_TOP_LOGPROBS as u64)
                .map(|k| k as usize)
                .ok_or_else(|| {
                    ApiError::param(
                        format!("{name} must be an integer in 0..={MAX_TOP_LOGPROBS}"),
                        name,
                    )
                })
        };
        let logprobs = if chat {
            let on = match &self.logprobs {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(_) => return Err(ApiError::param("logprobs must be a boolean", "logprobs")),
            };
            let top = match &self.top_logprobs {
                None | Some(Value::Null) => None,
                Some(v) => Some(count(v, "top_logprobs")?),
            };
            match (on, top) {
                (true, t) => Some(t.unwrap_or(0)),
                (false, Some(t)) if t > 0 => {
                    return Err(ApiError::param(
                        "top_logprobs needs logprobs: true",
                        "top_logprobs",
                    ));
                }
                _ => None,
            }
        } else {
            match &self.logprobs {
                None | Some(Value::Null) => None,
                Some(v) => Some(count(v, "logprobs")?),
            }
        };
        let (mt, name) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => (Some(m), "max_completion_tokens"),
            (None, m) => (m, "max_tokens"),
        };
        let max_tokens = match mt {
            None => None,
            Some(m) if m < 1 => {
                return Err(ApiError::param(
                    format!("{name} must be at least 1, got {m}"),
                    name,
                ));
            }
            Some(m) => Some(m as usize),
        };
        let f = |v: Option<f64>, d: f32| v.map(|x| x as f32).unwrap_or(d);
        let temperature = f(self.temperature, 1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::param(
                format!("temperature must be in [0, 2], got {temperature}"),
                "temperature",
            ));
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(ApiError::param(
                    format!("top_k must be -1 (off) or at least 1, got {k}"),
                    "top_k",
                ));
            }
        };
        let sampling = SamplingParams {
            temperature,
            top_k,
            top_p: f(self.top_p, 1.0),
            min_p: f(self.min_p, 0.0),
            repetition_penalty: f(self.repetition_penalty, 1.0),
            presence_penalty: f(self.presence_penalty, 0.0),
            frequency_penalty: f(self.frequency_penalty, 0.0),
            seed: 0,
        };
        sampling.validate().map_err(ApiError::bad)?;
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::param(
                format!("n must be in 1..={MAX_N}, got {n}"),
                "n",
            ));
        }
        // best_of > n would generate more and answer the likeliest n.
        if self.best_of.is_some_and(|b| b != n) {
            return Err(ApiError::param(
                format!("best_of must equal n ({n}): picking the best of more is not supported"),
                "best_of",
            )
            .code("unsupported_parameter"));
        }
        let stop = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::param("stop must be a string or a list of strings", "stop")
                })?,
            Some(_) => {
                return Err(ApiError::param(
                    "stop must be a string or a list of strings",
                    "stop",
                ));
            }
        };
        if stop.len() > 4 {
            return Err(ApiError::param("stop takes at most 4 sequences", "stop"));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::param("stop sequences must not be empty", "stop"));
        }
        let persist = match &self.cache {
            None | Some(Value::Null) => false,
            Some(Value::String(c)) if c == "persist" => true,
            Some(Value::String(c)) if c == "default" => false,
            Some(_) => {
                return Err(ApiError::param(
                    "cache must be \"persist\" or \"default\"",
                    "cache",
                ));
            }
        };
        let stream = self.stream.unwrap_or(false);
        let (grammar, grammar_param) = match self.structured()? {
            Some((g, name)) => (Some(g), Some(name)),
            None => (None, None),
        };
        let include_usage = self
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        Ok(Params {
            max_tokens,
            sampling,
            seed: self.seed.map(|s| s as u64),
            stop,
            n: n as usize,
            stream,
            include_usage,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            speculative: self.speculative,
            persist,
            logprobs,
            grammar,
            grammar_param,
            logit_bias: logit_bias(self.logit_bias.as_ref())?,
        })
    }

    /// The one structured-output field set (values that ask for nothing do not count).
    fn structured(&self) -> Result<Option<(Grammar, &'static str)>, ApiError> {
        let fields: [(&'static str, &Option<Value>); 8] = [
            ("response_format", &self.response_format),
            ("json_schema", &self.json_schema),
            ("grammar", &self.grammar),
            ("guided_json", &self.guided_json),
            ("guided_regex", &self.guided_regex),
            ("guided_choice", &self.guided_choice),
            ("guided_grammar", &self.guided_grammar),
            ("structured_outputs", &self.structured_outputs),
        ];
        let mut found: Option<(Grammar, &'static str)> = None;
        for (name, v) in fields {
            let Some(v) = v else { continue };
            let Some(g) = structured_field(name, v)? else {
                continue;
            };
            if let Some((_, first)) = &found {
                return Err(ApiError::param(
                    format!("`{first}` and `{name}` both constrain the output: send one"),
                    name,
                ));
            }
            found = Some((g, name));
        }
        Ok(found)
    }
}

/// A Lark grammar from `param`; GBNF (llama.cpp's other syntax) is refused by name.
fn lark(v: &Value, param: &'static str) -> Result<Option<Grammar>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) if s.contains("::=") => Err(ApiError::param(
            format!(
                "`{param}` looks like a GBNF grammar (it has `::=`): GBNF is not supported; \
                 send the grammar in Lark syntax (llguidance), e.g. `start: \"yes\" | \"no\"`"
            ),
            param,
        )),
        Value::String(s) => Ok(Some(Grammar::Lark(s.clone()))),
        _ => Err(ApiError::param(
            format!("`{param}` must be a string (a Lark grammar)"),
            param,
        )),
    }
}

fn schema(v: &Value, param: &'static str) -> Result<Option<Grammar>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Object(_) | Value::Bool(true) => Ok(Some(Grammar::JsonSchema(v.clone()))),
        _ => Err(ApiError::param(
            format!("`{param}` must be a JSON Schema object"),
            param,
        )),
    }
}

fn regex(v: &Value, param: &'static str) -> Result<Option<Grammar>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(Grammar::Regex(s.clone()))),
        _ => Err(ApiError::param(
            format!("`{param}` must be a string (a regular expression)"),
            param,
        )),
    }
}

fn choice(v: &Value, param: &'static str) -> Result<Option<Grammar>, ApiError> {
    let bad = || {
        ApiError::param(
            format!("`{param}` must be a non-empty list of strings"),
            param,
        )
    };
    match v {
        Value::Null => Ok(None),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(|c| Some(Grammar::Choice(c)))
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// One structured-output field's grammar; `None` when its value asks for nothing.
fn structured_field(name: &'static str, v: &Value) -> Result<Option<Grammar>, ApiError> {
    match name {
        "response_format" => response_format(v),
        "json_schema" | "guided_json" => schema(v, name),
        "grammar" | "guided_grammar" => lark(v, name),
        "guided_regex" => regex(v, name),
        "guided_choice" => choice(v, name),
        _ => structured_outputs(v),
    }
}

fn response_format(v: &Value) -> Result<Option<Grammar>, ApiError> {
    let p = "response_format";
    if v.is_null() {
        return Ok(None);
    }
    let bad = |m: &str| ApiError::param(format!("response_format: {m}"), p);
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::JsonObject)),
        Some("json_schema") => {
            let js = v
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| bad("type json_schema needs a `json_schema` object"))?;
            match js.get("name") {
                None | Some(Value::String(_)) => {}
                Some(_) => return Err(bad("json_schema.name must be a string")),
            }
            match js.get("strict") {
                None | Some(Value::Null) | Some(Value::Bool(_)) => {}
                Some(_) => return Err(bad("json_schema.strict must be a boolean")),
            }
            match js.get("schema") {
                // No schema: any JSON object, as llama.cpp does.
                None | Some(Value::Null) => Ok(Some(Grammar::JsonObject)),
                Some(s @ Value::Object(_)) => Ok(Some(Grammar::JsonSchema(s.clone()))),
                Some(_) => Err(bad("json_schema.schema must be an object")),
            }
        }
        Some(t) => Err(bad(&format!(
            "type {t:?} is not supported (text, json_object or json_schema)"
        ))),
        None => Err(bad("needs a string `type`")),
    }
}

/// vLLM's `structured_outputs`: one of json, regex, choice, grammar, json_object.
fn structured_outputs(v: &Value) -> Result<Option<Grammar>, ApiError> {
    let p = "structured_outputs";
    let o = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err(ApiError::param("structured_outputs must be an object", p)),
    };
    let mut found = None;
    for (k, v) in o {
        let g = match k.as_str() {
            "json" => schema(v, p)?,
            "regex" => regex(v, p)?,
            "choice" => choice(v, p)?,
            "grammar" => lark(v, p)?,
            "json_object" => match v {
                Value::Bool(true) => Some(Grammar::JsonObject),
                Value::Bool(false) | Value::Null => None,
                _ => {
                    return Err(ApiError::param(
                        "structured_outputs.json_object must be a boolean",
                        p,
                    ));
                }
            },
            _ => {
                return Err(ApiError::param(
                    format!(
                        "structured_outputs.{k} is not supported (json, regex, choice, grammar, \
                         json_object)"
                    ),
                    p,
                ));
            }
        };
        if g.is_some() && found.is_some() {
            return Err(ApiError::param(
                "structured_outputs takes one of json, regex, choice, grammar, json_object",
                p,
            ));
        }
        found = found.or(g);
    }
    Ok(found)
}

/// `logit_bias`: `{"<token id>": bias}` with biases in [-100, 100], at most [`MAX_LOGIT_BIAS`].
fn logit_bias(v: Option<&Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let p = "logit_bias";
    let o = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(ApiError::param(
                "logit_bias must be an object of token ids to biases",
                p,
            ));
        }
    };
    if o.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::param(
            format!(
                "logit_bias takes at most {MAX_LOGIT_BIAS} tokens, got {}",
                o.len()
            ),
            p,
        ));
    }
    o.iter()
        .map(|(k, b)| {
            let id = k.trim().parse::<u32>().map_err(|_| {
                ApiError::param(format!("logit_bias key {k:?} is not a token id"), p)
            })?;
            match b.as_f64() {
                Some(x) if (-100.0..=100.0).contains(&x) => Ok((id, x as f32)),
                _ => Err(ApiError::param(
                    format!("logit_bias for token {id} must be a number in [-100, 100], got {b}"),
                    p,
                )),
            }
        })
        .collect()
}
