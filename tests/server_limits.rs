//! `wllm serve` hardening, end to end (helpers in tests/common/server.rs): the API key, the
//! header and body timeouts, the connection cap, the body / head / prompt size limits, an
//! OpenAI-shaped JSON error for every refusal, fields that would change the answer refused by
//! name, and big prompts tokenizing off the async workers (SmolLM2).
#![cfg(feature = "server")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::server::{
    assert_error, connect, get, post, read_response, request, smol, tiny, tiny_with,
};
use serde_json::json;

#[test]
fn api_key_is_required_on_v1_routes() {
    let s = tiny(8, 64, Some("sekrit"));
    let a = s.srv.addr;
    let body = json!({"prompt": [1, 2], "max_tokens": 2}).to_string();
    let r = request(a, "POST", "/v1/completions", &[], &body);
    assert_error(&r, 401, "API key");
    let r = request(
        a,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer wrong")],
        &body,
    );
    assert_error(&r, 401, "API key");
    let r = request(a, "GET", "/v1/models", &[], "");
    assert_eq!(r.status, 401);
    let r = request(
        a,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer sekrit")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(
        a,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer sekrit")],
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(a, "/health").status, 200);
}

/// Reads until the server closes the connection (an end of stream or a reset): what arrived.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("{e} (after {:?})", String::from_utf8_lossy(&got)),
        }
    }
}

/// `took` is at least about `t` (the limit held) and not much more (it then ran out).
#[track_caller]
fn assert_about(took: Duration, t: Duration) {
    assert!(
        took >= t.mul_f32(0.8) && took < t + Duration::from_secs(5),
        "{took:?} for a timeout of {t:?}"
    );
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[test]
fn half_sent_heads_and_idle_connections_are_closed_after_the_header_timeout() {
    let t = Duration::from_millis(500);
    let s = tiny_with(2, 4, |o| o.header_timeout = t);
    let a = s.srv.addr;
    // Half a head, then nothing: closed without an answer once the timeout runs out.
    let start = Instant::now();
    let mut half = connect(a);
    half.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Le")
        .unwrap();
    let got = read_until_closed(&mut half);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_about(start.elapsed(), t);
    // A kept-alive connection serves requests inside the timeout, and is closed once it has
    // sat idle that long.
    let mut c = connect(a);
    for _ in 0..2 {
        c.write_all(HEALTH).unwrap();
        assert_eq!(read_response(&mut c).status, 200);
        std::thread::sleep(t / 4);
    }
    let idle = Instant::now() - t / 4;
    assert!(read_until_closed(&mut c).is_empty());
    assert_about(idle.elapsed(), t);
}

#[test]
fn a_slow_body_gets_a_json_408_after_the_body_timeout() {
    let t = Duration::from_millis(500);
    let s = tiny_with(2, 4, |o| o.body_timeout = t);
    let mut c = connect(s.srv.addr);
    c.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"prompt\": [1,",
    )
    .unwrap();
    let start = Instant::now();
    let r = read_response(&mut c);
    assert_about(start.elapsed(), t);
    assert_error(&r, 408, "did not arrive");
}

#[test]
fn connections_over_the_limit_wait_until_half_open_ones_time_out() {
    let t = Duration::from_secs(1);
    let s = tiny_with(2, 4, |o| {
        o.max_connections = 2;
        o.header_timeout = t;
    });
    let a = s.srv.addr;
    let start = Instant::now();
    let mut half_open: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = connect(a);
            c.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
            c
        })
        .collect();
    // Both slots are held: a whole request waits to be accepted until they time out, then is
    // served.
    let r = get(a, "/health");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_about(start.elapsed(), t);
    for c in &mut half_open {
        assert!(read_until_closed(c).is_empty());
    }
}

