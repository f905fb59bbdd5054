//! Bounds on one chat-template render. A template comes from a downloaded model file, and
//! minijinja's built-ins take counts and widths from it as they are: `'%099999999999d'|format(1)`
//! or `[1]|batch(99999999999, 0)` asks for 100 GB in one instruction, which fuel (an instruction
//! count) does not see. So here:
//! - filters and Python methods that build something sized by an argument (`format`, `indent`,
//!   `batch`, `slice`, `replace`, `join`, `str.format`, …) refuse widths and counts over
//!   [`MAX_COUNT`] and results over [`MAX_RENDERED_BYTES`];
//! - filters that walk a whole sequence refuse one of over [`MAX_ITEMS`] items (`[..] * 10**5`
//!   is a lazy sequence of any length);
//! - the output goes to a writer that stops the render past [`MAX_RENDERED_BYTES`].
//!
//! What stays unbounded is a value grown by the operators themselves over many instructions
//! (`{% set ns.s = ns.s ~ ns.s %}` in a loop doubles a string each time): minijinja offers no
//! hook on `~`, `+` and `*`. Jinja's own sandbox has the same gap; an app that renders
//! templates from untrusted files and must survive that runs them under an OS memory limit.

use std::fmt::Display;
use std::io;

use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

/// Most bytes one render may write (and most one `join` or `replace` may build). A long
/// conversation renders to a few hundred KB; the largest context a model may declare is 2^22
/// tokens, about 16 MB of text.
pub(super) const MAX_RENDERED_BYTES: usize = 32 << 20;
/// Largest width, precision or count a template may pass to a built-in.
const MAX_COUNT: u64 = 4096;
/// Most items a filter may walk in one call.
const MAX_ITEMS: usize = 1 << 20;

fn over_limit(what: impl Display) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("{what} is over the chat-template limits"),
    )
}

/// Filters that walk their whole input and so are bounded in the items they take.
const WALKING_FILTERS: &[&str] = &[
    "list",
    "sort",
    "unique",
    "reverse",
    "map",
    "select",
    "reject",
    "selectattr",
    "rejectattr",
    "groupby",
    "dictsort",
    "items",
    "sum",
    "min",
    "max",
    "last",
    "pprint",
    "chain",
    "zip",
];

/// Replaces the built-ins above with bounded forms (call after the defaults are in place).
/// `result` maps each one's result to what the template gets (the chat module makes the
/// results that are generators in jinja2 lazy).
pub(super) fn install(env: &mut Environment<'static>, result: fn(&str, Value) -> Value) {
    use minijinja::filters as f;
    let mut guard = |name, builtin, check| guard(env, name, builtin, check, result);
    guard("indent", Value::from_function(f::indent), check_counts);
    guard("batch", Value::from_function(f::batch), check_counts);
    guard("slice", Value::from_function(f::slice), check_counts);
    guard("format", Value::from_function(f::format), check_printf);
    guard("replace", Value::from_function(f::replace), check_replace);
    guard("join", Value::from_function(f::join), check_join);
    let walking: [(&str, Value); 19] = [
        ("list", Value::from_function(f::list)),
        ("sort", Value::from_function(f::sort)),
        ("unique", Value::from_function(f::unique)),
        ("reverse", Value::from_function(f::reverse)),
        ("map", Value::from_function(f::map)),
        ("select", Value::from_function(f::select)),
        ("reject", Value::from_function(f::reject)),
        ("selectattr", Value::from_function(f::selectattr)),
        ("rejectattr", Value::from_function(f::rejectattr)),
        ("groupby", Value::from_function(f::groupby)),
        ("dictsort", Value::from_function(f::dictsort)),
        ("items", Value::from_function(f::items)),
        ("sum", Value::from_function(f::sum)),
        ("min", Value::from_function(f::min)),
        ("max", Value::from_function(f::max)),
        ("last", Value::from_function(f::last)),
        ("pprint", Value::from_function(f::pprint)),
        ("chain", Value::from_function(f::chain)),
        ("zip", Value::from_function(f::zip)),
    ];
    debug_assert!(
        walking
            .iter()
            .map(|(n, _)| *n)
            .eq(WALKING_FILTERS.iter().copied())
    );
    for (name, builtin) in walking {
        guard(name, builtin, check_items);
    }
    // The Python methods ([`check_method`]) and the printing of values ([`check_nested`]) are
    // installed by the chat module, which calls these checks first.
}

/// A value and everything inside it hold at most [`MAX_ITEMS`] items in all (for what walks
/// a value whole: printing, `tojson`).
pub(super) fn check_nested(what: &str, value: &Value) -> Result<(), Error> {
    fn walk(v: &Value, budget: &mut usize) -> Result<(), Error> {
        if !matches!(
            v.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
        ) {
            return Ok(());
        }
        let Some(n) = v.len() else {
            return Ok(()); // printed as a placeholder, not walked
        };
        *budget = budget
            .checked_sub(n)
            .ok_or_else(|| over_limit("a value of that many items"))?;
        let map = v.kind() == ValueKind::Map;
        for item in v.try_iter()? {
            let item = if map { v.get_item(&item)? } else { item };
            walk(&item, budget)?;
        }
        Ok(())
    }
    walk(value, &mut { MAX_ITEMS })
        .map_err(|_| over_limit(format!("{what} of over {MAX_ITEMS} items")))
}

