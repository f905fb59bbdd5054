//! `POST /v1/responses` end to end on SmolLM2: the Response object, the typed Server-Sent
//! Events of a streamed response, greedy answers equal to `/v1/chat/completions` for the same
//! messages, refusals naming the field, and the official `openai` Python client
//! (`client.responses.create`, plain and streamed; installed into a virtualenv under the target
//! directory by tests/common/python.rs).
#![cfg(feature = "server")]

mod common;

use common::python::{openai_venv, run_script};
use common::server::{
    Resp, Server, assert_error, connect, hang_up_frees_blocks, post, read_until, send_request, smol,
};
use serde_json::{Value, json};

const QUESTION: &str = "What is the capital of France?";
const SYSTEM: &str = "You are a helpful assistant.";

/// The greedy chat answer for `messages`, and its finish reason.
fn chat(s: &Server, messages: Value, max_tokens: u64) -> (String, String) {
    let r = post(
        s.srv.addr,
        "/v1/chat/completions",
        &json!({"model": s.name, "messages": messages, "max_tokens": max_tokens, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let c = &v["choices"][0];
    (
        c["message"]["content"].as_str().unwrap().to_string(),
        c["finish_reason"].as_str().unwrap().to_string(),
    )
}

fn respond(s: &Server, req: Value) -> Value {
    let r = post(s.srv.addr, "/v1/responses", &req);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The text of a Response object's one message.
fn output_text(v: &Value) -> String {
    let out = v["output"].as_array().expect("output");
    assert_eq!(out.len(), 1, "{v}");
    let m = &out[0];
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert!(m["id"].as_str().unwrap().starts_with("msg_"), "{m}");
    let part = &m["content"][0];
    assert_eq!(part["type"], "output_text");
    assert_eq!(part["annotations"], json!([]));
    part["text"].as_str().unwrap().to_string()
}

/// A streamed response's events: (the `event:` name, the `data:` object).
fn events(r: &Resp) -> Vec<(String, Value)> {
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{}",
        r.headers
    );
    r.body
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            let (name, data) = f
                .strip_prefix("event: ")
                .and_then(|f| f.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not an event frame: {f:?}"));
            (name.to_string(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// Checks a streamed response's order and numbering; returns its deltas joined, the final
/// Response object and its closing event's name.
fn check_stream(evs: &[(String, Value)]) -> (String, Value, String) {
    for (i, (name, data)) in evs.iter().enumerate() {
        assert_eq!(data["type"], name.as_str(), "{data}");
        assert_eq!(data["sequence_number"], i, "{data}");
    }
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    let n = names.len();
    assert!(n >= 8, "{names:?}");
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        names[n - 4..n - 1],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done"
        ]
    );
    assert!(
        names[4..n - 4]
            .iter()
            .all(|e| *e == "response.output_text.delta"),
        "{names:?}"
    );
    let created = &evs[0].1["response"];
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    let item_id = evs[2].1["item"]["id"].as_str().unwrap().to_string();
    let mut deltas = String::new();
    for (_, d) in &evs[4..n - 4] {
        assert_eq!(d["item_id"], item_id.as_str());
        assert_eq!(d["output_index"], 0);
        assert_eq!(d["content_index"], 0);
        deltas.push_str(d["delta"].as_str().unwrap());
    }
    let done = &evs[n - 4].1;
    assert_eq!(done["text"], deltas.as_str(), "{done}");
    assert_eq!(done["item_id"], item_id.as_str());
    assert_eq!(evs[n - 3].1["part"]["text"], deltas.as_str());
    assert_eq!(evs[n - 2].1["item"]["content"][0]["text"], deltas.as_str());
    let last = &evs[n - 1];
    let resp = last.1["response"].clone();
    assert_eq!(resp["id"], created["id"]);
    assert_eq!(output_text(&resp), deltas);
    assert_eq!(resp["output"][0]["id"], item_id.as_str());
    (deltas, resp, last.0.clone())
}

#[test]
fn string_input_answers_a_response_object_like_chat() {
    let (s, _guard) = smol();
    let v = respond(
        s,
        json!({"model": s.name, "input": QUESTION, "max_output_tokens": 12, "temperature": 0,
               "metadata": {"k": "v"}, "store": false, "user": "u", "truncation": "disabled",
               "parallel_tool_calls": true, "text": {"format": {"type": "text"}},
               "tools": [], "some_extra": 1}),
    );
    assert!(v["id"].as_str().unwrap().starts_with("resp_"), "{v}");
    assert_eq!(v["object"], "response");
    assert!(v["created_at"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(v["model"], s.name.as_str());
    assert_eq!(v["error"], Value::Null);
    assert_eq!(v["metadata"], json!({"k": "v"}));
    assert_eq!(v["instructions"], Value::Null);
    assert_eq!(v["tools"], json!([]));
    assert_eq!(v["tool_choice"], "auto");
    assert_eq!(v["parallel_tool_calls"], true);
    assert_eq!(v["temperature"], 0.0);
    assert_eq!(v["top_p"], 1.0);
    assert_eq!(v["max_output_tokens"], 12);
    let text = output_text(&v);
    assert!(text.contains("Paris"), "{v}");

    let (chat_text, reason) = chat(s, json!([{"role": "user", "content": QUESTION}]), 12);
    assert_eq!(text, chat_text);
    let (status, msg_status, details) = if reason == "stop" {
        ("completed", "completed", Value::Null)
    } else {
        (
            "incomplete",
            "incomplete",
            json!({"reason": "max_output_tokens"}),
        )
    };
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["output"][0]["status"], msg_status, "{v}");
    assert_eq!(v["incomplete_details"], details);

    let u = &v["usage"];
    let input = u["input_tokens"].as_u64().unwrap();
    let output = u["output_tokens"].as_u64().unwrap();
    assert!(input > 5, "{u}");
    assert!((1..=12).contains(&output), "{u}");
    assert_eq!(u["total_tokens"].as_u64(), Some(input + output));
    assert!(u["input_tokens_details"]["cached_tokens"].is_u64(), "{u}");
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 0);
}

#[test]
fn message_items_with_instructions_answer_like_chat_and_stream_the_same() {
    let (s, _guard) = smol();
    let input = json!([
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": QUESTION}]}
    ]);
    let req = json!({"model": s.name, "input": input, "instructions": SYSTEM,
                     "max_output_tokens": 24, "temperature": 0});
    let v = respond(s, req.clone());
    assert_eq!(v["instructions"], SYSTEM);
    let text = output_text(&v);
    let (chat_text, reason) = chat(
        s,
        json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]),
        24,
    );
    assert_eq!(text, chat_text);
    // `developer` is the system role under its newer name; plain content strings work too.
    let same = respond(
        s,
        json!({"model": s.name, "max_output_tokens": 24, "temperature": 0,
               "input": [{"role": "developer", "content": SYSTEM},
                         {"role": "user", "content": QUESTION}]}),
    );
    assert_eq!(output_text(&same), text);

    let mut req = req;
    req["stream"] = json!(true);
    let r = post(s.srv.addr, "/v1/responses", &req);
    let evs = events(&r);
    let (deltas, resp, last) = check_stream(&evs);
    assert_eq!(deltas, text);
    let (status, closing) = if reason == "stop" {
        ("completed", "response.completed")
    } else {
        ("incomplete", "response.incomplete")
    };
    assert_eq!(last, closing);
    assert_eq!(resp["status"], status);
    assert_eq!(resp["usage"]["output_tokens"], v["usage"]["output_tokens"]);
    assert_eq!(resp["usage"]["input_tokens"], v["usage"]["input_tokens"]);
}

#[test]
fn max_output_tokens_cut_is_incomplete() {
    let (s, _guard) = smol();
    let req = json!({"model": s.name, "input": "Tell me a long story about a dragon.",
                     "max_output_tokens": 3, "temperature": 0});
    let v = respond(s, req.clone());
    assert_eq!(v["status"], "incomplete", "{v}");
    assert_eq!(
        v["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(v["output"][0]["status"], "incomplete");
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert!(v.get("completed_at").is_none_or(Value::is_null), "{v}");

    let mut req = req;
    req["stream"] = json!(true);
    let evs = events(&post(s.srv.addr, "/v1/responses", &req));
    let (deltas, resp, last) = check_stream(&evs);
    assert_eq!(last, "response.incomplete");
    assert_eq!(deltas, output_text(&v));
    assert_eq!(resp["status"], "incomplete");
    assert_eq!(resp["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(resp["usage"]["output_tokens"], 3);
}

#[test]
fn text_format_json_schema_constrains_like_chat_response_format() {
    let (s, _guard) = smol();
    let schema = json!({
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "London", "Tokyo"]}},
        "required": ["city"],
        "additionalProperties": false
    });
    let format = json!({"type": "json_schema", "name": "answer", "schema": schema, "strict": true});
    let v = respond(
        s,
        json!({"model": s.name, "input": QUESTION, "max_output_tokens": 24, "temperature": 0,
               "text": {"format": format}}),
    );
    assert_eq!(v["text"]["format"], format);
    let text = output_text(&v);
    let r = post(
        s.srv.addr,
        "/v1/chat/completions",
        &json!({"model": s.name, "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": 24, "temperature": 0,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "answer", "schema": schema, "strict": true}}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(text, r.json()["choices"][0]["message"]["content"], "{v}");
    if v["status"] == "completed" {
        let parsed: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(parsed["city"].is_string(), "{parsed}");
    }
    let r = post(
        s.srv.addr,
        "/v1/responses",
        &json!({"input": "hi", "text": {"format": format},
                "response_format": {"type": "json_object"}}),
    );
    assert_error(&r, 400, "send one");
    assert_eq!(r.json()["error"]["param"], "text.format");
}

#[test]
fn unsupported_or_bad_fields_are_refused_naming_them() {
    let (s, _guard) = smol();
    let ok = json!({"model": s.name, "input": "hi", "max_output_tokens": 2});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"tools": [{"type": "function", "name": "f", "parameters": {}}]}),
            "tools",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (json!({"conversation": "conv_1"}), "conversation"),
        (json!({"reasoning": {"effort": "high"}}), "reasoning"),
        (json!({"reasoning": {"summary": "auto"}}), "reasoning"),
        (json!({"background": true}), "background"),
        (json!({"text": {"format": {"type": "xml"}}}), "text.format"),
        (json!({"text": {"format": "json"}}), "text.format"),
        (
            json!({"text": {"format": {"type": "json_schema", "name": "x"}}}),
            "text.format",
        ),
        (json!({"text": {"verbosity": "high"}}), "text.verbosity"),
        (
            json!({"include": ["message.output_text.logprobs"]}),
            "include",
        ),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (json!({"max_output_tokens": 0}), "max_output_tokens"),
        (json!({"max_output_tokens": "8"}), "max_output_tokens"),
        (json!({"max_output_tokens": 1_000_000}), "max_output_tokens"),
        (json!({"max_tokens": 8}), "max_tokens"),
        (json!({"n": 2}), "n"),
        (json!({"temperature": 5}), "temperature"),
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"stream": "yes"}), "stream"),
        (json!({"instructions": 3}), "instructions"),
        (json!({"min_tokens": 5}), "min_tokens"),
        (
            json!({"chat_template_kwargs": {"enable_thinking": true}}),
            "chat_template_kwargs",
        ),
        (json!({"input": null}), "input"),
        (json!({"input": []}), "input"),
        (json!({"input": 7}), "input"),
        (
            json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}),
            "input",
        ),
        (
            json!({"input": [{"role": "tool", "content": "x"}]}),
            "input",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            "input",
        ),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
            "input",
        ),
        (json!({"input": [{"role": "user", "content": 5}]}), "input"),
        (json!({"input": ["hi"]}), "input"),
    ];
    for (patch, param) in cases {
        let mut req = ok.clone();
        for (k, v) in patch.as_object().unwrap() {
            req[k] = v.clone();
        }
        let r = post(s.srv.addr, "/v1/responses", &req);
        assert_eq!(r.status, 400, "{req} -> {}", r.body);
        assert_error(&r, 400, "");
        assert_eq!(r.json()["error"]["param"], param, "{req} -> {}", r.body);
    }
    let r = post(
        s.srv.addr,
        "/v1/responses",
        &json!({"model": "other", "input": "hi"}),
    );
    assert_error(&r, 404, "other");
    let r = common::server::request(s.srv.addr, "POST", "/v1/responses", &[], "{not json");
    assert_error(&r, 400, "JSON");
    // Fields that ask for nothing pass.
    let mut req = ok.clone();
    for (k, v) in [
        ("reasoning", json!({"effort": null})),
        ("tool_choice", json!("none")),
        ("background", json!(false)),
        ("include", json!([])),
        ("previous_response_id", Value::Null),
        ("n", json!(1)),
        ("top_logprobs", json!(0)),
    ] {
        req[k] = v;
    }
    let v = respond(s, req);
    assert_eq!(v["tool_choice"], "none");
}

