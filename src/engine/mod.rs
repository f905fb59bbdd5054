//! The serving engine: requests from any thread, one batched forward pass per step on an
//! engine thread, each request's tokens streamed back as they are sampled.
//!
//! ```text
//! submit(Request) ── tokenize, validate ──► engine thread: scheduler.add
//! engine thread, every step: schedule ─► StepBatch ─► Runner::forward ─► sample ─► update
//!                                         ─► detokenize, stop strings ─► Event to the handle
//! ```
//! `submit` never waits for the GPU; dropping a [`RequestHandle`] aborts its request, and the
//! request's KV blocks are freed within one step.

mod active;
mod draft;
mod stop;
mod tiers;
mod worker;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::channel::mpsc;

use crate::error::{Error, Result};
use crate::generate::{
    FinishReason, KvPlan, ModelOptions, kv_bytes_per_token, load_tokenizer, load_weights_and_plan,
};
use crate::gpu::{AdapterSelector, GpuContext, Runner, RunnerConfig};
use crate::kv::{BlockPool, BlockTable, check_block_size};
use crate::model::{ModelConfig, ModelFiles};
use crate::sampling::{Grammar, GrammarCompiler, GrammarState, MAX_LOGIT_BIAS, SamplingParams};
use crate::scheduler::{Scheduler, SchedulerConfig, SeqId};
use crate::spec::{SpecConfig, SpecMethod};
use crate::tier::{KvTierConfig, TierStats};
use crate::tokenizer::{ChatMessage, Tokenizer};

pub use stop::{StopMatcher, StopResult};

/// Everything needed to start an engine. Only the model path has no default.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model: ModelOptions,
    /// Sequences that may wait for admission while `model.max_seqs` run; a request that
    /// finds both full is refused with [`Error::QueueFull`] (a request of `n` completions
    /// counts `n`).
    pub max_waiting: usize,
    /// Which adapter to open when no device is handed over.
    pub adapter: AdapterSelector,
    /// Sample on the GPU where it can (no penalties, no logprobs) and read back one id per
    /// row, or read back every sampled row and sample on the CPU: the same algorithm, so the
    /// same tokens up to exp/ln rounding in a near tie. `None`: on the GPU kernel forms only
    /// (on a CPU adapter the CPU sampler is the faster one). Greedy rows always take the
    /// GPU's argmax.
    pub gpu_sampling: Option<bool>,
    /// Schedule and submit step k+1 before step k is read back whenever every row of step
    /// k is picked on the GPU (greedy, or sampled on the GPU): the GPU feeds step k's tokens
    /// to step k+1, and the CPU's work between steps (reading back, detokenizing, stop
    /// checks, scheduling, building the batch) runs while the GPU computes. A sequence that
    /// stops on a token seen late has computed one token more, which is dropped. Since every
    /// kernel gives a request the same results whatever its batch, the tokens are the same
    /// either way (batches may differ: the late stopper takes a slot for one step). `None`:
    /// on the GPU kernel forms only — a CPU adapter runs the whole step inside the submit
    /// call, so there is nothing to overlap and each token would reach its request one step
    /// later.
    pub overlap_steps: Option<bool>,
    /// Speculative decoding for every request that does not turn it off
    /// ([`Request::speculative`]); `None`: off unless a request asks (then n-gram drafting of
    /// [`DEFAULT_SPEC_TOKENS`]). Drafted tokens are verified in the same step; the output is
    /// the plain decode's, token for token.
    pub speculative: Option<SpecConfig>,
    /// Where prefix blocks evicted from the GPU go (host memory, on by default) and the
    /// opt-in disk tier (see [`crate::tier`]).
    pub kv_tiers: KvTierConfig,
}

/// Tokens drafted per step when a request asks for speculation and the engine sets none.
pub const DEFAULT_SPEC_TOKENS: usize = 4;

