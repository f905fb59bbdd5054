//! Python behaviour of template values where minijinja's differs from jinja2's:
//! - Python methods (`str.strip`, `dict.items`, …): minijinja-contrib's pycompat, behind the
//!   size checks of [`chat_limits`](super::super::chat_limits);
//! - the helpers the source rewrites call ([`rewrite`](super::rewrite)): `__py_slice` (Python's
//!   slicing) and `__py_iter` (a `for` loop over `none` fails);
//! - filters that return a generator in jinja2 (`map`, `select`, `unique`, `items`, …) return a
//!   lazy sequence here too: it has no length, is always true, and `tojson` refuses it;
//! - `string` is Python's `str()`, `trim` is `str(x).strip(chars)` and `round` is Python's
//!   (half to even); the tests `iterable`, `sequence` and `number` answer as Python's types do
//!   (`none` is not iterable, a string is a sequence, `true` is a number);
//! - `str.strip`, `str.split` and `str.splitlines` use Python's whitespace and line breaks, and
//!   `str.rsplit`, `str.removeprefix`, `str.removesuffix` exist.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

use super::super::chat_limits;
use super::python;

pub(super) fn install(env: &mut Environment<'static>) {
    env.set_unknown_method_callback(call_method);
    env.add_function("__py_slice", py_slice);
    env.add_function("__py_iter", py_iter);
    env.add_function("__py_add", py_add);
    // `len(undefined)` is 0 in jinja2.
    for name in ["length", "count"] {
        env.add_filter(name, |v: &Value| -> Result<Value, Error> {
            if v.is_undefined() {
                Ok(Value::from(0))
            } else {
                minijinja::filters::length(v).map(Value::from)
            }
        });
    }
    env.add_filter("string", |value: &Value| -> Result<Value, Error> {
        chat_limits::check_nested("string", value)?;
        let mut out = String::new();
        python::py_str(value, &mut out);
        Ok(Value::from(out))
    });
    env.add_filter(
        "trim",
        |value: &Value, chars: Option<Value>| -> Result<Value, Error> {
            let mut text = String::new();
            python::py_str(value, &mut text);
            let chars = chars.filter(|c| !c.is_none());
            Ok(Value::from(match chars.as_ref().and_then(Value::as_str) {
                Some(set) => text.trim_matches(|c| set.contains(c)),
                None => text.trim_matches(is_py_space),
            }))
        },
    );
    env.add_filter("round", py_round);
    env.add_test("iterable", |v: &Value| {
        !matches!(
            v.kind(),
            ValueKind::None | ValueKind::Number | ValueKind::Bool | ValueKind::Plain
        )
    });
    env.add_test("sequence", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::String | ValueKind::Seq | ValueKind::Map | ValueKind::Undefined
        )
    });
    env.add_test("number", |v: &Value| {
        matches!(v.kind(), ValueKind::Number | ValueKind::Bool)
    });
}

/// Filters whose jinja2 form returns a generator (or another lazy iterator).
const LAZY_FILTERS: &[&str] = &[
    "map",
    "select",
    "reject",
    "selectattr",
    "rejectattr",
    "unique",
    "items",
    "batch",
    "slice",
];

/// A built-in filter's result as jinja2's would be: lazy where jinja2's is a generator
/// (`reverse` too, except on a string).
pub(in crate::tokenizer) fn python_result(filter: &str, result: Value) -> Value {
    let lazy = LAZY_FILTERS.contains(&filter)
        || (filter == "reverse" && result.kind() != ValueKind::String);
    if lazy && matches!(result.kind(), ValueKind::Seq | ValueKind::Iterable) {
        let items: Vec<Value> = result.try_iter().map(Iterator::collect).unwrap_or_default();
        Value::from_object(Generator(items))
    } else {
        result
    }
}

/// What a jinja2 filter's generator behaves like: iterable, with no length, always true.
#[derive(Debug)]
struct Generator(Vec<Value>);

