//! The chat page at `/`: served as HTML with or without an API key and while the model loads,
//! and, in headless Chromium, a question asked through `?q=` streams the same answer the API
//! gives for it.
//!
//! Chromium comes from Debian's `chromium` package (`scripts/install_chromium.sh`, run here when
//! `chromium` is not on PATH; `WLLM_CHROMIUM` names another binary). It is driven over the
//! DevTools protocol, not `--dump-dom`: virtual time does not wait for a streamed fetch, so a
//! dump taken at load shows an empty reply. The WebSocket the protocol needs is the few lines
//! of framing below, over std's TcpStream.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{Server, get, request, start, tiny, wait_idle};
use common::smollm2_path;
use common::temp_dir::TempDir;
use serde_json::{Value, json};

const QUESTION: &str = "What is the capital of France?";
const KEY: &str = "page-test-key";

// ---------------------------------------------------------------------------------------------
// Plain HTTP

fn assert_is_page(r: &common::server::Resp) {
    assert_eq!(r.status, 200, "{}", r.body);
    let head = r.headers.to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{}",
        r.headers
    );
    assert!(head.contains("content-security-policy: default-src 'none'"));
    for needle in [
        "<form id=\"composer\"",
        "<textarea id=\"input\"",
        "id=\"send\"",
        "id=\"stop\"",
        "id=\"new-chat\"",
        "id=\"api-key\"",
        "/v1/chat/completions",
    ] {
        assert!(r.body.contains(needle), "the page lacks {needle:?}");
    }
    // Offline: nothing may come from elsewhere.
    for outside in ["http://", "https://", "//cdn", "@import"] {
        assert!(
            !r.body.contains(outside),
            "the page refers to {outside:?}: it must not need anything outside the server"
        );
    }
}

#[test]
fn root_serves_the_page_with_and_without_an_api_key() {
    let open = tiny(1, 4, None);
    assert_is_page(&get(open.srv.addr, "/"));
    // A query string is the page's own business (`?q=`).
    assert_is_page(&get(open.srv.addr, "/?q=hi&temperature=0"));

    let locked = tiny(1, 4, Some(KEY));
    assert_is_page(&get(locked.srv.addr, "/"));
    // The page needs no key; the API behind it still does.
    assert_eq!(get(locked.srv.addr, "/v1/models").status, 401);
    let auth = format!("Bearer {KEY}");
    let r = request(
        locked.srv.addr,
        "GET",
        "/v1/models",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Only GET (and HEAD) is the page.
    assert_eq!(request(open.srv.addr, "POST", "/", &[], "{}").status, 405);
}

#[test]
fn root_serves_the_page_while_the_model_loads() {
    // Bound here, so the port is known and nobody else can take it before the server runs.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (finish, wait) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let opts = wllm::server::ServerOptions::new("never-loads");
        wllm::server::run_loading_on(opts, listener, || {
            let _ = wait.recv();
            Err::<std::sync::Arc<wllm::Engine>, _>("test over")
        })
    });
    assert!(
        common::server::wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "the loading server did not listen on {addr}"
    );
    assert_is_page(&get(addr, "/"));
    assert_eq!(get(addr, "/health").status, 503);
    let r = get(addr, "/v1/models");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("model_loading"), "{}", r.body);
    finish.send(()).unwrap();
    assert!(matches!(
        server.join().unwrap(),
        Err(wllm::server::ServeError::Load("test over"))
    ));
}

// ---------------------------------------------------------------------------------------------
// Chromium

/// The browser binary, installed with `scripts/install_chromium.sh` when there is none.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("WLLM_CHROMIUM") {
        return PathBuf::from(p);
    }
    let on_path = || {
        Command::new("chromium")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !on_path() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install_chromium.sh");
        let ok = Command::new("bash")
            .arg(&script)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok && on_path(),
            "this test needs Debian's chromium and installing it failed: run `sudo apt-get \
             install -y chromium` (or {}), or set WLLM_CHROMIUM to a Chromium binary",
            script.display()
        );
    }
    PathBuf::from("chromium")
}

/// A headless Chromium with its own profile, killed (and its profile removed) on drop.
struct Browser {
    child: Child,
    dir: TempDir,
    port: u16,
}