impl EngineConfig {
    pub fn new(model: impl Into<std::path::PathBuf>) -> Self {
        Self {
            model: ModelOptions::new(model),
            max_waiting: 1024,
            adapter: AdapterSelector::default(),
            gpu_sampling: None,
            overlap_steps: None,
            speculative: None,
            kv_tiers: KvTierConfig::default(),
        }
    }
}

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Plain text, tokenized as is.
    Text(String),
    /// Messages rendered with the model's chat template (generation prompt added).
    Chat(Vec<ChatMessage>),
    /// Token ids.
    Ids(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; the stop text is not emitted.
    pub stop: Vec<String>,
    /// Keep going past the model's end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Report each generated token's log-probability and this many most likely alternatives
    /// (from the model's distribution before sampling adjustments); `None` = off.
    pub logprobs: Option<usize>,
    /// Structured output: the generated text must follow this grammar (the request ends when
    /// the grammar is complete).
    pub grammar: Option<Grammar>,
    /// Added to these tokens' logits before sampling (OpenAI `logit_bias`; -100 bans a token).
    pub logit_bias: Vec<(u32, f32)>,
    /// Speculative decoding on or off for this request (`None`: the engine's setting). It
    /// never changes the output, only how many steps it takes. Requests with a `grammar` run
    /// without it.
    pub speculative: Option<bool>,
    /// Keep this prompt's KV in the disk tier (when the engine has one) for later requests
    /// and later runs: the API's `cache: "persist"`.
    pub persist: bool,
}

impl Request {
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            grammar: None,
            logit_bias: Vec::new(),
            speculative: None,
            persist: false,
        }
    }
}

/// Token counts and latency of one request.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// From submit to the first generated token.
    pub time_to_first_token: Option<Duration>,
    /// From submit to the end.
    pub total_time: Duration,
}

/// Log-probability of one generated token, and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub token: u32,
    /// ln p(token) under the model's softmax.
    pub logprob: f32,
    /// (id, ln p) of the most likely tokens, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What a request's stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (possibly empty while a UTF-8 character or a possible stop string is
    /// incomplete), the token ids it came from and, when asked for, their log-probabilities
    /// (one per id).
    Delta {
        text: String,
        token_ids: Vec<u32>,
        logprobs: Vec<TokenLogprob>,
    },
    /// The last event of a request.
    Finished { reason: FinishReason, usage: Usage },
    /// The request failed on the engine side (also the last event).
    Failed(String),
}

/// The collected result of one request.
#[derive(Debug, Clone)]
pub struct Completion {
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// One per output id when the request asked for logprobs, else empty.
    pub logprobs: Vec<TokenLogprob>,
}

/// A snapshot of the engine's memory and queues.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EngineStats {
    pub blocks_total: usize,
    pub blocks_used: usize,
    pub blocks_free: usize,
    pub block_size: usize,
    pub kv_bytes_per_token: u64,
    pub kv_bytes_per_block: u64,
    /// Tokens whose KV the running sequences hold.
    pub tokens_held: usize,
    /// (allocated slots − tokens held) / allocated slots, in percent, now.
    pub kv_waste_pct: f64,
    /// The same, averaged over the steps run so far.
    pub mean_kv_waste_pct: f64,
    pub preemptions: u64,
    pub requests_waiting: usize,
    pub requests_running: usize,
    pub requests_finished: u64,
    pub peak_blocks_used: usize,
    pub steps: u64,
    /// Mean wall time of a step, and of its host part: the wall time less the time spent
    /// in submit calls and waiting for read backs (scheduling, building the batch, recording and submitting,
    /// handling the tokens). Steps run one at a time leave the GPU idle for the host part;
    /// overlapped steps ([`EngineConfig::overlap_steps`]) run it while the GPU computes.
    pub mean_step_us: f64,
    pub mean_host_us_per_step: f64,
    /// Steps read back only after the next step was submitted
    /// ([`EngineConfig::overlap_steps`]).
    pub overlapped_steps: u64,
    /// Prompt tokens looked up in the prefix cache, and how many were found (cumulative).
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub prefix_hit_rate: f64,
    /// Blocks holding reusable KV (in use or free).
    pub cached_blocks: usize,
    pub evictions: u64,
    /// Speculative decoding: tokens drafted and verified, and of those accepted (cumulative).
    pub spec_drafted_tokens: u64,
    pub spec_accepted_tokens: u64,
    /// The host and disk tiers: hits, restores and bytes per tier.
    pub kv_tiers: TierStats,
}