impl Object for Generator {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Iterable
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.clone())
    }
    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        None
    }
    fn is_true(self: &Arc<Self>) -> bool {
        true
    }
}

fn call_method(state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    chat_limits::check_method(value, method, args)?;
    if let Some(s) = value.as_str() {
        if let Some(result) = string_method(s, method, args)? {
            return Ok(result);
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Python's `str.isspace` for one character (Rust's whitespace plus the separators
/// `\x1c`..`\x1f`).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// The string methods pycompat lacks or whose whitespace is not Python's; `None` for the rest.
fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Option<Value>, Error> {
    let no_chars = args.first().is_none_or(Value::is_none);
    let text = |i: usize| -> Result<&str, Error> {
        args.get(i)
            .and_then(Value::as_str)
            .ok_or_else(|| type_error(format!("str.{method} needs a string argument")))
    };
    let out = match method {
        "strip" if no_chars => Value::from(s.trim_matches(is_py_space)),
        "lstrip" if no_chars => Value::from(s.trim_start_matches(is_py_space)),
        "rstrip" if no_chars => Value::from(s.trim_end_matches(is_py_space)),
        "split" | "rsplit" => {
            let max = match args.get(1) {
                Some(v) => v
                    .as_i64()
                    .ok_or_else(|| type_error("maxsplit must be an int"))?,
                None => -1,
            };
            let max = usize::try_from(max).ok();
            let parts = match args.first().filter(|v| !v.is_none()) {
                None => split_whitespace(s, max, method == "rsplit"),
                Some(_) => {
                    let sep = text(0)?;
                    if sep.is_empty() {
                        return Err(type_error("empty separator"));
                    }
                    split_on(s, sep, max, method == "rsplit")
                }
            };
            Value::from(parts)
        }
        "splitlines" => {
            let keep = args.first().is_some_and(Value::is_true);
            Value::from(split_lines(s, keep))
        }
        "removeprefix" => Value::from(s.strip_prefix(text(0)?).unwrap_or(s)),
        "removesuffix" => Value::from(s.strip_suffix(text(0)?).unwrap_or(s)),
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// `s.split(sep, max)` / `s.rsplit(sep, max)` (`max` `None`: no limit).
fn split_on(s: &str, sep: &str, max: Option<usize>, from_right: bool) -> Vec<String> {
    let max = max.unwrap_or(usize::MAX).saturating_add(1);
    if from_right {
        let mut parts: Vec<String> = s.rsplitn(max, sep).map(str::to_owned).collect();
        parts.reverse();
        parts
    } else {
        s.splitn(max, sep).map(str::to_owned).collect()
    }
}

/// `s.split()` / `s.rsplit()`: runs of whitespace separate, none at the ends; after `max`
/// splits the rest is one part (keeping its whitespace on the far side).
fn split_whitespace(s: &str, max: Option<usize>, from_right: bool) -> Vec<String> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (is_py_space(c), start) {
            (true, Some(st)) => {
                words.push((st, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(st) = start {
        words.push((st, s.len()));
    }
    let max = max.unwrap_or(usize::MAX);
    let word = |&(a, b): &(usize, usize)| s[a..b].to_owned();
    if words.len() <= max.saturating_add(1) {
        return words.iter().map(word).collect();
    }
    if from_right {
        let keep = &words[words.len() - max..];
        let head = s[..keep[0].0].trim_end_matches(is_py_space);
        let mut parts = vec![head.to_owned()];
        parts.extend(keep.iter().map(word));
        parts
    } else {
        let mut parts: Vec<String> = words[..max].iter().map(word).collect();
        parts.push(s[words[max].0..].to_owned());
        parts
    }
}

/// `s.splitlines(keepends)`, at Python's line boundaries.
fn split_lines(s: &str, keep_ends: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let is_break = matches!(
            c,
            '\n' | '\r'
                | '\x0b'
                | '\x0c'
                | '\x1c'
                | '\x1d'
                | '\x1e'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if !is_break {
            continue;
        }
        let mut end = i + c.len_utf8();
        if c == '\r' && chars.peek().is_some_and(|&(_, n)| n == '\n') {
            chars.next();
            end += 1;
        }
        lines.push(s[start..if keep_ends { end } else { i }].to_owned());
        start = end;
    }
    if start < s.len() {
        lines.push(s[start..].to_owned());
    }
    lines
}

/// jinja2's `round(value, precision=0, method='common')`: `common` is Python's `round`
/// (half to even; an integer stays one), `ceil` / `floor` give a float.
fn py_round(value: &Value, precision: Option<i64>, method: Option<&str>) -> Result<Value, Error> {
    let precision = precision.unwrap_or(0);
    if !(-30..=30).contains(&precision) {
        return Err(type_error("round: precision out of range"));
    }
    let x = f64::try_from(value.clone())
        .map_err(|_| type_error(format!("round: cannot round {}", value.kind())))?;
    let scale = 10f64.powi(precision.unsigned_abs() as i32);
    let scaled = |f: fn(f64) -> f64| {
        if precision >= 0 {
            f(x * scale) / scale
        } else {
            f(x / scale) * scale
        }
    };
    match method.unwrap_or("common") {
        "common" if value.is_integer() && precision >= 0 => Ok(value.clone()),
        "common" if precision >= 0 => {
            // Exact decimal rounding, ties to even: Python's correctly rounded `round`.
            let text = format!("{x:.*}", precision as usize);
            Ok(Value::from(text.parse::<f64>().unwrap_or(x)))
        }
        "common" => Ok(Value::from(scaled(f64::round_ties_even))),
        "ceil" => Ok(Value::from(scaled(f64::ceil))),
        "floor" => Ok(Value::from(scaled(f64::floor))),
        _ => Err(type_error("method must be common, ceil or floor")),
    }
}

fn type_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, message.into())
}

/// `value[start:stop:step]` as Python slices it. Where jinja2's subscript fails with a
/// `TypeError` (slicing a number, a dict, `none`; indices that are not integers) the result is
/// undefined, as jinja2 makes it; slicing undefined fails.
fn py_slice(value: &Value, start: &Value, stop: &Value, step: &Value) -> Result<Value, Error> {
    if value.is_undefined() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            "cannot slice an undefined value",
        ));
    }
    let index = |v: &Value| -> Result<Option<i64>, ()> {
        match v.kind() {
            ValueKind::None => Ok(None),
            ValueKind::Bool => Ok(Some(i64::from(v.is_true()))),
            ValueKind::Number if v.is_integer() => v.as_i64().map(Some).ok_or(()),
            _ => Err(()),
        }
    };
    let (Ok(start), Ok(stop), Ok(step)) = (index(start), index(stop), index(step)) else {
        return Ok(Value::UNDEFINED);
    };
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(type_error("slice step cannot be zero"));
    }
    match value.kind() {
        ValueKind::String => {
            let chars: Vec<char> = value.as_str().unwrap_or_default().chars().collect();
            let picked = slice_indices(chars.len(), start, stop, step).map(|i| chars[i]);
            Ok(Value::from(picked.collect::<String>()))
        }
        ValueKind::Seq => {
            let items: Vec<Value> = value.try_iter()?.collect();
            let picked = slice_indices(items.len(), start, stop, step).map(|i| items[i].clone());
            Ok(Value::from(picked.collect::<Vec<_>>()))
        }
        _ => Ok(Value::UNDEFINED),
    }
}

/// The indices Python's `slice(start, stop, step)` picks from a sequence of `len` items.
fn slice_indices(
    len: usize,
    start: Option<i64>,
    stop: Option<i64>,
    step: i64,
) -> impl Iterator<Item = usize> {
    let len = len as i64;
    let (lower, upper) = if step > 0 { (0, len) } else { (-1, len - 1) };
    let clamp = |v: Option<i64>, default: i64| match v {
        None => default,
        Some(v) if v < 0 => (v + len).max(lower),
        Some(v) => v.min(upper),
    };
    let start = clamp(start, if step > 0 { lower } else { upper });
    let stop = clamp(stop, if step > 0 { upper } else { lower });
    let mut i = start;
    std::iter::from_fn(move || {
        let inside = if step > 0 { i < stop } else { i > stop };
        if !inside {
            return None;
        }
        let at = i;
        i += step;
        Some(at as usize)
    })
}

/// The iterable of a `for` loop: Python refuses `none` and numbers.
fn py_iter(value: Value) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::None => Err(type_error("'NoneType' object is not iterable")),
        ValueKind::Number | ValueKind::Bool => Err(type_error(format!(
            "'{}' object is not iterable",
            value.kind()
        ))),
        _ => Ok(value),
    }
}

