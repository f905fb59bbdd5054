//! Tool calling, structured output, logit bias and reasoning on `wllm serve`, over SmolLM2
//! (its template knows no tools: the server's generic tool prompt and JSON call format apply).
//! Raw HTTP as in tests/server.rs.
#![cfg(feature = "server")]

mod common;

use std::io::Read;
use std::time::Duration;

use common::server::{Resp, Server, assert_error, post, smol, start};
use common::smollm2_path;
use serde_json::{Value, json};
use wllm::engine::{Prompt, Request};

const CHAT: &str = "/v1/chat/completions";

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {"type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20},
                               "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {
            "name": "get_time",
            "description": "Get the current time in a city",
            "parameters": {"type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"], "additionalProperties": false}}}
    ])
}

fn ask(s: &Server, extra: Value) -> Value {
    let mut req = json!({
        "model": s.name,
        "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}],
        "max_tokens": 60, "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

/// The chunks of a streamed answer (without `[DONE]`).
fn chunks(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.body);
    let ev = r.events();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{ev:?}");
    ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// `delta.tool_calls` of a stream joined into whole calls (by index), as clients do.
fn assemble(chunks: &[Value]) -> Vec<Value> {
    let mut calls: Vec<Value> = Vec::new();
    for c in chunks {
        for d in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = d["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.resize(i + 1, json!({"function": {"name": "", "arguments": ""}}));
            }
            let call = &mut calls[i];
            if let Some(id) = d.get("id") {
                call["id"] = id.clone();
                call["type"] = d["type"].clone();
            }
            for k in ["name", "arguments"] {
                if let Some(piece) = d["function"][k].as_str() {
                    let joined = call["function"][k].as_str().unwrap().to_string() + piece;
                    call["function"][k] = json!(joined);
                }
            }
        }
    }
    calls
}

#[test]
fn bad_tools_and_tool_choice_are_refused_by_name() {
    let (s, _guard) = smol();
    let a = s.srv.addr;
    let cases = [
        (json!({"tools": {"type": "function"}}), "tools"),
        (json!({"tools": [{"type": "retrieval"}]}), "tools"),
        (
            json!({"tools": [{"type": "function", "function": {}}]}),
            "tools",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
            "tools",
        ),
        (
            json!({"tools": weather_tools(), "tool_choice": "always"}),
            "tool_choice",
        ),
        (
            json!({"tools": weather_tools(),
                   "tool_choice": {"type": "function", "function": {"name": "get_stock"}}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tools": weather_tools(), "tool_choice": "required",
                   "response_format": {"type": "json_object"}}),
            "tool_choice",
        ),
        (json!({"chat_template_kwargs": [1]}), "chat_template_kwargs"),
        (
            json!({"messages": [{"role": "user", "content": "hi"},
                                {"role": "assistant", "tool_calls": [{"id": "x"}]}]}),
            "messages",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "sunny"}]}),
            "messages",
        ),
    ];
    for (extra, param) in cases {
        let r = post(a, CHAT, &ask(s, extra.clone()));
        assert_eq!(r.status, 400, "{extra}: {}", r.body);
        assert_eq!(r.json()["error"]["param"], param, "{extra}: {}", r.body);
    }
    // The unknown function is named.
    let r = post(
        a,
        CHAT,
        &ask(
            s,
            json!({"tools": weather_tools(),
                   "tool_choice": {"type": "function", "function": {"name": "get_stock"}}}),
        ),
    );
    assert_error(&r, 400, "get_stock");
}