impl Browser {
    fn launch() -> Browser {
        let dir = TempDir::new("chromium");
        let log = std::fs::File::create(dir.0.join("stderr.log")).unwrap();
        let profile = dir.0.join("profile");
        let child = Command::new(chromium())
            .args([
                "--headless=new",
                // Containers have no user namespaces for the sandbox, nor a GPU.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                "--window-size=1000,800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromium ({e}): run scripts/install_chromium.sh or set WLLM_CHROMIUM")
            });
        let mut b = Browser {
            child,
            dir,
            port: 0,
        };
        // With port 0 Chromium picks one and writes it to this file in the profile.
        let active = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let port = std::fs::read_to_string(&active)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
            if let Some(port) = port {
                b.port = port;
                return b;
            }
            if let Ok(Some(st)) = b.child.try_wait() {
                panic!("chromium exited ({st}) at start:\n{}", b.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port:\n{}",
                b.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    /// A DevTools session with the blank page Chromium opened.
    fn page(&self) -> Cdp {
        let targets = self.json_list();
        let id = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["id"].as_str())
            .unwrap_or_else(|| panic!("no page target: {targets}"));
        // The listed webSocketDebuggerUrl names the Host header sent, not the port: build it.
        Cdp {
            ws: Ws::connect(&format!("ws://127.0.0.1:{}/devtools/page/{id}", self.port)),
            next_id: 0,
        }
    }

    /// `GET /json/list`. Chromium writes `Content-Length:` without a space and keeps the
    /// connection open, so the shared test client (which reads to the end) cannot be used.
    fn json_list(&self) -> Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let req = format!(
            "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        );
        s.write_all(req.as_bytes()).unwrap();
        let (status, head) = common::server::read_head(&mut s);
        assert_eq!(status, 200, "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no Content-Length in {head}"));
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket client, text messages only: what the DevTools protocol uses.
struct Ws(TcpStream);

impl Ws {
    fn connect(url: &str) -> Ws {
        let rest = url.strip_prefix("ws://").expect("a ws:// url");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut s = TcpStream::connect(host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        // Any 16 bytes in base64 will do as the key: the server's answer is not checked.
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let (status, head) = common::server::read_head(&mut s);
        assert_eq!(status, 101, "{head}");
        Ws(s)
    }

    fn send(&mut self, text: &str) {
        let data = text.as_bytes();
        let mut frame = vec![0x81]; // FIN, text
        // Client frames must be masked (RFC 6455 5.3).
        match data.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 1 << 16 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        frame.extend_from_slice(&mask);
        frame.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame).unwrap();
    }

    /// The next whole text message (fragments joined).
    fn recv(&mut self) -> String {
        let mut msg = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.0.read_exact(&mut h).unwrap();
            let (fin, op) = (h[0] & 0x80 != 0, h[0] & 0x0f);
            let len = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.0.read_exact(&mut b).unwrap();
                    u16::from_be_bytes(b) as usize
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.0.read_exact(&mut b).unwrap();
                    u64::from_be_bytes(b) as usize
                }
                n => n as usize,
            };
            let mut data = vec![0u8; len];
            self.0.read_exact(&mut data).unwrap();
            match op {
                0x0 | 0x1 => msg.extend_from_slice(&data),
                0x8 => panic!("chromium closed the DevTools connection"),
                _ => continue, // ping/pong: Chromium does not ping its clients
            }
            if fin {
                return String::from_utf8(msg).unwrap();
            }
        }
    }
}

/// DevTools protocol calls on one page.
struct Cdp {
    ws: Ws,
    next_id: u64,
}

impl Cdp {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(&json!({ "id": id, "method": method, "params": params }).to_string());
        loop {
            let v: Value = serde_json::from_str(&self.ws.recv()).unwrap();
            // Events (no id) are not asked for, but may come: skip them.
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (JSON-serializable).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    fn viewport(&mut self, width: u32, height: u32) {
        let m =
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.call("Emulation.setDeviceMetricsOverride", m);
    }

    fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url }));
        assert!(r.get("errorText").is_none(), "{url}: {r}");
    }

    /// Polls `expr` until it is true; panics with `what` and the page's state otherwise.
    fn wait_for(&mut self, expr: &str, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            // The document may be between navigations: only a true `true` counts.
            let r = self.call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true }),
            );
            if r["result"]["value"] == true {
                return;
            }
            if Instant::now() > deadline {
                let state = self.eval(SNAPSHOT);
                panic!("{what} within {within:?}; the page: {state}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What the page shows: its state, status line and messages, read from the rendered DOM.
const SNAPSHOT: &str = r##"({
  state: document.body && document.body.dataset.state,
  status: (document.getElementById("status") || {}).textContent,
  messages: [...document.querySelectorAll("#messages .msg")].map((m) => ({
    role: m.dataset.role,
    text: m.querySelector(".content").textContent,
    note: [...m.querySelectorAll(".note")].map((n) => n.textContent).join(" "),
    done: m.dataset.done === "true",
  })),
})"##;

/// Standard base64 (what DevTools sends screenshots in).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(val(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn artifacts_dir() -> PathBuf {
    // target/tmp → target/test-artifacts
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The API's own answer to the question, for the page to match.
fn api_answer(srv: &Server, max_tokens: u32) -> String {
    let body = json!({
        "model": srv.name,
        "messages": [{ "role": "user", "content": QUESTION }],
        "temperature": 0,
        "max_tokens": max_tokens,
    });
    let auth = format!("Bearer {KEY}");
    let r = request(
        srv.srv.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &auth)],
        &body.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .expect("a text answer")
        .to_string()
}

