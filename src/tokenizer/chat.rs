//! Chat templates: a model's own Jinja template rendered with minijinja the way Hugging Face
//! transformers renders it (`apply_chat_template`):
//! - the environment trims blocks (`trim_blocks`, `lstrip_blocks`) and allows `{% break %}` /
//!   `{% continue %}`, like HF's `ImmutableSandboxedEnvironment`;
//! - the context holds `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and
//!   `tools` / `documents` as none;
//! - `raise_exception(msg)` fails the render with `msg`; `strftime_now(fmt)` formats the current
//!   time (UTC here; HF uses local time);
//! - Python string/dict/list methods (`.strip()`, `.startswith()`, `.items()`, …) come from
//!   minijinja-contrib's pycompat;
//! - `tojson` writes JSON like Python's `json.dumps(ensure_ascii=False)` (`", "` / `": "`
//!   separators, no HTML escaping, optional `indent`), as HF's override of that filter does.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};

use super::chat_limits::{self, BoundedOutput};
use super::{Tokenizer, TokenizerError};

/// One turn of a conversation (`role` is `system`, `user`, `assistant`, or what the template knows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
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
}

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
        let template = self.chat_template().ok_or(TokenizerError::NoChatTemplate)?;
        render_template(
            template,
            messages,
            add_generation_prompt,
            self.bos_token(),
            self.eos_token(),
        )
    }
}

/// Render a chat template (see the module docs for the environment it gets).
pub fn render_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String, TokenizerError> {
    let env = environment();
    // The template is compiled per call: it is microseconds next to a forward pass, and a model
    // whose template minijinja cannot parse still loads (only chat rendering fails).
    let tmpl = env.template_from_str(template)?;
    let opt = |s: Option<&str>| s.map_or(Value::UNDEFINED, Value::from);
    let mut out = BoundedOutput::default();
    let rendered = tmpl.render_captured_to(
        context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => opt(bos_token),
            eos_token => opt(eos_token),
            tools => Value::from(()),
            documents => Value::from(()),
        },
        &mut out,
    );
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
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    // Bounded forms of the sized built-ins, and pycompat's Python methods behind checks.
    chat_limits::install(&mut env);
    env
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `value | tojson` or `value | tojson(indent=2)`; other keyword arguments HF accepts
/// (`ensure_ascii`, `sort_keys`, `separators`) are accepted and ignored.
/// Widest `tojson(indent=...)` a template may ask for.
const MAX_TOJSON_INDENT: usize = 16;

fn tojson(value: &Value, indent: Option<usize>, kwargs: Kwargs) -> Result<Value, Error> {
    chat_limits::check_nested("tojson", value)?;
    let indent = match kwargs.get::<Option<usize>>("indent")? {
        Some(i) => Some(i),
        None => indent,
    };
    // A file's template may ask for any width; no real one indents deeper than a few spaces.
    if let Some(n) = indent.filter(|n| *n > MAX_TOJSON_INDENT) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent {n} is more than {MAX_TOJSON_INDENT}"),
        ));
    }
    for key in ["ensure_ascii", "sort_keys", "separators"] {
        let _: Option<Value> = kwargs.get(key)?;
    }
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value).map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "tojson: value is not JSON").with_source(e)
    })?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Python's `json.dumps(v, ensure_ascii=False, indent=indent)` layout.
fn write_python_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_python_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&J::String(k.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `strftime_now("%d %b %Y")`: the current UTC time, with the common `strftime` directives
/// (`%Y %y %m %d %e %B %b %A %a %H %I %M %S %p %j %%`); others are left as written.
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    format_utc(secs, &format)
}

fn format_utc(unix_secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let month_name = MONTHS[(month - 1) as usize];
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of (March-based) year
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = CHATML_TEMPLATE;

    fn render(t: &str, msgs: &[ChatMessage]) -> Result<String, TokenizerError> {
        render_template(t, msgs, true, Some("<s>"), Some("</s>"))
    }

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let out = render(CHATML, &[ChatMessage::system("S"), ChatMessage::user("hi")]).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let no_prompt = render_template(CHATML, &[ChatMessage::user("hi")], false, None, None);
        assert_eq!(no_prompt.unwrap(), "<|im_start|>user\nhi<|im_end|>\n");
    }

    #[test]
    fn hf_environment_features() {
        // trim_blocks / lstrip_blocks: block tags leave no blank lines behind.
        let t = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip() }}]\n  {% endif %}\n{% endfor %}";
        assert_eq!(render(t, &[ChatMessage::user("  a ")]).unwrap(), "[a]\n");
        // pycompat methods, loop controls, bos/eos, tools none.
        let t = "{{ bos_token }}{% for m in messages %}{% if m.content.startswith('x') %}{% continue %}{% endif %}{{ m.content.upper() }}{% endfor %}{% if tools is none %}N{% endif %}{{ eos_token }}";
        let msgs = [ChatMessage::user("xa"), ChatMessage::user("b")];
        assert_eq!(render(t, &msgs).unwrap(), "<s>BN</s>");
        // Python-style tojson: no HTML escaping, ", " and ": " separators.
        let t = "{{ {'a': [1, '<b>'], 'c': none} | tojson }}|{{ [1] | tojson(indent=2) }}";
        assert_eq!(
            render(t, &[]).unwrap(),
            "{\"a\": [1, \"<b>\"], \"c\": null}|[\n  1\n]"
        );
    }

    #[test]
    fn template_errors_are_errors() {
        let t = "{% if messages[0].role != 'system' %}{{ raise_exception('system first!') }}{% endif %}";
        let err = render(t, &[ChatMessage::user("a")]).unwrap_err();
        assert!(matches!(err, TokenizerError::Template(_)));
        assert!(err.to_string().contains("system first!"), "{err}");
        assert!(matches!(
            render("{% for %}", &[]),
            Err(TokenizerError::Template(_))
        ));
        assert!(matches!(
            render("{{ 1 // 0 }}", &[]),
            Err(TokenizerError::Template(_))
        ));
    }

    #[test]
    fn a_template_that_would_run_for_hours_runs_out_of_fuel() {
        let t = "{% for a in range(99999) %}{% for b in range(99999) %}x{% endfor %}{% endfor %}";
        let err = render(t, &[ChatMessage::user("a")]).unwrap_err();
        assert!(matches!(err, TokenizerError::Template(_)), "{err}");
        // A long conversation in a real-looking template stays well inside the budget.
        let msgs: Vec<_> = (0..2000)
            .map(|i| ChatMessage::user(format!("m{i}")))
            .collect();
        assert!(render(CHATML, &msgs).is_ok());
    }

    #[test]
    fn utc_formatting() {
        // 2024-07-26 13:25:09 UTC was a Friday, day 208 of a leap year.
        let t = 1_722_000_309;
        assert_eq!(format_utc(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            format_utc(t, "%A %B %e %H:%M:%S %I%p %j %y %%"),
            "Friday July 26 13:25:09 01PM 208 24 %"
        );
        assert_eq!(format_utc(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
        assert_eq!(format_utc(951_782_400, "%Y-%m-%d"), "2000-02-29");
        assert!(!strftime_now("%Y".into()).is_empty());
    }
}