/// Registers `name` as `builtin` behind `check`, which sees the filter's arguments (the piped
/// value first, keyword arguments last, as a map).
fn guard(
    env: &mut Environment<'static>,
    name: &'static str,
    builtin: Value,
    check: fn(&str, &[Value]) -> Result<(), Error>,
    result: fn(&str, Value) -> Value,
) {
    env.add_filter(name, move |state: &State, args: Rest<Value>| {
        check(name, &args)?;
        Ok(result(name, builtin.call(state, &args)?))
    });
}

/// Every integer among the arguments (keyword ones included) is at most [`MAX_COUNT`], and
/// the input is not over [`MAX_ITEMS`].
fn check_counts(name: &str, args: &[Value]) -> Result<(), Error> {
    check_items(name, args)?;
    let mut numbers = Vec::new();
    for a in &args[1.min(args.len())..] {
        if a.kind() == ValueKind::Map {
            for key in a.try_iter()? {
                numbers.push(a.get_item(&key)?);
            }
        } else {
            numbers.push(a.clone());
        }
    }
    for n in numbers {
        if n.kind() == ValueKind::Number && n.as_i64().is_none_or(|v| v.unsigned_abs() > MAX_COUNT)
        {
            return Err(over_limit(format!("`{name}` with {n}")));
        }
    }
    Ok(())
}

/// The piped value, when it is a sequence or map, has at most [`MAX_ITEMS`] items.
fn check_items(name: &str, args: &[Value]) -> Result<(), Error> {
    for a in args.iter().take(1) {
        if matches!(
            a.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
        ) && a.len().is_some_and(|n| n > MAX_ITEMS)
        {
            return Err(over_limit(format!(
                "`{name}` over {} items",
                a.len().unwrap_or(0)
            )));
        }
    }
    Ok(())
}

fn check_printf(name: &str, args: &[Value]) -> Result<(), Error> {
    let fmt = args.first().and_then(Value::as_str).unwrap_or("");
    check_format_string(fmt, false).map_err(|n| over_limit(format!("`{name}` width {n}")))
}