pub(crate) enum Command {
    Submit(Box<worker::Pending>),
    /// The disk tier's loader read a parked request's blocks (worker/tiers.rs).
    DiskLoaded(Box<worker::Loaded>),
    Abort(SeqId),
    /// Fail every live request and end the engine thread (the engine is being dropped).
    Shutdown,
}

/// Admission counts sequences (a request with `n` completions is `n`): the engine holds at
/// most `max_num_seqs` running plus `max_waiting` waiting, so a request is refused only when
/// the running slots and the waiting queue are both full. `queued + held` never undercounts:
/// the engine thread adds to `held` before it subtracts from `queued`, and only it writes `held`.
pub(crate) struct Shared {
    commands: Mutex<std::sync::mpsc::Sender<Command>>,
    /// Sequences submitted but not yet taken in by the engine thread.
    queued: AtomicUsize,
    /// Sequences the engine thread holds (waiting, running, or waiting to fork from their
    /// parent), as of its last update.
    held: AtomicUsize,
    stats: Mutex<EngineStats>,
}

impl Shared {
    fn send(&self, c: Command) -> bool {
        self.commands
            .lock()
            .map(|tx| tx.send(c).is_ok())
            .unwrap_or(false)
    }
}

/// The engine: a loaded model, its KV pool and the thread that steps them.
pub struct Engine {
    shared: Arc<Shared>,
    tokenizer: Option<Tokenizer>,
    model: ModelConfig,
    max_waiting: usize,
    /// Sequences that may run in one step (`max_num_seqs`).
    max_running: usize,
    max_seq_tokens: usize,
    kv_plan: KvPlan,
    next_id: AtomicU64,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Built at the first request with a grammar (the vocabulary's token trie).
    grammars: std::sync::OnceLock<std::result::Result<Arc<GrammarCompiler>, String>>,
}

impl Engine {
    /// Opens the adapter the config selects and loads the model.
    pub fn new(cfg: EngineConfig) -> Result<Engine> {
        let ctx = GpuContext::new(&cfg.adapter)?;
        Self::with_context(&ctx, cfg, &mut |_, _| {})
    }

