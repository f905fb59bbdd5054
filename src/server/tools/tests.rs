use super::parse::ToolCall;
use super::*;

fn weather() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"]},
    }})
}

fn time() -> Value {
    json!({"type": "function", "function": {"name": "get_time"}})
}

fn req(choice: Value) -> ToolRequest {
    validate(Some(&json!([weather(), time()])), Some(&choice)).unwrap()
}

fn out(tools: Option<ToolFormat>) -> ChatOutput {
    ChatOutput {
        tools,
        thinking_open: false,
    }
}

/// Feeds `text` in pieces of `step` bytes (on char boundaries) and joins what comes out; the
/// call deltas are joined by index as clients do.
fn stream(o: &ChatOutput, text: &str, step: usize) -> (String, String, Vec<ToolCall>) {
    let mut p = ChoiceParser::new(o);
    let (mut r, mut c, mut calls) = (String::new(), String::new(), Vec::<ToolCall>::new());
    let mut take = |x: Parsed| {
        r.push_str(&x.reasoning);
        c.push_str(&x.content);
        for d in x.calls {
            let i = d["index"].as_u64().unwrap() as usize;
            if let Some(id) = d["id"].as_str() {
                assert_eq!(i, calls.len(), "a new call gets the next index");
                assert_eq!(d["type"], "function");
                calls.push(ToolCall {
                    id: id.into(),
                    name: d["function"]["name"].as_str().unwrap().into(),
                    arguments: String::new(),
                });
            } else {
                assert!(d["function"].get("name").is_none(), "the name is sent once");
            }
            calls[i]
                .arguments
                .push_str(d["function"]["arguments"].as_str().unwrap());
        }
    };
    let mut i = 0;
    while i < text.len() {
        let mut j = (i + step).min(text.len());
        while !text.is_char_boundary(j) {
            j += 1;
        }
        take(p.feed(&text[i..j]));
        i = j;
    }
    take(p.finish());
    assert_eq!(calls, p.calls(), "the deltas add up to the calls");
    (r, c, calls)
}

fn names_args(calls: &[ToolCall]) -> Vec<(String, Value)> {
    calls
        .iter()
        .map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap()))
        .collect()
}

/// Every split of the text gives what the whole text gives.
fn check(o: ChatOutput, text: &str, content: &str, calls: &[(&str, Value)]) {
    let want: Vec<(String, Value)> = calls
        .iter()
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    let (_, c, whole) = parse_complete(&o, text);
    assert_eq!(c, content, "whole: {text:?}");
    assert_eq!(names_args(&whole), want, "whole: {text:?}");
    for step in [1, 2, 3, 5, 7, 64] {
        let (_, c, k) = stream(&o, text, step);
        assert_eq!(c, content, "step {step}: {text:?}");
        assert_eq!(names_args(&k), want, "step {step}: {text:?}");
        // The same argument text, streamed or whole.
        let args = |k: &[ToolCall]| k.iter().map(|c| c.arguments.clone()).collect::<Vec<_>>();
        assert_eq!(args(&k), args(&whole), "step {step}: {text:?}");
    }
}

#[test]
fn detects_formats_from_templates() {
    assert_eq!(detect("{{ '<tool_call>\\n' }}"), ToolFormat::Hermes);
    assert_eq!(detect("[TOOL_CALLS] {{ x }}"), ToolFormat::MistralJson);
    assert_eq!(
        detect("[TOOL_CALLS]{{ n }}[ARGS]{{ a }}"),
        ToolFormat::MistralArgs
    );
    assert_eq!(detect("<|python_tag|>"), ToolFormat::Llama3);
    assert_eq!(
        detect("<|start_header_id|>{\"name\": fn, \"parameters\": args}"),
        ToolFormat::Llama3
    );
    assert_eq!(detect("<|im_start|>{{ m.content }}"), ToolFormat::Generic);
}

#[test]
fn detects_formats_of_the_fixture_templates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat_templates/templates");
    let cases = [
        ("qwen2.5-7b-instruct", ToolFormat::Hermes, true),
        ("qwen3-0.6b", ToolFormat::Hermes, true),
        (
            "nousresearch-hermes-2-pro-llama-3-8b-tool_use",
            ToolFormat::Hermes,
            true,
        ),
        ("llama-3.1-8b-instruct", ToolFormat::Llama3, true),
        ("llama-3.2-3b-instruct", ToolFormat::Llama3, true),
        ("mistral-nemo-instruct-2407", ToolFormat::MistralJson, true),
        (
            "mistral-small-3.2-24b-instruct-2506",
            ToolFormat::MistralArgs,
            true,
        ),
        ("smollm2-135m-instruct", ToolFormat::Generic, false),
    ];
    for (name, format, uses_tools) in cases {
        let src = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
        assert_eq!(detect(&src), format, "{name}");
        assert_eq!(template_uses_tools(&src), uses_tools, "{name}");
    }
}