#[test]
fn bad_structured_output_and_logit_bias_are_refused_by_name() {
    let (s, _guard) = smol();
    let a = s.srv.addr;
    let cases = [
        (
            json!({"response_format": {"type": "xml"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}}),
            "response_format",
        ),
        (json!({"guided_choice": []}), "guided_choice"),
        (json!({"guided_regex": 5}), "guided_regex"),
        (json!({"guided_json": "x"}), "guided_json"),
        (
            json!({"structured_outputs": {"xml": "<a/>"}}),
            "structured_outputs",
        ),
        (
            json!({"guided_json": {"type": "object"}, "guided_regex": "[0-9]+"}),
            "guided_regex",
        ),
        (json!({"grammar": "start: ( unbalanced"}), ""),
        (json!({"logit_bias": [1, 2]}), "logit_bias"),
        (json!({"logit_bias": {"abc": 1}}), "logit_bias"),
        (json!({"logit_bias": {"5": 101}}), "logit_bias"),
        (json!({"logit_bias": {"5": "high"}}), "logit_bias"),
        (json!({"logit_bias": {"49152": 5}}), "logit_bias"),
    ];
    for (extra, param) in cases {
        for path in [CHAT, "/v1/completions"] {
            let mut req = ask(s, extra.clone());
            if path != CHAT {
                req["prompt"] = json!("Hello");
                req.as_object_mut().unwrap().remove("messages");
            }
            let r = post(a, path, &req);
            assert_eq!(r.status, 400, "{path} {extra}: {}", r.body);
            if !param.is_empty() {
                assert_eq!(r.json()["error"]["param"], param, "{extra}: {}", r.body);
            }
        }
    }
    // GBNF is refused by name, for each field that takes a grammar.
    for field in ["grammar", "guided_grammar"] {
        let r = post(
            a,
            CHAT,
            &ask(s, json!({ field: "root ::= \"yes\" | \"no\"" })),
        );
        assert_error(&r, 400, "GBNF");
        assert_eq!(r.json()["error"]["param"], field);
    }
    let r = post(
        a,
        CHAT,
        &ask(
            s,
            json!({"structured_outputs": {"grammar": "root ::= \"a\""}}),
        ),
    );
    assert_error(&r, 400, "GBNF");
}