#[test]
fn long_answers_outlive_the_timeouts() {
    let t = Duration::from_millis(50);
    let s = tiny_with(1, 4, |o| {
        o.header_timeout = t;
        o.body_timeout = t;
    });
    let a = s.srv.addr;
    // One running slot: the second request waits for the first, both well past the timeouts.
    let req = |stream: bool| {
        json!({"prompt": [1, 2, 3], "max_tokens": 500, "ignore_eos": true,
               "stream": stream})
    };
    let start = Instant::now();
    let (streamed, whole) = std::thread::scope(|sc| {
        let st = sc.spawn(|| post(a, "/v1/completions", &req(true)));
        let wh = sc.spawn(|| post(a, "/v1/completions", &req(false)));
        (st.join().unwrap(), wh.join().unwrap())
    });
    let took = start.elapsed();
    assert!(took > 4 * t, "too quick to test the timeouts: {took:?}");
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    assert_eq!(streamed.events().last().map(String::as_str), Some("[DONE]"));
    assert_eq!(whole.status, 200, "{}", whole.body);
    assert_eq!(whole.json()["usage"]["completion_tokens"], 500);
}

#[test]
fn every_error_answer_is_openai_json() {
    let s = tiny_with(2, 4, |o| {
        o.max_body_bytes = 1000;
        o.max_header_bytes = 2048;
    });
    let a = s.srv.addr;
    // A route asked with a method it does not take.
    let r = get(a, "/v1/completions");
    assert_error(&r, 405, "GET is not allowed on /v1/completions");
    assert!(
        r.headers.to_ascii_lowercase().contains("allow: post"),
        "{}",
        r.headers
    );
    assert_error(&request(a, "POST", "/health", &[], ""), 405, "POST");
    assert_error(&request(a, "DELETE", "/v1/models", &[], ""), 405, "DELETE");
    assert_error(&get(a, "/nothing"), 404, "route");
    // A body over the limit, whole, chunked, or only announced: 413.
    let big = json!({"prompt": vec![1; 600]}).to_string();
    assert_error(
        &request(a, "POST", "/v1/completions", &[], &big),
        413,
        "1000 bytes",
    );
    let mut c = connect(a);
    let chunked = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    c.write_all(chunked.as_bytes()).unwrap();
    assert_error(&read_response(&mut c), 413, "1000 bytes");
    let mut c = connect(a);
    c.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999\r\n\r\n",
    )
    .unwrap();
    assert_error(&read_response(&mut c), 413, "1000 bytes");
    // A head over the limit: 431; a request target over it: 414.
    let filler = "a".repeat(3000);
    let r = request(a, "GET", "/health", &[("X-Filler", &filler)], "");
    assert_error(&r, 431, "limit of 2048 bytes");
    assert_error(
        &get(a, &format!("/v1/models?q={filler}")),
        414,
        "2048 bytes",
    );
    // Far over the limit hyper refuses the head itself, before any of it reaches the server's
    // code: still 431, but hyper writes no body.
    let r = request(a, "GET", "/health", &[("X-Filler", &filler.repeat(4))], "");
    assert_eq!(r.status, 431, "{}", r.headers);
    // Nothing above held the server up.
    assert_eq!(get(a, "/health").status, 200);
}

#[test]
fn prompts_over_the_byte_limit_are_refused_before_tokenizing() {
    let s = tiny_with(2, 4, |o| o.max_prompt_bytes = 1000);
    let a = s.srv.addr;
    let r = post(a, "/v1/completions", &json!({"prompt": "x".repeat(1001)}));
    assert_error(&r, 400, "limit of 1000 bytes");
    assert_eq!(r.json()["error"]["param"], "prompt");
    // A chat counts its roles and contents: 4 + 996 bytes is at the limit and goes on to the
    // tokenizer (which this model lacks); one byte more does not.
    let chat = |n: usize| json!({"messages": [{"role": "user", "content": "x".repeat(n)}]});
    assert_error(
        &post(a, "/v1/chat/completions", &chat(996)),
        400,
        "tokenizer",
    );
    let r = post(a, "/v1/chat/completions", &chat(997));
    assert_error(&r, 400, "limit of 1000 bytes");
    assert_eq!(r.json()["error"]["param"], "messages");
}

