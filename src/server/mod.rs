//! `wllm serve`: an OpenAI-compatible HTTP server, a thin adapter over [`Engine`].
//!
//! Each HTTP request becomes `n` engine requests; their [`RequestHandle`] streams are read in
//! the handler (JSON) or in the response body (Server-Sent Events). A client that disconnects
//! drops the body, which drops the handles, which aborts the requests and frees their KV
//! blocks. There is no queue here: the engine's own waiting queue refuses overflow (429).
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `GET /health`, `GET /metrics` (Prometheus text).

mod metrics;
mod openai;
mod respond;

use respond::respond;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};

use crate::engine::{Engine, Event, Prompt, Request, RequestHandle, TokenLogprob};
use crate::generate::FinishReason;

pub use metrics::Metrics;
pub use openai::ApiError;
use openai::{ChatBody, CompletionBody, Params, PromptIn};

/// How the server presents itself.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The model name clients send (and `/v1/models` lists); others get 404.
    pub served_model_name: String,
    /// When set, every `/v1` route needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// The engine's `max_waiting`: a request that would find more waiting is refused (429)
    /// before it is submitted.
    pub max_waiting: Option<usize>,
}

impl ServerOptions {
    pub fn new(served_model_name: impl Into<String>) -> Self {
        Self {
            served_model_name: served_model_name.into(),
            api_key: None,
            body_limit: 4 << 20,
            max_waiting: None,
        }
    }
}

struct AppState {
    engine: Arc<Engine>,
    opts: ServerOptions,
    metrics: Metrics,
    created: u64,
}

type St = State<Arc<AppState>>;

/// The router with every route, for serving on any listener.
pub fn router(engine: Arc<Engine>, opts: ServerOptions) -> Router {
    let limit = opts.body_limit;
    let state = Arc::new(AppState {
        engine,
        opts,
        metrics: Metrics::default(),
        created: unix_now(),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// Serves on `listener` until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    opts: ServerOptions,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine, opts)).await
}

/// Binds `addr` and serves until Ctrl-C (blocking; builds its own tokio runtime).
pub fn run(engine: Arc<Engine>, opts: ServerOptions, addr: &str) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        log::info!(
            "serving {} on http://{}/v1",
            opts.served_model_name,
            listener.local_addr()?
        );
        eprintln!(
            "wllm: serving {} on http://{}/v1",
            opts.served_model_name,
            listener.local_addr()?
        );
        tokio::select! {
            r = serve(listener, engine, opts) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// A server on its own thread and runtime (for tests and embedding); dropping it stops it.
pub struct RunningServer {
    pub addr: SocketAddr,
    stop: Option<futures::channel::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Binds `addr` (e.g. `127.0.0.1:0`) and serves on a background thread.
pub fn spawn(
    engine: Arc<Engine>,
    opts: ServerOptions,
    addr: &str,
) -> std::io::Result<RunningServer> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("wllm-server".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("server: {e}");
                        return;
                    }
                };
                tokio::select! {
                    r = serve(listener, engine, opts) => {
                        if let Err(e) = r { log::error!("server: {e}"); }
                    }
                    _ = rx => {}
                }
            });
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
        })?;
    Ok(RunningServer {
        addr: local,
        stop: Some(tx),
        thread: Some(thread),
    })
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random u64 (ids and default seeds), from the std hasher's per-process random keys.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new()
        .hash_one(COUNTER.fetch_add(1, Ordering::Relaxed) ^ unix_now())
}

fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}{:016x}", random_u64(), random_u64())
}

/// Auth on `/v1` routes and the by-status counter on every response.
async fn gate(State(st): St, req: HttpRequest, next: Next) -> Response {
    let resp = match &st.opts.api_key {
        Some(key) if req.uri().path().starts_with("/v1") => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
                next.run(req).await
            } else {
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
        }
        _ => next.run(req).await,
    };
    st.metrics.count_status(resp.status().as_u16());
    resp
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route").code("not_found")
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn metrics_text(State(st): St) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(&st.engine.stats()),
    )
}

/// The longest sequence (prompt + output) a request may reach.
fn max_seq_tokens(e: &Engine) -> usize {
    let s = e.stats();
    e.model_config()
        .max_context
        .min(s.blocks_total * s.block_size)
}

async fn models(State(st): St) -> impl IntoResponse {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": st.opts.served_model_name,
            "object": "model",
            "created": st.created,
            "owned_by": "wllm",
            "max_model_len": max_seq_tokens(&st.engine),
        }],
    }))
}

fn check_model(st: &AppState, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if *m != st.opts.served_model_name => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "The model `{m}` does not exist (this server serves `{}`).",
                st.opts.served_model_name
            ),
        )
        .code("model_not_found")),
        _ => Ok(()),
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::new(e.status(), e.body_text()))
}

