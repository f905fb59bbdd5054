//! Source rewrites that give a template jinja2's meaning where minijinja's syntax is the same but
//! its semantics differ, applied before the template is compiled. Only the insides of `{{ … }}`
//! and `{% … %}` tags change (never text, `{# … #}` comments or `{% raw %}` blocks):
//! - HF's `{% generation %}` / `{% endgeneration %}` (a jinja2 extension that marks assistant
//!   text) become `{% if true %}` / `{% endif %}`, which render the same;
//! - a slice `x[a:b:c]` becomes `__py_slice(x, a, b, c)`: Python's slicing (minijinja's reverse
//!   slices include the stop index and panic on an empty sequence);
//! - `{% for t in e %}` becomes `{% for t in __py_iter(e) %}`, which fails on `none` as Python
//!   does (minijinja iterates `none` as an empty sequence);
//! - a sum of strings with an `x|safe` term, `a|safe + b + …` (printed, or set), becomes
//!   `__py_add(a|safe, b, …)`: in jinja2 `|safe` makes a `Markup` string, and adding a plain
//!   string to it HTML-escapes that string; minijinja's `+` keeps no such mark.

use std::borrow::Cow;

/// The template with the rewrites above, borrowed when none applies.
pub(super) fn rewrite(template: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut changed = false;
    let mut rest = template;
    let mut in_raw = false;
    let mut budget = SLICE_SCAN_BUDGET;
    while let Some(open) = find_tag_start(rest) {
        let kind = &rest[open..open + 2];
        let Some(len) = tag_len(&rest[open..]) else {
            break;
        };
        let tag = &rest[open..open + len];
        out.push_str(&rest[..open]);
        rest = &rest[open + len..];
        // The tag's inside, without `{%`/`%}` and whitespace-control marks.
        let (head, body, tail) = split_tag(tag);
        let keyword = first_word(body);
        if in_raw || kind == "{#" {
            in_raw &= !(kind == "{%" && keyword == "endraw");
            out.push_str(tag);
            continue;
        }
        if kind == "{%" && keyword == "raw" {
            in_raw = true;
            out.push_str(tag);
            continue;
        }
        let new_body = match (kind, keyword) {
            ("{%", "generation") => Some("if true".to_owned()),
            ("{%", "endgeneration") => Some("endif".to_owned()),
            _ => {
                let sliced = rewrite_slices(body, &mut budget);
                let b = sliced.as_deref().unwrap_or(body);
                let looped = if kind == "{%" && keyword == "for" {
                    rewrite_for(b)
                } else {
                    None
                };
                let b2 = looped.as_deref().unwrap_or(b);
                let added = match (kind, keyword) {
                    ("{{", _) => rewrite_markup_sum(b2),
                    ("{%", "set") => b2.find('=').and_then(|eq| {
                        let rhs = &b2[eq + 1..];
                        (!rhs.starts_with('='))
                            .then(|| rewrite_markup_sum(rhs))
                            .flatten()
                            .map(|r| format!("{} {r}", &b2[..=eq]))
                    }),
                    _ => None,
                };
                added.or(looped).or(sliced)
            }
        };
        match new_body {
            Some(b) => {
                changed = true;
                out.push_str(head);
                out.push(' ');
                out.push_str(b.trim());
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(tag),
        }
    }
    if !changed {
        return Cow::Borrowed(template);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn find_tag_start(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(1)).find(|&i| b[i] == b'{' && matches!(b[i + 1], b'{' | b'%' | b'#'))
}

/// Length of the tag at the start of `s` (through its closing `}}`, `%}` or `#}`), skipping
/// string literals inside code; `None` when it is not closed.
fn tag_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let close = match b[1] {
        b'{' => b'}',
        b'%' => b'%',
        _ => b'#',
    };
    let mut i = 2;
    let mut quote = None;
    while i < b.len() {
        match quote {
            Some(q) => {
                if b[i] == b'\\' {
                    i += 1;
                } else if b[i] == q {
                    quote = None;
                }
            }
            None if close != b'#' && (b[i] == b'\'' || b[i] == b'"') => quote = Some(b[i]),
            None if b[i] == close && b.get(i + 1) == Some(&b'}') => return Some(i + 2),
            None => {}
        }
        i += 1;
    }
    None
}

/// `{%- body +%}` → (`{%-`, `body`, `+%}`).
fn split_tag(tag: &str) -> (&str, &str, &str) {
    let mut head = 2;
    if tag.len() > 4 && matches!(tag.as_bytes()[2], b'-' | b'+') {
        head = 3;
    }
    let mut tail = tag.len() - 2;
    if tail > head && matches!(tag.as_bytes()[tail - 1], b'-' | b'+') {
        tail -= 1;
    }
    (&tag[..head], &tag[head..tail], &tag[tail..])
}

fn first_word(body: &str) -> &str {
    let t = body.trim_start();
    let end = t
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(t.len());
    &t[..end]
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Brackets of an expression (outside string literals): each opening `(`, `[`, `{` with its
/// closing index, and the subscripts `[…]` with one or two colons directly inside (slices).
struct Lexed {
    /// (open, close), sorted by open.
    pairs: Vec<(usize, usize)>,
    /// For each index that closes a bracket, where it opened.
    opened_at: Vec<Option<usize>>,
    in_string: Vec<bool>,
    /// (`[`, `]`, the colons directly inside).
    slices: Vec<(usize, usize, Vec<usize>)>,
}

fn lex(s: &str) -> Lexed {
    let b = s.as_bytes();
    let mut in_string = vec![false; b.len()];
    let mut opened_at = vec![None; b.len()];
    let mut stack: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut pairs = Vec::new();
    let mut slices = Vec::new();
    let mut quote = None;
    let mut i = 0;
    while i < b.len() {
        match quote {
            Some(q) => {
                in_string[i] = true;
                if b[i] == b'\\' && i + 1 < b.len() {
                    in_string[i + 1] = true;
                    i += 1;
                } else if b[i] == q {
                    quote = None;
                }
            }
            None => match b[i] {
                b'\'' | b'"' => {
                    quote = Some(b[i]);
                    in_string[i] = true;
                }
                b'(' | b'[' | b'{' => stack.push((i, Vec::new())),
                b':' => {
                    if let Some((open, colons)) = stack.last_mut() {
                        if b[*open] == b'[' {
                            colons.push(i);
                        }
                    }
                }
                b')' | b']' | b'}' => {
                    if let Some((open, colons)) = stack.pop() {
                        pairs.push((open, i));
                        opened_at[i] = Some(open);
                        if b[open] == b'[' && (1..=2).contains(&colons.len()) {
                            slices.push((open, i, colons));
                        }
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    pairs.sort_unstable();
    Lexed {
        pairs,
        opened_at,
        in_string,
        slices,
    }
}

impl Lexed {
    fn close_of(&self, open: usize) -> Option<usize> {
        self.pairs
            .binary_search_by_key(&open, |p| p.0)
            .ok()
            .map(|i| self.pairs[i].1)
    }
    fn open_of(&self, close: usize) -> Option<usize> {
        self.opened_at.get(close).copied().flatten()
    }
}

/// Most slices rewritten in one tag (real templates have one or two).
const MAX_SLICES_PER_TAG: usize = 64;

/// Bytes the slice rewrites of one template may scan in all (each pass re-reads its tag): real
/// templates need a few hundred KB; a hostile one gets its first slices rewritten, not hours.
const SLICE_SCAN_BUDGET: usize = 16 << 20;

/// Every slice subscript `p[a:b:c]` in an expression as `__py_slice(p, a, b, c)`, innermost
/// first; `None` when there is none.
fn rewrite_slices(body: &str, budget: &mut usize) -> Option<String> {
    if !body.contains(':') {
        return None;
    }
    let mut s = body.to_owned();
    let mut changed = false;
    for _ in 0..MAX_SLICES_PER_TAG {
        let Some(left) = budget.checked_sub(s.len()) else {
            break;
        };
        *budget = left;
        let lexed = lex(&s);
        let Some((start, open, close, colons)) = innermost_slice(&s, &lexed, budget) else {
            break;
        };
        let mut parts = Vec::with_capacity(3);
        let mut from = open + 1;
        for &c in colons.iter().chain(std::iter::once(&close)) {
            let part = s[from..c].trim();
            parts.push(if part.is_empty() { "none" } else { part });
            from = c + 1;
        }
        while parts.len() < 3 {
            parts.push("none");
        }
        s = format!(
            "{}__py_slice({}, {}){}",
            &s[..start],
            &s[start..open],
            parts.join(", "),
            &s[close + 1..]
        );
        changed = true;
    }
    changed.then_some(s)
}

/// A slice subscript with no slice inside it (the shortest that subscripts something):
/// (primary start, `[`, `]`, its colons). Each look for a primary is charged to `budget`.
fn innermost_slice(
    s: &str,
    lexed: &Lexed,
    budget: &mut usize,
) -> Option<(usize, usize, usize, Vec<usize>)> {
    let mut by_span: Vec<&(usize, usize, Vec<usize>)> = lexed.slices.iter().collect();
    by_span.sort_by_key(|(open, close, _)| (close - open, *open));
    for (open, close, colons) in by_span {
        *budget = budget.checked_sub(s.len())?;
        if let Some(start) = primary_start(s, lexed, *open) {
            return Some((start, *open, *close, colons.clone()));
        }
    }
    None
}

/// Where the expression that `[` at `open` subscripts begins: a name with attribute, call and
/// subscript postfixes, a parenthesized expression or a literal. `None` when there is none (a
/// list literal) or it follows a filter bar (where jinja2 allows no subscript).
fn primary_start(s: &str, lexed: &Lexed, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = open;
    loop {
        let prev = *b.get(i.checked_sub(1)?)?;
        match prev {
            b')' | b']' | b'}' => i = lexed.open_of(i - 1)?,
            b'\'' | b'"' => {
                // Back to the literal's opening quote.
                let mut j = i - 1;
                while j > 0 && lexed.in_string[j - 1] {
                    j -= 1;
                }
                i = j;
                break;
            }
            c if is_ident(c) => {
                let mut j = i;
                while j > 0 && is_ident(b[j - 1]) {
                    j -= 1;
                }
                let word = &s[j..i];
                if ["in", "and", "or", "not", "is", "if", "else"].contains(&word) {
                    return None;
                }
                i = j;
                if i > 0 && b[i - 1] == b'.' {
                    i -= 1;
                    continue;
                }
                break;
            }
            _ => return None,
        }
        // After a bracketed group: a name before it makes it a call or a subscript chain.
        if i == 0 || !(is_ident(b[i - 1]) || matches!(b[i - 1], b')' | b']')) {
            break;
        }
    }
    if i == open {
        return None;
    }
    let before = s[..i].trim_end();
    (!before.ends_with('|')).then_some(i)
}

/// `for target in expr [if cond] [recursive]` → `for target in __py_iter(expr) …`.
fn rewrite_for(body: &str) -> Option<String> {
    let lexed = lex(body);
    let b = body.as_bytes();
    // Top-level identifier words with their positions.
    let mut words = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = lexed.close_of(i) {
            i = end + 1;
            continue;
        }
        if !lexed.in_string[i] && is_ident(b[i]) && (i == 0 || !is_ident(b[i - 1])) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            words.push((start, &body[start..i]));
            continue;
        }
        i += 1;
    }
    let in_at = words.iter().position(|(_, w)| *w == "in")?;
    let expr_start = words[in_at].0 + 2;
    let expr_end = words[in_at + 1..]
        .iter()
        .find(|(_, w)| *w == "if" || *w == "recursive")
        .map_or(body.len(), |(p, _)| *p);
    let expr = body[expr_start..expr_end].trim();
    if expr.is_empty() {
        return None;
    }
    Some(format!(
        "{} __py_iter({}) {}",
        &body[..expr_start],
        expr,
        &body[expr_end..]
    ))
}

/// `a|safe + b + …` (the whole expression a sum, one term ending in `|safe`) as
/// `__py_add(a|safe, b, …)`; `None` for any other expression.
fn rewrite_markup_sum(expr: &str) -> Option<String> {
    let lexed = lex(expr);
    let b = expr.as_bytes();
    let mut plus = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = lexed.close_of(i) {
            i = end + 1;
            continue;
        }
        if lexed.in_string[i] {
            i += 1;
            continue;
        }
        match b[i] {
            b'+' => plus.push(i),
            // Operators that bind more loosely than `+` (or as loosely): not a plain sum.
            b'-' | b'=' | b'!' | b'<' | b'>' => return None,
            c if is_ident(c) && (i == 0 || !is_ident(b[i - 1])) => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                if ["and", "or", "not", "if", "else", "in", "is"].contains(&word) {
                    return None;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if plus.is_empty() {
        return None;
    }
    let mut terms = Vec::with_capacity(plus.len() + 1);
    let mut from = 0;
    for &p in plus.iter().chain(std::iter::once(&expr.len())) {
        terms.push(expr[from..p].trim());
        from = p + 1;
    }
    let marked = terms.iter().any(|t| {
        t.strip_suffix("safe")
            .is_some_and(|rest| rest.trim_end().ends_with('|'))
    });
    if !marked || terms.iter().any(|t| t.is_empty()) {
        return None;
    }
    Some(format!("__py_add({})", terms.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_template_is_rewritten_in_bounded_time() {
        let tag = format!("{{{{ x{} }}}}", "[1:]".repeat(20_000));
        let many = tag.repeat(50);
        let started = std::time::Instant::now();
        let out = rewrite(&many);
        assert!(out.contains("__py_slice"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn rewrites() {
        let r = |t: &str| rewrite(t).into_owned();
        assert_eq!(r("a {{ x }} b"), "a {{ x }} b");
        assert_eq!(
            r("{%- generation -%}x{% endgeneration %}"),
            "{%- if true -%}x{% endif %}"
        );
        assert_eq!(r("{{ m[::-1] }}"), "{{ __py_slice(m, none, none, -1) }}");
        assert_eq!(
            r("{{- a.b(1)[1:][0] + c['k'][:-1] -}}"),
            "{{- __py_slice(a.b(1), 1, none, none)[0] + __py_slice(c['k'], none, -1, none) -}}"
        );
        assert_eq!(
            r("{{ x[y[1:]:] }}"),
            "{{ __py_slice(x, __py_slice(y, 1, none, none), none, none) }}"
        );
        assert_eq!(
            r("{{ {'a': [1, 2]}['a'] }} {{ '[1:2]' }}"),
            "{{ {'a': [1, 2]}['a'] }} {{ '[1:2]' }}"
        );
        assert_eq!(
            r("{%- for m in messages[::-1] if m.role recursive %}"),
            "{%- for m in __py_iter(__py_slice(messages, none, none, -1)) if m.role recursive %}"
        );
        assert_eq!(
            r("{% for k, v in d.items() %}"),
            "{% for k, v in __py_iter(d.items()) %}"
        );
        assert_eq!(
            r("{# {{ x[1:] }} #}{% raw %}{{ y[1:] }}{% endraw %}"),
            "{# {{ x[1:] }} #}{% raw %}{{ y[1:] }}{% endraw %}"
        );
        assert_eq!(
            r("{{ 'a}}b'[1:] }}"),
            "{{ __py_slice('a}}b', 1, none, none) }}"
        );
        assert_eq!(
            r("{{ \"U '\"|safe + t['n'] + '\\n'|safe + t | tojson() }}"),
            "{{ __py_add(\"U '\"|safe, t['n'], '\\n'|safe, t | tojson()) }}"
        );
        assert_eq!(
            r("{%- set a = b|safe + c -%}"),
            "{%- set a = __py_add(b|safe, c) -%}"
        );
        assert_eq!(
            r("{{ a + b }}{{ a|safe + b if c }}"),
            "{{ a + b }}{{ a|safe + b if c }}"
        );
    }
}
