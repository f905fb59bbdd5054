//! Tool calling and reasoning in chat answers: which format the model writes its calls in
//! (read from its chat template), the prompt side (tools into the template, or a generic tool
//! system prompt for templates that know no tools), the grammar that forces a call
//! (`tool_choice: "required"` or a named function), and parsers that split the generated text
//! into reasoning, content and tool calls, for a whole answer or delta by delta.
//!
//! The streaming parser holds back only text that may still become a tool-call marker (or a
//! `<think>` tag); a call is sent once its JSON is complete, so a call that turns out not to
//! parse is given back as content, never lost.

use serde_json::{Map, Value, json};

use crate::sampling::Grammar;
use crate::tokenizer::ChatMessage;

mod parse;

pub use parse::{ChatOutput, ChoiceParser, Parsed, parse_complete, prompt_opens_thinking};

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Hermes / Qwen: `<tool_call>\n{"name": .., "arguments": {..}}\n</tool_call>`, repeated.
    Hermes,
    /// Llama 3.x: `{"name": .., "parameters": {..}}` as the whole answer, possibly after
    /// `<|python_tag|>`; several separated by `;`.
    Llama3,
    /// Mistral (v3 tokenizers): `[TOOL_CALLS] [{"name": .., "arguments": {..}}, ..]`.
    MistralJson,
    /// Mistral (v11 tokenizers): `[TOOL_CALLS]name[ARGS]{..}`, repeated.
    MistralArgs,
    /// Templates that know no tools get a system prompt asking for
    /// `{"tool_calls": [{"name": .., "arguments": {..}}]}` as the whole answer.
    Generic,
}

/// The tool-call format of a model, from its chat template's source.
pub fn detect(template: &str) -> ToolFormat {
    if template.contains("<tool_call>") {
        ToolFormat::Hermes
    } else if template.contains("[TOOL_CALLS]") {
        if template.contains("[ARGS]") {
            ToolFormat::MistralArgs
        } else {
            ToolFormat::MistralJson
        }
    } else if template.contains("<|python_tag|>")
        || (template.contains("<|start_header_id|>") && template.contains("\"parameters\""))
    {
        ToolFormat::Llama3
    } else {
        ToolFormat::Generic
    }
}

/// Whether the template reads the `tools` variable (else it would silently drop the tools).
pub fn template_uses_tools(template: &str) -> bool {
    template.contains("tools")
}

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// No tools, or `"none"`: a plain answer.
    None,
    /// The model decides.
    Auto,
    /// The answer must be a call (of any of the tools).
    Required,
    /// The answer must be a call of this function.
    Named(String),
}

/// The tools part of a chat request, validated.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    /// OpenAI function definitions, each `{"type": "function", "function": {..}}`.
    pub tools: Vec<Value>,
    pub choice: ToolChoice,
}

impl ToolRequest {
    /// Whether the answer is parsed for calls (and the tools shown to the model).
    pub fn active(&self) -> bool {
        !self.tools.is_empty() && self.choice != ToolChoice::None
    }
}

/// Why a `tools` / `tool_choice` value is refused; the string names the problem.
#[derive(Debug, PartialEq)]
pub enum ToolError {
    Tools(String),
    Choice(String),
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Validates `tools` and `tool_choice` (absent values are `None`).
pub fn validate(tools: Option<&Value>, choice: Option<&Value>) -> Result<ToolRequest, ToolError> {
    let tools = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(ToolError::Tools("tools must be an array".into())),
    };
    let mut names = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let bad = |m: &str| ToolError::Tools(format!("tools[{i}]: {m}"));
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad("type must be \"function\""));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("function must be an object"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("function.name must be a string"))?;
        if !valid_name(name) {
            return Err(bad(
                "function.name must be 1 to 64 letters, digits, '_', '-' or '.'",
            ));
        }
        if names.contains(&name) {
            return Err(bad(&format!("function {name:?} is defined twice")));
        }
        match f.get("parameters") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => return Err(bad("function.parameters must be an object (a JSON Schema)")),
        }
        match f.get("description") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(bad("function.description must be a string")),
        }
        names.push(name);
    }
    let choice = match choice {
        None | Some(Value::Null) => {
            if tools.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            }
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => {
                return Err(ToolError::Choice(format!(
                    "tool_choice must be \"none\", \"auto\", \"required\" or \
                     {{\"type\": \"function\", \"function\": {{\"name\": ..}}}}, got {s:?}"
                )));
            }
        },
        Some(v) => {
            let name = (v.get("type").and_then(Value::as_str) == Some("function"))
                .then(|| v.pointer("/function/name").and_then(Value::as_str))
                .flatten()
                .ok_or_else(|| {
                    ToolError::Choice(
                        "tool_choice must be a string or {\"type\": \"function\", \
                         \"function\": {\"name\": ..}}"
                            .into(),
                    )
                })?;
            if !names.contains(&name) {
                return Err(ToolError::Choice(format!(
                    "tool_choice names the function {name:?}, which is not in tools"
                )));
            }
            ToolChoice::Named(name.to_string())
        }
    };
    if tools.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
        return Err(ToolError::Choice(
            "tool_choice asks for a tool call but no tools were given".into(),
        ));
    }
    Ok(ToolRequest { tools, choice })
}