#[test]
fn health_answers_while_big_prompts_tokenize() {
    let (s, _guard) = smol();
    let a = s.srv.addr;
    // Just under the default prompt limit: slow to tokenize, then too long for the context.
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(22_000);
    let body = json!({"prompt": text, "max_tokens": 1}).to_string();
    let start = Instant::now();
    let (health, bigs) = std::thread::scope(|sc| {
        // As many as the server has async workers: on them, they would stall every request.
        let bigs: Vec<_> = (0..2)
            .map(|_| {
                sc.spawn(|| {
                    let r = request(a, "POST", "/v1/completions", &[], &body);
                    (r, start.elapsed())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let asked = Instant::now();
        assert_eq!(get(a, "/health").status, 200);
        let health = (asked.elapsed(), start.elapsed());
        (
            health,
            bigs.into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>(),
        )
    });
    let first_done = bigs.iter().map(|(_, t)| *t).min().unwrap();
    for (r, _) in &bigs {
        assert_error(r, 400, "maximum context length");
    }
    eprintln!(
        "health in {:?} while the prompts took {first_done:?}",
        health.0
    );
    assert!(
        health.1 < first_done,
        "health came after the prompts: {health:?}"
    );
    assert!(
        health.0 * 4 < first_done,
        "health took {:?} of {first_done:?}",
        health.0
    );
}

#[test]
fn api_key_is_exact_with_any_case_of_scheme_and_guards_metrics() {
    let s = tiny(2, 4, Some("sekrit"));
    let a = s.srv.addr;
    let models =
        |auth: &str| request(a, "GET", "/v1/models", &[("Authorization", auth)], "").status;
    // The scheme in any case, one space, the token exactly. Whitespace after the token is
    // not part of the header value (HTTP strips it), so it cannot count.
    for ok in [
        "Bearer sekrit",
        "bearer sekrit",
        "BEARER sekrit",
        "Bearer sekrit ",
    ] {
        assert_eq!(models(ok), 200, "{ok:?}");
    }
    for bad in [
        "Bearer  sekrit ",
        "Bearer   sekrit",
        "Bearer sekri",
        "Bearer sekritt",
        "Bearer sekrit x",
        "Bearer \tsekrit",
        "Bearer\tsekrit",
        "Bearersekrit",
        "Basic sekrit",
        "sekrit",
        "Bearer",
        "Bearer ",
    ] {
        assert_eq!(models(bad), 401, "{bad:?}");
    }
    // /metrics follows the key; /health stays open.
    assert_error(&get(a, "/metrics"), 401, "API key");
    let m = request(
        a,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer sekrit")],
        "",
    );
    assert_eq!(m.status, 200);
    assert_eq!(get(a, "/health").status, 200);
    // Opening /metrics opens nothing else.
    let open = tiny_with(2, 4, |o| {
        o.api_key = Some("sekrit".into());
        o.metrics_without_key = true;
    });
    assert_eq!(get(open.srv.addr, "/metrics").status, 200);
    assert_eq!(get(open.srv.addr, "/v1/models").status, 401);
}

#[test]
fn fields_that_would_change_the_answer_are_refused_by_name() {
    let s = tiny(2, 4, None);
    let a = s.srv.addr;
    let refused = [
        ("functions", json!([{"name": "f", "parameters": {}}])),
        ("function_call", json!({"name": "f"})),
        // GBNF: grammars are taken in llguidance's Lark syntax only. (Structured output,
        // tools and logit_bias are supported: tests/server_tools.rs.)
        ("guided_grammar", json!("root ::= \"a\"")),
        ("grammar", json!("root ::= \"a\"")),
        ("suffix", json!(" the end")),
        ("best_of", json!(2)),
        ("min_tokens", json!(3)),
        ("stop_token_ids", json!([5])),
        ("allowed_token_ids", json!([1, 2])),
        ("bad_words", json!(["x"])),
        ("use_beam_search", json!(true)),
        ("prompt_logprobs", json!(1)),
    ];
    for (field, value) in refused {
        for (path, mut req) in [
            ("/v1/completions", json!({"prompt": [1, 2]})),
            (
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "hi"}]}),
            ),
        ] {
            req[field] = value.clone();
            let r = post(a, path, &req);
            assert_error(&r, 400, field);
            assert_eq!(r.json()["error"]["param"], field, "{path}: {}", r.body);
        }
    }
    // Values that ask for nothing, informational fields and unknown fields are accepted.
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": [1, 2], "max_tokens": 2, "tools": [], "tool_choice": "none",
                "function_call": "auto", "response_format": {"type": "text"}, "logit_bias": {},
                "suffix": "", "best_of": 1, "guided_json": null, "min_tokens": 0,
                "use_beam_search": false, "user": "u", "metadata": {"k": "v"}, "store": false,
                "parallel_tool_calls": true, "service_tier": "auto", "some_future_field": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
