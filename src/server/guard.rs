//! What stands between a request and the handlers: the head size limit, the API key, and an
//! OpenAI-shaped JSON body on every error answer.

use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, ServerOptions, St};

/// The by-status counter on every response, after the head and key checks.
pub(super) async fn gate(State(st): St, req: HttpRequest, next: Next) -> Response {
    let resp = match refusal(&st, &req) {
        Some(r) => r,
        None => next.run(req).await,
    };
    st.metrics.count_status(resp.status().as_u16());
    resp
}

/// The answer to a request that may not go on, if it may not.
fn refusal(st: &AppState, req: &HttpRequest) -> Option<Response> {
    if let Err(e) = check_head(req, st.opts.max_header_bytes) {
        return Some(e.into_response());
    }
    (!key_given(st, req)).then(unauthorized)
}

/// Refuses a request head over `limit` bytes (request line and headers as sent on the wire):
/// 414 when the target alone is over it, 431 otherwise. Heads far over the limit never get
/// here: hyper refuses them itself, without a body (see `conn::HEAD_PARSE_FACTOR`).
fn check_head(req: &HttpRequest, limit: usize) -> Result<(), ApiError> {
    let over = |status, what, size, code| {
        let message = format!(
            "the request {what} is {size} bytes, more than this server's limit of {limit} bytes"
        );
        Err(ApiError::new(status, message).code(code))
    };
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > limit {
        return over(StatusCode::URI_TOO_LONG, "target", target, "uri_too_long");
    }
    // "METHOD target HTTP/1.1\r\n", "name: value\r\n" per header, the closing "\r\n".
    let line = req.method().as_str().len() + target + 11;
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let size = line + fields + 2;
    if size > limit {
        let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return over(status, "head", size, "headers_too_large");
    }
    Ok(())
}

/// Whether `path` needs the API key (when one is set): every `/v1` route, and `/metrics` unless
/// it was opened; `/health` never (load balancers probe it).
fn needs_key(opts: &ServerOptions, path: &str) -> bool {
    path.starts_with("/v1") || (path == "/metrics" && !opts.metrics_without_key)
}

/// Whether the request has the API key, or needs none.
fn key_given(st: &AppState, req: &HttpRequest) -> bool {
    let Some(key) = &st.opts.api_key else {
        return true;
    };
    if !needs_key(&st.opts, req.uri().path()) {
        return true;
    }
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .is_some_and(|g| key_matches(g.as_bytes(), key.as_bytes()))
}

fn unauthorized() -> Response {
    let mut r = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send Authorization: Bearer <key>",
    )
    .code("invalid_api_key")
    .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The token of a Bearer credential: the scheme in any case (RFC 7235), one space, then the
/// token exactly as sent. Padding inside the value is not trimmed away (as vLLM and the
/// OpenAI clients have it), so `Bearer  key` is not the key; HTTP itself strips whitespace
/// around the whole value.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Whether `given` is the key, in a time that depends on the key's length only: every byte of
/// the key is compared whatever `given` is, so neither where a guess goes wrong nor how long
/// the key is shows in the answer's timing.
fn key_matches(given: &[u8], key: &[u8]) -> bool {
    let mut diff = given.len() ^ key.len();
    for (i, k) in key.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ k);
    }
    std::hint::black_box(diff) == 0
}

/// A route that exists, asked with a method it does not take (axum adds the `Allow` header).
pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .code("method_not_allowed")
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route").code("not_found")
}

/// Error answers made below the handlers (axum's rejections, a future layer's) come as plain
/// text or empty: this gives each an OpenAI-shaped JSON body, keeping its status and headers
/// (`Allow`, `WWW-Authenticate`) and its text as the message.
pub(super) async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|t| !t.is_empty());
    let message = text.unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let (json_parts, json_body) = ApiError::new(status, message).into_response().into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, json_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(r: Response) -> serde_json::Value {
        let b = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    #[tokio::test]
    async fn plain_and_empty_error_answers_become_json() {
        let r = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST")],
            "wrong method",
        )
            .into_response();
        let r = json_errors(r).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "POST");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v = body_json(r).await;
        assert_eq!(v["error"]["message"], "wrong method");
        assert_eq!(v["error"]["type"], "invalid_request_error");

        let v = body_json(json_errors(StatusCode::BAD_GATEWAY.into_response()).await).await;
        assert_eq!(v["error"]["message"], "Bad Gateway");
        assert_eq!(v["error"]["type"], "server_error");

        // Successes and JSON errors pass as they are.
        let ok = json_errors((StatusCode::OK, "text").into_response()).await;
        assert_eq!(
            axum::body::to_bytes(ok.into_body(), 64).await.unwrap(),
            "text"
        );
        let e = ApiError::bad("x").code("c").into_response();
        assert_eq!(body_json(json_errors(e).await).await["error"]["code"], "c");
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_exact() {
        assert_eq!(bearer_token("Bearer k"), Some("k"));
        assert_eq!(bearer_token("bEaReR k"), Some("k"));
        assert_eq!(bearer_token("Bearer  k"), Some(" k"));
        assert_eq!(bearer_token("Bearer\tk"), None);
        assert_eq!(bearer_token("Basic k"), None);
        assert_eq!(bearer_token("Bearer k x"), Some("k x"));
        assert!(key_matches(b"key", b"key"));
        for wrong in [&b""[..], b"ke", b"kex", b"keyy", b"k x"] {
            assert!(!key_matches(wrong, b"key"), "{wrong:?}");
        }
    }
}