fn function(tool: &Value) -> (&str, Value) {
    let name = tool
        .pointer("/function/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let params = match tool.pointer("/function/parameters") {
        Some(p @ Value::Object(_)) => p.clone(),
        _ => json!({ "type": "object" }),
    };
    (name, params)
}

/// The tools a forced call may use.
fn callable(req: &ToolRequest) -> Vec<&Value> {
    req.tools
        .iter()
        .filter(|t| match &req.choice {
            ToolChoice::Named(n) => function(t).0 == n,
            _ => true,
        })
        .collect()
}

/// Compact, fixed JSON layout: with flexible whitespace a small model can pad forever.
fn x_guidance() -> Value {
    json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " })
}

/// The schema of one call object `{"name": <const>, <args_key>: <parameters>}`.
fn call_schema(tool: &Value, args_key: &str) -> Value {
    let (name, params) = function(tool);
    json!({
        "type": "object",
        "properties": { "name": { "const": name }, args_key: params },
        "required": ["name", args_key],
        "additionalProperties": false,
    })
}

fn one_of(mut alternatives: Vec<Value>) -> Value {
    if alternatives.len() == 1 {
        alternatives.remove(0)
    } else {
        json!({ "anyOf": alternatives })
    }
}

fn with_guidance(mut schema: Value) -> Value {
    if let Value::Object(o) = &mut schema {
        o.insert("x-guidance".into(), x_guidance());
    }
    schema
}

/// A Lark grammar that forces exactly one valid call in `format`, for `tool_choice` required or
/// named (`None` when the choice forces nothing).
pub fn forced_grammar(format: ToolFormat, req: &ToolRequest) -> Option<Grammar> {
    if !matches!(req.choice, ToolChoice::Required | ToolChoice::Named(_)) {
        return None;
    }
    let tools = callable(req);
    let calls = |key: &str| one_of(tools.iter().map(|t| call_schema(t, key)).collect());
    let lark = match format {
        ToolFormat::Hermes => format!(
            "start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {}\n",
            with_guidance(calls("arguments"))
        ),
        ToolFormat::Llama3 => format!("start: %json {}\n", with_guidance(calls("parameters"))),
        ToolFormat::MistralJson => format!(
            "start: \"[TOOL_CALLS]\" calls\ncalls: %json {}\n",
            with_guidance(json!({
                "type": "array", "items": calls("arguments"), "minItems": 1, "maxItems": 1,
            }))
        ),
        ToolFormat::MistralArgs => {
            let mut g = String::from("start: \"[TOOL_CALLS]\" call\ncall: ");
            let alts: Vec<String> = (0..tools.len()).map(|i| format!("c{i}")).collect();
            g.push_str(&alts.join(" | "));
            g.push('\n');
            for (i, t) in tools.iter().enumerate() {
                let (name, params) = function(t);
                // Names are checked to be plain ASCII words: no escaping needed in a literal.
                g.push_str(&format!(
                    "c{i}: \"{name}[ARGS]\" a{i}\na{i}: %json {}\n",
                    with_guidance(params)
                ));
            }
            g
        }
        ToolFormat::Generic => format!(
            "start: %json {}\n",
            with_guidance(json!({
                "type": "object",
                "properties": { "tool_calls": {
                    "type": "array", "items": calls("arguments"), "minItems": 1, "maxItems": 1,
                }},
                "required": ["tool_calls"],
                "additionalProperties": false,
            }))
        ),
    };
    Some(Grammar::Lark(lark))
}

/// The generic tool prompt (as llama.cpp gives templates without tool support): the tools and
/// the exact JSON to answer with.
pub fn generic_system_prompt(req: &ToolRequest) -> String {
    let mut s = String::from("You can call these tools (JSON Schema of each function):\n");
    for t in &req.tools {
        let f = t.get("function").cloned().unwrap_or(Value::Null);
        s.push_str(&f.to_string());
        s.push('\n');
    }
    s.push_str(
        "\nTo call a tool, answer with only this JSON object and nothing else:\n\
         {\"tool_calls\": [{\"name\": \"<function name>\", \"arguments\": {<arguments>}}]}\n",
    );
    s.push_str(match &req.choice {
        ToolChoice::Required | ToolChoice::Named(_) => "You must call a tool now.",
        _ => "Otherwise, answer the user directly.",
    });
    s
}

