//! `GET /`: a chat page in one static file (`chat.html`), compiled in so the server needs no
//! files beside it and works offline. The HTML itself needs no API key; the page asks the user
//! for one and sends it with its own API calls.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("chat.html");

/// The page may run its own inline script and style and talk to this server, nothing else:
/// no outside resources can load (the page has none), and text the model writes could not
/// pull any in even if it ended up as markup.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

pub(super) async fn index() -> Response {
    page()
}

/// The page as a response (also answered while the model loads: it shows "loading" itself).
pub(super) fn page() -> Response {
    let mut r = PAGE.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new server binary may bring a new page: revalidate rather than keep a stale copy.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