#[test]
fn validates_tools_and_choice() {
    assert_eq!(validate(None, None).unwrap().choice, ToolChoice::None);
    assert_eq!(req(json!("auto")).choice, ToolChoice::Auto);
    assert_eq!(
        validate(Some(&json!([weather()])), None).unwrap().choice,
        ToolChoice::Auto
    );
    assert_eq!(req(json!("required")).choice, ToolChoice::Required);
    assert_eq!(
        req(json!({"type": "function", "function": {"name": "get_time"}})).choice,
        ToolChoice::Named("get_time".into())
    );
    let bad_tools = [
        json!({"type": "function"}),
        json!([{"type": "retrieval"}]),
        json!([{"type": "function", "function": {}}]),
        json!([{"type": "function", "function": {"name": "a b"}}]),
        json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
        json!([weather(), weather()]),
    ];
    for t in bad_tools {
        assert!(
            matches!(validate(Some(&t), None), Err(ToolError::Tools(_))),
            "{t}"
        );
    }
    let tools = json!([weather()]);
    let bad_choice = [
        json!("sometimes"),
        json!(3),
        json!({"type": "function", "function": {"name": "nope"}}),
        json!({"type": "function"}),
    ];
    for c in bad_choice {
        assert!(
            matches!(validate(Some(&tools), Some(&c)), Err(ToolError::Choice(_))),
            "{c}"
        );
    }
    assert!(matches!(
        validate(None, Some(&json!("required"))),
        Err(ToolError::Choice(_))
    ));
}

#[test]
fn every_forced_grammar_compiles_with_llguidance() {
    let env = toktrie::ApproximateTokEnv::single_byte_env();
    let factory = llguidance::ParserFactory::new_simple(&env).unwrap();
    let formats = [
        ToolFormat::Hermes,
        ToolFormat::Llama3,
        ToolFormat::MistralJson,
        ToolFormat::MistralArgs,
        ToolFormat::Generic,
    ];
    let choices = [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_weather"}}),
        json!({"type": "function", "function": {"name": "get_time"}}),
    ];
    for f in formats {
        for c in &choices {
            let Some(Grammar::Lark(g)) = forced_grammar(f, &req(c.clone())) else {
                panic!("{f:?} {c}: no Lark grammar");
            };
            let top = llguidance::api::TopLevelGrammar::from_lark(g.clone());
            if let Err(e) = factory.create_parser(top) {
                panic!("{f:?} {c}: {e}\n{g}");
            }
        }
    }
    assert!(forced_grammar(ToolFormat::Hermes, &req(json!("auto"))).is_none());
}

#[test]
fn forced_grammar_accepts_a_valid_call_and_rejects_a_wrong_name() {
    let env = toktrie::ApproximateTokEnv::single_byte_env();
    let factory = llguidance::ParserFactory::new_simple(&env).unwrap();
    let named = req(json!({"type": "function", "function": {"name": "get_weather"}}));
    let accepts = |f: ToolFormat, text: &str| {
        let Some(Grammar::Lark(g)) = forced_grammar(f, &named) else {
            unreachable!()
        };
        let parser = factory
            .create_parser(llguidance::api::TopLevelGrammar::from_lark(g))
            .unwrap();
        let mut m = llguidance::Matcher::new(Ok(parser));
        let toks = env.tokenize_bytes(text.as_bytes());
        m.consume_tokens(&toks).is_ok() && m.is_accepting().unwrap_or(false)
    };
    let call = r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#;
    assert!(accepts(
        ToolFormat::Hermes,
        &format!("<tool_call>\n{call}\n</tool_call>")
    ));
    assert!(accepts(
        ToolFormat::Generic,
        &format!("{{\"tool_calls\": [{call}]}}")
    ));
    assert!(!accepts(
        ToolFormat::Generic,
        r#"{"tool_calls": [{"name": "get_time", "arguments": {}}]}"#
    ));
    assert!(accepts(
        ToolFormat::Llama3,
        r#"{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "c"}}"#
    ));
    assert!(accepts(
        ToolFormat::MistralArgs,
        r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}"#
    ));
    // `city` is required.
    assert!(!accepts(
        ToolFormat::Llama3,
        r#"{"name": "get_weather", "parameters": {"unit": "c"}}"#
    ));
}

