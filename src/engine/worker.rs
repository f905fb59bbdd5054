//! The engine thread: owns the runner and the scheduler and steps them while there is work.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use futures::channel::mpsc::UnboundedSender;

use super::active::{Active, SpecState};
use super::draft::DraftModel;
use super::{Command, Event, Request, Shared, StopMatcher, StopResult, TokenLogprob, Usage};
use crate::generate::FinishReason;
use crate::gpu::{Runner, StepTicket};
use crate::sampling::{GrammarState, Sampler, merge_biases, top_k};
use crate::scheduler::{PENDING_TOKEN, SchedError, Scheduler, SchedulerOutput, SeqId};
use crate::spec::SpecConfig;
use crate::tokenizer::Tokenizer;

mod batch;
mod speculate;
mod stats;
mod tiers;

pub(crate) use tiers::{Loaded, Tiers};

/// A submitted request on its way to the engine thread: one prompt, one or more
/// completions (parallel sampling), each with its id and event channel.
pub(crate) struct Pending {
    prompt: Vec<u32>,
    req: Request,
    /// The request's grammar, compiled at submit (each completion starts from a copy).
    grammar: Option<GrammarState>,
    completions: Vec<(SeqId, UnboundedSender<Event>)>,
    submitted: Instant,
}

impl Pending {
    pub(crate) fn new(
        prompt: Vec<u32>,
        req: Request,
        grammar: Option<GrammarState>,
        completions: Vec<(SeqId, UnboundedSender<Event>)>,
    ) -> Self {
        Self {
            prompt,
            req,
            grammar,
            completions,
            submitted: Instant::now(),
        }
    }
}

/// A completion of a parallel-sampling request waiting for its parent's prefill, to be
/// forked from it when the parent samples its first token.
struct ForkChild {
    id: SeqId,
    active: Active,
}

pub(crate) struct Worker {
    runner: Runner,
    sched: Scheduler,
    tokenizer: Option<Tokenizer>,
    stop_ids: Vec<u32>,
    shared: Arc<Shared>,
    active: HashMap<SeqId, Active>,
    /// Parallel-sampling completions waiting for their parent's first token.
    forks: HashMap<SeqId, Vec<ForkChild>>,
    finished: u64,
    steps: u64,
    peak_blocks: usize,
    /// Sum over steps of the KV waste fraction (for the mean).
    waste_sum: f64,
    /// Sums over steps of each step's wall time and of its host part (everything but the span
    /// from the submit to the logits being read back: the time a GPU would sit idle).
    step_us_sum: f64,
    host_us_sum: f64,
    /// Time spent in the GPU's hands: inside submit calls and waiting for read backs.
    wait_us_sum: f64,
    overlapped_steps: u64,
    /// `EngineConfig::gpu_sampling`.
    gpu_sampling: bool,
    /// `EngineConfig::overlap_steps`.
    overlap: bool,
    /// The step submitted and updated with pending tokens, not read back yet.
    in_flight: Option<InFlight>,
    /// Finished events held until the stats that count their blocks as returned are
    /// published ([`Worker::publish_finished`]): once per step, not once per request.
    finished_events: Vec<(UnboundedSender<Event>, Event)>,
    /// The grammar masks of the step being submitted ([`Worker::fill_masks`]).
    masks: Vec<u32>,
    /// `EngineConfig::speculative`.
    spec: Option<SpecConfig>,
    /// The draft model, when `spec` drafts with one.
    draft: Option<DraftModel>,
    /// KV images in host memory and on disk (tiers.rs).
    tiers: Tiers,
}

/// A step whose tokens are pending in the scheduler (see [`Worker::step_inner`]).
struct InFlight {
    ticket: StepTicket,
    /// The sequence of each logits row: the step's sampling sequences in order.
    rows: Vec<SeqId>,
    /// Every sequence of the step.
    seqs: Vec<SeqId>,
    /// What its update reported length-capped: finished once their last token is read back.
    capped: Vec<SeqId>,
}

/// How the worker steps: the engine's choices, resolved for this device.
pub(crate) struct StepOptions {
    pub gpu_sampling: bool,
    pub overlap: bool,
    pub spec: Option<SpecConfig>,
    pub draft: Option<DraftModel>,
}

