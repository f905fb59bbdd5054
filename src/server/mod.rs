//! `wllm serve`: an OpenAI-compatible HTTP server, a thin adapter over [`Engine`].
//!
//! Each HTTP request becomes `n` engine requests; their [`RequestHandle`] streams are read in
//! the handler (JSON) or in the response body (Server-Sent Events). A client that disconnects
//! drops the body, which drops the handles, which aborts the requests and frees their KV
//! blocks. There is no queue here: the engine's own waiting queue refuses overflow (429).
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/responses`,
//! `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text), `GET /` (a chat page; it
//! needs no key itself and sends the one the user types with its API calls).
//!
//! [`run_loading`] binds the port before the model loads: until the engine is ready `/health`
//! answers `{"status":"loading"}` and every route a JSON 503. With `cors_origins` set, browsers
//! on those origins may call the API (preflights pass without the API key). Each request is
//! logged (`log::info!`) when its response ends. SIGTERM or SIGINT stops accepting and lets the
//! requests in flight finish within `shutdown_grace`.
//!
//! Slow or idle clients cannot hold the server: request heads and bodies must arrive within
//! their timeouts, and connections beyond `max_connections` wait to be accepted. Every error,
//! including a wrong method, an oversized head or body and a timeout, is OpenAI-shaped JSON.

mod access;
mod conn;
mod front;
mod guard;
mod metrics;
mod openai;
mod page;
mod respond;
mod responses;
mod tools;

use respond::respond;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use futures::stream::BoxStream;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};

use crate::engine::{Engine, Event, Prompt, Request, RequestHandle, TokenLogprob};
use crate::generate::FinishReason;

use access::Tally;
pub use access::access_line;
pub use front::{BadOrigin, check_cors_origin};
pub use metrics::Metrics;
pub use openai::ApiError;
use openai::{ChatBody, CompletionBody, Params, PromptIn};

/// How the server presents itself and what it lets clients hold.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The model name clients send (and `/v1/models` lists); others get 404.
    pub served_model_name: String,
    /// When set, every `/v1` route and `/metrics` need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Serve `/metrics` without the key (for a scraper on a trusted network).
    pub metrics_without_key: bool,
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest prompt text (a completion's prompt, or a chat's roles and contents together), in
    /// bytes, refused (400) before it is rendered and tokenized.
    pub max_prompt_bytes: usize,
    /// Largest request head (request line and headers), in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// How long a request head may take to arrive in full, from when the server starts waiting
    /// for it: on a new connection, and between requests on a kept-alive one, so this is the
    /// idle keep-alive timeout too. The connection is closed when it runs out.
    pub header_timeout: Duration,
    /// How long a request body may take to arrive in full, from the end of its head (408).
    pub body_timeout: Duration,
    /// Connections served at once; more wait to be accepted until one closes (at least 1).
    pub max_connections: usize,
    /// Origins whose browsers may call the API (CORS); `*` for any. Empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// After SIGTERM or SIGINT ([`run_loading`]), how long requests in flight may take to
    /// finish before the server exits anyway.
    pub shutdown_grace: Duration,
}

impl ServerOptions {
    pub fn new(served_model_name: impl Into<String>) -> Self {
        Self {
            served_model_name: served_model_name.into(),
            api_key: None,
            metrics_without_key: false,
            max_body_bytes: 4 << 20,
            max_prompt_bytes: 1 << 20,
            max_header_bytes: 16 << 10,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
            cors_origins: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
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
    front::outer(routes(engine, opts.clone()), &opts)
}

/// The routes and the layers that need the engine (the key, the JSON errors, the metrics).
fn routes(engine: Arc<Engine>, opts: ServerOptions) -> Router {
    let state = Arc::new(AppState {
        engine,
        opts,
        metrics: Metrics::default(),
        created: unix_now(),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(responses::create))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/", get(page::index))
        .method_not_allowed_fallback(guard::method_not_allowed)
        .fallback(guard::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard::gate))
        .layer(middleware::map_response(guard::json_errors))
        .with_state(state)
}

/// Serves on `listener` until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    opts: ServerOptions,
) -> std::io::Result<()> {
    let (_never, stop) = tokio::sync::watch::channel(false);
    conn::accept_loop(listener, router(engine, opts.clone()), &opts, stop).await
}

/// Binds `addr` and serves until SIGTERM or Ctrl-C, as [`run_loading`] (blocking).
pub fn run(engine: Arc<Engine>, opts: ServerOptions, addr: &str) -> std::io::Result<()> {
    run_loading(opts, addr, || Ok::<_, std::convert::Infallible>(engine)).map_err(|e| match e {
        ServeError::Io(e) => e,
        ServeError::Load(never) => match never {},
    })
}

/// Why [`run_loading`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError<E> {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// `load` failed (the server stops: it has nothing to serve).
    #[error("loading the model: {0}")]
    Load(E),
}