#[test]
fn hermes_calls_and_content() {
    let o = out(Some(ToolFormat::Hermes));
    let a = json!({"city": "Paris"});
    check(
        o,
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        "",
        &[("get_weather", a.clone())],
    );
    check(
        o,
        "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
        "Let me look.\n",
        &[("get_weather", a.clone()), ("get_time", json!({}))],
    );
    // Not a call: all content, nothing lost.
    check(o, "a <tool_call> b", "a <tool_call> b", &[]);
    check(o, "plain <tool answer", "plain <tool answer", &[]);
    check(
        o,
        "cut <tool_call>\n{\"name\": \"get_w",
        "cut <tool_call>\n{\"name\": \"get_w",
        &[],
    );
    // Without tools, markers are plain text.
    check(
        out(None),
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
        &[],
    );
}

#[test]
fn llama3_generic_and_mistral_calls() {
    let a = json!({"city": "Oslo"});
    let l = out(Some(ToolFormat::Llama3));
    check(
        l,
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
        "",
        &[("get_weather", a.clone())],
    );
    check(
        l,
        "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"get_time\", \"parameters\": {}}",
        "",
        &[("get_weather", a.clone()), ("get_time", json!({}))],
    );
    check(l, "{\"answer\": 4}", "{\"answer\": 4}", &[]);
    check(l, "It is sunny {really}.", "It is sunny {really}.", &[]);
    let g = out(Some(ToolFormat::Generic));
    check(
        g,
        "  {\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]}",
        "  ",
        &[("get_weather", a.clone())],
    );
    check(g, "Hello {there}", "Hello {there}", &[]);
    check(
        g,
        "{\"tool_calls\": [{\"nam",
        "{\"tool_calls\": [{\"nam",
        &[],
    );
    let m = out(Some(ToolFormat::MistralJson));
    check(
        m,
        "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}]",
        "",
        &[("get_weather", a.clone())],
    );
    let m = out(Some(ToolFormat::MistralArgs));
    check(
        m,
        "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\"}[TOOL_CALLS]get_time[ARGS]{}",
        "",
        &[("get_weather", a), ("get_time", json!({}))],
    );
}

#[test]
fn calls_have_distinct_ids_and_string_arguments() {
    let (_, _, k) = parse_complete(
        &out(Some(ToolFormat::Hermes)),
        "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"a\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>",
    );
    assert_eq!(k.len(), 2);
    assert_ne!(k[0].id, k[1].id);
    assert!(k[0].id.starts_with("call_"));
    assert_eq!(k[1].arguments, "{\"x\": 1}");
    let d = k[0].delta_json(0);
    assert_eq!(k[0].arguments, "{}");
    assert_eq!(d["index"], 0);
    assert_eq!(d["type"], "function");
    assert_eq!(d["function"]["name"], "a");
}

#[test]
fn reasoning_is_split_from_content() {
    let plain = out(None);
    for step in [1, 2, 4, 100] {
        let (r, c, _) = stream(
            &plain,
            "<think>\nsome thought\n</think>\n\nThe answer.",
            step,
        );
        assert_eq!(
            (r.as_str(), c.as_str()),
            ("\nsome thought\n", "The answer.")
        );
        let (r, c, _) = stream(&plain, "No thinking <think> here", step);
        assert_eq!((r.as_str(), c.as_str()), ("", "No thinking <think> here"));
        // The template opened the tag: the answer starts as reasoning.
        let open = ChatOutput {
            tools: None,
            thinking_open: true,
        };
        let (r, c, _) = stream(&open, "hmm</think>ok", step);
        assert_eq!((r.as_str(), c.as_str()), ("hmm", "ok"));
        // Cut off while thinking: it stays reasoning.
        let (r, c, _) = stream(&plain, "<think>unfinished </thi", step);
        assert_eq!((r.as_str(), c.as_str()), ("unfinished </thi", ""));
    }
    // Reasoning, then a call.
    let o = out(Some(ToolFormat::Hermes));
    let (r, c, k) = stream(
        &o,
        "<think>call it</think>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
        3,
    );
    assert_eq!(r, "call it");
    assert_eq!(c, "");
    assert_eq!(k.len(), 1);
    assert!(prompt_opens_thinking("<|im_start|>assistant\n<think>\n"));
    assert!(!prompt_opens_thinking("<think>\n\n</think>\n\n"));
}

