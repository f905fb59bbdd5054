//! `wllm serve` end to end: the OpenAI-compatible server on an ephemeral loopback port, driven
//! by a minimal HTTP/1.1 client over std's TcpStream (tests/common/server.rs). The tiny
//! random-weight model (token-id prompts, no tokenizer) covers shapes, request errors, the
//! queue cap, admission and metrics; SmolLM2 covers chat, streaming equality and disconnects.
//! The limits, timeouts and auth are in tests/server_limits.rs.
#![cfg(feature = "server")]

mod common;

use std::time::{Duration, Instant};

use common::server::{
    Resp, Server, TIMEOUT, assert_error, connect, get, hang_up_frees_blocks, post, read_body,
    read_head, read_until, request, send_request, smol, tiny, wait_idle, wait_until,
};
use serde_json::{Value, json};

#[test]
fn completions_with_token_ids_json_and_stream() {
    let s = tiny(8, 64, None);
    let a = s.srv.addr;
    let r = post(
        a,
        "/v1/completions",
        &json!({"model": s.name, "prompt": [1, 2, 3], "max_tokens": 5, "temperature": 0, "user": "x", "some_extra": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["model"], s.name.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );

    // Streaming: one chunk per token (no tokenizer), a final one with the reason, usage, [DONE].
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": [1, 2, 3], "max_tokens": 4, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.contains("text/event-stream"), "{}", r.headers);
    let ev = r.events();
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["usage"]["total_tokens"], 7);
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], "length");
    assert!(
        chunks[..chunks.len() - 2]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(chunks.len() - 2, 4, "{ev:?}");

    // n choices, seeded: seeds seed+i; token counts add up.
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": [5, 6], "max_tokens": 3, "n": 3, "seed": 11, "temperature": 0.9, "echo": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let idx: Vec<_> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].clone())
        .collect();
    assert_eq!(idx, vec![json!(0), json!(1), json!(2)]);
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    assert_eq!(v["usage"]["completion_tokens"], 9);
    assert!(wait_idle(&s.engine, Duration::from_secs(20)));
}

#[test]
fn errors_have_openai_shape_and_status() {
    let s = tiny(8, 64, None);
    let a = s.srv.addr;
    let c = "/v1/completions";
    let r = request(a, "POST", c, &[], "{\"prompt\": [1, 2");
    assert_error(&r, 400, "not valid JSON");
    let r = request(a, "POST", "/v1/chat/completions", &[], "[1]");
    assert_error(&r, 400, "JSON object");
    let r = post(a, c, &json!({"prompt": [1], "max_tokens": -1}));
    assert_error(&r, 400, "max_tokens");
    assert_eq!(r.json()["error"]["param"], "max_tokens");
    let r = post(a, c, &json!({"prompt": [1], "max_tokens": "many"}));
    assert_error(&r, 400, "invalid");
    let r = post(a, c, &json!({"prompt": [1], "temperature": -0.5}));
    assert_error(&r, 400, "temperature");
    let r = post(a, c, &json!({"prompt": [1], "n": 0}));
    assert_error(&r, 400, "n must be");
    let r = post(a, c, &json!({"prompt": [1], "top_p": 0}));
    assert_error(&r, 400, "top_p");
    let r = post(
        a,
        c,
        &json!({"prompt": [1], "stop": ["a", "b", "c", "d", "e"]}),
    );
    assert_error(&r, 400, "stop");
    let r = post(a, c, &json!({"prompt": [1], "stop": 3}));
    assert_error(&r, 400, "stop");
    let r = post(a, c, &json!({"prompt": [1], "logprobs": 50}));
    assert_error(&r, 400, "logprobs must be");
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}),
    );
    assert_error(&r, 400, "top_logprobs needs logprobs");
    let r = post(a, c, &json!({"prompt": {"x": 1}}));
    assert_error(&r, 400, "prompt");
    let r = post(a, c, &json!({"prompt": [1], "cache": "forever"}));
    assert_error(&r, 400, "cache must be");
    assert_eq!(r.json()["error"]["param"], "cache");
    // Accepted (this server has no disk tier: nothing is kept, nothing fails).
    let r = post(
        a,
        c,
        &json!({"prompt": [1, 2], "max_tokens": 1, "cache": "persist"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(a, c, &json!({"prompt": [1, 99999]}));
    assert_error(&r, 400, "vocabulary");
    // The tiny model's context is 512 tokens.
    let r = post(a, c, &json!({"prompt": [1, 2, 3], "max_tokens": 600}));
    assert_error(&r, 400, "maximum context length is 512");
    let r = post(a, c, &json!({"prompt": vec![1; 600], "max_tokens": 1}));
    assert_error(&r, 400, "512");
    // No tokenizer: text prompts cannot run.
    let r = post(a, c, &json!({"prompt": "hello"}));
    assert_error(&r, 400, "tokenizer");
    let r = post(a, c, &json!({"model": "gpt-4", "prompt": [1]}));
    assert_error(&r, 404, "gpt-4");
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = get(a, "/v1/nothing");
    assert_error(&r, 404, "route");
    // The listing, health.
    let v = get(a, "/v1/models").json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], s.name.as_str());
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(get(a, "/health").status, 200);
}

