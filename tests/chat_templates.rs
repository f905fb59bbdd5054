//! Real chat templates (Llama 3.x, Qwen, Gemma, Phi, Mistral, DeepSeek-R1-Distill, SmolLM,
//! gpt-oss) rendered by wllm must equal, byte for byte, what Hugging Face transformers renders
//! from them; where transformers' render fails (roles out of order, system role refused), wllm's
//! must fail too, with the template's own message.
//!
//! The fixtures in tests/fixtures/chat_templates/ (templates and `references.json`) are made by
//! scripts/fetch_chat_templates.py; its README says where each template comes from.
//!
//! Dates: transformers' `strftime_now` was pinned to a fixed time when the references were made
//! (`fixed_now`); wllm's reads the clock. So in each reference that called it, the fixed date
//! text is replaced by what wllm's own `strftime_now` gives for the same format right now, and
//! [`strftime_now_is_todays_utc_date`] checks that text separately against today's UTC date.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use wllm::tokenizer::chat::render_template;
use wllm::tokenizer::{ChatMessage, TokenizerError};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/chat_templates");

#[derive(Deserialize)]
struct References {
    fixed_now: String,
    templates: Vec<TemplateRef>,
    conversations: Vec<Conversation>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct TemplateRef {
    id: String,
    file: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

#[derive(Deserialize)]
struct Conversation {
    name: String,
    add_generation_prompt: bool,
    messages: Vec<ChatMessage>,
}

#[derive(Deserialize)]
struct Case {
    template: String,
    conversation: String,
    output: Option<String>,
    error: Option<RefError>,
    #[serde(default)]
    strftime_now: Vec<StrftimeCall>,
}

#[derive(Deserialize)]
struct RefError {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

#[derive(Deserialize)]
struct StrftimeCall {
    format: String,
    value: String,
}

fn refs() -> &'static References {
    static REFS: OnceLock<References> = OnceLock::new();
    REFS.get_or_init(|| {
        let path = Path::new(DIR).join("references.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).expect("references.json")
    })
}

/// What wllm's `strftime_now(format)` gives now.
fn wllm_strftime(format: &str) -> String {
    let literal = serde_json::to_string(format).unwrap();
    render_template(
        &format!("{{{{ strftime_now({literal}) }}}}"),
        &[],
        false,
        None,
        None,
    )
    .expect("strftime_now renders")
}

/// Where `a` and `b` first differ, with the text around it, then both in full (escaped).
fn diff(expected: &str, actual: &str) -> String {
    let at = expected
        .char_indices()
        .zip(actual.chars())
        .find(|((_, e), a)| e != a)
        .map(|((i, _), _)| i)
        .unwrap_or(expected.len().min(actual.len()));
    let window = |s: &str| {
        let (mut start, mut end) = (at.saturating_sub(40), (at + 40).min(s.len()));
        while !s.is_char_boundary(start) {
            start -= 1;
        }
        while !s.is_char_boundary(end) {
            end += 1;
        }
        format!("{:?}", &s[start..end])
    };
    format!(
        "first difference at byte {at} (lengths: expected {}, wllm {})\n  expected: …{}…\n  wllm:     …{}…\n  expected in full: {expected:?}\n  wllm in full:     {actual:?}",
        expected.len(),
        actual.len(),
        window(expected),
        window(actual),
    )
}

/// Renders one case with wllm and compares it with the reference; `Err` says how they differ.
fn check_case(
    t: &TemplateRef,
    template: &str,
    conv: &Conversation,
    case: &Case,
) -> Result<(), String> {
    // Render between two readings of wllm's clock-dependent texts, so the date substituted into
    // the reference is the one the render saw (a render across midnight UTC is retried).
    let probe = || -> Vec<String> {
        case.strftime_now
            .iter()
            .map(|c| wllm_strftime(&c.format))
            .collect()
    };
    let (rendered, now) = loop {
        let before = probe();
        let rendered = render_template(
            template,
            &conv.messages,
            conv.add_generation_prompt,
            t.bos_token.as_deref(),
            t.eos_token.as_deref(),
        );
        if probe() == before {
            break (rendered, before);
        }
    };
    match (&case.output, &case.error, rendered) {
        (Some(reference), None, Ok(out)) => {
            let mut expected = reference.clone();
            for (call, wllm_value) in case.strftime_now.iter().zip(&now) {
                expected = expected.replace(&call.value, wllm_value);
            }
            if out == expected {
                Ok(())
            } else {
                Err(format!("output differs: {}", diff(&expected, &out)))
            }
        }
        (Some(reference), None, Err(e)) => Err(format!(
            "transformers renders {reference:?} but wllm fails: {e}"
        )),
        (None, Some(reference), Ok(out)) => Err(format!(
            "transformers fails ({}: {}) but wllm renders {out:?}",
            reference.kind, reference.message
        )),
        (None, Some(reference), Err(e)) => {
            // A `raise_exception(msg)` (jinja2's plain `TemplateError`) must reach the caller as a
            // template error carrying msg. Other failures (`UndefinedError`: indexing an empty
            // conversation) word their messages per engine: failing as a template error is enough.
            let text = e.to_string();
            let carries = reference.kind != "TemplateError" || text.contains(&reference.message);
            if matches!(e, TokenizerError::Template(_)) && carries {
                Ok(())
            } else {
                Err(format!(
                    "both fail, but wllm's error {text:?} ({e:?}) is not a template error carrying transformers' {}: {:?}",
                    reference.kind, reference.message
                ))
            }
        }
        _ => panic!("case has neither or both of output and error"),
    }
}

/// Every conversation of one template; panics listing each case that differs.
fn check_template(id: &str) {
    let refs = refs();
    let t = refs
        .templates
        .iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("{id} is not in references.json"));
    let path = Path::new(DIR).join(&t.file);
    let template = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in refs.cases.iter().filter(|c| c.template == id) {
        let conv = refs
            .conversations
            .iter()
            .find(|c| c.name == case.conversation)
            .unwrap_or_else(|| panic!("unknown conversation {}", case.conversation));
        checked += 1;
        if let Err(why) = check_case(t, &template, conv, case) {
            failures.push(format!("{id} × {}: {why}", case.conversation));
        }
    }
    assert_eq!(
        checked,
        refs.conversations.len(),
        "{id}: not every conversation has a reference"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ from transformers:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

macro_rules! template_tests {
    ($($name:ident => $id:literal,)*) => {
        $(
            #[test]
            fn $name() {
                check_template($id);
            }
        )*
        const TESTED: &[&str] = &[$($id),*];
    };
}

template_tests! {
    llama_3_1_8b_instruct => "llama-3.1-8b-instruct",
    llama_3_2_3b_instruct => "llama-3.2-3b-instruct",
    qwen2_5_7b_instruct => "qwen2.5-7b-instruct",
    qwen3_0_6b => "qwen3-0.6b",
    gemma_2_2b_it => "gemma-2-2b-it",
    gemma_4_31b_it => "gemma-4-31b-it",
    phi_3_5_mini_instruct => "phi-3.5-mini-instruct",
    mistral_nemo_instruct_2407 => "mistral-nemo-instruct-2407",
    mistral_small_3_2_24b_instruct_2506 => "mistral-small-3.2-24b-instruct-2506",
    deepseek_r1_distill_llama_8b => "deepseek-r1-distill-llama-8b",
    deepseek_r1_distill_qwen_32b => "deepseek-r1-distill-qwen-32b",
    smollm2_135m_instruct => "smollm2-135m-instruct",
    smollm3_3b => "smollm3-3b",
    gpt_oss_120b => "gpt-oss-120b",
}

#[test]
fn every_reference_is_tested() {
    let refs = refs();
    let in_refs: BTreeSet<&str> = refs.templates.iter().map(|t| t.id.as_str()).collect();
    let tested: BTreeSet<&str> = TESTED.iter().copied().collect();
    assert_eq!(
        in_refs, tested,
        "templates in references.json vs tests here"
    );
    let ids: BTreeSet<&str> = refs.cases.iter().map(|c| c.template.as_str()).collect();
    assert_eq!(
        ids, in_refs,
        "every template has cases and every case a template"
    );
    assert_eq!(
        refs.cases.len(),
        refs.templates.len() * refs.conversations.len()
    );
    // The references do exercise both sides: outputs and expected errors, and dates.
    assert!(refs.cases.iter().any(|c| c.error.is_some()));
    assert!(refs.cases.iter().any(|c| !c.strftime_now.is_empty()));
}

/// `format` for the UTC day `unix_secs` falls on, for the formats the templates use.
fn format_day(unix_secs: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // Walk the calendar from 1970: slow but plainly right.
    let mut days = unix_secs / 86_400;
    let mut year = 1970u64;
    let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    while days >= if leap(year) { 366 } else { 365 } {
        days -= if leap(year) { 366 } else { 365 };
        year += 1;
    }
    let lengths = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 0;
    while days >= lengths[month] {
        days -= lengths[month];
        month += 1;
    }
    let day = days + 1;
    match format {
        "%d %b %Y" => format!("{day:02} {} {year}", MONTHS[month]),
        "%Y-%m-%d" => format!("{year}-{:02}-{day:02}", month + 1),
        other => panic!("format {other:?} is not known to this test"),
    }
}

/// wllm's `strftime_now` gives today's UTC date, formatted as Python's `strftime` does (checked
/// on the references' fixed date: the formatter here must reproduce Python's text for it).
#[test]
fn strftime_now_is_todays_utc_date() {
    let refs = refs();
    let formats: BTreeSet<&str> = refs
        .cases
        .iter()
        .flat_map(|c| &c.strftime_now)
        .map(|c| c.format.as_str())
        .collect();
    assert!(!formats.is_empty());
    // fixed_now is 2031-02-03T04:05:06 (local time in Python; read as UTC here).
    assert_eq!(refs.fixed_now, "2031-02-03T04:05:06");
    let fixed_unix = 1_927_857_906;
    for call in refs.cases.iter().flat_map(|c| &c.strftime_now) {
        assert_eq!(
            format_day(fixed_unix, &call.format),
            call.value,
            "{}",
            call.format
        );
    }
    for format in formats {
        let (today, wllm) = loop {
            let secs = || {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
            };
            let before = secs();
            let wllm = wllm_strftime(format);
            let after = secs();
            if before / 86_400 == after / 86_400 {
                break (format_day(before, format), wllm);
            }
        };
        assert_eq!(wllm, today, "strftime_now({format:?})");
    }
}