#[test]
fn prompts_for_templates_with_and_without_tools() {
    let r = req(json!("auto"));
    let msgs = vec![
        ChatMessage::user("weather?"),
        ChatMessage::assistant_tool_calls(incoming_tool_calls(&[json!({"id": "call_1",
            "type": "function", "function": {"name": "get_weather",
            "arguments": "{\"city\": \"Paris\"}"}})])),
        ChatMessage::tool("call_1", "sunny"),
    ];
    // Arguments strings become objects for the template.
    assert_eq!(
        msgs[1].tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
    let (m, t) = prepare("{{ tools }} {{ tool_calls }}", msgs.clone(), &r);
    assert_eq!(t.unwrap().len(), 2);
    assert_eq!(m.len(), 3);
    let (m, t) = prepare("<|im_start|>{{ m.content }}", msgs.clone(), &r);
    assert!(t.is_none());
    assert_eq!(m[0].role, "system");
    assert!(m[0].text().contains("get_weather"), "{}", m[0].text());
    assert!(m[0].text().contains("\"tool_calls\""));
    assert_eq!(
        serde_json::from_str::<Value>(m[2].text()).unwrap(),
        json!({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]})
    );
    // An existing system message is extended, not duplicated.
    let mut with_sys = msgs.clone();
    with_sys.insert(0, ChatMessage::system("Be brief."));
    let (m, _) = prepare("plain", with_sys, &r);
    assert_eq!(m.len(), 4);
    assert!(m[0].text().starts_with("Be brief.\n\n"));
    // tool_choice none: no tools shown.
    let (m, t) = prepare("plain", msgs, &req(json!("none")));
    assert!(t.is_none());
    assert_eq!(m[0].role, "user");
}

#[test]
fn tool_conversations_render_with_real_templates() {
    use crate::tokenizer::chat::{ChatRequestContext, render_template_with};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat_templates/templates");
    let msgs = vec![
        ChatMessage::user("Weather in Paris?"),
        ChatMessage::assistant_tool_calls(incoming_tool_calls(&[json!({"id": "call_1",
            "type": "function", "function": {"name": "get_weather",
            "arguments": "{\"city\": \"Paris\"}"}})])),
        ChatMessage {
            name: Some("get_weather".into()),
            ..ChatMessage::tool("call_1", "sunny, 21 C")
        },
    ];
    let r = req(json!("auto"));
    for name in [
        "qwen2.5-7b-instruct",
        "llama-3.1-8b-instruct",
        "mistral-nemo-instruct-2407",
        "smollm2-135m-instruct",
    ] {
        let src = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
        let (m, tools) = prepare(&src, msgs.clone(), &r);
        let mut ctx = ChatRequestContext::new(true).with_special_tokens(Some("<s>"), Some("</s>"));
        ctx.tools = tools;
        let text = render_template_with(&src, &m, &ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The tools, the past call's arguments and the tool's answer all reach the prompt.
        assert!(text.contains("get_weather"), "{name}: {text}");
        assert!(text.contains("Paris"), "{name}: {text}");
        assert!(text.contains("sunny, 21 C"), "{name}: {text}");
        assert!(
            !text.contains("{\\\"city"),
            "{name}: arguments double-encoded: {text}"
        );
    }
}

#[test]
fn arguments_stream_as_they_are_written() {
    let o = out(Some(ToolFormat::Hermes));
    let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>";
    let mut p = ChoiceParser::new(&o);
    let mut head_at = None;
    let mut pieces = 0;
    for (i, ch) in text.char_indices() {
        let x = p.feed(&ch.to_string());
        for d in &x.calls {
            if d.get("id").is_some() {
                head_at = Some(i);
                assert_eq!(d["function"]["name"], "get_weather");
            } else {
                pieces += 1;
            }
        }
    }
    p.finish();
    // The head goes out as soon as the arguments begin, long before the call closes.
    let head_at = head_at.expect("a head delta");
    assert!(head_at < text.find("Paris").unwrap(), "{head_at}");
    assert!(pieces > 5, "{pieces} argument fragments");
    assert_eq!(
        p.calls()[0].arguments,
        "{\"city\": \"Paris\", \"unit\": \"c\"}"
    );

    // Cut off inside the arguments: the call whose name went out stays a call.
    for step in [1, 4, 100] {
        let (_, c, k) = stream(
            &o,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa",
            step,
        );
        assert_eq!(c, "");
        assert_eq!(k.len(), 1);
        assert_eq!(k[0].arguments, "{\"city\": \"Pa");
    }
    // Arguments before the name: sent whole once complete.
    check(
        out(Some(ToolFormat::Llama3)),
        "{\"parameters\": {\"city\": \"Oslo\"}, \"name\": \"get_weather\"}",
        "",
        &[("get_weather", json!({"city": "Oslo"}))],
    );
}

#[test]
fn a_json_answer_that_is_no_call_is_not_held_back() {
    for format in [ToolFormat::Llama3, ToolFormat::Generic] {
        let mut p = ChoiceParser::new(&out(Some(format)));
        let x = p.feed("{\"answer\": \"the weather is");
        assert_eq!(x.content, "{\"answer\": \"the weather is", "{format:?}");
        let x = p.feed(" fine\"}");
        assert_eq!(x.content, " fine\"}");
        assert!(p.finish().is_empty());
        assert!(!p.called());
    }
}
