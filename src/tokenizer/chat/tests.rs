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
    // Values print as Python prints them.
    let t = "{{ true }} {{ none }} {{ {'k': [1.0, 'x', false]} }} {{ undefined_name }}.";
    assert_eq!(
        render(t, &[]).unwrap(),
        "True None {'k': [1.0, 'x', False]} ."
    );
}

#[test]
fn request_context_reaches_the_template() {
    let t = "{{ tools | tojson }}|{{ enable_thinking }}|{{ bos_token }}|{% for m in messages %}{{ m | tojson }}{% endfor %}";
    let tool = serde_json::json!({"type": "function", "function": {"name": "f", "parameters": {}}});
    let ctx = ChatRequestContext::new(true)
        .with_tools(vec![tool])
        .with_kwarg("enable_thinking", serde_json::json!(false))
        .with_kwarg("bos_token", serde_json::json!("<B>"));
    let mut call = ChatMessage::assistant_tool_calls(vec![serde_json::json!({"id": "1"})]);
    call.reasoning_content = Some("r".into());
    let out = render_template_with(t, &[call, ChatMessage::tool("1", "ok")], &ctx).unwrap();
    assert_eq!(
        out,
        "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}]|False|<B>|\
         {\"thinking\": \"r\", \"role\": \"assistant\", \"reasoning_content\": \"r\", \"tool_calls\": [{\"id\": \"1\"}]}\
         {\"role\": \"tool\", \"content\": \"ok\", \"tool_call_id\": \"1\"}"
    );
    let bad = ChatRequestContext::new(true).with_kwarg("messages", serde_json::json!([]));
    assert!(matches!(
        render_template_with(t, &[], &bad),
        Err(TokenizerError::Template(_))
    ));
}

#[test]
fn generation_blocks_render_their_body() {
    let t = "{% for m in messages %}\n{%- generation -%}\n[{{ m.content }}]\n{%- endgeneration %}\n{% endfor %}";
    assert_eq!(
        render(t, &[ChatMessage::user("a"), ChatMessage::user("b")]).unwrap(),
        "[a][b]"
    );
}

#[test]
fn template_errors_are_errors() {
    let t =
        "{% if messages[0].role != 'system' %}{{ raise_exception('system first!') }}{% endif %}";
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

/// Texts jinja2 3.1.6 renders for the same templates (checked with Python).
#[test]
fn python_behaviours() {
    let cases = [
        (
            "{% for x in [1, 2, 3]|select('odd') %}{{ x }}{% if not loop.last %},{% endif %}{{ loop.length }}{{ loop.revindex }}{% endfor %}|{{ [3,1]|map('string')|join('-') }}|{{ ([1]|select) is iterable }}|{{ [1,2]|reverse|list }}|{{ 'ab'|reverse }}|{{ 'a' ~ true ~ none ~ 2.0 }}|{{ [1, 'a']|join(',') }}",
            "1,22321|3-1|True|[2, 1]|ba|aTrueNone2.0|1,a",
        ),
        (
            "{{ '\x1c a \t'.strip() }}|{{ ' a '.lstrip() }}|{{ ' a '.rstrip() }}|{{ 'xxaxx'.strip('x') }}|{{ 'a\rb\r\nc\x0bd\n'.splitlines() }}|{{ 'a\nb'.splitlines(true) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ ' a b  c '.rsplit(none, 1) }}|{{ ' a b  c '.split(none, 1) }}|{{ ' a\x1cb '.split() }}|{{ 'prefix-x'.removeprefix('prefix-') }}|{{ 'x.py'.removesuffix('.py') }}|{{ '  t \x1c'|trim }}|{{ none|trim }}|{{ 'xax'|trim('x') }}",
            "a|a | a|a|['a', 'b', 'c', 'd']|['a\\n', 'b']|['a,b', 'c']|[' a b', 'c']|['a', 'b  c ']|['a', 'b']|x|x|t|None|a",
        ),
        (
            "{{ 2.5|round }}|{{ 3.14159|round(2) }}|{{ 2.5|round(0, 'floor') }}|{{ 2.45|round(1, 'ceil') }}|{{ 7|round }}|{{ 0.125|round(2) }}",
            "2.0|3.14|2.0|2.5|7|0.12",
        ),
        (
            "{{ 'x' ~ 1 }}|{{ {'a': 1}.get('b', 2) }}|{{ 3 / 2 }}|{{ 7 // 2 }}|{{ 'ab' * 2 }}|{{ 1 == 1.0 }}|{{ range(3)|list }}|{{ '%s-%d'|format('a', 2) }}|{{ [3,1,2]|sort }}|{{ 10|string }}|{{ true|int }}|{{ '5'|int + 1 }}|{{ [1,2]|sum }}|{{ undefined_name|length }}",
            "x1|2|1.5|3|abab|True|[0, 1, 2]|a-2|[1, 2, 3]|10|1|6|3|0",
        ),
    ];
    for (template, jinja2) in cases {
        assert_eq!(render(template, &[]).unwrap(), jinja2, "{template}");
    }
    // What jinja2 refuses: iterating none, the length of a generator, JSON of a generator.
    for template in [
        "{% for x in none %}{% endfor %}",
        "{{ [1]|map('string')|length }}",
        "{{ [1]|select|tojson }}",
        "{{ undefined_name|tojson }}",
        "{{ 'abc'[::0] }}",
    ] {
        assert!(render(template, &[]).is_err(), "{template}");
    }
}

#[test]
fn reverse_slices_of_empty_sequences_are_empty() {
    // minijinja's own `[::-1]` panics on an empty sequence; Python's gives an empty one.
    let t = "[{{ ''[::-1] }}]{% for m in messages[::-1] %}{{ m.content }}{% endfor %}{{ [1, 2, 3][3:0:-1] }}";
    assert_eq!(render(t, &[]).unwrap(), "[][3, 2]");
}
