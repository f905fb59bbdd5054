//! What wraps the routes whether or not the engine is ready: CORS and the access log, and the
//! answers given while the model loads.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::Request as HttpRequest;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::{ApiError, ServerOptions, access};

/// `router` under the CORS layer (when origins are set) and the access log (outermost, so it
/// logs the status the client gets). CORS sits above the key check: a browser's preflight
/// carries no key, and its answer names only what the origin may send.
pub(super) fn outer(router: Router, opts: &ServerOptions) -> Router {
    let router = match cors(&opts.cors_origins) {
        Some(layer) => router.layer(layer),
        None => router,
    };
    router.layer(middleware::from_fn(access::log_requests))
}

/// Why an origin given for CORS is refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a CORS origin: give `*` or a scheme and host like `http://localhost:3000`, \
     without a path or trailing slash"
)]
pub struct BadOrigin(pub String);

/// Checks one `--cors-origin` value: `*`, or `scheme://host[:port]` as browsers send it in
/// their `Origin` header.
pub fn check_cors_origin(origin: &str) -> Result<(), BadOrigin> {
    let bad = || BadOrigin(origin.to_string());
    if origin == "*" {
        return Ok(());
    }
    let (scheme, host) = origin.split_once("://").ok_or_else(bad)?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let host_ok = !host.is_empty() && !host.contains('/') && !host.contains('?');
    if scheme_ok && host_ok && HeaderValue::from_str(origin).is_ok() {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The CORS layer for `origins` (`*` anywhere allows any), or none when the list is empty.
/// Origins that are not valid header values are skipped with a warning (the CLI refuses them).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| match HeaderValue::from_str(o) {
                Ok(v) => Some(v),
                Err(_) => {
                    log::warn!("ignoring the CORS origin {o:?}: not a header value");
                    None
                }
            })
            .collect();
        AllowOrigin::list(list)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Until `ready` is set: `/health` answers 503 `{"status":"loading"}`, `GET /` the chat page
/// (which shows "loading" until `/v1/models` answers), everything else a JSON 503. Once it is
/// set, every request goes to the router in it.
pub(super) fn loading(ready: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback(move |req: HttpRequest| {
        let ready = ready.clone();
        async move {
            match ready.get() {
                Some(router) => match router.clone().oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                },
                None => while_loading(req.method(), req.uri().path()),
            }
        }
    })
}

fn while_loading(method: &Method, path: &str) -> Response {
    if path == "/" && (method == Method::GET || method == Method::HEAD) {
        return super::page::page();
    }
    if path == "/health" {
        let body = axum::Json(json!({ "status": "loading" }));
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the model is still loading; retry when /health answers ok",
    )
    .code("model_loading")
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_a_star_or_a_scheme_and_host() {
        for ok in [
            "*",
            "http://localhost:3000",
            "https://app.example.com",
            "app://x",
        ] {
            assert!(check_cors_origin(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "localhost:3000",
            "http://",
            "http://x/",
            "http://x/path",
            "http://x\n",
            "**",
        ] {
            assert!(check_cors_origin(bad).is_err(), "{bad:?}");
        }
    }
}
