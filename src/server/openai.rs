//! OpenAI request bodies, validated into engine requests; errors in OpenAI's JSON shape.
//!
//! A field that would change what is generated is honoured or refused (400 naming it), never
//! ignored; informational fields clients send are accepted, and any other unknown field is
//! ignored with a debug log line (as vLLM does).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::sampling::SamplingParams;
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
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub best_of: Option<i64>,
    /// Every other field: checked against [`UNSUPPORTED`] and [`INFORMATIONAL`].
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// Whether a field's value asks for nothing (so the field can be let through).
type AsksNothing = fn(&Value) -> bool;

/// Fields that constrain or change what is generated (or, for `prompt_logprobs`, what is
/// answered) which this engine does not implement yet, each with a test for the values that
/// ask for nothing (absent, null, empty, "none"...). Any other value is refused.
const UNSUPPORTED: &[(&str, AsksNothing)] = &[
    ("tools", empty),
    ("tool_choice", no_tool_call),
    ("functions", empty),
    ("function_call", no_tool_call),
    ("response_format", plain_text),
    ("logit_bias", empty),
    ("suffix", empty),
    // Structured output as vLLM spells it, then llama.cpp.
    ("guided_choice", Value::is_null),
    ("guided_json", Value::is_null),
    ("guided_regex", Value::is_null),
    ("guided_grammar", Value::is_null),
    ("structured_outputs", Value::is_null),
    ("grammar", empty),
    ("json_schema", empty),
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

fn plain_text(v: &Value) -> bool {
    v.is_null() || *v == json!({ "type": "text" })
}

/// Refuses the first field that asks for something unsupported; logs unknown ones.
fn check_other_fields(other: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    let mut unknown = Vec::new();
    for (name, value) in other {
        match UNSUPPORTED.iter().find(|(n, _)| n == name) {
            Some((n, asks_nothing)) if !asks_nothing(value) => {
                return Err(
                    ApiError::param(format!("`{n}` is not supported by this server"), n)
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
            Ok(ChatMessage::new(role, content))
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
    /// Report each token's logprob and this many alternatives.
    pub logprobs: Option<usize>,
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
        let stream = self.stream.unwrap_or(false);
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
            logprobs,
        })
    }
}