impl Worker {
    pub(crate) fn new(
        runner: Runner,
        sched: Scheduler,
        tokenizer: Option<Tokenizer>,
        shared: Arc<Shared>,
        opts: StepOptions,
        tiers: Tiers,
    ) -> Self {
        let StepOptions {
            gpu_sampling,
            overlap,
            spec,
            draft,
        } = opts;
        let stop_ids = tokenizer
            .as_ref()
            .map(|t| t.stop_token_ids().to_vec())
            .unwrap_or_default();
        Self {
            runner,
            sched,
            tokenizer,
            stop_ids,
            shared,
            active: HashMap::new(),
            forks: HashMap::new(),
            finished: 0,
            steps: 0,
            peak_blocks: 0,
            waste_sum: 0.0,
            step_us_sum: 0.0,
            host_us_sum: 0.0,
            wait_us_sum: 0.0,
            overlapped_steps: 0,
            gpu_sampling,
            overlap,
            in_flight: None,
            finished_events: Vec::new(),
            masks: Vec::new(),
            spec,
            draft,
            tiers,
        }
    }

    pub(crate) fn run(mut self, rx: Receiver<Command>) {
        loop {
            // Idle: sleep until a command arrives (or every handle and the engine are gone).
            if self.active.is_empty() {
                self.drain();
                // Idle: what was offloaded lands in the host tier before anything asks.
                self.land(true);
                self.publish_finished();
                match rx.recv() {
                    Ok(Command::Shutdown) | Err(_) => return self.shut_down(),
                    Ok(c) => self.command(c),
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(Command::Shutdown) => return self.shut_down(),
                    Ok(c) => self.command(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if self.active.is_empty() {
                            self.publish_finished();
                            return;
                        }
                        break;
                    }
                }
            }
            if !self.active.is_empty() {
                self.step();
            }
            self.publish_finished();
        }
    }

