//! Reading a `/v1/responses` request: the Responses fields checked and turned into the
//! messages to render, the rest handed to [`Common`] as the chat path reads it.

use super::*;
use openai::Common;
use serde_json::Map;

use crate::tokenizer::ChatMessage;

/// A validated request: the messages to render, the knobs for [`Common::params`], and what
/// the Response object echoes back.
pub(super) struct Parsed {
    pub(super) messages: Vec<ChatMessage>,
    pub(super) common: Common,
    pub(super) echo: Map<String, Value>,
    /// `text.format` asked for structured output.
    pub(super) text_format: bool,
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

pub(super) fn parse_request(mut b: Map<String, Value>) -> Result<Parsed, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