    /// Loads the model on a device the caller already has; `progress(done, total)` reports
    /// the bytes of the file's tensors loaded so far and in all.
    pub fn with_context(
        ctx: &GpuContext,
        cfg: EngineConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Engine> {
        let opts = &cfg.model;
        check_block_size(opts.block_size)?;
        check_step_limits(opts.max_seqs, opts.max_batch_tokens)?;
        let files = ModelFiles::open(&opts.path)?;
        let model = crate::generate::model_config(&files, opts)?;
        let tokenizer = load_tokenizer(&files)?;
        // A draft model's pool holds as many blocks as the target's: the memory budget pays
        // for both.
        let draft_path = match cfg.speculative.as_ref().map(|s| &s.method) {
            Some(SpecMethod::Draft { path }) => Some(path.clone()),
            _ => None,
        };
        let companion = match &draft_path {
            Some(path) => draft::companion(path, opts)?,
            None => Default::default(),
        };
        let (weights, kv_plan) =
            load_weights_and_plan(ctx, &files, &model, opts, companion, progress)?;
        let num_blocks = kv_plan.num_blocks;
        let bs = opts.block_size;
        let per_block = kv_bytes_per_token(&model, opts.dtype) * bs as u64;
        let max_batch_tokens = opts.max_batch_tokens;
        let rc = RunnerConfig {
            kv_dtype: opts.dtype,
            block_size: bs,
            num_blocks,
            max_batch_tokens,
            max_seqs: opts.max_seqs,
        };
        let runner = Runner::new(ctx, crate::model::forward(&model, weights)?, rc)?;
        let pool = BlockPool::new(num_blocks, bs)?;
        let draft = match &draft_path {
            Some(path) => Some(draft::DraftModel::load(
                ctx,
                path,
                opts,
                tokenizer.as_ref(),
                model.vocab_size,
                num_blocks,
            )?),
            None => None,
        };
        let window = kv_window(&model);
        // Positions the runner's tables reach (its RoPE table and block-table width).
        let runner_positions = (runner.max_blocks() * bs).min(model.max_context);
        let sched_cfg = SchedulerConfig {
            max_num_seqs: rc.max_seqs,
            max_num_batched_tokens: rc.max_batch_tokens,
            // With a window the pool no longer bounds a sequence (it gives back the blocks
            // the window has passed), so the runner's positions are the limit: a sequence is
            // length-capped there rather than refused.
            max_model_len: match window {
                Some(_) => runner_positions,
                None => model.max_context,
            },
            // The engine enforces the cap at submit (see `Engine::submit_n`), so the scheduler
            // never refuses a request that was already accepted.
            max_waiting: usize::MAX,
            enable_prefix_cache: opts.enable_prefix_cache,
            sliding_window: window,
            ..SchedulerConfig::default()
        };
        // The longest sequence the pool (or with a window, the runner) can ever hold.
        let max_seq_tokens = match window {
            Some(_) => runner_positions,
            None => (num_blocks * bs).min(model.max_context),
        };
        let stats = EngineStats {
            blocks_total: num_blocks,
            blocks_free: num_blocks,
            block_size: bs,
            kv_bytes_per_token: kv_bytes_per_token(&model, opts.dtype),
            kv_bytes_per_block: per_block,
            ..Default::default()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            commands: Mutex::new(tx.clone()),
            queued: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            stats: Mutex::new(stats),
        });
        let mut sched = Scheduler::new(sched_cfg, pool)?;
        let tiers = tiers::open(ctx, (&files, &model), &cfg, &runner, &mut sched, tx.clone())?;
        let worker = worker::Worker::new(
            runner,
            sched,
            tokenizer.clone(),
            shared.clone(),
            worker::StepOptions {
                gpu_sampling: cfg.gpu_sampling.unwrap_or(ctx.profile.gpu_sampling),
                overlap: cfg.overlap_steps.unwrap_or(ctx.profile.overlap_steps),
                spec: cfg.speculative.clone(),
                draft,
            },
            tiers,
        );
        let thread = std::thread::Builder::new()
            .name("wllm-engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| Error::InvalidRequest(format!("cannot start the engine thread: {e}")))?;
        log::info!(
            "engine ready: {} KV blocks of {bs} tokens, {} seqs × {} tokens per step",
            num_blocks,
            rc.max_seqs,
            rc.max_batch_tokens
        );
        Ok(Engine {
            shared,
            tokenizer,
            model,
            max_waiting: cfg.max_waiting,
            max_running: rc.max_seqs,
            max_seq_tokens,
            kv_plan,
            next_id: AtomicU64::new(1),
            thread: Some(thread),
            grammars: std::sync::OnceLock::new(),
        })
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.model
    }

    pub fn stats(&self) -> EngineStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Token ids of a prompt (chat rendering and tokenization happen on the caller's thread).
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let tok = || {
            self.tokenizer.as_ref().ok_or_else(|| {
                Error::InvalidRequest("the model has no tokenizer: send token ids".into())
            })
        };
        Ok(match prompt {
            Prompt::Ids(ids) => ids.clone(),
            Prompt::Text(t) => tok()?.encode(t)?,
            Prompt::Chat(m) => {
                let t = tok()?;
                t.encode(&t.render_chat(m, true)?)?
            }
        })
    }

    /// Queues a request. Errors at once (nothing is queued) for a request that can never run
    /// or when the waiting queue is full; otherwise returns the stream of its events.
    pub fn submit(&self, req: Request) -> Result<RequestHandle> {
        let mut handles = self.submit_n(req, 1)?;
        handles.pop().ok_or(Error::EngineStopped)
    }

    /// Parallel sampling: `n` completions of one prompt. The prompt is prefilled once and its
    /// KV blocks are shared by the `n` sequences (the partly filled last block is copied on
    /// write). Completion i samples with seed `req.sampling.seed + i`, so it equals what a
    /// separate request with that seed would produce. One handle per completion.
    pub fn submit_n(&self, req: Request, n: usize) -> Result<Vec<RequestHandle>> {
        if n == 0 {
            return Err(Error::InvalidRequest("n must be at least 1".into()));
        }
        let capacity = self.capacity();
        if n > capacity {
            return Err(Error::InvalidRequest(format!(
                "n = {n} completions is more than the engine can ever hold: {capacity} \
                 sequences (max_num_seqs {} running + max_waiting {} waiting)",
                self.max_running, self.max_waiting
            )));
        }
        let ids = self.prompt_ids(&req.prompt)?;
        self.check(&ids, &req)?;
        let grammar = req
            .grammar
            .as_ref()
            .map(|g| self.compile_grammar(g))
            .transpose()?;
        let queued = self.shared.queued.fetch_add(n, Ordering::SeqCst);
        if queued + n + self.shared.held.load(Ordering::SeqCst) > capacity {
            self.shared.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(Error::QueueFull(self.max_waiting));
        }
        let mut handles = Vec::with_capacity(n);
        let mut senders = Vec::with_capacity(n);
        for _ in 0..n {
            let id = SeqId(self.next_id.fetch_add(1, Ordering::Relaxed));
            let (tx, rx) = mpsc::unbounded();
            senders.push((id, tx));
            handles.push(RequestHandle {
                id,
                prompt_ids: ids.clone(),
                rx,
                shared: self.shared.clone(),
                done: false,
            });
        }
        let pending = worker::Pending::new(ids, req, grammar, senders);
        if !self.shared.send(Command::Submit(Box::new(pending))) {
            self.shared.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(Error::EngineStopped);
        }
        Ok(handles)
    }

    /// A fresh state of `grammar` over this model's vocabulary, or why it is refused.
    fn compile_grammar(&self, grammar: &Grammar) -> Result<GrammarState> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| {
            Error::InvalidRequest("structured output needs the model's tokenizer".into())
        })?;
        let compiler = self.grammars.get_or_init(|| {
            let t = std::time::Instant::now();
            let c = GrammarCompiler::new(tok, self.model.vocab_size, tok.stop_token_ids());
            log::info!("grammar token trie built in {:?}", t.elapsed());
            c.map(Arc::new)
        });
        let compiler = compiler
            .as_ref()
            .map_err(|e| Error::InvalidRequest(format!("structured output: {e}")))?;
        compiler
            .compile(grammar)
            .map_err(|e| Error::InvalidRequest(format!("invalid grammar: {e}")))
    }