/// The generic JSON for calls (`tool_calls` entries in OpenAI's shape, arguments as sent).
fn generic_calls_text(calls: &[Value]) -> String {
    let calls: Vec<Value> = calls
        .iter()
        .map(|c| {
            json!({
                "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null),
                "arguments": c.pointer("/function/arguments").cloned().unwrap_or(json!({})),
            })
        })
        .collect();
    json!({ "tool_calls": calls }).to_string()
}

/// The messages and the `tools` variable to render: tools go to templates that read them;
/// others get the generic system prompt, and past calls written as the generic JSON (a
/// template that knows no `tool_calls` would drop them, or fail on their null content).
pub fn prepare(
    template: &str,
    mut messages: Vec<ChatMessage>,
    req: &ToolRequest,
) -> (Vec<ChatMessage>, Option<Vec<Value>>) {
    let uses_tools = template_uses_tools(template);
    if matches!(
        detect(template),
        ToolFormat::MistralJson | ToolFormat::MistralArgs
    ) {
        mistral_ids(&mut messages);
    }
    if !template.contains("tool_calls") {
        for m in &mut messages {
            if let Some(calls) = m.tool_calls.take() {
                let text = generic_calls_text(&calls);
                m.content = Some(match m.content.take().filter(|c| !c.is_empty()) {
                    Some(c) => format!("{c}\n{text}"),
                    None => text,
                });
            }
        }
    }
    if !req.active() {
        return (messages, None);
    }
    if uses_tools {
        return (messages, Some(req.tools.clone()));
    }
    let prompt = generic_system_prompt(req);
    match messages.first_mut() {
        Some(m) if m.role == "system" => {
            let c = m.content.take().unwrap_or_default();
            m.content = Some(if c.is_empty() {
                prompt
            } else {
                format!("{c}\n\n{prompt}")
            });
        }
        _ => messages.insert(0, ChatMessage::system(prompt)),
    }
    (messages, None)
}

/// Nine letters and digits from the bits of `h`.
fn alnum9(h: u64) -> String {
    (0..9)
        .map(|i| {
            let d = ((h >> (i * 6)) % 62) as u8;
            (match d {
                0..=9 => b'0' + d,
                10..=35 => b'a' + d - 10,
                _ => b'A' + d - 36,
            }) as char
        })
        .collect()
}

/// Mistral's templates refuse call ids that are not 9 letters or digits: other ids (from
/// other servers, or tests) are mapped to such ids, the same way in calls and answers.
fn mistral_ids(messages: &mut [ChatMessage]) {
    fn nine(id: &str) -> String {
        if id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return id.to_string();
        }
        // FNV-1a: stable across processes, so a conversation maps the same each request.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in id.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        alnum9(h)
    }
    for m in messages {
        if let Some(id) = &mut m.tool_call_id {
            *id = nine(id);
        }
        for c in m.tool_calls.iter_mut().flatten() {
            if let Some(Value::String(id)) = c.get_mut("id") {
                *id = nine(id);
            }
        }
    }
}

/// An assistant message's `tool_calls` as the template gets them: `function.arguments`, a
/// JSON string from OpenAI clients, parsed into a value (templates print it with `tojson`);
/// a string that is not JSON is kept as it is.
pub fn incoming_tool_calls(calls: &[Value]) -> Vec<Value> {
    calls
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if let Some(a) = c.pointer_mut("/function/arguments")
                && let Some(s) = a.as_str()
                && let Ok(v) = serde_json::from_str::<Value>(s)
            {
                *a = v;
            }
            c
        })
        .collect()
}

/// A fresh call id: `call_<random>`, or 9 letters and digits for Mistral, whose templates
/// refuse any other id when the call comes back in the conversation.
fn call_id(format: ToolFormat) -> String {
    let r = super::random_u64();
    match format {
        ToolFormat::MistralJson | ToolFormat::MistralArgs => alnum9(r),
        _ => format!("call_{r:016x}"),
    }
}

/// A request's `chat_template_kwargs` (an object, or absent).
pub fn kwargs_of(v: Option<&Value>) -> Result<Map<String, Value>, String> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err("chat_template_kwargs must be an object".into()),
    }
}

#[cfg(test)]
mod tests;