/// `a + b + …` where a term is a `|safe` (`Markup`) string, as Python adds them: a plain
/// string added to a `Markup` one is HTML-escaped first, and the sum is `Markup`; anything but
/// strings fails.
fn py_add(terms: minijinja::value::Rest<Value>) -> Result<Value, Error> {
    let mut sum = String::new();
    let mut safe = false;
    for (i, term) in terms.iter().enumerate() {
        let Some(text) = term.as_str() else {
            return Err(type_error(format!(
                "unsupported operand type(s) for +: {} in a sum with a safe string",
                term.kind()
            )));
        };
        if term.is_safe() && !safe && i > 0 {
            sum = escape_html(&sum);
        }
        if safe && !term.is_safe() {
            sum.push_str(&escape_html(text));
        } else {
            sum.push_str(text);
        }
        safe |= term.is_safe();
        chat_limits::check_len("a sum of strings", sum.len())?;
    }
    Ok(if safe {
        Value::from_safe_string(sum)
    } else {
        Value::from(sum)
    })
}

/// markupsafe's `escape`.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_string_splits() {
        let w = |s, max, right| split_whitespace(s, max, right);
        assert_eq!(w(" a b  c ", Some(1), false), ["a", "b  c "]);
        assert_eq!(w(" a b  c ", Some(1), true), [" a b", "c"]);
        assert_eq!(w("  ", None, false), Vec::<String>::new());
        assert_eq!(split_on("a,b,c", ",", Some(1), true), ["a,b", "c"]);
        assert_eq!(split_on("a,,b", ",", None, false), ["a", "", "b"]);
        assert_eq!(
            split_lines("a\r\nb\rc\n\nd", false),
            ["a", "b", "c", "", "d"]
        );
        assert_eq!(split_lines("a\r\nb", true), ["a\r\n", "b"]);
    }

    #[test]
    fn python_slices() {
        let s = |len, a, b, c| slice_indices(len, a, b, c).collect::<Vec<_>>();
        assert_eq!(s(0, None, None, -1), Vec::<usize>::new());
        assert_eq!(s(4, None, None, -1), [3, 2, 1, 0]);
        assert_eq!(s(5, Some(3), Some(0), -1), [3, 2, 1]);
        assert_eq!(s(5, None, Some(-1), 1), [0, 1, 2, 3]);
        assert_eq!(s(5, Some(-2), None, 1), [3, 4]);
        assert_eq!(s(5, Some(9), Some(-9), -2), [4, 2, 0]);
        assert_eq!(s(3, Some(1), Some(99), 1), [1, 2]);
    }

    #[test]
    fn markup_sums_escape_plain_strings() {
        let sum = |terms: Vec<Value>| py_add(minijinja::value::Rest(terms)).unwrap();
        let safe = |s: &str| Value::from_safe_string(s.into());
        let v = sum(vec![Value::from("<a>"), safe("'"), Value::from("\"&\"")]);
        assert_eq!(v.as_str(), Some("&lt;a&gt;'&#34;&amp;&#34;"));
        assert!(v.is_safe());
        assert!(!sum(vec![Value::from("a"), Value::from("<")]).is_safe());
    }
}