    /// The longest sequence (prompt + output) a request may reach.
    pub fn max_seq_tokens(&self) -> usize {
        self.max_seq_tokens
    }

    /// How the KV pool was sized (and the weights' GPU bytes), for startup lines and logs.
    pub fn kv_plan(&self) -> &KvPlan {
        &self.kv_plan
    }

    /// Sequences the engine holds at most: every running slot and the waiting queue.
    pub fn capacity(&self) -> usize {
        self.max_running.saturating_add(self.max_waiting)
    }

    fn check(&self, ids: &[u32], req: &Request) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if req.max_tokens == 0 {
            return Err(Error::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        if let Some(id) = ids.iter().find(|id| **id as usize >= self.model.vocab_size) {
            return Err(Error::InvalidRequest(format!(
                "token id {id} is outside the vocabulary of {}",
                self.model.vocab_size
            )));
        }
        // The prompt plus at least one generated token must fit the context and the pool.
        if ids.len() + 1 > self.max_seq_tokens {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {} tokens; at most {} fit (model context {}, KV pool {} tokens)",
                ids.len(),
                self.max_seq_tokens - 1,
                self.model.max_context,
                self.stats().blocks_total * self.stats().block_size
            )));
        }
        req.sampling
            .validate()
            .map_err(|e| Error::InvalidRequest(format!("sampling: {e}")))?;
        if req.logit_bias.len() > MAX_LOGIT_BIAS {
            return Err(Error::InvalidRequest(format!(
                "logit_bias has {} entries; at most {MAX_LOGIT_BIAS} are allowed",
                req.logit_bias.len()
            )));
        }
        for &(id, bias) in &req.logit_bias {
            if id as usize >= self.model.vocab_size {
                return Err(Error::InvalidRequest(format!(
                    "logit_bias: token id {id} is outside the vocabulary of {}",
                    self.model.vocab_size
                )));
            }
            if !(-100.0..=100.0).contains(&bias) {
                return Err(Error::InvalidRequest(format!(
                    "logit_bias: the bias of token {id} is {bias}; it must be in [-100, 100]"
                )));
            }
        }
        Ok(())
    }

    /// Submits and waits for the whole completion (a blocking convenience).
    pub fn generate(&self, req: Request) -> Result<Completion> {
        self.submit(req)?.wait()
    }
}