#[test]
fn full_queue_answers_429_at_once_and_metrics_have_stable_names() {
    // One running sequence at a time and one waiting: a third request is refused.
    let s = tiny(1, 1, None);
    let a = s.srv.addr;
    let long = json!({"prompt": [1, 2, 3], "max_tokens": 500, "stream": true}).to_string();
    let mut first = connect(a);
    send_request(&mut first, "POST", "/v1/completions", &[], &long);
    assert!(wait_until(TIMEOUT, || s.engine.stats().requests_running == 1));
    let mut second = connect(a);
    send_request(&mut second, "POST", "/v1/completions", &[], &long);
    assert!(wait_until(TIMEOUT, || s.engine.stats().requests_waiting == 1));
    let t = Instant::now();
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": [4, 5], "max_tokens": 5}),
    );
    assert_error(&r, 429, "queue is full");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "429 took {:?}",
        t.elapsed()
    );
    // Both clients go away: their requests are aborted and every block comes back.
    drop(first);
    drop(second);
    assert!(
        wait_idle(&s.engine, Duration::from_secs(30)),
        "{:?}",
        s.engine.stats()
    );

    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": [4, 5], "max_tokens": 3}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let m = get(a, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.headers.contains("text/plain"));
    for name in [
        "wllm_kv_blocks_used ",
        "wllm_kv_blocks_total ",
        "wllm_requests_waiting ",
        "wllm_requests_running ",
        "wllm_preemptions_total ",
        "wllm_prompt_tokens_total ",
        "wllm_generation_tokens_total ",
        "wllm_prefix_cache_hit_tokens_total ",
        "wllm_prefix_cache_query_tokens_total ",
        "# TYPE wllm_time_to_first_token_seconds histogram",
        "wllm_time_to_first_token_seconds_bucket{le=\"+Inf\"} ",
        "wllm_time_to_first_token_seconds_count ",
        "wllm_inter_token_latency_seconds_count ",
        "wllm_http_requests_total{status=\"429\"} 1",
        "wllm_kv_tier_hit_tokens_total{tier=\"host\"} ",
        "wllm_kv_tier_blocks_total{tier=\"host\",op=\"restore\"} ",
        "wllm_kv_tier_bytes_total{tier=\"disk\",direction=\"in\"} ",
        "wllm_kv_host_tier_blocks{state=\"total\"} ",
        "wllm_http_requests_total{status=\"200\"} ",
    ] {
        assert!(m.body.contains(name), "no {name:?} in\n{}", m.body);
    }
    let value = |n: &str| -> f64 {
        m.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{n} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value("wllm_prompt_tokens_total") >= 8.0);
    assert!(value("wllm_generation_tokens_total") >= 3.0);
    assert!(value("wllm_kv_blocks_total") > 0.0);
}

/// The content of a chat response, or the concatenated deltas of a streamed one.
fn chat(s: &Server, req: &Value) -> (String, Value, Vec<Value>) {
    let r = post(s.srv.addr, "/v1/chat/completions", req);
    assert_eq!(r.status, 200, "{}", r.body);
    if req["stream"] != json!(true) {
        let v = r.json();
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        return (text, v, Vec::new());
    }
    let ev = r.events();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{ev:?}");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (text, Value::Null, chunks)
}

