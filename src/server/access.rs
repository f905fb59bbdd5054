//! The access log: one `log::info!` line per request, when its response body has been sent (or
//! dropped, for a client that left): method, path, status, tokens and milliseconds.
//!
//! `POST /v1/completions 200 3+5 12ms`: tokens are the prompt's plus those generated, as the
//! generation handlers count them in the request's [`Tally`]; `-` for a request that generated
//! nothing (other routes, refusals).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request as HttpRequest;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};

/// The tokens of one request, set by the generation handlers (a request extension).
#[derive(Debug, Default)]
pub(super) struct Tally {
    known: AtomicBool,
    prompt: AtomicUsize,
    completion: AtomicUsize,
}

impl Tally {
    pub(super) fn prompt(&self, n: usize) {
        self.prompt.store(n, Ordering::Relaxed);
        self.known.store(true, Ordering::Relaxed);
    }

    pub(super) fn generated(&self, n: usize) {
        self.completion.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> Option<(usize, usize)> {
        self.known.load(Ordering::Relaxed).then(|| {
            (
                self.prompt.load(Ordering::Relaxed),
                self.completion.load(Ordering::Relaxed),
            )
        })
    }
}

/// One access-log line (without the logger's own prefix).
pub fn access_line(
    method: &Method,
    path: &str,
    status: StatusCode,
    tokens: Option<(usize, usize)>,
    elapsed: Duration,
) -> String {
    let tokens = match tokens {
        Some((p, c)) => format!("{p}+{c}"),
        None => "-".to_string(),
    };
    format!(
        "{method} {path} {} {tokens} {}ms",
        status.as_u16(),
        elapsed.as_millis()
    )
}

/// The outermost layer: gives the request a [`Tally`] and logs it once its body is done.
pub(super) async fn log_requests(mut req: HttpRequest, next: Next) -> Response {
    let tally = Arc::new(Tally::default());
    req.extensions_mut().insert(tally.clone());
    let entry = Entry {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        status: StatusCode::OK,
        tally,
        start: Instant::now(),
    };
    let resp = next.run(req).await;
    let (parts, body) = resp.into_parts();
    let entry = Entry {
        status: parts.status,
        ..entry
    };
    Response::from_parts(
        parts,
        Body::new(Logged {
            inner: body,
            entry: Some(entry),
        }),
    )
}

struct Entry {
    method: Method,
    path: String,
    status: StatusCode,
    tally: Arc<Tally>,
    start: Instant,
}

impl Entry {
    fn log(self) {
        log::info!(
            "{}",
            access_line(
                &self.method,
                &self.path,
                self.status,
                self.tally.get(),
                self.start.elapsed()
            )
        );
    }
}

/// A response body that logs its request when it ends or is dropped.
struct Logged {
    inner: Body,
    entry: Option<Entry>,
}

impl Logged {
    fn done(&mut self) {
        if let Some(e) = self.entry.take() {
            e.log();
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.done();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_request_its_status_tokens_and_time() {
        let line = access_line(
            &Method::POST,
            "/v1/completions",
            StatusCode::OK,
            Some((3, 5)),
            Duration::from_millis(12),
        );
        assert_eq!(line, "POST /v1/completions 200 3+5 12ms");
        let line = access_line(
            &Method::GET,
            "/health",
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            Duration::from_micros(1500),
        );
        assert_eq!(line, "GET /health 503 - 1ms");
        let t = Tally::default();
        assert_eq!(t.get(), None);
        t.prompt(4);
        t.generated(2);
        t.generated(1);
        assert_eq!(t.get(), Some((4, 3)));
    }
}