#[test]
fn disconnecting_stream_frees_its_blocks() {
    let (s, _guard) = smol();
    // Long enough that running to the end would take minutes on lavapipe.
    let req = json!({"input": "Tell me a long story.", "max_output_tokens": 400,
                     "ignore_eos": true, "temperature": 0, "stream": true});
    let mut c = connect(s.srv.addr);
    send_request(&mut c, "POST", "/v1/responses", &[], &req.to_string());
    read_until(&mut c, |t| t.contains("response.output_text.delta"));
    hang_up_frees_blocks(&s.engine, c);
}

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="test-key")
model, question, system = sys.argv[2], sys.argv[3], sys.argv[4]
resp = client.responses.create(model=model, input=question, max_output_tokens=8, temperature=0)
types, deltas, final = [], [], None
stream = client.responses.create(
    model=model, instructions=system, max_output_tokens=24, temperature=0, stream=True,
    input=[{"role": "user", "content": [{"type": "input_text", "text": question}]}])
for ev in stream:
    types.append(ev.type)
    if ev.type == "response.output_text.delta":
        deltas.append(ev.delta)
    if ev.type in ("response.completed", "response.incomplete"):
        final = ev.response
print(json.dumps({
    "text": resp.output_text, "status": resp.status, "id": resp.id,
    "output_tokens": resp.usage.output_tokens,
    "types": types, "streamed": "".join(deltas),
    "final_text": final.output_text, "final_status": final.status,
}))
"#;

#[test]
fn official_openai_python_client_creates_and_streams_responses() {
    let py = openai_venv();
    let (s, _guard) = smol();
    let v = run_script(
        &py,
        SCRIPT,
        &[
            &format!("http://{}/v1", s.srv.addr),
            &s.name,
            QUESTION,
            SYSTEM,
        ],
    );
    let text = v["text"].as_str().unwrap();
    assert!(!text.is_empty(), "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    let (chat_text, reason) = chat(s, json!([{"role": "user", "content": QUESTION}]), 8);
    assert_eq!(text, chat_text, "{v}");
    assert_eq!(
        v["status"],
        if reason == "stop" {
            "completed"
        } else {
            "incomplete"
        }
    );

    let (chat_text, reason) = chat(
        s,
        json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]),
        24,
    );
    assert_eq!(v["streamed"], chat_text.as_str(), "{v}");
    assert_eq!(v["final_text"], chat_text.as_str(), "{v}");
    let types: Vec<&str> = v["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(types[0], "response.created");
    assert!(types.contains(&"response.output_text.delta"), "{types:?}");
    let closing = if reason == "stop" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    assert_eq!(types.last(), Some(&closing), "{types:?}");
}