#[test]
fn chat_json_and_stream_agree() {
    let (s, _guard) = smol();
    let messages = json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}
    ]);
    for sampling in [
        json!({"temperature": 0}),
        json!({"temperature": 0.8, "seed": 7}),
    ] {
        let mut req = json!({"model": s.name, "messages": messages, "max_tokens": 6});
        for (k, v) in sampling.as_object().unwrap() {
            req[k] = v.clone();
        }
        let (text, v, _) = chat(s, &req);
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        let reason = v["choices"][0]["finish_reason"].as_str().unwrap();
        assert!(reason == "stop" || reason == "length", "{v}");
        let u = &v["usage"];
        assert!(u["prompt_tokens"].as_u64().unwrap() > 10, "{v}");
        let done = u["completion_tokens"].as_u64().unwrap();
        assert!((1..=6).contains(&done), "{v}");
        assert_eq!(
            u["total_tokens"].as_u64(),
            Some(u["prompt_tokens"].as_u64().unwrap() + done)
        );
        assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());
        assert!(!text.is_empty());

        req["stream"] = json!(true);
        req["stream_options"] = json!({"include_usage": true});
        let (streamed, _, chunks) = chat(s, &req);
        assert_eq!(streamed, text, "{chunks:?}");
        assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let n = chunks.len();
        assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], reason);
        assert_eq!(chunks[n - 1]["choices"], json!([]));
        // Same counts; the streamed request re-sends the same prompt, so its full blocks
        // now come from the prefix cache.
        let su = &chunks[n - 1]["usage"];
        for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(su[k], u[k], "{k}");
        }
        let prompt_tokens = u["prompt_tokens"].as_u64().unwrap();
        let cached = su["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        assert!(
            cached > 0 && cached < prompt_tokens,
            "cached {cached} of {prompt_tokens}"
        );

        // A stop string cut from the greedy answer ends it there, without the stop text.
        if req["temperature"] == json!(0) {
            let word = text.split_whitespace().nth(2).expect("three words");
            let cut = &text[..text.find(word).unwrap()];
            let mut req = req.clone();
            req["stream"] = json!(false);
            req["stop"] = json!([word, "\n\n\n"]);
            let (stopped, v, _) = chat(s, &req);
            assert_eq!(stopped, cut, "{v}");
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
        }
    }
}

#[test]
fn disconnecting_stream_frees_its_blocks() {
    let (s, _guard) = smol();
    // Long enough that running to the end would take minutes on lavapipe.
    let req = json!({"messages": [{"role": "user", "content": "Tell me a long story."}],
                     "max_tokens": 400, "ignore_eos": true, "temperature": 0, "stream": true});
    let mut c = connect(s.srv.addr);
    send_request(
        &mut c,
        "POST",
        "/v1/chat/completions",
        &[],
        &req.to_string(),
    );
    // Read until the first content delta arrives.
    read_until(&mut c, |t| {
        t.contains("\"content\":\"") && t.matches("data: ").count() >= 2
    });
    hang_up_frees_blocks(&s.engine, c);
}

#[test]
fn disconnecting_json_client_aborts_its_request() {
    let (s, _guard) = smol();
    let req = json!({"messages": [{"role": "user", "content": "Write a long poem."}],
                     "max_tokens": 400, "ignore_eos": true, "temperature": 0});
    let mut c = connect(s.srv.addr);
    send_request(
        &mut c,
        "POST",
        "/v1/chat/completions",
        &[],
        &req.to_string(),
    );
    assert!(wait_until(TIMEOUT, || s.engine.stats().blocks_used > 0));
    drop(c);
    assert!(
        wait_idle(&s.engine, Duration::from_secs(30)),
        "blocks still held: {:?}",
        s.engine.stats()
    );
}

#[test]
fn logprobs_for_completions_json_and_stream() {
    let s = tiny(8, 64, None);
    let a = s.srv.addr;
    let req = json!({"prompt": [1, 2, 3], "max_tokens": 3, "logprobs": 2, "temperature": 0});
    let v = post(a, "/v1/completions", &req).json();
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3, "{v}");
    assert!(
        tokens
            .iter()
            .all(|t| t.as_str().unwrap().starts_with("token_id:"))
    );
    let lps = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), 3);
    assert!(lps.iter().all(|x| x.as_f64().unwrap() <= 0.0));
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), 3);
    for (top, chosen) in lp["top_logprobs"].as_array().unwrap().iter().zip(lps) {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 2, "{v}");
        // Greedy: nothing is more likely than the chosen token.
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(chosen.as_f64().unwrap() >= best - 1e-4, "{v}");
    }
    // Streamed: the same tokens, spread over the chunks.
    let mut req = req;
    req["stream"] = json!(true);
    let r = post(a, "/v1/completions", &req);
    let mut streamed = Vec::new();
    for e in r.events() {
        if e == "[DONE]" {
            continue;
        }
        let c: Value = serde_json::from_str(&e).unwrap();
        if let Some(t) = c["choices"][0]["logprobs"]["tokens"].as_array() {
            streamed.extend(t.iter().cloned());
        }
    }
    assert_eq!(&streamed, tokens);
}

