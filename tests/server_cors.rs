//! `wllm serve` for browsers and operators (helpers in tests/common/server.rs): CORS headers and
//! preflights (`--cors-origin`, also with an API key), and the access log line each request
//! leaves when it completes.
#![cfg(feature = "server")]

mod common;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::server::{request, tiny_with, wait_until};
use serde_json::json;

/// The value of response header `name` (case-insensitive), if sent.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn preflight(origin: &str, method: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Origin", origin.to_string()),
        ("Access-Control-Request-Method", method.to_string()),
        (
            "Access-Control-Request-Headers",
            "authorization,content-type".to_string(),
        ),
    ]
}

fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&'static str, String)],
    body: &str,
) -> common::server::Resp {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request(addr, method, path, &h, body)
}

/// A POST preflight for `path` from `origin`, which must be allowed (200/204 naming it).
#[track_caller]
fn allowed_preflight(addr: std::net::SocketAddr, path: &str, origin: &str) -> common::server::Resp {
    let r = send(addr, "OPTIONS", path, &preflight(origin, "POST"), "");
    assert!(
        r.status == 200 || r.status == 204,
        "{} {}",
        r.status,
        r.body
    );
    assert_eq!(
        header(&r.headers, "access-control-allow-origin").as_deref(),
        Some(origin)
    );
    r
}

#[test]
fn allowed_origins_get_cors_headers_and_others_do_not() {
    let s = tiny_with(2, 8, |o| {
        o.cors_origins = vec!["http://localhost:3000".into(), "https://app.test".into()];
    });
    let a = s.srv.addr;
    let origin = |o: &str| vec![("Origin", o.to_string())];
    for allowed in ["http://localhost:3000", "https://app.test"] {
        let r = send(a, "GET", "/v1/models", &origin(allowed), "");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            header(&r.headers, "access-control-allow-origin").as_deref(),
            Some(allowed),
            "{}",
            r.headers
        );
    }
    let r = send(a, "GET", "/v1/models", &origin("http://evil.test"), "");
    assert_eq!(r.status, 200);
    assert_eq!(header(&r.headers, "access-control-allow-origin"), None);

    // A preflight names the methods and headers the browser may send.
    let r = allowed_preflight(a, "/v1/chat/completions", "https://app.test");
    let methods = header(&r.headers, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("POST"), "{}", r.headers);
    let allowed = header(&r.headers, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{}",
        r.headers
    );
}

#[test]
fn a_star_allows_any_origin_and_no_origins_send_no_headers() {
    let s = tiny_with(2, 8, |o| o.cors_origins = vec!["*".into()]);
    let r = send(
        s.srv.addr,
        "GET",
        "/health",
        &[("Origin", "http://anything.test".into())],
        "",
    );
    assert_eq!(
        header(&r.headers, "access-control-allow-origin").as_deref(),
        Some("*")
    );

    let s = tiny_with(2, 8, |_| {});
    let r = send(
        s.srv.addr,
        "GET",
        "/v1/models",
        &[("Origin", "http://localhost:3000".into())],
        "",
    );
    assert_eq!(r.status, 200);
    assert!(
        !r.headers.to_ascii_lowercase().contains("access-control-"),
        "{}",
        r.headers
    );
    // Without CORS an OPTIONS request is not a preflight: the route does not take it.
    let r = send(
        s.srv.addr,
        "OPTIONS",
        "/v1/completions",
        &preflight("http://localhost:3000", "POST"),
        "",
    );
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(!r.headers.to_ascii_lowercase().contains("access-control-"));
}

#[test]
fn preflights_pass_without_the_api_key_and_requests_still_need_it() {
    let s = tiny_with(2, 8, |o| {
        o.api_key = Some("sekrit".into());
        o.cors_origins = vec!["http://localhost:3000".into()];
    });
    let a = s.srv.addr;
    allowed_preflight(a, "/v1/completions", "http://localhost:3000");

    let body = json!({"prompt": [1, 2], "max_tokens": 2}).to_string();
    let origin = ("Origin", "http://localhost:3000".to_string());
    let r = send(
        a,
        "POST",
        "/v1/completions",
        std::slice::from_ref(&origin),
        &body,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    // The browser may read the refusal.
    assert!(header(&r.headers, "access-control-allow-origin").is_some());
    let auth = ("Authorization", "Bearer sekrit".to_string());
    let r = send(a, "POST", "/v1/completions", &[origin, auth], &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(header(&r.headers, "access-control-allow-origin").is_some());
}

/// Every `info` line logged by the server's access log, in this test binary.
fn access_lines() -> &'static Mutex<Vec<String>> {
    struct Capture;
    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static LOGGER: Capture = Capture;
    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Info
        }
        fn log(&self, r: &log::Record) {
            if r.target().starts_with("wllm::server::access") {
                LINES.lock().unwrap().push(r.args().to_string());
            }
        }
        fn flush(&self) {}
    }
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        log::set_logger(&LOGGER).expect("the only logger");
        log::set_max_level(log::LevelFilter::Info);
    });
    &LINES
}

#[test]
fn each_request_leaves_one_access_line_with_its_tokens() {
    let lines = access_lines();
    let s = tiny_with(2, 8, |_| {});
    let a = s.srv.addr;
    let find = |needle: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(needle))
            .cloned()
            .collect::<Vec<_>>()
    };
    let body = json!({"prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0}).to_string();
    let r = request(a, "POST", "/v1/completions", &[], &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let body = json!({"prompt": [1, 2], "max_tokens": 3, "stream": true}).to_string();
    let r = request(a, "POST", "/v1/completions", &[], &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(a, "GET", "/no/such/route/for/the/log", &[], "");
    assert_eq!(r.status, 404);

    // The line is logged when the body ends, which may be just after the client has it.
    assert!(
        wait_until(Duration::from_secs(10), || {
            find("POST /v1/completions 200 2+3 ").len() == 1
                && find("GET /no/such/route/for/the/log 404 - ").len() == 1
        }),
        "{:?}",
        lines.lock().unwrap()
    );
    let json_line = find("POST /v1/completions 200 3+4 ");
    assert_eq!(json_line.len(), 1, "{:?}", lines.lock().unwrap());
    let ms = json_line[0].rsplit(' ').next().unwrap();
    assert!(
        ms.strip_suffix("ms")
            .is_some_and(|n| n.parse::<u64>().is_ok()),
        "{ms}"
    );
}
