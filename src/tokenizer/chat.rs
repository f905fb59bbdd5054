//! Chat templates: a model's own Jinja template rendered with minijinja exactly as Hugging Face
//! transformers renders it with jinja2 (`apply_chat_template`):
//! - the environment trims blocks (`trim_blocks`, `lstrip_blocks`) and allows `{% break %}` /
//!   `{% continue %}`, like HF's `ImmutableSandboxedEnvironment`; HF's `{% generation %}` block
//!   (it marks assistant text for training masks) renders its body;
//! - the context holds `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools`
//!   (OpenAI function definitions, or none), `documents` (none) and the request's extra
//!   keyword arguments (`enable_thinking`, …): see [`ChatRequestContext`];
//! - each message is a dict as HF passes it: absent fields left out (not `none`), and a
//!   `reasoning_content` also given as `thinking`;
//! - `raise_exception(msg)` fails the render with `msg`; `strftime_now(fmt)` formats the current
//!   time (UTC here; HF uses local time);
//! - values print as Python prints them (`True`, `None`, `{'a': 1}`), and Python's string, dict
//!   and list methods (`.strip()`, `.startswith()`, `.items()`, …) work (`chat/methods.rs`, on top of
//!   minijinja-contrib's pycompat);
//! - `tojson` is HF's: Python's `json.dumps` with `ensure_ascii=False` by default, `", "` /
//!   `": "` separators, no HTML escaping, and its `indent`, `separators`, `sort_keys` options;
//! - where minijinja's syntax matches jinja2's but its meaning does not, the source is rewritten
//!   before compiling (`chat/rewrite.rs`): Python's slicing, a `for` over `none` failing, a sum with a
//!   `|safe` (`Markup`) term escaping the plain strings.
//!
//! Every template of llama.cpp's `models/templates` renders here byte for byte as jinja2 renders
//! it, or fails where jinja2 fails (tests/chat_templates.rs). Differences known to remain, which
//! none of those templates meets: `~` joins a dict, a list or a float Python writes with an
//! exponent as minijinja prints it (`{"a": 1}`, not `{'a': 1}`; `1e20` in full, not `1e+20`);
//! pairs (`dict.items()`, `dictsort`) print as lists, not tuples; a `Markup` kept in a variable
//! and added later is not escaped against; a printed generator shows its items, not
//! `<generator object …>`.

mod methods;
mod python;
mod rewrite;
mod strftime;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};

use super::chat_limits::{self, BoundedOutput};
use super::{Tokenizer, TokenizerError};

/// One turn of a conversation (`role` is `system`, `user`, `assistant`, `tool`, or what the
/// template knows). Fields that are `None` are absent from the template's message dict, as
/// transformers drops `None` values (an assistant turn that only calls tools has no `content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The model's reasoning for this turn (OpenAI-compatible servers' `reasoning_content`);
    /// templates also see it as `thinking`, as transformers passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// An assistant turn's tool calls, each `{"id", "type": "function", "function": {"name",
    /// "arguments"}}` as the client sent it (most templates want `arguments` as an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` turn's answer to this call id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` turn's function name (or a participant's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: Some(content.into()),
            reasoning_content: None,
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
    /// An assistant turn that calls tools and says nothing (no `content`).
    pub fn assistant_tool_calls(tool_calls: Vec<serde_json::Value>) -> Self {
        ChatMessage {
            content: None,
            tool_calls: Some(tool_calls),
            ..Self::new("assistant", "")
        }
    }
    /// A tool's result for the call `tool_call_id`.
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            tool_call_id: Some(tool_call_id.into()),
            ..Self::new("tool", content)
        }
    }
    /// The text of `content`, or `""` when there is none.
    pub fn text(&self) -> &str {
        self.content.as_deref().unwrap_or("")
    }
}

/// Everything a chat template sees besides the messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequestContext {
    /// End with the header of an assistant turn, ready for generation.
    pub add_generation_prompt: bool,
    /// The `tools` variable: OpenAI-style function definitions
    /// (`{"type": "function", "function": {"name", "description", "parameters"}}`), or none.
    /// Key order is kept (templates print the schemas as JSON).
    pub tools: Option<Vec<serde_json::Value>>,
    /// More template variables (a request's `chat_template_kwargs`: `enable_thinking`, …). They
    /// may replace `bos_token` / `eos_token`, as in transformers, but not `messages`, `tools`,
    /// `documents` or `add_generation_prompt`.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    /// The model's BOS / EOS token text; `None` leaves the variable undefined.
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl ChatRequestContext {
    pub fn new(add_generation_prompt: bool) -> Self {
        ChatRequestContext {
            add_generation_prompt,
            ..Self::default()
        }
    }
    pub fn with_tools(mut self, tools: Vec<serde_json::Value>) -> Self {
        self.tools = Some(tools);
        self
    }
    pub fn with_kwarg(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.kwargs.insert(name.into(), value);
        self
    }
    pub fn with_special_tokens(mut self, bos: Option<&str>, eos: Option<&str>) -> Self {
        self.bos_token = bos.map(str::to_owned);
        self.eos_token = eos.map(str::to_owned);
        self
    }
}