/// Binds `addr`, then calls `load` (on this thread) while the port already answers: `/health`
/// with 503 `{"status":"loading"}`, every other route with a JSON 503. Serves the engine it
/// returns (blocking; builds its own tokio runtime) until SIGTERM or SIGINT: then it stops
/// accepting, lets the requests in flight finish within `shutdown_grace`, and returns `Ok`.
/// Prints a `listening` line once the port is bound and a `serving` line once the engine is
/// ready. A signal while the model loads ends the process as it would without a server.
pub fn run_loading<E>(
    opts: ServerOptions,
    addr: &str,
    load: impl FnOnce() -> Result<Arc<Engine>, E>,
) -> Result<(), ServeError<E>> {
    run_loading_on(opts, std::net::TcpListener::bind(addr)?, load)
}

/// [`run_loading`] on a listener the caller has bound (an embedding app that picked its own
/// port, or a test that must know the port before the server runs).
pub fn run_loading_on<E>(
    opts: ServerOptions,
    listener: std::net::TcpListener,
    load: impl FnOnce() -> Result<Arc<Engine>, E>,
) -> Result<(), ServeError<E>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = run_on(&rt, opts, listener, load);
    // Connections still open past the grace period are dropped here, not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    r
}

fn run_on<E>(
    rt: &tokio::runtime::Runtime,
    opts: ServerOptions,
    listener: std::net::TcpListener,
    load: impl FnOnce() -> Result<Arc<Engine>, E>,
) -> Result<(), ServeError<E>> {
    listener.set_nonblocking(true)?;
    let listener = {
        let _in_runtime = rt.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let local = listener.local_addr()?;
    eprintln!("wllm: listening on http://{local}/v1 (loading the model)");
    let ready = Arc::new(OnceLock::new());
    let app = front::outer(front::loading(ready.clone()), &opts);
    let loop_opts = opts.clone();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut server =
        rt.spawn(async move { conn::accept_loop(listener, app, &loop_opts, stop).await });
    let engine = load().map_err(ServeError::Load)?;
    let name = opts.served_model_name.clone();
    let grace = opts.shutdown_grace;
    let _ = ready.set(routes(engine, opts));
    // Handlers go in before the serving line: a signal sent once a client has seen it must
    // drain, not kill the process with its streams half-sent.
    let signals = {
        let _in_runtime = rt.enter();
        ShutdownSignals::install()?
    };
    log::info!("serving {name} on http://{local}/v1");
    eprintln!("wllm: serving {name} on http://{local}/v1");
    rt.block_on(async move {
        let signal = tokio::select! {
            r = &mut server => return r.map_err(std::io::Error::other)?,
            s = signals.recv() => s,
        };
        let _ = stop_tx.send(true);
        log::info!("{signal}: stopped accepting; finishing requests within {grace:?}");
        eprintln!("wllm: {signal}: finishing requests in flight (up to {grace:?})");
        match tokio::time::timeout(grace, server).await {
            Ok(r) => r.map_err(std::io::Error::other)?,
            Err(_) => {
                log::warn!("requests still in flight after {grace:?}: closing them");
                Ok(())
            }
        }
    })?;
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C) handlers, registered when made (inside a runtime), so the
/// default action (ending the process) is off from then on.
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(not(unix))]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {
                ctrl_c: tokio::signal::windows::ctrl_c()?,
            })
        }
    }

    /// Waits for the first signal, and names it.
    async fn recv(mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            self.ctrl_c.recv().await;
            "Ctrl-C"
        }
    }
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

/// The whole request body, within the byte limit (413) and the body timeout (408). A body
/// whose declared length is over the limit is refused before any of it is read.
async fn read_body(opts: &ServerOptions, body: Body) -> Result<Bytes, ApiError> {
    let limit = opts.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over this server's limit of {limit} bytes"),
        )
        .code("body_too_large")
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(opts.body_timeout, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad(format!(
            "reading the request body failed: {e}"
        ))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {:?}",
                opts.body_timeout
            ),
        )
        .code("body_timeout")),
    }
}

