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

async fn respond(st: Arc<AppState>, job: Job, stream: bool) -> Response {
    if stream {
        sse(st, job)
    } else {
        match collect(&st, job).await {
            Ok(v) => axum::Json(v).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// Per-choice latency bookkeeping shared by both response forms.
struct Timing {
    last: Option<Instant>,
}

impl Timing {
    fn token(&mut self, st: &AppState, n: usize) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        if let Some(prev) = self.last {
            // Tokens arriving together (a flushed stop-string hold) share the interval.
            let dt = now.duration_since(prev).as_secs_f64() / n as f64;
            for _ in 0..n {
                st.metrics.itl.observe(dt);
            }
        }
        self.last = Some(now);
        st.metrics
            .generation_tokens
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    fn finished(&self, st: &AppState, usage: &crate::engine::Usage) {
        if let Some(t) = usage.time_to_first_token {
            st.metrics.ttft.observe(t.as_secs_f64());
        }
    }
}

/// A token's text for logprobs (`token_id:N` when the model has no tokenizer, as vLLM).
fn token_text(st: &AppState, id: u32) -> (String, Vec<u8>) {
    match st.engine.tokenizer() {
        Some(t) => {
            let text = t.decode(&[id]).unwrap_or_default();
            let bytes = t
                .token_bytes(id)
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| text.as_bytes().to_vec());
            (text, bytes)
        }
        None => (
            format!("token_id:{id}"),
            format!("token_id:{id}").into_bytes(),
        ),
    }
}

/// Chat's `logprobs: {content: [...]}`.
fn chat_logprobs(st: &AppState, lps: &[TokenLogprob]) -> Value {
    let entry = |id: u32, lp: f32| {
        let (token, bytes) = token_text(st, id);
        json!({ "token": token, "logprob": lp, "bytes": bytes })
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let mut e = entry(l.token, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|(i, p)| entry(*i, *p)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// Completions' `logprobs: {tokens, token_logprobs, top_logprobs, text_offset}`; `offset` is
/// where the first token's text starts in the choice's text (advanced past these tokens).
fn text_logprobs(st: &AppState, lps: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut text_offset = Vec::new();
    for l in lps {
        let (t, _) = token_text(st, l.token);
        text_offset.push(*offset);
        *offset += t.chars().count();
        tokens.push(t);
        token_logprobs.push(l.logprob);
        let mut m = serde_json::Map::new();
        for (i, p) in &l.top {
            m.insert(token_text(st, *i).0, json!(p));
        }
        top.push(Value::Object(m));
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

fn usage_json(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}

/// Waits for every choice and answers one JSON object.
async fn collect(st: &AppState, job: Job) -> Result<Value, ApiError> {
    let kind = job.kind;
    let echo = job.echo.clone();
    let results = futures::future::join_all(job.handles.into_iter().map(|mut h| {
        let echo = echo.clone();
        async move {
            let mut text = echo.unwrap_or_default();
            let mut tokens = 0;
            let mut lps = Vec::new();
            let mut timing = Timing { last: None };
            while let Some(ev) = h.next().await {
                match ev {
                    Event::Delta {
                        text: t,
                        token_ids,
                        logprobs,
                    } => {
                        timing.token(st, token_ids.len());
                        tokens += token_ids.len();
                        lps.extend(logprobs);
                        text.push_str(&t);
                    }
                    Event::Finished { reason, usage } => {
                        timing.finished(st, &usage);
                        return Ok((text, tokens, reason, lps, usage.cached_tokens));
                    }
                    Event::Failed(e) => return Err(e),
                }
            }
            Err("the engine stopped".to_string())
        }
    }))
    .await;
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    // The prompt is computed once for all choices: report the first choice's cache hits.
    let mut cached_tokens = None;
    for (i, r) in results.into_iter().enumerate() {
        let (text, tokens, reason, lps, cached) = r.map_err(failed)?;
        cached_tokens.get_or_insert(cached);
        let logprobs = match (job.logprobs, kind) {
            (false, _) => Value::Null,
            (true, Kind::Chat) => chat_logprobs(st, &lps),
            (true, Kind::Text) => {
                let mut offset = echo.as_deref().map_or(0, |e| e.chars().count());
                text_logprobs(st, &lps, &mut offset)
            }
        };
        completion_tokens += tokens;
        choices.push(match kind {
            Kind::Chat => json!({
                "index": i,
                "message": { "role": "assistant", "content": text },
                "logprobs": logprobs,
                "finish_reason": reason_str(reason),
            }),
            Kind::Text => json!({
                "index": i,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": reason_str(reason),
            }),
        });
    }
    Ok(json!({
        "id": job.id,
        "object": kind.object(false),
        "created": job.created,
        "model": job.model,
        "choices": choices,
        "usage": usage_json(job.prompt_tokens, completion_tokens, cached_tokens.unwrap_or(0)),
    }))
}

/// The state of one streaming response.
struct Sse {
    st: Arc<AppState>,
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    include_usage: bool,
    events: futures::stream::SelectAll<BoxStream<'static, (usize, Event)>>,
    timing: Vec<Timing>,
    completion_tokens: usize,
    /// Prompt tokens served from the prefix cache (from the first choice's usage).
    cached_tokens: usize,
    /// Frames to send before the first event (role / echo chunks).
    head: Option<String>,
    /// Logprobs of tokens not yet sent, per choice (held while their text is incomplete).
    pending_lps: Vec<Vec<TokenLogprob>>,
    /// Where the next token's text starts, per choice (completions' text_offset).
    offsets: Vec<usize>,
    logprobs: bool,
    /// Without a tokenizer every delta is empty text: send a chunk per token anyway, so the
    /// client sees progress (and a disconnect is noticed at the next write).
    chunk_empty: bool,
}

fn frame(out: &mut String, v: &Value) {
    out.push_str("data: ");
    out.push_str(&v.to_string());
    out.push_str("\n\n");
}

impl Sse {
    fn chunk(&self, choice: Value) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.kind.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn choice(&self, i: usize, text: Option<&str>, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => json!({
                "index": i,
                "delta": match text { Some(t) => json!({ "content": t }), None => json!({}) },
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Text => json!({
                "index": i,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
        }
    }

    /// The frames for one event (empty when there is nothing to tell the client yet).
    fn on_event(&mut self, i: usize, ev: Event) -> String {
        let mut out = String::new();
        match ev {
            Event::Delta {
                text,
                token_ids,
                logprobs,
            } => {
                self.timing[i].token(&self.st, token_ids.len());
                self.completion_tokens += token_ids.len();
                self.pending_lps[i].extend(logprobs);
                if !text.is_empty() || (self.chunk_empty && !token_ids.is_empty()) {
                    let mut c = self.choice(i, Some(&text), None);
                    c["logprobs"] = self.take_logprobs(i);
                    frame(&mut out, &self.chunk(c));
                }
            }
            Event::Finished { reason, usage } => {
                self.timing[i].finished(&self.st, &usage);
                if i == 0 {
                    self.cached_tokens = usage.cached_tokens;
                }
                let mut c = self.choice(i, None, Some(reason_str(reason)));
                if !self.pending_lps[i].is_empty() {
                    c["logprobs"] = self.take_logprobs(i);
                }
                frame(&mut out, &self.chunk(c));
            }
            Event::Failed(e) => {
                frame(&mut out, &failed(e).body());
            }
        }
        out
    }

    fn take_logprobs(&mut self, i: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let lps = std::mem::take(&mut self.pending_lps[i]);
        match self.kind {
            Kind::Chat => chat_logprobs(&self.st, &lps),
            Kind::Text => text_logprobs(&self.st, &lps, &mut self.offsets[i]),
        }
    }

    fn tail(&self) -> String {
        let mut out = String::new();
        if self.include_usage {
            let v = json!({
                "id": self.id,
                "object": self.kind.object(true),
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_json(self.prompt_tokens, self.completion_tokens, self.cached_tokens),
            });
            frame(&mut out, &v);
        }
        out.push_str("data: [DONE]\n\n");
        out
    }
}

/// Streams Server-Sent Events; dropping the body (client gone) drops the handles (abort).
fn sse(st: Arc<AppState>, job: Job) -> Response {
    let n = job.handles.len();
    let streams: Vec<BoxStream<'static, (usize, Event)>> = job
        .handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| h.map(move |e| (i, e)).boxed())
        .collect();
    let mut s = Sse {
        st,
        kind: job.kind,
        id: job.id,
        created: job.created,
        model: job.model,
        prompt_tokens: job.prompt_tokens,
        include_usage: job.include_usage,
        events: futures::stream::select_all(streams),
        timing: (0..n).map(|_| Timing { last: None }).collect(),
        completion_tokens: 0,
        cached_tokens: 0,
        head: None,
        pending_lps: vec![Vec::new(); n],
        offsets: vec![job.echo.as_deref().map_or(0, |e| e.chars().count()); n],
        logprobs: job.logprobs,
        chunk_empty: false,
    };
    s.chunk_empty = s.st.engine.tokenizer().is_none();
    let mut head = String::new();
    for i in 0..n {
        let c = match (s.kind, &job.echo) {
            (Kind::Chat, _) => json!({
                "index": i,
                "delta": { "role": "assistant", "content": "" },
                "logprobs": null,
                "finish_reason": null,
            }),
            (Kind::Text, Some(echo)) => s.choice(i, Some(echo), None),
            (Kind::Text, None) => continue,
        };
        frame(&mut head, &s.chunk(c));
    }
    s.head = (!head.is_empty()).then_some(head);
    let body = futures::stream::unfold(Some(s), |state| async move {
        let mut s = state?;
        if let Some(h) = s.head.take() {
            return Some((Ok::<_, std::convert::Infallible>(Bytes::from(h)), Some(s)));
        }
        loop {
            match s.events.next().await {
                Some((i, ev)) => {
                    let out = s.on_event(i, ev);
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), Some(s)));
                    }
                }
                None => {
                    let out = s.tail();
                    return Some((Ok(Bytes::from(out)), None));
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