/// Template variables a kwarg may not replace.
const RESERVED_VARIABLES: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// ChatML, the template a model gets when its own cannot be rendered (llama.cpp's default).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

impl Tokenizer {
    /// This tokenizer with a chat template that renders: its own when that renders a sample
    /// conversation (one user message, as llama.cpp tries), else [`CHATML_TEMPLATE`] with a
    /// warning, which is what llama.cpp falls back to. A model file opened from anywhere then
    /// still chats instead of failing every request; a template that fails only on some
    /// conversations (roles out of order, …) is kept and fails those requests.
    pub fn with_renderable_chat_template(mut self) -> Tokenizer {
        let Some(template) = &self.chat_template else {
            return self;
        };
        let sample = [ChatMessage::user("Hello")];
        let rendered = render_template(template, &sample, true, self.bos_token(), self.eos_token());
        if let Err(e) = rendered {
            log::warn!("the model's chat template does not render ({e}); using ChatML instead");
            self.chat_template = Some(CHATML_TEMPLATE.to_string());
        }
        self
    }

    /// Render `messages` with the model's chat template. With `add_generation_prompt`, the text
    /// ends with the header of an assistant turn (`<|im_start|>assistant\n` for ChatML), ready
    /// for generation. Encode the result with [`Tokenizer::encode`].
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_chat_with(messages, &self.chat_context(add_generation_prompt))
    }

    /// A [`ChatRequestContext`] with this model's BOS / EOS text, to add tools and kwargs to.
    pub fn chat_context(&self, add_generation_prompt: bool) -> ChatRequestContext {
        ChatRequestContext::new(add_generation_prompt)
            .with_special_tokens(self.bos_token(), self.eos_token())
    }

    /// Render `messages` with the model's chat template and everything `context` says (its
    /// `bos_token` / `eos_token` as given: start from [`Tokenizer::chat_context`]).
    pub fn render_chat_with(
        &self,
        messages: &[ChatMessage],
        context: &ChatRequestContext,
    ) -> Result<String, TokenizerError> {
        let template = self.chat_template().ok_or(TokenizerError::NoChatTemplate)?;
        render_template_with(template, messages, context)
    }
}

/// Render a chat template with no tools and no extra variables (see the module docs for the
/// environment it gets).
pub fn render_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String, TokenizerError> {
    let context =
        ChatRequestContext::new(add_generation_prompt).with_special_tokens(bos_token, eos_token);
    render_template_with(template, messages, &context)
}

/// Render a chat template with everything a request passes to it.
pub fn render_template_with(
    template: &str,
    messages: &[ChatMessage],
    context: &ChatRequestContext,
) -> Result<String, TokenizerError> {
    let env = environment();
    // The template is compiled per call: it is microseconds next to a forward pass, and a model
    // whose template minijinja cannot parse still loads (only chat rendering fails).
    let source = rewrite::rewrite(template);
    let tmpl = env.template_from_str(&source)?;
    let variables = template_variables(messages, context)?;
    let mut out = BoundedOutput::default();
    // A template comes from a downloaded file: a panic inside the engine on some construct
    // must fail this render, not the caller's thread.
    let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tmpl.render_captured_to(variables, &mut out)
    }))
    .unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::InvalidOperation,
            "the template engine failed on this template",
        ))
    });
    match rendered {
        Ok(_) => {}
        Err(_) if out.overflowed => return Err(chat_limits::output_over_limit().into()),
        Err(e) => return Err(e.into()),
    }
    String::from_utf8(out.bytes).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "the chat template wrote invalid UTF-8",
        )
        .into()
    })
}

/// The template's global variables, as transformers builds them.
fn template_variables(
    messages: &[ChatMessage],
    context: &ChatRequestContext,
) -> Result<Value, Error> {
    let opt = |s: &Option<String>| s.as_deref().map_or(Value::UNDEFINED, Value::from);
    let tools = match &context.tools {
        Some(tools) => Value::from_serialize(tools),
        None => Value::from(()),
    };
    let mut vars: Vec<(String, Value)> = vec![
        (
            "messages".into(),
            messages.iter().map(message_value).collect(),
        ),
        ("tools".into(), tools),
        ("documents".into(), Value::from(())),
        (
            "add_generation_prompt".into(),
            Value::from(context.add_generation_prompt),
        ),
        ("bos_token".into(), opt(&context.bos_token)),
        ("eos_token".into(), opt(&context.eos_token)),
    ];
    for (name, value) in &context.kwargs {
        if RESERVED_VARIABLES.contains(&name.as_str()) {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("chat template kwarg `{name}` would replace the template's own `{name}`"),
            ));
        }
        let value = Value::from_serialize(value);
        match vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => vars.push((name.clone(), value)),
        }
    }
    // An undefined special token is left out, so the template sees it undefined.
    Ok(vars
        .into_iter()
        .filter(|(_, v)| !v.is_undefined())
        .collect())
}