    /// The engine is dropped: the step on the GPU is waited for (a device must not be
    /// dropped under it), and every live request ends with a failure instead of running on.
    fn shut_down(&mut self) {
        self.drain();
        self.flush_tiers();
        self.publish_finished();
        let msg = "the engine was shut down";
        self.fail_parked(msg);
        for id in self.active.keys() {
            let _ = self.sched.abort(*id);
        }
        let children = self.forks.drain().flat_map(|(_, c)| c).map(|c| c.active);
        for a in self.active.drain().map(|(_, a)| a).chain(children) {
            let _ = a.events.unbounded_send(Event::Failed(msg.into()));
        }
        self.publish_stats();
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit(p) => {
                let p = *p;
                // Count it as held before it stops counting as queued, so a concurrent
                // submit never sees the engine emptier than it is.
                let n = p.completions.len();
                self.shared.held.fetch_add(n, Ordering::SeqCst);
                self.shared.queued.fetch_sub(n, Ordering::SeqCst);
                // Its prefix may be on disk: it waits (off the step loop) until loaded.
                if let Some(p) = self.park_for_disk(p) {
                    self.start_request(p);
                }
            }
            Command::DiskLoaded(loaded) => {
                if let Some(p) = self.loaded_from_disk(*loaded) {
                    self.start_request(p);
                }
            }
            Command::Shutdown => self.shut_down(),
            Command::Abort(id) => {
                self.abort_parked(id);
                if self.active.remove(&id).is_some() {
                    let _ = self.sched.abort(id);
                    // Completions still waiting to fork from it start on their own.
                    for child in self.forks.remove(&id).unwrap_or_default() {
                        self.start_alone(child);
                    }
                }
                for children in self.forks.values_mut() {
                    children.retain(|c| c.id != id);
                }
            }
        }
    }

    /// Adds a request to the scheduler: its first completion runs, the others wait to fork
    /// from it.
    fn start_request(&mut self, mut p: Pending) {
        let mut completions = std::mem::take(&mut p.completions).into_iter().enumerate();
        let Some((_, (parent, events))) = completions.next() else {
            return;
        };
        if let Err(e) = self.sched.add(parent, p.prompt.clone(), p.req.max_tokens) {
            let msg = e.to_string();
            let _ = events.unbounded_send(Event::Failed(msg.clone()));
            for (_, (_, ev)) in completions {
                let _ = ev.unbounded_send(Event::Failed(msg.clone()));
            }
            return;
        }
        let children: Vec<ForkChild> = completions
            .map(|(i, (id, ev))| ForkChild {
                id,
                active: self.new_active(&p, i as u64, ev),
            })
            .collect();
        if !children.is_empty() {
            self.forks.insert(parent, children);
        }
        let active = self.new_active(&p, 0, events);
        self.active.insert(parent, active);
    }

    fn new_active(&self, p: &Pending, seed_offset: u64, events: UnboundedSender<Event>) -> Active {
        let (prompt, req, submitted) = (&p.prompt, &p.req, p.submitted);
        let mut sampling = req.sampling.clone();
        sampling.seed = sampling.seed.wrapping_add(seed_offset);
        Active {
            prompt_len: prompt.len(),
            output: Vec::new(),
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos,
            sampler: Sampler::new(sampling),
            detok: self.tokenizer.as_ref().map(|t| t.detokenizer()),
            stop: StopMatcher::new(req.stop.clone()),
            events,
            submitted,
            first_token: None,
            logprobs: req.logprobs,
            cpu_next: false,
            prompt: prompt.to_vec(),
            stop_string_hit: false,
            grammar: p.grammar.clone(),
            logit_bias: merge_biases(&req.logit_bias),
            grammar_error: None,
            spec: self.spec_for(req).map(SpecState::new),
            persist: self.tiers.persists(req.persist, prompt.len()),
        }
    }

    /// A parallel-sampling completion that cannot fork (its parent is gone or the fork was
    /// refused) runs as its own request: same output, just without shared blocks.
    fn start_alone(&mut self, child: ForkChild) {
        let a = child.active;
        match self.sched.add(child.id, a.prompt.clone(), a.max_tokens) {
            Ok(()) => {
                self.active.insert(child.id, a);
            }
            Err(e) => {
                let _ = a.events.unbounded_send(Event::Failed(e.to_string()));
            }
        }
    }

    fn step(&mut self) {
        let start = Instant::now();
        let waited = self.wait_us_sum;
        let ran = self.step_inner();
        self.land(false);
        if ran {
            let wall = start.elapsed().as_secs_f64() * 1e6;
            self.step_us_sum += wall;
            self.host_us_sum += (wall - (self.wait_us_sum - waited)).max(0.0);
        }
    }

    /// Whether `id`'s last token is in the step in flight (not read back yet).
    fn awaiting(&self, id: SeqId) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|f| f.rows.contains(&id))
    }

    /// Fails every live sequence of a step (and the completions waiting to fork from them)
    /// with `msg`.
    fn fail_seqs(&mut self, ids: impl IntoIterator<Item = SeqId>, msg: &str) {
        log::error!("step failed: {msg}");
        for id in ids {
            let children = self.forks.remove(&id).unwrap_or_default();
            let failed = self.active.remove(&id).map(|a| a.events);
            for events in failed
                .into_iter()
                .chain(children.into_iter().map(|c| c.active.events))
            {
                let _ = events.unbounded_send(Event::Failed(msg.to_string()));
            }
            let _ = self.sched.abort(id);
        }
    }

    fn fail_step(&mut self, out: &SchedulerOutput, msg: &str) {
        self.fail_seqs(out.seqs.iter().map(|s| s.id), msg);
    }

    /// Reads back the step in flight, if any, and hands out its tokens.
    fn drain(&mut self) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let t = Instant::now();
        let res = self.runner.wait(f.ticket);
        self.wait_us_sum += t.elapsed().as_secs_f64() * 1e6;
        match res {
            Ok(logits) => {
                for (i, &id) in f.rows.iter().enumerate() {
                    let tok = logits.token(i);
                    match self.sched.resolve_pending(id, tok) {
                        Ok(()) => self.on_token(id, tok, None),
                        // Finished or aborted meanwhile: its token goes nowhere.
                        Err(SchedError::UnknownSeq(_)) => {}
                        Err(e) => self.fail_seqs([id], &format!("scheduler bookkeeping: {e}")),
                    }
                }
                for id in f.capped {
                    if self.active.contains_key(&id) {
                        self.finish(id, FinishReason::Length);
                    }
                }
            }
            // Every sequence of the step goes (also those without a row: the scheduler
            // counted the step's KV as written).
            Err(e) => self.fail_seqs(f.seqs, &e.to_string()),
        }
    }

    /// One engine step; false when nothing was scheduled (no forward ran).
    ///
    /// Overlapped (the default where possible): when every row of the step is picked on the
    /// GPU, the step is submitted, the one before it read back while the GPU runs this one,
    /// and the scheduler updated with pending tokens, so the next step can be scheduled and
    /// submitted before this one is read back; its decodes take their tokens from this
    /// step's picks on the GPU. A sequence that stops on a token read back late has run one
    /// step too many: that token is dropped with it.
    fn step_inner(&mut self) -> bool {
        let out = self.schedule();
        // The host tier's copies first, whatever happens to the step: an evicted block is
        // read back before anything can overwrite it, and a slot reserved for it is always
        // confirmed or given up.
        let transferred = self.transfer(&out);
        for id in out.length_capped.clone() {
            // One whose last token is in flight ends when that token is read back.
            if self.active.contains_key(&id) && !self.awaiting(id) {
                self.finish(id, FinishReason::Length);
            }
        }
        if out.seqs.is_empty() {
            self.drain();
            return false;
        }
        self.steps += 1;
        let copies: Vec<[u32; 2]> = out
            .block_copies
            .iter()
            .map(|c| [c.src.0, c.dst.0])
            .collect();
        let widest = (out.seqs.iter())
            .filter_map(|e| self.sched.block_table(e.id))
            .map(|t| t.blocks().len())
            .max()
            .unwrap_or(1);
        let columns = self.runner.block_columns(widest);
        let batch = match self.sched.step_batch(&out, columns) {
            Ok(b) => self.prepare_batch(&out, b),
            Err(e) => Err(e.to_string()),
        };
        let batch = transferred.and(batch);
        let submitted = batch.and_then(|(batch, masked)| {
            let overlap =
                self.overlap && !out.has_drafts() && batch.full_logits.iter().all(|full| !full);
            self.runner
                .copy_blocks(&copies)
                .and_then(|_| self.runner.submit(&batch, overlap))
                .inspect(|_| self.wait_us_sum += self.runner.last_timing().submit_us)
                .map(|ticket| (ticket, overlap, masked))
                .map_err(|e| e.to_string())
        });
        // The step before is read back while the GPU runs this one.
        self.drain();
        let (mut ticket, overlap, masked) = match submitted {
            Ok(t) => t,
            Err(e) => {
                self.fail_step(&out, &e);
                return false;
            }
        };
        // Every token before this step is known now: the grammar masks of its constrained
        // rows, and the pick that waited for them.
        if ticket.awaits_masks() {
            self.fill_masks(&masked);
            if let Err(e) = self.runner.submit_masks(&mut ticket, &self.masks) {
                let _ = self.runner.wait(ticket);
                self.fail_step(&out, &e.to_string());
                return false;
            }
        }
        if overlap {
            let rows: Vec<SeqId> = out.sampling_ids().collect();
            let pending: Vec<(SeqId, u32)> = rows.iter().map(|id| (*id, PENDING_TOKEN)).collect();
            match self.sched.update(&out, &pending) {
                Ok(capped) => {
                    self.overlapped_steps += 1;
                    self.in_flight = Some(InFlight {
                        ticket,
                        rows,
                        seqs: out.seqs.iter().map(|s| s.id).collect(),
                        capped,
                    });
                    self.peak_blocks = self.peak_blocks.max(self.sched.pool().num_used());
                    self.waste_sum += self.sched.stats().waste;
                    return true;
                }
                Err(e) => {
                    let _ = self.runner.wait(ticket);
                    self.fail_step(&out, &format!("scheduler update failed: {e}"));
                    return false;
                }
            }
        }
        let t = Instant::now();
        let res = self.runner.wait(ticket);
        self.wait_us_sum += t.elapsed().as_secs_f64() * 1e6;
        let logits = match res {
            Ok(l) => l,
            Err(e) => {
                self.fail_step(&out, &e.to_string());
                return false;
            }
        };
        // Logits row i belongs to the i-th sampling sequence of the step.
        let mut sampled = Vec::new();
        let mut logprobs: HashMap<SeqId, Vec<TokenLogprob>> = HashMap::new();
        // Forks to make once this step is recorded: (parent, child, child's first token).
        let mut forks = Vec::new();
        let mut next_row = 0;
        for s in out.seqs.iter().filter(|s| s.sample) {
            let i = next_row;
            next_row += s.num_logit_rows();
            if s.draft > 0 {
                self.verify(s, i, &logits, &mut sampled, &mut logprobs);
                continue;
            }
            let Some(row) = logits.row(i) else {
                // Picked on the GPU, marked above.
                if self.active.contains_key(&s.id) {
                    sampled.push((s.id, logits.token(i)));
                }
                continue;
            };
            if let Some(a) = self.active.get_mut(&s.id) {
                a.cpu_next = false;
                let tok = a.sample(row);
                sampled.push((s.id, tok));
                if let Some(k) = a.logprobs {
                    logprobs
                        .entry(s.id)
                        .or_default()
                        .push(token_logprob(row, tok, k));
                }
            }
            // The parent's prefill is done: its siblings sample their first token from the
            // same logits, each with its own sampler.
            for mut child in self.forks.remove(&s.id).unwrap_or_default() {
                let a = &mut child.active;
                let tok = a.sample(row);
                let lp = a.logprobs.map(|k| token_logprob(row, tok, k));
                forks.push((s.id, child, tok, lp));
            }
        }
        let capped = match self.sched.update(&out, &sampled) {
            Ok(c) => c,
            Err(e) => {
                // A bookkeeping bug, not a user error: fail the step's requests loudly.
                log::error!("scheduler update failed: {e}");
                for s in &out.seqs {
                    if let Some(a) = self.active.remove(&s.id) {
                        let _ = a.events.unbounded_send(Event::Failed(e.to_string()));
                    }
                    let _ = self.sched.abort(s.id);
                }
                return false;
            }
        };
        self.peak_blocks = self.peak_blocks.max(self.sched.pool().num_used());
        self.waste_sum += self.sched.stats().waste;
        // Fork before the parent's own token is handled: that may finish the parent.
        for (parent, child, tok, lp) in forks {
            let id = child.id;
            match self.sched.fork(parent, id, Some(tok)) {
                Ok(()) => {
                    self.active.insert(id, child.active);
                    self.on_token(id, tok, lp);
                }
                Err(e) => {
                    log::debug!("fork of {parent:?} refused ({e}): {id:?} runs on its own");
                    let mut child = child;
                    // Its first token is not kept: running alone it samples it again, identically
                    // (the same key, and on the CPU as the siblings did).
                    child.active.sampler = Sampler::new(child.active.sampler.params().clone());
                    child.active.cpu_next = true;
                    self.start_alone(child);
                }
            }
        }
        // A verified entry's tokens in order; its logprobs (one per token) likewise.
        let mut logprobs: HashMap<SeqId, std::vec::IntoIter<TokenLogprob>> = (logprobs.into_iter())
            .map(|(id, v)| (id, v.into_iter()))
            .collect();
        for (id, tok) in sampled {
            let lp = logprobs.get_mut(&id).and_then(Iterator::next);
            self.on_token(id, tok, lp);
        }
        // Sequences that reached max_tokens or the context end (if not already finished).
        for id in capped {
            if self.active.contains_key(&id) {
                self.finish(id, FinishReason::Length);
            }
        }
        true
    }

    /// Emits a sampled token and ends the request if it should stop.
    fn on_token(&mut self, id: SeqId, tok: u32, logprob: Option<TokenLogprob>) {
        let is_stop_token = self.stop_ids.contains(&tok);
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        a.output.push(tok);
        a.first_token.get_or_insert_with(Instant::now);
        if a.persist && a.output.len() == 1 {
            // The prompt's KV is computed: a copy goes to the disk tier.
            a.persist = false;
            self.persist(id);
        }
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        if let Some(g) = a.grammar.as_mut()
            && (!is_stop_token || a.ignore_eos)
            && a.grammar_error.is_none()
            && let Err(e) = g.commit(tok)
        {
            a.grammar_error = Some(e);
        }
        if let Some(e) = a.grammar_error.take() {
            let _ = a
                .events
                .unbounded_send(Event::Failed(format!("grammar: {e}")));
            self.active.remove(&id);
            let _ = self.sched.abort(id);
            return;
        }
        let mut finish = None;
        if is_stop_token && !a.ignore_eos {
            // The id is reported (as vLLM does), its text never.
            let _ = a.events.unbounded_send(Event::Delta {
                text: String::new(),
                token_ids: vec![tok],
                logprobs: logprob.into_iter().collect(),
            });
            finish = Some(FinishReason::Stop);
        } else {
            let text = match a.detok.as_mut().map(|d| d.push(tok)) {
                Some(Ok(t)) => t,
                Some(Err(e)) => {
                    log::warn!("detokenizing {tok}: {e}");
                    String::new()
                }
                None => String::new(),
            };
            let (text, stopped) = match a.stop.push(&text) {
                StopResult::Continue(t) => (t, false),
                StopResult::Stopped(t) => (t, true),
            };
            if a.events
                .unbounded_send(Event::Delta {
                    text,
                    token_ids: vec![tok],
                    logprobs: logprob.into_iter().collect(),
                })
                .is_err()
            {
                // The handle is gone: abort.
                self.active.remove(&id);
                let _ = self.sched.abort(id);
                return;
            }
            if stopped {
                a.stop_string_hit = true;
                finish = Some(FinishReason::Stop);
            } else if a.grammar.as_ref().is_some_and(GrammarState::is_finished) {
                // Complete: the grammar allows nothing but a stop token now.
                finish = Some(FinishReason::Stop);
            } else if a.output.len() >= a.max_tokens {
                finish = Some(FinishReason::Length);
            }
        }
        if let Some(reason) = finish {
            self.finish(id, reason);
        }
    }

    fn finish(&mut self, id: SeqId, reason: FinishReason) {
        let cached_tokens = self.sched.finish(id).map_or(0, |s| s.cached_tokens);
        if let Some(Err(e)) = self.draft.as_mut().map(|d| d.forget(id)) {
            log::warn!("draft model: {e}");
        }
        if let Some(mut a) = self.active.remove(&id) {
            // Release text held back for a possible stop string or an incomplete character,
            // unless a stop string ended the request (what follows it is never shown).
            let tail = if a.stop_string_hit {
                String::new()
            } else {
                let held = a.stop.finish();
                let rest = a
                    .detok
                    .as_mut()
                    .and_then(|d| d.finish().ok())
                    .unwrap_or_default();
                held + &rest
            };
            if !tail.is_empty() {
                let _ = a.events.unbounded_send(Event::Delta {
                    text: tail,
                    token_ids: vec![],
                    logprobs: vec![],
                });
            }
            let usage = Usage {
                prompt_tokens: a.prompt_len,
                cached_tokens,
                completion_tokens: a.output.len(),
                time_to_first_token: a.first_token.map(|t| t - a.submitted),
                total_time: a.submitted.elapsed(),
            };
            self.finished += 1;
            self.finished_events
                .push((a.events, Event::Finished { reason, usage }));
        }
    }
}

pub(crate) fn token_logprob(logits: &[f32], token: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|l| (*l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let lp = |l: f32| (l as f64 - lse) as f32;
    TokenLogprob {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |l| lp(*l)),
        top: top_k(logits, k)
            .into_iter()
            .map(|(i, l)| (i, lp(l)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::token_logprob;

    #[test]
    fn logprobs_are_log_softmax() {
        // softmax([ln 1, ln 2, ln 1]) = [0.25, 0.5, 0.25]
        let logits = [0f32, 2f32.ln(), 0.0];
        let t = token_logprob(&logits, 0, 2);
        assert!((t.logprob - 0.25f32.ln()).abs() < 1e-6);
        assert_eq!(t.top[0].0, 1);
        assert!((t.top[0].1 - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(t.top[1].0, 0);
    }
}