/// Refuses a prompt of `bytes` over the limit, before rendering or tokenizing it costs
/// anything.
fn check_prompt_bytes(
    opts: &ServerOptions,
    bytes: usize,
    param: &'static str,
) -> Result<(), ApiError> {
    let limit = opts.max_prompt_bytes;
    if bytes <= limit {
        return Ok(());
    }
    Err(ApiError::param(
        format!(
            "the prompt is {bytes} bytes, more than this server's limit of {limit} bytes \
             (--max-prompt-bytes)"
        ),
        param,
    )
    .code("prompt_too_large"))
}

/// Runs `f` on tokio's blocking pool: chat rendering, tokenizing and detokenizing a large
/// prompt take long enough to stall every other connection on an async worker.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the tokenizer task failed: {e}"),
        )),
    }
}

async fn tokenize(st: &AppState, prompt: Prompt) -> Result<Vec<u32>, ApiError> {
    let engine = st.engine.clone();
    off_runtime(move || engine.prompt_ids(&prompt)).await
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

/// A request the engine failed after accepting it (admission is refused at submit, as a 429,
/// never here): the engine shutting down is a 503, anything else a 500.
fn failed(e: String) -> ApiError {
    if e.contains("shut down") {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e)
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
    /// The access log's token count for this request.
    tally: Option<Arc<Tally>>,
    /// The request asked for logprobs.
    logprobs: bool,
    include_usage: bool,
    /// How a chat answer is read (reasoning, tool calls); `None` for completions.
    chat: Option<tools::ChatOutput>,
}

/// The completion budget of a prompt of `prompt_tokens`: the request's `max_tokens`, or up to
/// the end of the context; refused when the two do not fit together.
fn completion_budget(st: &AppState, prompt_tokens: usize, p: &Params) -> Result<usize, ApiError> {
    let limit = max_seq_tokens(&st.engine);
    if prompt_tokens + 1 > limit {
        return Err(ApiError::bad(format!(
            "This model's maximum context length is {limit} tokens. However, your prompt has \
             {prompt_tokens} tokens, which leaves no room for a completion."
        ))
        .code("context_length_exceeded"));
    }
    match p.max_tokens {
        Some(m) if prompt_tokens + m > limit => Err(ApiError::param(
            format!(
                "This model's maximum context length is {limit} tokens. However, you \
                 requested {} tokens ({prompt_tokens} in the prompt, {m} for the \
                 completion). Please reduce the prompt or the completion length.",
                prompt_tokens + m
            ),
            "max_tokens",
        )
        .code("context_length_exceeded")),
        Some(m) => Ok(m),
        None => Ok(limit - prompt_tokens),
    }
}

/// Submits `n` requests (all or none); the engine refuses them when its running slots and
/// waiting queue are both full (429).
fn submit(
    st: &AppState,
    kind: Kind,
    ids: Vec<u32>,
    max_tokens: usize,
    p: &Params,
    echo: Option<String>,
    tally: Option<Arc<Tally>>,
) -> Result<Job, ApiError> {
    let prompt_tokens = ids.len();
    // One prompt, n completions: the engine prefills once and forks (choice i samples with
    // seed + i).
    let mut req = Request::new(Prompt::Ids(ids));
    req.max_tokens = max_tokens;
    req.sampling = p.sampling.clone();
    req.sampling.seed = p.seed.unwrap_or_else(random_u64);
    req.stop = p.stop.clone();
    req.ignore_eos = p.ignore_eos;
    req.speculative = p.speculative;
    req.persist = p.persist;
    req.logprobs = p.logprobs;
    let vocab = st.engine.model_config().vocab_size;
    if let Some((id, _)) = p.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
        return Err(ApiError::param(
            format!("logit_bias names token {id}, outside the vocabulary of {vocab} tokens"),
            "logit_bias",
        ));
    }
    req.logit_bias = p.logit_bias.clone();
    req.grammar = p.grammar.clone();
    let handles = st.engine.submit_n(req, p.n)?;
    if let Some(t) = &tally {
        t.prompt(prompt_tokens);
    }
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
        tally,
        include_usage: p.include_usage,
        logprobs: p.logprobs.is_some(),
        chat: None,
    })
}

/// The request's token tally (set by the access log layer) and its body.
fn tally_and_body(req: HttpRequest) -> (Option<Arc<Tally>>, Body) {
    let tally = req.extensions().get::<Arc<Tally>>().cloned();
    (tally, req.into_body())
}