/// A message as transformers hands it to the template: a dict without the absent fields, whose
/// reasoning is also under `thinking` (first, as HF inserts it).
fn message_value(m: &ChatMessage) -> Value {
    let mut fields: Vec<(&str, Value)> = Vec::with_capacity(7);
    if let Some(r) = &m.reasoning_content {
        fields.push(("thinking", Value::from(r.as_str())));
    }
    fields.push(("role", Value::from(m.role.as_str())));
    let text = |key, v: &Option<String>| v.as_deref().map(|s| (key, Value::from(s)));
    fields.extend(text("content", &m.content));
    fields.extend(text("reasoning_content", &m.reasoning_content));
    if let Some(calls) = &m.tool_calls {
        fields.push(("tool_calls", Value::from_serialize(calls)));
    }
    fields.extend(text("tool_call_id", &m.tool_call_id));
    fields.extend(text("name", &m.name));
    fields.into_iter().collect()
}

/// Template instructions one render may run: a template comes from a downloaded file, and
/// nested loops over `range(...)` would otherwise run for hours. Real templates take about a
/// hundred per message, so this allows conversations of thousands of messages.
const TEMPLATE_FUEL: u64 = 5_000_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime::strftime_now);
    env.add_filter("tojson", tojson);
    // Bounded forms of the sized built-ins, and the Python methods behind checks.
    chat_limits::install(&mut env, methods::python_result);
    methods::install(&mut env);
    env.set_formatter(|out, _state, value| {
        // Printing a sequence walks all of it, even once the output has refused more bytes.
        chat_limits::check_nested("printing a value", value)?;
        if let Some(s) = value.as_str() {
            out.write_str(s)?;
        } else {
            let mut text = String::new();
            python::py_str(value, &mut text);
            out.write_str(&text)?;
        }
        Ok(())
    });
    env
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Widest `tojson(indent=...)` a template may ask for.
const MAX_TOJSON_INDENT: usize = 16;

/// HF's `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, its
/// arguments given by position or by name.
fn tojson(
    _state: &State,
    value: &Value,
    positional: minijinja::value::Rest<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    chat_limits::check_nested("tojson", value)?;
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut args: [Value; 4] = Default::default();
    for (i, name) in NAMES.iter().enumerate() {
        let by_name: Option<Value> = kwargs.get(name)?;
        args[i] = match (positional.get(i), by_name) {
            (Some(_), Some(_)) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson got multiple values for argument '{name}'"),
                ));
            }
            (Some(v), None) => v.clone(),
            (None, Some(v)) => v,
            (None, None) => Value::UNDEFINED,
        };
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = args;
    let indent = match indent.kind() {
        ValueKind::Undefined | ValueKind::None => None,
        ValueKind::String => Some(indent.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number | ValueKind::Bool => {
            let n = indent.as_i64().unwrap_or(0).max(0) as usize;
            // A file's template may ask for any width; no real one indents deeper than a few.
            if n > MAX_TOJSON_INDENT {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: indent {n} is more than {MAX_TOJSON_INDENT}"),
                ));
            }
            Some(" ".repeat(n))
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: indent cannot be {other}"),
            ));
        }
    };
    if indent.as_ref().is_some_and(|s| s.len() > MAX_TOJSON_INDENT) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: indent text too long",
        ));
    }
    let mut opts = python::JsonOptions::new(ensure_ascii.is_true(), indent, sort_keys.is_true());
    if !separators.is_undefined() && !separators.is_none() {
        let parts: Vec<Value> = separators.try_iter()?.collect();
        match parts.as_slice() {
            [item, key] if item.as_str().is_some() && key.as_str().is_some() => {
                let short = |v: &Value| v.as_str().unwrap_or_default().len() <= MAX_TOJSON_INDENT;
                if !short(item) || !short(key) {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators too long",
                    ));
                }
                opts.item_separator = item.as_str().unwrap_or_default().to_owned();
                opts.key_separator = key.as_str().unwrap_or_default().to_owned();
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be two strings",
                ));
            }
        }
    }
    let mut out = String::new();
    python::dumps(value, &opts, 0, &mut out)?;
    // A plain string, as HF's filter returns (not `Markup`: adding it to one escapes it).
    Ok(Value::from(out))
}

#[cfg(test)]
mod tests;