#[test]
fn logprobs_for_chat() {
    let (s, _guard) = smol();
    let req = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                     "temperature": 0, "logprobs": true, "top_logprobs": 2});
    let (_, v, _) = chat(s, &req);
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        "{v}"
    );
    for c in content {
        let top = c["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2, "{v}");
        assert!(c["token"].is_string() && c["bytes"].is_array(), "{v}");
        let best = top[0]["logprob"].as_f64().unwrap();
        assert!(c["logprob"].as_f64().unwrap() >= best - 1e-4, "{v}");
    }
}

/// The generated token ids of a completions response, read from `logprobs.tokens`
/// (`token_id:N`: the tiny model has no tokenizer), streamed or not.
fn token_ids(r: &Resp, stream: bool) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.body);
    let mut out = Vec::new();
    let bodies: Vec<String> = if stream {
        r.events().into_iter().filter(|e| e != "[DONE]").collect()
    } else {
        vec![r.body.clone()]
    };
    for b in bodies {
        let v: Value = serde_json::from_str(&b).unwrap();
        if let Some(t) = v["choices"][0]["logprobs"]["tokens"].as_array() {
            out.extend(t.iter().map(|x| x.as_str().unwrap().to_string()));
        }
    }
    out
}

#[test]
fn sixteen_concurrent_streams_match_their_solo_outputs() {
    let s = tiny(16, 64, None);
    let a = s.srv.addr;
    let req = |i: u32, stream: bool| {
        json!({"prompt": [1 + i, 2 * i + 3, 7, i % 5], "max_tokens": 12 + i as usize % 5,
               "temperature": 0, "logprobs": 0, "stream": stream})
    };
    let solo: Vec<Vec<String>> = (0..16)
        .map(|i| token_ids(&post(a, "/v1/completions", &req(i, false)), false))
        .collect();
    let together: Vec<Vec<String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|i| sc.spawn(move || token_ids(&post(a, "/v1/completions", &req(i, true)), true)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, b)) in solo.iter().zip(&together).enumerate() {
        assert_eq!(a.len(), 12 + i % 5);
        assert_eq!(a, b, "request {i}");
    }
    assert!(wait_idle(&s.engine, Duration::from_secs(20)));
}

#[test]
fn requests_are_admitted_while_running_slots_are_free() {
    // 16 running slots and 4 waiting: 12 at once all run, however many the engine has not
    // admitted yet when the next one arrives.
    let s = tiny(16, 4, None);
    let a = s.srv.addr;
    let rs: Vec<Resp> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..12u32)
            .map(|i| {
                sc.spawn(move || {
                    let req =
                        json!({"prompt": [1 + i, 2, 3], "max_tokens": 40, "ignore_eos": true});
                    post(a, "/v1/completions", &req)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &rs {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["usage"]["completion_tokens"], 40);
    }
    assert!(wait_idle(&s.engine, Duration::from_secs(20)));
}

#[test]
fn a_burst_past_the_slots_and_the_queue_gets_exactly_the_overflow_refused() {
    // 4 running slots and 4 waiting; 30 streams of 500 tokens each, which no request finishes
    // during the burst. Each client holds its stream until every client has its status, then
    // hangs up (which aborts its request).
    let s = tiny(4, 4, None);
    let a = s.srv.addr;
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let statuses: Vec<(u16, Option<Resp>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..30u32)
            .map(|i| {
                let answered = &answered;
                sc.spawn(move || {
                    let req = json!({"prompt": [1 + i % 7, 2, 3], "max_tokens": 500,
                                     "ignore_eos": true, "stream": true});
                    let mut c = connect(a);
                    send_request(&mut c, "POST", "/v1/completions", &[], &req.to_string());
                    let (status, head) = read_head(&mut c);
                    let refused = (status != 200).then(|| read_body(&mut c, status, head));
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    wait_until(TIMEOUT, || {
                        answered.load(std::sync::atomic::Ordering::SeqCst) == 30
                    });
                    (status, refused)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(
        ok,
        8,
        "{:?}",
        statuses.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    for (_, r) in statuses.iter().filter(|(s, _)| *s != 200) {
        assert_error(r.as_ref().unwrap(), 429, "queue is full");
    }
    assert!(
        wait_idle(&s.engine, Duration::from_secs(30)),
        "{:?}",
        s.engine.stats()
    );
    // More completions than the engine can ever hold is a bad request, not a busy server.
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": [1, 2], "max_tokens": 1, "n": 9}),
    );
    assert_error(&r, 400, "max_num_seqs 4");
}