#[test]
fn chromium_asks_through_the_page_and_shows_the_streamed_answer() {
    let browser = Browser::launch();
    let srv = start(smollm2_path(), 4, 16, |o| o.api_key = Some(KEY.into()));
    let base = format!("http://{}", srv.srv.addr);
    let mut page = browser.page();
    // A fixed viewport: headless Chromium's window size leaves room for window chrome it lacks.
    page.viewport(1000, 800);

    // Without the key the page still loads, and asks for one.
    page.navigate(&format!("{base}/"));
    page.wait_for(
        "document.body && document.body.dataset.state === 'needs-key'",
        Duration::from_secs(30),
        "the page did not ask for the API key",
    );
    page.eval(&format!("localStorage.setItem('wllm.apiKey', '{KEY}')"));

    let max_tokens = 8;
    let q = QUESTION.replace(' ', "%20").replace('?', "%3F");
    page.navigate(&format!(
        "{base}/?q={q}&temperature=0&max_tokens={max_tokens}"
    ));
    page.wait_for(
        "!!document.querySelector('#messages .msg.assistant[data-done=true]')",
        Duration::from_secs(180),
        "no finished reply",
    );
    let shown = page.eval(SNAPSHOT);
    let msgs = shown["messages"].as_array().unwrap();
    assert_eq!(shown["state"], "idle", "{shown}");
    assert_eq!(msgs.len(), 2, "{shown}");
    assert_eq!(msgs[0]["role"], "user", "{shown}");
    assert_eq!(msgs[0]["text"], QUESTION, "{shown}");
    assert_eq!(msgs[1]["role"], "assistant", "{shown}");
    let reply = msgs[1]["text"].as_str().unwrap();
    assert!(!reply.trim().is_empty(), "an empty reply: {shown}");
    assert_eq!(
        reply,
        api_answer(&srv, max_tokens),
        "the page shows another answer than the API gives"
    );
    assert!(
        shown["status"].as_str().unwrap().contains(&srv.name),
        "the model name is not shown: {shown}"
    );

    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
    let path = artifacts_dir().join("chat_page.png");
    std::fs::write(&path, &png).unwrap();
    let png = std::fs::read(&path).unwrap();
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1000, 800), "{}", path.display());
    // A blank 1000×800 page compresses to a few hundred bytes; text and controls take more.
    assert!(
        png.len() > 8 << 10,
        "{} is only {} bytes",
        path.display(),
        png.len()
    );
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());

    // Stop ends the stream mid-reply, and the server frees the request.
    page.navigate(&format!(
        "{base}/?q=Write%20a%20long%20story%20about%20a%20dragon.&temperature=0&max_tokens=400"
    ));
    page.wait_for(
        "(document.querySelector('#messages .msg.assistant .content') || {}).textContent > ''",
        Duration::from_secs(120),
        "no reply began",
    );
    page.eval("document.getElementById('stop').click()");
    page.wait_for(
        "!!document.querySelector('#messages .msg.assistant[data-done=true]')",
        Duration::from_secs(30),
        "Stop did not end the reply",
    );
    let shown = page.eval(SNAPSHOT);
    let reply = &shown["messages"][1];
    assert_eq!(reply["note"], "(stopped)", "{shown}");
    assert!(reply["text"].as_str().unwrap() > "", "{shown}");
    assert_eq!(shown["state"], "idle", "{shown}");
    assert!(
        wait_idle(&srv.engine, Duration::from_secs(30)),
        "the stopped request still runs: {:?}",
        srv.engine.stats()
    );

    // An error answer (a wrong key) shows in the chat.
    page.eval("localStorage.setItem('wllm.apiKey', 'wrong')");
    page.navigate(&format!("{base}/?q=hi"));
    page.wait_for(
        "!!document.querySelector('#messages .msg.error')",
        Duration::from_secs(30),
        "no error shown for a wrong key",
    );
    let shown = page.eval(SNAPSHOT);
    let texts: Vec<&str> = shown["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("API key")),
        "the server's message is not shown: {shown}"
    );

    // A phone-sized window: nothing sticks out sideways, Send stays on screen.
    let light = page.eval("getComputedStyle(document.body).backgroundColor");
    page.viewport(360, 740);
    let fits = page.eval(
        "new Promise((ok) => requestAnimationFrame(() => ok(\
           document.documentElement.scrollWidth <= innerWidth &&\
           document.getElementById('send').getBoundingClientRect().right <= innerWidth)))",
    );
    assert_eq!(fits, true, "the page overflows a 360 px window");
    // Dark mode follows the system's.
    page.call(
        "Emulation.setEmulatedMedia",
        json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
    );
    let dark = page.eval("getComputedStyle(document.body).backgroundColor");
    assert_ne!(light, dark, "no dark colours");
}