#[test]
fn tool_conversations_render_and_answer() {
    let (s, _guard) = smol();
    // The assistant's call (arguments as a JSON string, as OpenAI sends them) and the tool's
    // answer, with and without the tools: a plain answer comes back.
    let messages = json!([
        {"role": "user", "content": "What is the weather like in Paris today?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "{\"temperature\": 21, \"sky\": \"sunny\"}"}
    ]);
    for extra in [
        json!({}),
        json!({"tools": weather_tools(), "tool_choice": "none"}),
    ] {
        let mut req = ask(s, extra);
        req["messages"] = messages.clone();
        req["max_tokens"] = json!(8);
        let r = post(s.srv.addr, CHAT, &req);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let m = &v["choices"][0]["message"];
        assert!(m["content"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
        assert!(m.get("tool_calls").is_none(), "{v}");
        assert_ne!(v["choices"][0]["finish_reason"], "tool_calls");
    }
    // Template kwargs are accepted (SmolLM2's template reads none of them).
    let r = post(
        s.srv.addr,
        CHAT,
        &ask(
            s,
            json!({"max_tokens": 2, "chat_template_kwargs": {"enable_thinking": false}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn forced_tool_calls_are_valid_and_stream_the_same() {
    let (s, _guard) = smol();
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    for choice in [json!("required"), named] {
        let req = ask(s, json!({"tools": weather_tools(), "tool_choice": choice}));
        let r = post(s.srv.addr, CHAT, &req);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        assert!(c["message"]["content"].is_null(), "{v}");
        let calls = c["message"]["tool_calls"].as_array().expect("tool_calls");
        assert_eq!(calls.len(), 1, "{v}");
        let call = &calls[0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"), "{v}");
        assert_eq!(call["type"], "function");
        let name = call["function"]["name"].as_str().unwrap();
        if choice != json!("required") {
            assert_eq!(name, "get_weather");
        }
        assert!(name == "get_weather" || name == "get_time", "{v}");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("arguments are not JSON ({e}): {v}"));
        assert!(args["city"].is_string(), "{v}");

        // Streamed: the deltas join into the same call (ids are fresh per answer).
        let mut sreq = req.clone();
        sreq["stream"] = json!(true);
        let ch = chunks(&post(s.srv.addr, CHAT, &sreq));
        assert_eq!(ch[0]["choices"][0]["delta"]["role"], "assistant");
        let joined = assemble(&ch);
        assert_eq!(joined.len(), 1, "{ch:?}");
        assert_eq!(joined[0]["function"], call["function"], "{ch:?}");
        assert!(joined[0]["id"].as_str().unwrap().starts_with("call_"));
        let fin = ch
            .iter()
            .rev()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str());
        assert_eq!(fin, Some("tool_calls"));
        let content: String = ch
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(content.trim().is_empty(), "{content:?}");
    }
}

#[test]
fn response_format_json_schema_is_followed() {
    let (s, _guard) = smol();
    let schema = json!({"type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 20}},
        "required": ["capital"], "additionalProperties": false});
    let r = post(
        s.srv.addr,
        CHAT,
        &ask(
            s,
            json!({"response_format": {"type": "json_schema",
                    "json_schema": {"name": "answer", "schema": schema, "strict": true}}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {v}"));
    assert!(parsed["capital"].is_string(), "{v}");
    // A choice, the vLLM way.
    let r = post(
        s.srv.addr,
        CHAT,
        &ask(s, json!({"guided_choice": ["sunny", "rainy"]})),
    );
    let v = r.json();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text == "sunny" || text == "rainy", "{v}");
}

/// The greedy first token after `prompt`, from the engine itself.
fn greedy_first(s: &Server, prompt: &str) -> u32 {
    let mut req = Request::new(Prompt::Text(prompt.into()));
    req.max_tokens = 1;
    req.sampling.temperature = 0.0;
    s.engine.submit(req).unwrap().wait().unwrap().output_ids[0]
}

#[test]
fn logit_bias_bans_and_forces_tokens() {
    let (s, _guard) = smol();
    let prompt = "The capital of France is";
    let tok = s.engine.tokenizer().unwrap();
    let greedy = greedy_first(s, prompt);
    let first = |bias: Value| {
        let r = post(
            s.srv.addr,
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 1, "temperature": 0, "logit_bias": bias}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let plain = first(json!({}));
    assert_eq!(plain, tok.decode(&[greedy]).unwrap());
    let banned = first(json!({ greedy.to_string(): -100 }));
    assert_ne!(banned, plain, "-100 on the greedy token must change it");
    let forced_id = tok.encode(" banana").unwrap()[0];
    let forced = first(json!({ forced_id.to_string(): 100 }));
    assert_eq!(forced, tok.decode(&[forced_id]).unwrap());
}

#[test]
fn reasoning_is_split_from_the_answer() {
    let (s, _guard) = smol();
    // A grammar makes the model write a think block, as Qwen3 or DeepSeek-R1 would.
    let lark = r#"start: "<think>" "The user says hi." "</think>" "Hello!""#;
    let req = ask(s, json!({"grammar": lark, "max_tokens": 40}));
    let r = post(s.srv.addr, CHAT, &req);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let m = &v["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], "The user says hi.", "{v}");
    assert_eq!(m["content"], "Hello!", "{v}");
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let ch = chunks(&post(s.srv.addr, CHAT, &sreq));
    let join = |k: &str| -> String {
        ch.iter()
            .filter_map(|c| c["choices"][0]["delta"][k].as_str())
            .collect()
    };
    assert_eq!(join("reasoning_content"), "The user says hi.");
    assert_eq!(join("content"), "Hello!");
}

#[test]
fn a_queued_stream_gets_its_role_chunk_and_keep_alives_at_once() {
    // One running slot: the second request waits in the queue behind a long first one.
    let s = start(smollm2_path(), 1, 4, |_| {});
    let a = s.srv.addr;
    let long = std::thread::spawn(move || {
        post(
            a,
            "/v1/completions",
            &json!({"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true,
                    "temperature": 0}),
        )
    });
    let busy = common::server::wait_until(Duration::from_secs(60), || {
        s.engine.stats().requests_running == 1
    });
    assert!(busy, "the long request never started");
    let start_at = std::time::Instant::now();
    let mut c = common::server::connect(a);
    let body = ask(&s, json!({"stream": true, "max_tokens": 2})).to_string();
    common::server::send_request(&mut c, "POST", CHAT, &[], &body);
    let (status, head) = common::server::read_head(&mut c);
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("chunked"), "{head}");
    // The first frame comes while the request still waits for a slot.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("\n\n") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first frame");
        raw.extend_from_slice(&buf[..n]);
    }
    let queued = s.engine.stats().requests_waiting == 1;
    c.read_to_end(&mut raw).unwrap();
    let waited = start_at.elapsed();
    let body = String::from_utf8(common::server::dechunk(&raw)).unwrap();
    let first = body.split("\n\n").next().unwrap();
    let first: Value = serde_json::from_str(first.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["choices"][0]["delta"]["content"], "");
    assert!(
        queued || long.is_finished(),
        "the role chunk came only after the queue"
    );
    if waited > Duration::from_secs(6) {
        assert!(body.contains(": keep-alive\n\n"), "{waited:?}: {body}");
    } else {
        eprintln!("the queued request waited only {waited:?}; keep-alives not checked");
    }
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(long.join().unwrap().status, 200);
}
