//! Real chat templates (every template of llama.cpp's `models/templates`, plus SmolLM2's) rendered
//! by wllm must equal, byte for byte, what Hugging Face transformers renders from them with
//! jinja2, for every conversation: plain chats, a chat-template kwarg (`enable_thinking`), and
//! tools offered, called and answered. Where transformers' render fails (roles out of order,
//! system role refused, a template that cannot take a tool call's shape), wllm's must fail too,
//! with the template's own message when it raised one.
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
use wllm::tokenizer::chat::{ChatRequestContext, render_template, render_template_with};
use wllm::tokenizer::{ChatMessage, TokenizerError};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/chat_templates");

#[derive(Deserialize)]
struct References {
    fixed_now: String,
    templates: Vec<TemplateRef>,
    /// Template files left out because they are byte-identical to one in `templates`.
    duplicates: Vec<Duplicate>,
    conversations: Vec<Conversation>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Duplicate {
    source: String,
    same_as: String,
}

#[derive(Deserialize)]
struct TemplateRef {
    id: String,
    file: String,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

#[derive(Deserialize)]
struct Conversation {
    name: String,
    add_generation_prompt: bool,
    messages: Vec<ChatMessage>,
    /// The `tools` variable (OpenAI function definitions), when the conversation offers tools.
    #[serde(default)]
    tools: Option<Vec<serde_json::Value>>,
    /// Extra template variables (a request's `chat_template_kwargs`).
    #[serde(default)]
    kwargs: serde_json::Map<String, serde_json::Value>,
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
    let mut context = ChatRequestContext::new(conv.add_generation_prompt)
        .with_special_tokens(t.bos_token.as_deref(), t.eos_token.as_deref());
    context.tools = conv.tools.clone();
    context.kwargs = conv.kwargs.clone();
    let (rendered, now) = loop {
        let before = probe();
        let rendered = render_template_with(template, &conv.messages, &context);
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
            // conversation; Python's `TypeError`: a string where the template wants a dict)
            // word their messages per engine: failing as a template error is enough.
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
        let result = check_case(t, &template, conv, case);
        match (unmatched(id, &case.conversation), result) {
            (None, Ok(())) => {}
            (None, Err(why)) => failures.push(format!("{id} × {}: {why}", case.conversation)),
            (Some(_), Err(_)) => {}
            (Some(reason), Ok(())) => failures.push(format!(
                "{id} × {} is listed in UNMATCHED ({reason}) but now matches: remove it",
                case.conversation
            )),
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

/// Cases wllm cannot render as jinja2 does: (template, conversation, why). Each must still
/// differ (the test fails once one matches, so the list stays true).
const UNMATCHED: &[(&str, &str, &str)] = &[];

fn unmatched(template: &str, conversation: &str) -> Option<&'static str> {
    UNMATCHED
        .iter()
        .find(|(t, c, _)| *t == template && *c == conversation)
        .map(|(_, _, why)| *why)
}

template_tests! {
    apertus_8b_instruct => "apertus-8b-instruct",
    apriel_1_6_15b_thinker_fixed => "apriel-1.6-15b-thinker-fixed",
    bielik_11b_v3_0_instruct => "bielik-11b-v3.0-instruct",
    bytedance_seed_oss => "bytedance-seed-oss",
    cohere2moe => "cohere2moe",
    cohereforai_c4ai_command_r_plus_tool_use => "cohereforai-c4ai-command-r-plus-tool_use",
    cohereforai_c4ai_command_r7b_12_2024_tool_use => "cohereforai-c4ai-command-r7b-12-2024-tool_use",
    glm_4_6 => "glm-4.6",
    glm_4_7_flash => "glm-4.7-flash",
    gigachat3_10b_a1_8b => "gigachat3-10b-a1.8b",
    gigachat3_1_10b_a1_8b => "gigachat3.1-10b-a1.8b",
    smollm3_3b => "smollm3-3b",
    kimi_k2_instruct => "kimi-k2-instruct",
    kimi_k2_thinking => "kimi-k2-thinking",
    kimi_k3 => "kimi-k3",
    lfm2_8b_a1b => "lfm2-8b-a1b",
    lfm2_5_8b_a1b => "lfm2.5-8b-a1b",
    lfm2_5_instruct => "lfm2.5-instruct",
    mimo_vl => "mimo-vl",
    minimax_m1 => "minimax-m1",
    minimax_m2 => "minimax-m2",
    minimax_m3 => "minimax-m3",
    mistral_small_3_2_24b_instruct_2506 => "mistral-small-3.2-24b-instruct-2506",
    nvidia_nemotron_3_nano_30b_a3b_bf16 => "nvidia-nemotron-3-nano-30b-a3b-bf16",
    nvidia_nemotron_nano_v2 => "nvidia-nemotron-nano-v2",
    nousresearch_hermes_2_pro_llama_3_8b_tool_use => "nousresearch-hermes-2-pro-llama-3-8b-tool_use",
    qwen_qwq_32b => "qwen-qwq-32b",
    qwen2_5_7b_instruct => "qwen2.5-7b-instruct",
    qwen3_0_6b => "qwen3-0.6b",
    qwen3_coder => "qwen3-coder",
    qwen3_5_4b => "qwen3.5-4b",
    reka_edge => "reka-edge",
    spark2_5 => "spark2.5",
    stepfun3_5_flash => "stepfun3.5-flash",
    deepseek_r1_distill_llama_8b => "deepseek-r1-distill-llama-8b",
    deepseek_r1_distill_qwen_32b => "deepseek-r1-distill-qwen-32b",
    deepseek_ai_deepseek_v3_1 => "deepseek-ai-deepseek-v3.1",
    deepseek_ai_deepseek_v3_2 => "deepseek-ai-deepseek-v3.2",
    deepseek_ai_deepseek_v4_flash_0731 => "deepseek-ai-deepseek-v4-flash-0731",
    deepseek_ai_deepseek_v4 => "deepseek-ai-deepseek-v4",
    fireworks_ai_llama_3_firefunction_v2 => "fireworks-ai-llama-3-firefunction-v2",
    gemma_2_2b_it => "gemma-2-2b-it",
    google_gemma_4_31b_it_interleaved => "google-gemma-4-31b-it-interleaved",
    gemma_4_31b_it => "gemma-4-31b-it",
    ibm_granite_granite_3_3_2b_instruct => "ibm-granite-granite-3.3-2b-instruct",
    ibm_granite_granite_4_0 => "ibm-granite-granite-4.0",
    ibm_granite_granite_4_1 => "ibm-granite-granite-4.1",
    inclusionai_ling_3_0_flash => "inclusionai-ling-3.0-flash",
    llama_cpp_deepseek_r1 => "llama-cpp-deepseek-r1",
    llama_cpp_rwkv_world => "llama-cpp-rwkv-world",
    meetkai_functionary_medium_v3_1 => "meetkai-functionary-medium-v3.1",
    meetkai_functionary_medium_v3_2 => "meetkai-functionary-medium-v3.2",
    llama_3_1_8b_instruct => "llama-3.1-8b-instruct",
    llama_3_2_3b_instruct => "llama-3.2-3b-instruct",
    phi_3_5_mini_instruct => "phi-3.5-mini-instruct",
    mistralai_ministral_3_14b_reasoning_2512 => "mistralai-ministral-3-14b-reasoning-2512",
    mistral_nemo_instruct_2407 => "mistral-nemo-instruct-2407",
    moonshotai_kimi_k2 => "moonshotai-kimi-k2",
    muse_glimmer => "muse-glimmer",
    gpt_oss_120b => "gpt-oss-120b",
    openbmb_minicpm5_1b => "openbmb-minicpm5-1b",
    poolside_laguna_s_2_1 => "poolside-laguna-s-2.1",
    poolside_laguna_xs_2_1 => "poolside-laguna-xs-2.1",
    poolside_laguna_xs_2 => "poolside-laguna-xs.2",
    tencent_hy3 => "tencent-hy3",
    unsloth_apriel_1_5 => "unsloth-apriel-1.5",
    unsloth_mistral_devstral_small_2507 => "unsloth-mistral-devstral-small-2507",
    upstage_solar_open_100b => "upstage-solar-open-100b",
    smollm2_135m_instruct => "smollm2-135m-instruct",
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
    // The references do exercise both sides: outputs and expected errors, dates, tools, kwargs.
    assert!(refs.cases.iter().any(|c| c.error.is_some()));
    assert!(refs.cases.iter().any(|c| !c.strftime_now.is_empty()));
    assert!(refs.conversations.iter().any(|c| c.tools.is_some()));
    assert!(refs.conversations.iter().any(|c| !c.kwargs.is_empty()));
    // Every file of llama.cpp's models/templates (70 templates, 2 of them copies) and SmolLM2's.
    assert_eq!(refs.templates.len() + refs.duplicates.len(), 71);
    for d in &refs.duplicates {
        assert!(
            refs.templates.iter().any(|t| t.source == d.same_as),
            "{} is a copy of {}, which is not tested",
            d.source,
            d.same_as
        );
    }
    for (template, conversation, _) in UNMATCHED {
        assert!(
            refs.cases
                .iter()
                .any(|c| c.template == *template && c.conversation == *conversation),
            "UNMATCHED lists {template} × {conversation}, which has no reference"
        );
    }
}

/// `format` for the UTC day `unix_secs` falls on, for the formats the templates use.
fn format_day(unix_secs: u64, format: &str) -> String {
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
    // Walk the calendar from 1970: slow but plainly right.
    let mut days = unix_secs / 86_400;
    let mut year = 1970u64;
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
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
        "%d %b %Y" => format!("{day:02} {} {year}", &MONTHS[month][..3]),
        "%B %d, %Y" => format!("{} {day:02}, {year}", MONTHS[month]),
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
