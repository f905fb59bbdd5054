//! `wllm serve` for the server tests (tests/server.rs, tests/server_limits.rs): servers on an
//! ephemeral loopback port over the tiny random-weight model or SmolLM2, and a minimal
//! HTTP/1.1 client over std's TcpStream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use wllm::engine::{Engine, EngineConfig};
use wllm::server::{RunningServer, ServerOptions, spawn};

use super::{fixtures, gpu, smollm2_path};

pub const TIMEOUT: Duration = Duration::from_secs(120);

pub struct Server {
    pub engine: Arc<Engine>,
    pub srv: RunningServer,
    pub name: String,
}

pub fn start(
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

pub fn tiny(max_seqs: usize, max_waiting: usize, key: Option<&str>) -> Server {
    tiny_with(max_seqs, max_waiting, |o| {
        o.api_key = key.map(str::to_string)
    })
}

pub fn tiny_with(
    max_seqs: usize,
    max_waiting: usize,
    set: impl FnOnce(&mut ServerOptions),
) -> Server {
    start(
        fixtures().join("tiny-llama-gqa-public"),
        max_seqs,
        max_waiting,
        set,
    )
}

/// One SmolLM2 server shared by the tests that need a real tokenizer and chat template; the
/// guard runs those tests one at a time (they wait for the engine to go idle).
pub fn smol() -> (&'static Server, MutexGuard<'static, ()>) {
    static S: OnceLock<Server> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    (
        S.get_or_init(|| start(smollm2_path(), 16, 64, |_| {})),
        guard,
    )
}

pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` payloads of a Server-Sent Events body.
    pub fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|f| f.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

pub fn send_request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) {
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
pub fn dechunk(raw: &[u8]) -> Vec<u8> {
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

pub fn request(
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
pub fn read_head(s: &mut TcpStream) -> (u16, String) {
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
pub fn read_response(s: &mut TcpStream) -> Resp {
    let (status, head) = read_head(s);
    read_body(s, status, head)
}

/// The body after a head [`read_head`] read.
pub fn read_body(s: &mut TcpStream, status: u16, head: String) -> Resp {
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

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(addr, "POST", path, &[], &body.to_string())
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], "")
}

pub fn assert_error(r: &Resp, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    let e = &v["error"];
    let msg = e["message"].as_str().expect("error.message");
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

/// Polls until the engine holds no blocks and runs nothing (bounded).
pub fn wait_idle(e: &Engine, within: Duration) -> bool {
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

pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Reads the stream on `c` until what came so far (as text) is `enough`; fails the test when
/// the server closes first or [`TIMEOUT`] passes.
pub fn read_until(c: &mut TcpStream, enough: impl Fn(&str) -> bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + TIMEOUT;
    while !enough(&String::from_utf8_lossy(&seen)) {
        assert!(Instant::now() < deadline, "no delta in time");
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Hangs up on a stream the engine is generating for (its delta was read) and fails the test
/// unless the request's KV blocks are freed.
pub fn hang_up_frees_blocks(e: &Engine, c: TcpStream) {
    // Stats are published after each step: wait (bounded) for the step that sent the delta.
    assert!(wait_until(Duration::from_secs(30), || e
        .stats()
        .blocks_used
        > 0));
    let t = Instant::now();
    drop(c);
    assert!(
        wait_idle(e, Duration::from_secs(30)),
        "blocks still held: {:?}",
        e.stats()
    );
    eprintln!("freed {:?} after the disconnect", t.elapsed());
}