impl Drop for Engine {
    /// Fails the live requests (their handles see [`Event::Failed`]) and joins the engine
    /// thread, which waits at most for the step on the GPU.
    fn drop(&mut self) {
        if let Ok(mut tx) = self.shared.commands.lock() {
            let _ = tx.send(Command::Shutdown);
            // Handles that abort later find the channel closed.
            let (dead, _) = std::sync::mpsc::channel();
            *tx = dead;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request's event stream. Dropping it before the end aborts the request.
pub struct RequestHandle {
    id: SeqId,
    prompt_ids: Vec<u32>,
    rx: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    done: bool,
}

impl RequestHandle {
    pub fn id(&self) -> u64 {
        self.id.0
    }

    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// Stops the request; its blocks are freed within one engine step.
    pub fn abort(&mut self) {
        if !self.done {
            self.done = true;
            self.shared.send(Command::Abort(self.id));
        }
    }

    /// Blocks until the request ends and returns everything it produced.
    pub fn wait(self) -> Result<Completion> {
        let mut text = String::new();
        let mut output_ids = Vec::new();
        let mut logprobs = Vec::new();
        let prompt_ids = self.prompt_ids.clone();
        for ev in futures::executor::block_on_stream(self) {
            match ev {
                Event::Delta {
                    text: t,
                    token_ids,
                    logprobs: lp,
                } => {
                    text.push_str(&t);
                    output_ids.extend(token_ids);
                    logprobs.extend(lp);
                }
                Event::Finished { reason, usage } => {
                    return Ok(Completion {
                        prompt_ids,
                        output_ids,
                        text,
                        finish_reason: reason,
                        usage,
                        logprobs,
                    });
                }
                Event::Failed(e) => return Err(Error::InvalidRequest(e)),
            }
        }
        Err(Error::EngineStopped)
    }
}

impl Stream for RequestHandle {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let p = Pin::new(&mut self.rx).poll_next(cx);
        if let Poll::Ready(Some(Event::Finished { .. } | Event::Failed(_)) | None) = &p {
            self.done = true;
        }
        p
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Refuses step limits the engine cannot run with instead of changing them behind the
/// caller's back: a step must fit one decode token of every running sequence (vLLM refuses
/// the same).
fn check_step_limits(max_seqs: usize, max_batch_tokens: usize) -> Result<()> {
    if max_seqs == 0 || max_batch_tokens == 0 {
        return Err(Error::InvalidRequest(format!(
            "max_num_seqs ({max_seqs}) and max_num_batched_tokens ({max_batch_tokens}) must be at least 1"
        )));
    }
    if max_seqs > max_batch_tokens {
        return Err(Error::InvalidRequest(format!(
            "max_num_seqs ({max_seqs}) exceeds max_num_batched_tokens ({max_batch_tokens}): a \
             step must fit one token of every running sequence; lower max_num_seqs or raise \
             max_num_batched_tokens"
        )));
    }
    Ok(())
}

/// The keys every layer of `model` attends to at most: the largest sliding window when every
/// layer has one (Mistral-7B-v0.1: 4096 on all layers), else `None` (a layer that sees the
/// whole context — Llama, or Gemma 2/3's global layers — reads every block to the end).
/// The scheduler gives back the blocks a sequence's window has passed.
pub fn kv_window(model: &ModelConfig) -> Option<usize> {
    let windows: Option<Vec<usize>> = model.layer_windows.iter().copied().collect();
    windows?.into_iter().max()
}

/// Blocks a table would need for `tokens` (re-exported arithmetic for planning).
pub fn blocks_for(tokens: usize, block_size: usize) -> usize {
    BlockTable::blocks_needed(tokens, block_size)
}