/// `s|replace(from, to)` builds `len(s) + count(from) * (len(to) - len(from))` bytes.
fn check_replace(name: &str, args: &[Value]) -> Result<(), Error> {
    let text = |i: usize| {
        args.get(i)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    let (Some(s), Some(from), Some(to)) = (text(0), text(1), text(2)) else {
        return Ok(());
    };
    replaced_len(&s, &from, &to)
        .filter(|n| *n <= MAX_RENDERED_BYTES)
        .map(|_| ())
        .ok_or_else(|| over_limit(format!("the result of `{name}`")))
}

fn replaced_len(s: &str, from: &str, to: &str) -> Option<usize> {
    let hits = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    let grow = to.len().saturating_sub(from.len());
    hits.checked_mul(grow)?.checked_add(s.len())
}

/// `items|join(sep)`: at most [`MAX_ITEMS`] items, and separators plus string items within
/// [`MAX_RENDERED_BYTES`].
fn check_join(name: &str, args: &[Value]) -> Result<(), Error> {
    check_items(name, args)?;
    let Some(items) = args.first() else {
        return Ok(());
    };
    let sep = args.get(1).and_then(Value::as_str).map_or(0, str::len);
    join_len(name, items, sep)
}

fn join_len(name: &str, items: &Value, sep: usize) -> Result<(), Error> {
    let mut total = 0usize;
    let mut count = 0usize;
    if items.kind() == ValueKind::String {
        return Ok(()); // joins the characters of one string: smaller than sep × its length, checked below
    }
    for item in items.try_iter()? {
        count += 1;
        if count > MAX_ITEMS {
            return Err(over_limit(format!("`{name}` over {MAX_ITEMS} items")));
        }
        total = total
            .saturating_add(item.as_str().map_or(16, str::len))
            .saturating_add(sep);
        if total > MAX_RENDERED_BYTES {
            return Err(over_limit(format!("the result of `{name}`")));
        }
    }
    Ok(())
}

/// Checks a Python method call before it runs: the sized ones (`str.format`, `str.replace`,
/// `str.join`) and any method of a sequence over [`MAX_ITEMS`] items.
pub(super) fn check_method(value: &Value, method: &str, args: &[Value]) -> Result<(), Error> {
    if let Some(s) = value.as_str() {
        let arg = |i: usize| args.get(i).and_then(Value::as_str);
        match method {
            "format" => check_format_string(s, true)
                .map_err(|n| over_limit(format!("`str.format` width {n}")))?,
            "replace" => {
                if let (Some(from), Some(to)) = (arg(0), arg(1)) {
                    replaced_len(s, from, to)
                        .filter(|n| *n <= MAX_RENDERED_BYTES)
                        .ok_or_else(|| over_limit("the result of `str.replace`"))?;
                }
            }
            "join" => {
                if let Some(items) = args.first() {
                    check_items("str.join", std::slice::from_ref(items))?;
                    join_len("str.join", items, s.len())?;
                }
            }
            _ => {}
        }
    } else if value.kind() == ValueKind::Seq {
        check_items(method, std::slice::from_ref(value))?;
    }
    Ok(())
}

/// Checks the widths and precisions in a printf-style (`%08.3f`) or, with `braces`, a
/// `str.format` (`{:>8}`) format string: each at most [`MAX_COUNT`]. A width taken from the
/// arguments (`%*d`, `{:{w}}`) is refused, since it is not visible here. Errors with the
/// offending number (or 0 for a width from the arguments).
fn check_format_string(fmt: &str, braces: bool) -> Result<(), u64> {
    let b = fmt.as_bytes();
    let mut i = 0;
    // The number of digits at `i`, advancing past them.
    let number = |i: &mut usize| -> Result<(), u64> {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        let digits = &fmt[start..*i];
        match digits.parse::<u64>() {
            Ok(n) if n > MAX_COUNT => Err(n),
            Err(_) if !digits.is_empty() => Err(u64::MAX),
            _ => Ok(()),
        }
    };
    while i < b.len() {
        if braces {
            match b[i] {
                b'{' if b.get(i + 1) == Some(&b'{') => i += 2,
                b'{' => {
                    let end = fmt[i..].find('}').map_or(b.len(), |e| i + e);
                    let field = &fmt[i + 1..end];
                    if let Some(colon) = field.find(':') {
                        let spec = &field[colon + 1..];
                        if spec.contains('{') {
                            return Err(0);
                        }
                        let mut j = 0;
                        let sb = spec.as_bytes();
                        while j < sb.len() {
                            if sb[j].is_ascii_digit() {
                                let start = j;
                                while j < sb.len() && sb[j].is_ascii_digit() {
                                    j += 1;
                                }
                                match spec[start..j].parse::<u64>() {
                                    Ok(n) if n <= MAX_COUNT => {}
                                    Ok(n) => return Err(n),
                                    Err(_) => return Err(u64::MAX),
                                }
                            } else {
                                j += 1;
                            }
                        }
                    }
                    i = end + 1;
                }
                _ => i += 1,
            }
        } else if b[i] == b'%' {
            i += 1;
            if b.get(i) == Some(&b'%') {
                i += 1;
                continue;
            }
            if b.get(i) == Some(&b'(') {
                i = fmt[i..].find(')').map_or(b.len(), |e| i + e + 1);
            }
            while i < b.len() && b"-+ #0".contains(&b[i]) {
                i += 1;
            }
            if b.get(i) == Some(&b'*') {
                return Err(0);
            }
            number(&mut i)?;
            if b.get(i) == Some(&b'.') {
                i += 1;
                if b.get(i) == Some(&b'*') {
                    return Err(0);
                }
                number(&mut i)?;
            }
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// A string the template builds is at most [`MAX_RENDERED_BYTES`].
pub(super) fn check_len(what: &str, len: usize) -> Result<(), Error> {
    if len > MAX_RENDERED_BYTES {
        return Err(over_limit(what));
    }
    Ok(())
}

/// The render's output: stops the render once it would pass [`MAX_RENDERED_BYTES`].
#[derive(Default)]
pub(super) struct BoundedOutput {
    pub(super) bytes: Vec<u8>,
    pub(super) overflowed: bool,
}

impl io::Write for BoundedOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + data.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("chat template output over the limit"));
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The error for a render stopped by [`BoundedOutput`].
pub(super) fn output_over_limit() -> Error {
    over_limit(format!(
        "a rendered conversation over {} MiB",
        MAX_RENDERED_BYTES >> 20
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_strings_are_checked_for_widths() {
        assert_eq!(check_format_string("%d %s %08.3f %-12s %%", false), Ok(()));
        assert_eq!(check_format_string("%(name)10s", false), Ok(()));
        assert_eq!(
            check_format_string("%099999999999d", false),
            Err(99_999_999_999)
        );
        assert_eq!(check_format_string("%.5000f", false), Err(5000));
        assert_eq!(check_format_string("%*d", false), Err(0));
        assert_eq!(
            check_format_string("{} {0} {name} {:>8} {:0>5}", true),
            Ok(())
        );
        assert_eq!(
            check_format_string("{:>99999999999}", true),
            Err(99_999_999_999)
        );
        assert_eq!(check_format_string("{{:>99999999999}}", true), Ok(()));
        assert_eq!(check_format_string("{:{w}}", true), Err(0));
    }

    #[test]
    fn replaced_lengths() {
        assert_eq!(replaced_len("abab", "a", "xyz"), Some(8));
        assert_eq!(replaced_len("ab", "", "--"), Some(8));
        assert_eq!(replaced_len("abc", "abc", ""), Some(3));
    }
}
