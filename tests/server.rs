//! `wllm serve` end to end: the OpenAI-compatible server on an ephemeral loopback port, driven
//! by a minimal HTTP/1.1 client over std's TcpStream. The tiny random-weight model (token-id
//! prompts, no tokenizer) covers shapes, errors, auth, the queue cap and metrics; SmolLM2 covers
//! chat, streaming equality and disconnects.
#![cfg(feature = "server")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::{fixtures, gpu, smollm2_path};
use serde_json::{Value, json};
use wllm::engine::{Engine, EngineConfig};
use wllm::server::{RunningServer, ServerOptions, spawn};

const TIMEOUT: Duration = Duration::from_secs(120);

struct Server {
    engine: Arc<Engine>,
    srv: RunningServer,
    name: String,
}

fn start(
    path: std::path::PathBuf,
    max_seqs: usize,
    max_waiting: usize,
    set: impl FnOnce(&mut ServerOptions),
) -> Server {
    let mut cfg = EngineConfig::new(&path);
    cfg.model.max_seqs = max_seqs;
    cfg.max_waiting = max_waiting;
    let engine = Arc::new(Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap());
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut opts = ServerOptions::new(name.clone());
    set(&mut opts);
    let srv = spawn(engine.clone(), opts, "127.0.0.1:0").unwrap();
    Server { engine, srv, name }
}

fn tiny(max_seqs: usize, max_waiting: usize, key: Option<&str>) -> Server {
    tiny_with(max_seqs, max_waiting, |o| {
        o.api_key = key.map(str::to_string)
    })
}

fn tiny_with(max_seqs: usize, max_waiting: usize, set: impl FnOnce(&mut ServerOptions)) -> Server {
    start(
        fixtures().join("tiny-llama-gqa-public"),
        max_seqs,
        max_waiting,
        set,
    )
}

/// One SmolLM2 server shared by the tests that need a real tokenizer and chat template; the
/// guard runs those tests one at a time (they wait for the engine to go idle).
fn smol() -> (&'static Server, MutexGuard<'static, ()>) {
    static S: OnceLock<Server> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    (
        S.get_or_init(|| start(smollm2_path(), 16, 64, |_| {})),
        guard,
    )
}

struct Resp {
    status: u16,
    headers: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` payloads of a Server-Sent Events body.
    fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|f| f.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn send_request(s: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
}

/// Decodes `Transfer-Encoding: chunked`.
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut r = BufReader::new(raw);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            return out;
        }
        let n = usize::from_str_radix(line.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        let mut buf = vec![0; n + 2];
        r.read_exact(&mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut s = connect(addr);
    send_request(&mut s, method, path, headers, body);
    read_response(&mut s)
}

/// Reads a response head (byte by byte, leaving the body unread): the status and the head.
fn read_head(s: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert!(
            n == 1,
            "closed inside the head: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw[..raw.len() - 4]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head)
}

/// Reads one response: the head, then a `Content-Length` body, or a chunked one, or up to the
/// end of the connection (which is left open after a sized body, for keep-alive tests).
fn read_response(s: &mut TcpStream) -> Resp {
    let (status, head) = read_head(s);
    read_body(s, status, head)
}

/// The body after a head [`read_head`] read.
fn read_body(s: &mut TcpStream, status: u16, head: String) -> Resp {
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let body = match length {
        Some(n) => {
            let mut b = vec![0; n];
            s.read_exact(&mut b).unwrap();
            b
        }
        None => {
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            if lower.contains("transfer-encoding: chunked") {
                dechunk(&rest)
            } else {
                rest
            }
        }
    };
    Resp {
        status,
        headers: head,
        body: String::from_utf8(body).unwrap(),
    }
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(addr, "POST", path, &[], &body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], "")
}

fn assert_error(r: &Resp, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    let e = &v["error"];
    let msg = e["message"].as_str().expect("error.message");
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

/// Polls until the engine holds no blocks and runs nothing (bounded).
fn wait_idle(e: &Engine, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let s = e.stats();
        if s.blocks_used == 0 && s.requests_running == 0 && s.requests_waiting == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

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
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + TIMEOUT;
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"") || {
        let t = String::from_utf8_lossy(&seen);
        t.matches("data: ").count() < 2
    } {
        assert!(Instant::now() < deadline, "no delta in time");
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // Stats are published after each step: wait (bounded) for the step that sent the delta.
    assert!(wait_until(Duration::from_secs(30), || s
        .engine
        .stats()
        .blocks_used
        > 0));
    let t = Instant::now();
    drop(c);
    assert!(
        wait_idle(&s.engine, Duration::from_secs(30)),
        "blocks still held: {:?}",
        s.engine.stats()
    );
    eprintln!("freed {:?} after the disconnect", t.elapsed());
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
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
        ),
        ("tool_choice", json!("required")),
        ("response_format", json!({"type": "json_object"})),
        ("guided_choice", json!(["yes", "no"])),
        ("guided_json", json!({"type": "object"})),
        ("guided_regex", json!("[0-9]+")),
        ("guided_grammar", json!("root ::= \"a\"")),
        ("structured_outputs", json!({"choice": ["a"]})),
        ("grammar", json!("root ::= \"a\"")),
        ("json_schema", json!({"type": "object"})),
        ("logit_bias", json!({"5": 100})),
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
