//! Python's text forms of template values, which jinja2 (and so Hugging Face's chat templates)
//! prints: `str()` when a value is printed (`True`, `None`, `{'a': [1, 2.0]}`), `repr()` inside
//! containers, and `json.dumps` for the `tojson` filter, with its `ensure_ascii`, `indent`,
//! `separators` and `sort_keys` options.

use std::fmt::Write;

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// `str(value)` as Python writes it (undefined prints as nothing, as in jinja2).
pub(super) fn py_str(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        _ => py_repr(value, out),
    }
}

/// `repr(value)`.
pub(super) fn py_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => py_number(value, out),
        ValueKind::String => repr_str(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out);
                out.push_str(": ");
                py_repr(&value.get_item(&key).unwrap_or_default(), out);
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

fn py_number(value: &Value, out: &mut String) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
    } else if let Ok(f) = f64::try_from(value.clone()) {
        py_float(f, out, false);
    } else {
        let _ = write!(out, "{value}");
    }
}

/// `repr(float)` (`json` spells the non-finite ones `NaN`, `Infinity`).
pub(super) fn py_float(f: f64, out: &mut String, json: bool) {
    if f.is_nan() {
        out.push_str(if json { "NaN" } else { "nan" });
        return;
    }
    if f.is_infinite() {
        let name = if json { "Infinity" } else { "inf" };
        out.push_str(if f < 0.0 { "-" } else { "" });
        out.push_str(name);
        return;
    }
    // Shortest round-trip digits and decimal exponent, as Python's repr uses them.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    out.push_str(sign);
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// Python's `repr(str)`: single quotes unless the text has one and no double quote.
fn repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = u32::from(c);
                let _ = match n {
                    0..=0xff => write!(out, "\\x{n:02x}"),
                    0x100..=0xffff => write!(out, "\\u{n:04x}"),
                    _ => write!(out, "\\U{n:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for one character, for the characters it differs on in practice:
/// controls, separators other than the space, format characters, private use.
fn is_printable(c: char) -> bool {
    !matches!(
        u32::from(c),
        0..=0x1f
            | 0x7f..=0xa0
            | 0xad
            | 0x600..=0x605
            | 0x61c
            | 0x6dd
            | 0x70f
            | 0x1680
            | 0x180e
            | 0x2000..=0x200f
            | 0x2028..=0x202f
            | 0x205f..=0x2064
            | 0x2066..=0x206f
            | 0x3000
            | 0xe000..=0xf8ff
            | 0xfeff
            | 0xfff9..=0xfffb
            | 0xf0000..
    )
}

/// `json.dumps` options, as HF's `tojson` filter takes them.
pub(super) struct JsonOptions {
    pub ensure_ascii: bool,
    /// The text one level of indent adds; `None` for one line.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl JsonOptions {
    /// Python's defaults for the separators: `", "` on one line, `","` when indenting.
    pub(super) fn new(ensure_ascii: bool, indent: Option<String>, sort_keys: bool) -> Self {
        let item_separator = if indent.is_some() { "," } else { ", " };
        JsonOptions {
            ensure_ascii,
            indent,
            item_separator: item_separator.into(),
            key_separator: ": ".into(),
            sort_keys,
        }
    }
}

fn not_serializable(kind: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("Object of type {kind} is not JSON serializable"),
    )
}

/// `json.dumps(value, ...)`: fails, as Python does, on what JSON cannot hold (undefined,
/// functions, lazy sequences such as `map`'s).
pub(super) fn dumps(
    value: &Value,
    opts: &JsonOptions,
    level: usize,
    out: &mut String,
) -> Result<(), Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(unit) = &opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(unit);
            }
        }
    };
    match value.kind() {
        ValueKind::Undefined => return Err(not_serializable("Undefined")),
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) if !value.is_integer() => py_float(f, out, true),
            _ => {
                let _ = write!(out, "{value}");
            }
        },
        ValueKind::String => json_str(value.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_separator);
                }
                newline(out, level + 1);
                dumps(item, opts, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_separator);
                }
                newline(out, level + 1);
                json_str(key, opts.ensure_ascii, out);
                out.push_str(&opts.key_separator);
                dumps(item, opts, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        ValueKind::Iterable => return Err(not_serializable("generator")),
        ValueKind::Bytes => return Err(not_serializable("bytes")),
        _ => return Err(not_serializable("object")),
    }
    Ok(())
}

/// A dict key as `json.dumps` turns it into a string (str, int, float, bool or None keys).
fn json_key(key: &Value) -> Result<String, Error> {
    let mut out = String::new();
    match key.kind() {
        ValueKind::String => out.push_str(key.as_str().unwrap_or_default()),
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if key.is_true() { "true" } else { "false" }),
        ValueKind::Number => py_number(key, &mut out),
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {other}"),
            ));
        }
    }
    Ok(out)
}

/// A JSON string literal as Python's `json` writes it.
fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' || (ensure_ascii && c > '~') => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(v: Value) -> String {
        let mut s = String::new();
        py_str(&v, &mut s);
        s
    }

    #[test]
    fn python_text_forms() {
        assert_eq!(repr(Value::from(true)), "True");
        assert_eq!(repr(Value::from(())), "None");
        assert_eq!(repr(Value::UNDEFINED), "");
        assert_eq!(repr(Value::from("a'b")), "a'b");
        let v = Value::from_serialize(serde_json::json!({"a": [1, 2.0, "x'y", "q\"'"], "b": null}));
        assert_eq!(repr(v), r#"{'a': [1, 2.0, "x'y", 'q"\''], 'b': None}"#);
        let floats = [
            (21.5, "21.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (-2.0, "-2.0"),
            (123.456, "123.456"),
        ];
        for (f, text) in floats {
            let mut s = String::new();
            py_float(f, &mut s, false);
            assert_eq!(s, text, "{f}");
        }
    }

    #[test]
    fn json_dumps_like_python() {
        let v = Value::from_serialize(serde_json::json!({"b": "é\u{1F44B}\u{1}", "a": [1, {}]}));
        let mut s = String::new();
        dumps(&v, &JsonOptions::new(false, None, false), 0, &mut s).unwrap();
        assert_eq!(s, "{\"b\": \"é\u{1F44B}\\u0001\", \"a\": [1, {}]}");
        let mut s = String::new();
        dumps(
            &v,
            &JsonOptions::new(true, Some("  ".into()), true),
            0,
            &mut s,
        )
        .unwrap();
        assert_eq!(
            s,
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": \"\\u00e9\\ud83d\\udc4b\\u0001\"\n}"
        );
        assert!(
            dumps(
                &Value::UNDEFINED,
                &JsonOptions::new(false, None, false),
                0,
                &mut s
            )
            .is_err()
        );
    }
}