/// Which endpoint a response is for.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }
}

fn reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn queue_full(waiting: usize) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("the engine's queue is full ({waiting} requests waiting); try again later"),
    )
}

/// The engine refuses an over-full queue either at submit or, when the engine thread finds it
/// full, as the request's only event; both are a 429.
fn failed(e: String) -> ApiError {
    if e.contains("queue is full") {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, e)
    } else {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("generation failed: {e}"),
        )
    }
}

/// Submitted engine requests for one HTTP request.
struct Job {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    /// Prepended to each choice (completions `echo`).
    echo: Option<String>,
    handles: Vec<RequestHandle>,
    /// The request asked for logprobs.
    logprobs: bool,
    include_usage: bool,
}

/// Checks the lengths, then submits `n` requests (all or none).
fn submit(
    st: &AppState,
    kind: Kind,
    ids: Vec<u32>,
    p: &Params,
    echo: Option<String>,
) -> Result<Job, ApiError> {
    let limit = max_seq_tokens(&st.engine);
    let prompt_tokens = ids.len();
    if prompt_tokens + 1 > limit {
        return Err(ApiError::bad(format!(
            "This model's maximum context length is {limit} tokens. However, your prompt has \
             {prompt_tokens} tokens, which leaves no room for a completion."
        ))
        .code("context_length_exceeded"));
    }
    let max_tokens = match p.max_tokens {
        Some(m) if prompt_tokens + m > limit => {
            return Err(ApiError::param(
                format!(
                    "This model's maximum context length is {limit} tokens. However, you \
                     requested {} tokens ({prompt_tokens} in the prompt, {m} for the \
                     completion). Please reduce the prompt or the completion length.",
                    prompt_tokens + m
                ),
                "max_tokens",
            )
            .code("context_length_exceeded"));
        }
        Some(m) => m,
        None => limit - prompt_tokens,
    };
    if let Some(cap) = st.opts.max_waiting {
        let waiting = st.engine.stats().requests_waiting;
        if waiting + p.n > cap {
            return Err(queue_full(waiting));
        }
    }
    // One prompt, n completions: the engine prefills once and forks (choice i samples with
    // seed + i).
    let mut req = Request::new(Prompt::Ids(ids.clone()));
    req.max_tokens = max_tokens;
    req.sampling = p.sampling.clone();
    req.sampling.seed = p.seed.unwrap_or_else(random_u64);
    req.stop = p.stop.clone();
    req.ignore_eos = p.ignore_eos;
    req.logprobs = p.logprobs;
    let handles = st.engine.submit_n(req, p.n)?;
    st.metrics
        .prompt_tokens
        .fetch_add((prompt_tokens * p.n) as u64, Ordering::Relaxed);
    Ok(Job {
        kind,
        id: request_id(if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        }),
        created: unix_now(),
        model: st.opts.served_model_name.clone(),
        prompt_tokens,
        echo,
        handles,
        include_usage: p.include_usage,
        logprobs: p.logprobs.is_some(),
    })
}

async fn chat_completions(State(st): St, body: Result<Bytes, BytesRejection>) -> Response {
    match chat_inner(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(
    st: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: ChatBody = openai::parse(&body_bytes(body)?)?;
    check_model(&st, &b.common.model)?;
    let p = b.common.params(true)?;
    let messages = openai::chat_messages(&b.messages)?;
    let ids = st.engine.prompt_ids(&Prompt::Chat(messages))?;
    let job = submit(&st, Kind::Chat, ids, &p, None)?;
    Ok(respond(st, job, p.stream).await)
}

async fn completions(State(st): St, body: Result<Bytes, BytesRejection>) -> Response {
    match completions_inner(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(
    st: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: CompletionBody = openai::parse(&body_bytes(body)?)?;
    check_model(&st, &b.common.model)?;
    let p = b.common.params(false)?;
    let (ids, text) = match openai::completion_prompt(&b.prompt)? {
        PromptIn::Text(t) => (st.engine.prompt_ids(&Prompt::Text(t.clone()))?, Some(t)),
        PromptIn::Ids(ids) => (ids, None),
    };
    let echo = if b.echo.unwrap_or(false) {
        Some(match text {
            Some(t) => t,
            None => match st.engine.tokenizer() {
                Some(tok) => tok.decode(&ids).map_err(crate::Error::from)?,
                None => String::new(),
            },
        })
    } else {
        None
    };
    let job = submit(&st, Kind::Text, ids, &p, echo)?;
    Ok(respond(st, job, p.stream).await)
}