async fn chat_completions(State(st): St, req: HttpRequest) -> Response {
    let (tally, body) = tally_and_body(req);
    match chat_inner(st, tally, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(
    st: Arc<AppState>,
    tally: Option<Arc<Tally>>,
    body: Body,
) -> Result<Response, ApiError> {
    let b: ChatBody = openai::parse(&read_body(&st.opts, body).await?)?;
    check_model(&st, &b.common.model)?;
    let mut p = b.common.params(true)?;
    let tool_req =
        tools::validate(b.tools.as_ref(), b.tool_choice.as_ref()).map_err(|e| match e {
            tools::ToolError::Tools(m) => ApiError::param(m, "tools"),
            tools::ToolError::Choice(m) => ApiError::param(m, "tool_choice"),
        })?;
    let forced = matches!(
        tool_req.choice,
        tools::ToolChoice::Required | tools::ToolChoice::Named(_)
    );
    if let (true, Some(other)) = (forced, p.grammar_param) {
        return Err(ApiError::param(
            format!("tool_choice forces a tool call: it cannot be combined with `{other}`"),
            "tool_choice",
        ));
    }
    let kwargs = tools::kwargs_of(b.chat_template_kwargs.as_ref())
        .map_err(|m| ApiError::param(m, "chat_template_kwargs"))?;
    let messages = openai::chat_messages(&b.messages)?;
    let tools_bytes = b.tools.as_ref().map_or(0, |t| t.to_string().len());
    let bytes = messages
        .iter()
        .map(|m| {
            let calls = m
                .tool_calls
                .as_ref()
                .map_or(0, |c| Value::from(c.clone()).to_string().len());
            m.role.len() + m.text().len() + calls
        })
        .sum::<usize>()
        + tools_bytes;
    check_prompt_bytes(&st.opts, bytes, "messages")?;
    let engine = st.engine.clone();
    let tr = tool_req.clone();
    // Rendering and tokenizing stay off the async workers (see `off_runtime`).
    let (ids, format, thinking_open) = off_runtime(move || {
        let tok = engine.tokenizer().ok_or_else(|| {
            crate::Error::InvalidRequest("the model has no tokenizer: send token ids".into())
        })?;
        let template = tok.chat_template().unwrap_or("");
        let format = tools::detect(template);
        let (messages, ctx_tools) = tools::prepare(template, messages, &tr);
        let mut ctx = tok.chat_context(true);
        ctx.tools = ctx_tools;
        ctx.kwargs = kwargs;
        let rendered = tok.render_chat_with(&messages, &ctx)?;
        let ids = tok.encode(&rendered)?;
        Ok((ids, format, tools::prompt_opens_thinking(&rendered)))
    })
    .await?;
    // The forcing grammar depends on the model's call format, known once its template is.
    if let Some(g) = tools::forced_grammar(format, &tool_req) {
        p.grammar = Some(g);
    }
    let max_tokens = completion_budget(&st, ids.len(), &p)?;
    let mut job = submit(&st, Kind::Chat, ids, max_tokens, &p, None, tally)?;
    job.chat = Some(tools::ChatOutput {
        tools: tool_req.active().then_some(format),
        // A grammar decides the text from its first token: nothing is left of a think block
        // the template opened, and the constrained text is the answer.
        thinking_open: thinking_open && p.grammar.is_none(),
    });
    Ok(respond(st, job, p.stream).await)
}

async fn completions(State(st): St, req: HttpRequest) -> Response {
    let (tally, body) = tally_and_body(req);
    match completions_inner(st, tally, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(
    st: Arc<AppState>,
    tally: Option<Arc<Tally>>,
    body: Body,
) -> Result<Response, ApiError> {
    let b: CompletionBody = openai::parse(&read_body(&st.opts, body).await?)?;
    check_model(&st, &b.common.model)?;
    let p = b.common.params(false)?;
    let (ids, text) = match openai::completion_prompt(&b.prompt)? {
        PromptIn::Text(t) => {
            check_prompt_bytes(&st.opts, t.len(), "prompt")?;
            (tokenize(&st, Prompt::Text(t.clone())).await?, Some(t))
        }
        PromptIn::Ids(ids) => (ids, None),
    };
    let max_tokens = completion_budget(&st, ids.len(), &p)?;
    let echo = match (b.echo.unwrap_or(false), text) {
        (false, _) => None,
        (true, Some(t)) => Some(t),
        (true, None) => Some(detokenize(&st, ids.clone()).await?),
    };
    let job = submit(&st, Kind::Text, ids, max_tokens, &p, echo, tally)?;
    Ok(respond(st, job, p.stream).await)
}

/// The text of token ids (a completions `echo` of an id prompt; empty without a tokenizer).
async fn detokenize(st: &AppState, ids: Vec<u32>) -> Result<String, ApiError> {
    let engine = st.engine.clone();
    off_runtime(move || match engine.tokenizer() {
        Some(tok) => tok.decode(&ids).map_err(crate::Error::from),
        None => Ok(String::new()),
    })
    .await
}
