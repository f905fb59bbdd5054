//! Iteration-level scheduler (vLLM v1 style): every step decides which sequences run and
//! which tokens of each, within a token budget, and where their KV lives. Pure CPU: it owns
//! the [`BlockPool`] and every sequence's [`BlockTable`], and never sees a GPU type.
//!
//! One engine step:
//! ```text
//! out   = scheduler.schedule()             // which tokens run, block copies, preemptions
//! batch = scheduler.step_batch(&out, ..)   // the flat batch for the runner
//! runner: out.block_copies, then forward(batch) → logits row i ↔ out.sampling_ids() i-th
//! capped = scheduler.update(&out, &sampled)?  // KV written, sampled tokens appended
//! engine: finish() what stopped (EOS, stop strings, max_tokens) and what `capped` lists
//! ```
//!
//! Overlapped, the engine schedules step k+1 before reading step k back: it calls `update`
//! for step k with [`PENDING_TOKEN`] in place of each sampled token, so step k+1 decodes those
//! sequences with a pending token (the GPU feeds it from step k's picks), then
//! `resolve_pending` replaces each once step k is read back — before the `update` of step
//! k+1, so a block is hashed for the prefix cache only with known tokens. A sequence whose
//! last token is pending is not forked nor re-admitted after a preemption until resolved.
//!
//! Policy of `schedule`, in order:
//! 1. running sequences with one token to compute (decodes), in admission order;
//! 2. running sequences with several (a prefill continued in chunks, or a recompute);
//! 3. waiting sequences, first come first served, while fewer than `max_num_seqs` run, the
//!    budget lasts and — unless nothing runs — `watermark_blocks` stay free after the chunk.
//!    The queue's head that does not fit stops admission (no overtaking). No admission in a
//!    step that preempted.
//!
//! Every scheduled sequence gets `min(tokens left, budget left)` tokens: a long prompt runs in
//! chunks over several steps, and decodes never wait behind it. When a running sequence needs a
//! block and none is free, the most recently admitted running sequence is preempted (blocks
//! freed, computed count reset, pushed to the *front* of the queue, its output kept; if it was
//! already scheduled this step, that is undone); repeat until the block is there or the needy
//! sequence preempted itself. It is later recomputed from prompt + output as one prefill.
//!
//! Prefix cache (`enable_prefix_cache`, on by default). Admitting a sequence looks its tokens up
//! block by block in the pool's prefix cache (keys chain each full block's tokens with its
//! parent's key and the sequence's cache salt) and adopts every cached block it matches, up to
//! (tokens − 1) rounded down to whole blocks — the last token is always computed, for its
//! logits. Its computed count starts at the hit length and only the rest is scheduled (in
//! chunks as usual). `update` registers every block it completed (early reuse: a block is
//! found by the very next admission, while its owner still runs). Finishing, aborting and
//! preempting release blocks into the cache rather than wiping them; allocation evicts the
//! least recently freed cached leaf when no uncached block is free. A cached block is full,
//! so it is never written again: scheduled tokens land only in a sequence's own partly filled
//! last block or in fresh blocks. With a host tier (`enable_host_tier`, see host.rs) evicted
//! blocks are copied to host slots (the output's `offloads`) and admission continues a hit
//! chain there, writing each host hit into a fresh block (`restores`).
//!
//! Sliding windows (`sliding_window`: every layer of the model sees at most W keys). `update`
//! then gives back each sequence's blocks that no later query reads — floor((computed + 1 −
//! W) / block_size) leading blocks — leaving holes in its table (see blocks.rs). Admission
//! and preemption need no other change: a table's growth is counted in logical blocks and
//! what it takes from the pool is only the blocks it allocates, and `add` measures a request
//! by the most blocks it holds at once (`kv::window_peak_blocks`), not by its whole KV.
//!
//! Lengths. A sequence's KV never holds more than `max_model_len` tokens and no more than its
//! prompt plus `max_tokens - 1` (the last sampled token is never fed back). A sequence that
//! reached `max_tokens` output tokens, or whose length reached `max_model_len` (a prompt of
//! exactly `max_model_len` still gets one token), is *length-capped*: never scheduled again;
//! `update` reports it so the engine finishes it with `Length`. Rejected at `add` is only what
//! can never run: an empty prompt, `max_tokens == 0`, a prompt longer than `max_model_len`,
//! or a sequence that at its largest holds more blocks than the whole pool (its whole KV, or
//! with a sliding window its peak) — so a sequence alone always fits, which with FCFS and
//! front-of-queue requeueing rules out deadlock and starvation.
//!
//! Invariants (checked by the tests after every operation):
//! - every sequence is in exactly one of `waiting` and `running`; `running.len() ≤ max_num_seqs`;
//! - a waiting sequence holds no block and has nothing computed;
//! - between steps (no output in flight) a running sequence's table holds exactly its computed
//!   tokens; block ref counts equal the number of tables holding each block (holes hold none);
//! - with a sliding window, a running table's holes are exactly its first
//!   `blocks_out_of_window(computed, W, bs)` blocks, so it holds at most
//!   `window_peak_blocks(W, bs, 0)` blocks plus what the step in flight grows it by;
//! - until `update` confirms a block copy, its source cannot return to the pool: when the last
//!   table holding it lets go (preemption, finish, abort), the scheduler holds it instead.
//!   (So a copy re-issued after an abandoned step still reads the right data.)
//! - a sequence's tokens (prompt + output) only grow; preemption drops KV, never tokens;
//! - a cached block's tokens are the tokens every table holding it has at its positions, and
//!   a cached block is never in a step's written slots.
//!
//! Costs: `add` O(1); `schedule` O(running + scheduled tokens + blocks allocated), plus
//! O(running) per preemption and O(tokens) per admission with the prefix cache on (hashing its
//! full blocks; O(log n) per hit taken or block evicted); `update` O(scheduled + sampled), plus
//! O(block_size) per block it registers and O(1) per block it gives back; `finish`/`abort`
//! O(its blocks + running + waiting); `stats` O(blocks held).

use std::collections::{HashMap, VecDeque};

use crate::batch::{LogitRows, StepBatch};
use crate::kv::{BlockCopy, BlockHash, BlockId, BlockPool, BlockTable, KvError};
use blocks::peak_blocks;

mod blocks;
mod host;
#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod prefix_tests;
#[cfg(test)]
mod proptests;
mod spec;
mod stats;
#[cfg(test)]
mod tests;
mod types;
mod update;
#[cfg(test)]
mod window_tests;

pub use types::{
    HostTierStats, Offload, PENDING_TOKEN, Restore, SchedError, ScheduledSeq, SchedulerConfig,
    SchedulerOutput, SchedulerStats, SeqId, SeqSummary,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
}

#[derive(Debug, Clone)]
struct Seq {
    /// Prompt followed by the output so far.
    tokens: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    /// Tokens whose KV is written (confirmed by `update`).
    num_computed: usize,
    table: BlockTable,
    state: State,
    preemptions: usize,
    /// Separates prefix caches (e.g. per tenant): blocks only match under the same salt.
    salt: Option<u64>,
    /// Prefix-cache keys of the first full blocks of `tokens`, computed once (tokens at a
    /// computed position never change).
    keys: Vec<BlockHash>,
    /// Leading blocks of `table` already registered (or found) in the prefix cache.
    num_registered: usize,
    /// Tokens found in the prefix cache at the first admission.
    cached_tokens: Option<usize>,
}

impl Seq {
    fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Reached max_tokens, or the context: no token may be computed for sampling any more.
    fn is_capped(&self, max_model_len: usize) -> bool {
        self.output().len() >= self.max_tokens
            || self.tokens.len() >= max_model_len.max(self.prompt_len + 1)
    }

    /// Tokens left to compute: none once capped (its KV already holds all but the last
    /// token if it runs; a capped waiting sequence is not recomputed), else all not computed.
    fn pending(&self, max_model_len: usize) -> usize {
        if self.is_capped(max_model_len) {
            0
        } else {
            self.tokens.len() - self.num_computed
        }
    }
}

/// Most KV tokens a request can ever hold (see the module docs): the final length is
/// min(prompt + max_tokens, max(max_model_len, prompt + 1)); its last token is never computed.
fn max_kv_tokens(prompt: usize, max_tokens: usize, max_model_len: usize) -> usize {
    let final_len = prompt
        .saturating_add(max_tokens)
        .min(max_model_len.max(prompt + 1));
    final_len - 1
}

/// Waiting and running sequences, the block pool and every block table.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    watermark: usize,
    pool: BlockPool,
    seqs: HashMap<SeqId, Seq>,
    /// FCFS; preempted sequences go to the front.
    waiting: VecDeque<SeqId>,
    /// In admission order: the last is the most recently admitted, the first to preempt.
    running: Vec<SeqId>,
    /// Copies issued and not yet confirmed by `update`, re-issued if their output is
    /// abandoned (a new `schedule` without `update`).
    copies: Vec<PendingCopy>,
    /// Step of the output not yet passed to `update`.
    in_flight: Option<u64>,
    next_step: u64,
    num_preemptions: u64,
    prefix_query_tokens: u64,
    prefix_hit_tokens: u64,
    spec_drafted: u64,
    spec_accepted: u64,
    /// The host tier, if enabled (host.rs).
    host: Option<host::HostState>,
}

impl Scheduler {
    /// Takes ownership of the pool (which should be all free). Checks the config.
    pub fn new(cfg: SchedulerConfig, pool: BlockPool) -> Result<Self, SchedError> {
        let bad = |m: String| Err(SchedError::InvalidConfig(m));
        let n = pool.num_blocks();
        if n == 0 {
            return bad("the pool has no block".into());
        }
        if cfg.max_num_seqs == 0
            || cfg.max_waiting == 0
            || cfg.max_model_len == 0
            || cfg.sliding_window == Some(0)
        {
            return bad(
                "max_num_seqs, max_waiting, max_model_len and sliding_window must be ≥ 1".into(),
            );
        }
        if cfg.max_num_batched_tokens < cfg.max_num_seqs {
            return bad(format!(
                "max_num_batched_tokens ({}) must be ≥ max_num_seqs ({}), or a full batch of decodes could not run",
                cfg.max_num_batched_tokens, cfg.max_num_seqs
            ));
        }
        let watermark = match cfg.watermark_blocks {
            Some(w) if w >= n => {
                return bad(format!(
                    "watermark_blocks ({w}) must be below the pool's {n} blocks"
                ));
            }
            Some(w) => w,
            None => n.div_ceil(100).min(n - 1),
        };
        Ok(Self {
            cfg,
            watermark,
            pool,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            copies: Vec::new(),
            in_flight: None,
            next_step: 0,
            num_preemptions: 0,
            prefix_query_tokens: 0,
            prefix_hit_tokens: 0,
            spec_drafted: 0,
            spec_accepted: 0,
            host: None,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Blocks admission leaves free (the config's, or the 1% default).
    pub fn watermark_blocks(&self) -> usize {
        self.watermark
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_preemptions(&self) -> u64 {
        self.num_preemptions
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// The tokens generated so far.
    pub fn output(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(Seq::output)
    }

    /// A sequence's block table (empty while it waits).
    pub fn block_table(&self, id: SeqId) -> Option<&BlockTable> {
        self.seqs.get(&id).map(|s| &s.table)
    }

    /// Prompt tokens whose KV came from the prefix cache when `id` was first admitted
    /// (`Some(0)` before that, or with no hit).
    pub fn cached_tokens(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.cached_tokens.unwrap_or(0))
    }

    /// Queues a request at the back. Rejects what could never run (see the module docs) and
    /// refuses, without queueing, when `max_waiting` sequences already wait.
    pub fn add(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        max_tokens: usize,
    ) -> Result<(), SchedError> {
        self.add_with_salt(id, prompt, max_tokens, None)
    }

    /// `add` with a prefix-cache salt: the sequence shares cached blocks only with sequences
    /// of the same salt (`None` is a salt of its own).
    pub fn add_with_salt(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        max_tokens: usize,
        salt: Option<u64>,
    ) -> Result<(), SchedError> {
        if self.seqs.contains_key(&id) {
            return Err(SchedError::DuplicateId(id));
        }
        if prompt.is_empty() {
            return Err(SchedError::EmptyPrompt);
        }
        if prompt.contains(&PENDING_TOKEN) {
            return Err(SchedError::ReservedToken(id));
        }
        if max_tokens == 0 {
            return Err(SchedError::MaxTokensZero);
        }
        let max_model_len = self.cfg.max_model_len;
        if prompt.len() > max_model_len {
            return Err(SchedError::PromptTooLong {
                prompt: prompt.len(),
                max_model_len,
            });
        }
        let kv = max_kv_tokens(prompt.len(), max_tokens, max_model_len);
        let blocks_needed = peak_blocks(&self.cfg, self.pool.block_size(), kv);
        if blocks_needed > self.pool.num_blocks() {
            return Err(SchedError::NeverFits {
                blocks_needed,
                num_blocks: self.pool.num_blocks(),
            });
        }
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(SchedError::QueueFull {
                cap: self.cfg.max_waiting,
            });
        }
        self.seqs.insert(
            id,
            Seq {
                prompt_len: prompt.len(),
                tokens: prompt,
                max_tokens,
                num_computed: 0,
                table: BlockTable::new(),
                state: State::Waiting,
                preemptions: 0,
                salt,
                keys: Vec::new(),
                num_registered: 0,
                cached_tokens: None,
            },
        );
        self.waiting.push_back(id);
        Ok(())
    }

    /// Starts `child` as a copy of the running `parent` that shares all its blocks (parallel
    /// sampling): same prompt, output, computed KV and limits; its first append into the shared
    /// partly filled block is copied on write. With `last_token`, the child's last output token
    /// — sampled by the last `update` and not yet computed — is replaced, so the two diverge.
    /// Only between steps; the child counts as the most recently admitted. O(parent's blocks).
    pub fn fork(
        &mut self,
        parent: SeqId,
        child: SeqId,
        last_token: Option<u32>,
    ) -> Result<(), SchedError> {
        if self.in_flight.is_some() {
            return Err(SchedError::StepInFlight);
        }
        if self.seqs.contains_key(&child) {
            return Err(SchedError::DuplicateId(child));
        }
        let p = self
            .seqs
            .get(&parent)
            .ok_or(SchedError::UnknownSeq(parent))?;
        if p.state != State::Running {
            return Err(SchedError::NotRunning(parent));
        }
        if self.running.len() >= self.cfg.max_num_seqs {
            return Err(SchedError::TooManySeqs {
                max: self.cfg.max_num_seqs,
            });
        }
        if last_token.is_none() && p.tokens.last() == Some(&PENDING_TOKEN) {
            return Err(SchedError::TokenPending(parent));
        }
        if last_token == Some(PENDING_TOKEN) {
            return Err(SchedError::ReservedToken(child));
        }
        let mut tokens = p.tokens.clone();
        if let Some(tok) = last_token {
            let pending = !p.output().is_empty() && p.num_computed < p.tokens.len();
            if !pending {
                return Err(SchedError::NoPendingToken(parent));
            }
            *tokens.last_mut().expect("output is not empty") = tok;
        }
        let seq = Seq {
            tokens,
            prompt_len: p.prompt_len,
            max_tokens: p.max_tokens,
            num_computed: p.num_computed,
            table: p.table.fork(&mut self.pool)?,
            state: State::Running,
            preemptions: 0,
            salt: p.salt,
            keys: p.keys.clone(),
            num_registered: p.num_registered,
            cached_tokens: p.cached_tokens,
        };
        self.seqs.insert(child, seq);
        self.running.push(child);
        Ok(())
    }

    /// Decides this step's work (see the module docs). An earlier output not passed to
    /// `update` is abandoned: none of its work counts, and its block copies are issued again.
    pub fn schedule(&mut self) -> SchedulerOutput {
        self.schedule_with_drafts(|_, _, _| Vec::new())
    }

    /// [`Scheduler::schedule`] with speculative decoding: each sequence about to decode one
    /// token may get drafted tokens to verify in the same step. `draft(id, tokens, most)`
    /// proposes up to `most` tokens to follow `tokens` (its prompt and output); see
    /// `spec.rs` for what bounds `most` and what `update` then expects.
    pub fn schedule_with_drafts(
        &mut self,
        mut draft: impl FnMut(SeqId, &[u32], usize) -> Vec<u32>,
    ) -> SchedulerOutput {
        if self.in_flight.take().is_some() {
            // Give back the slots the abandoned step reserved; its copies stay pending.
            for i in 0..self.running.len() {
                let s = &self.seqs[&self.running[i]];
                let keep = BlockTable::blocks_needed(s.num_computed, self.pool.block_size());
                let dropped = s.table.blocks()[keep.min(s.table.blocks().len())..].to_vec();
                self.guard_sources(&dropped);
                let s = self
                    .seqs
                    .get_mut(&self.running[i])
                    .expect("running ids exist");
                s.table
                    .truncate(&mut self.pool, s.num_computed)
                    .expect(SYNC);
            }
        }
        // The restores of the step before were handed to the GPU queue.
        self.unpin_restores();
        let step = self.next_step;
        self.next_step += 1;
        self.in_flight = Some(step);
        let mut st = StepState {
            out: SchedulerOutput {
                step,
                seqs: Vec::new(),
                offloads: Vec::new(),
                restores: Vec::new(),
                block_copies: Vec::new(),
                preempted: Vec::new(),
                length_capped: Vec::new(),
                num_batched_tokens: 0,
            },
            budget: self.cfg.max_num_batched_tokens,
        };
        let mml = self.cfg.max_model_len;
        let mut decodes_left = (self.running.iter())
            .filter(|id| self.seqs[*id].pending(mml) == 1)
            .count();
        for decodes in [true, false] {
            let mut i = 0;
            while i < self.running.len() && st.budget > 0 {
                let id = self.running[i];
                let pending = self.seqs[&id].pending(mml);
                if pending == 0 || (pending == 1) != decodes {
                    i += 1;
                    continue;
                }
                let drafted = if decodes {
                    decodes_left -= 1;
                    let most = self.draft_room(id, st.budget, decodes_left);
                    let mut d = if most > 0 {
                        draft(id, &self.seqs[&id].tokens, most)
                    } else {
                        Vec::new()
                    };
                    d.truncate(most);
                    d
                } else {
                    Vec::new()
                };
                let n = pending.min(st.budget) + drafted.len();
                if self.schedule_running(id, n, &drafted, &mut st) {
                    i += 1;
                }
            }
        }
        if st.out.preempted.is_empty() {
            self.admit(&mut st);
        }
        st.out.length_capped = (self.running.iter().chain(&self.waiting))
            .copied()
            .filter(|id| self.seqs[id].is_capped(mml))
            .collect();
        st.out.offloads = self.offload_evictions();
        st.out.block_copies = self.copies.iter().map(|p| p.copy).collect();
        st.out.num_batched_tokens = st.out.seqs.iter().map(|s| s.tokens.len()).sum();
        st.out
    }

    /// Reserves blocks for `n` more tokens of running `id` (the last `drafted.len()` of them
    /// drafted), preempting from the back of `running` until they fit. Returns false if `id`
    /// itself was preempted.
    fn schedule_running(
        &mut self,
        id: SeqId,
        n: usize,
        drafted: &[u32],
        st: &mut StepState,
    ) -> bool {
        loop {
            let s = self.seqs.get_mut(&id).expect("running ids exist");
            match s.table.prepare_append(&mut self.pool, s.num_computed + n) {
                Ok(copy) => {
                    if let Some(copy) = copy {
                        // The copy's source is still held by the tables it was shared with.
                        self.copies.push(PendingCopy {
                            owner: id,
                            copy,
                            held: false,
                        });
                    }
                    st.push(id, s, n - drafted.len(), drafted);
                    return true;
                }
                Err(KvError::OutOfBlocks { .. }) => {
                    let victim = *self.running.last().expect("id is running");
                    self.preempt(victim, st);
                    if victim == id {
                        return false;
                    }
                }
                Err(e) => panic!("{SYNC}: {e}"),
            }
        }
    }

    /// Admits waiting sequences FCFS (skipping length-capped ones, which wait to be finished).
    fn admit(&mut self, st: &mut StepState) {
        let bs = self.pool.block_size();
        let mut w = 0;
        while w < self.waiting.len() && self.running.len() < self.cfg.max_num_seqs && st.budget > 0
        {
            let id = self.waiting[w];
            let s = self.seqs.get_mut(&id).expect("waiting ids exist");
            let pending = s.pending(self.cfg.max_model_len);
            if pending == 0 {
                w += 1;
                continue;
            }
            // Its KV cannot be recomputed before its last token is known: it keeps its place.
            if s.tokens.last() == Some(&PENDING_TOKEN) {
                break;
            }
            // The cached prefix: whole blocks, never the last token (its logits are needed).
            let cap = (s.tokens.len() - 1) / bs;
            let hits = if self.cfg.enable_prefix_cache {
                self.pool.match_prefix(&s.tokens, s.salt, cap)
            } else {
                Vec::new()
            };
            // Then the blocks after them that the host tier holds, written into fresh blocks.
            let restored = match (&self.host, hits.len() < cap) {
                (Some(h), true) => {
                    let parent = hits.last().and_then(|b| self.pool.cached_key(*b));
                    let rest = &s.tokens[hits.len() * bs..];
                    h.tier.match_after(parent, rest, s.salt, cap - hits.len())
                }
                _ => Vec::new(),
            };
            let hit_tokens = (hits.len() + restored.len()) * bs;
            let n = (s.tokens.len() - hit_tokens).min(st.budget);
            let reserve = if self.running.is_empty() {
                0
            } else {
                self.watermark
            };
            // Taking a cached-free block uses up a free block just as allocating does; hits
            // the sliding window has passed are given back at once (blocks.rs) and cost none.
            let passed = (self.cfg.sliding_window)
                .map_or(0, |w| crate::kv::blocks_out_of_window(hit_tokens, w, bs));
            let fresh = BlockTable::blocks_needed(hit_tokens + n, bs) - hits.len();
            let revived = hits[passed.min(hits.len())..]
                .iter()
                .filter(|b| self.pool.ref_count(**b) == 0)
                .count();
            if fresh + revived + reserve > self.pool.num_free() {
                break;
            }
            s.table.adopt_cached(&mut self.pool, &hits).expect(SYNC);
            s.table.release_front(&mut self.pool, passed).expect(SYNC);
            s.num_computed = hit_tokens;
            // Restored blocks are registered by `update`, once their images have landed.
            s.num_registered = hits.len();
            if self.cfg.enable_prefix_cache {
                self.prefix_query_tokens += s.tokens.len() as u64;
                self.prefix_hit_tokens += (hits.len() * bs) as u64;
                s.cached_tokens.get_or_insert(hit_tokens);
            }
            s.table
                .prepare_append(&mut self.pool, hit_tokens + n)
                .expect(SYNC);
            if !restored.is_empty() {
                let blocks = &s.table.blocks()[hits.len()..hits.len() + restored.len()];
                let h = self
                    .host
                    .as_mut()
                    .expect("restores come from the host tier");
                h.restore(&restored, blocks, restored.len() * bs, &mut st.out.restores);
            }
            s.state = State::Running;
            st.push(id, s, n, &[]);
            self.waiting.remove(w);
            self.running.push(id);
        }
    }

    /// Frees `id`'s blocks and requeues it at the front, undoing its work in this step.
    fn preempt(&mut self, id: SeqId, st: &mut StepState) {
        self.drop_kv(id);
        let s = self.seqs.get_mut(&id).expect("victim exists");
        s.state = State::Waiting;
        s.preemptions += 1;
        self.num_preemptions += 1;
        self.running.retain(|r| *r != id);
        self.waiting.push_front(id);
        if let Some(i) = st.out.seqs.iter().position(|e| e.id == id) {
            st.budget += st.out.seqs.remove(i).tokens.len();
        }
        st.out.preempted.push(id);
    }

    /// Releases `id`'s table and forgets its own pending copies; nothing computed remains.
    fn drop_kv(&mut self, id: SeqId) {
        let pool = &mut self.pool;
        self.copies.retain(|p| {
            if p.owner == id && p.held {
                pool.release(p.copy.src).expect(SYNC);
            }
            p.owner != id
        });
        let blocks = self.seqs[&id].table.held_blocks().to_vec();
        self.guard_sources(&blocks);
        let s = self.seqs.get_mut(&id).expect("caller checked");
        s.table.release(&mut self.pool).expect(SYNC);
        s.num_computed = 0;
        s.num_registered = 0;
    }

    /// Holds the source of every pending copy among `blocks`, which a table is about to release.
    fn guard_sources(&mut self, blocks: &[BlockId]) {
        for p in &mut self.copies {
            if !p.held && blocks.contains(&p.copy.src) {
                self.pool.retain(p.copy.src).expect(SYNC);
                p.held = true;
            }
        }
    }

    /// The step batch for `out` (call it before any `finish`/`abort` of its sequences): rows in
    /// `out.seqs` order, logits only for the last row of each sampling entry (every row of
    /// an entry with drafts).
    pub fn step_batch(
        &self,
        out: &SchedulerOutput,
        max_blocks: usize,
    ) -> Result<StepBatch, SchedError> {
        let bs = self.pool.block_size();
        let mut batch = StepBatch::new(max_blocks);
        for e in &out.seqs {
            let s = self.seqs.get(&e.id).ok_or(SchedError::UnknownSeq(e.id))?;
            // A decode with drafts is its last token and the drafts: every row verifies.
            let rows = match (e.sample, e.draft) {
                (false, _) => LogitRows::None,
                (true, 0) => LogitRows::Last,
                (true, _) => LogitRows::All,
            };
            batch
                .push_sequence(&e.tokens, e.start_pos, &s.table, bs, rows)
                .ok_or(SchedError::BatchTooWide {
                    id: e.id,
                    blocks: s.table.blocks().len(),
                    max_blocks,
                })?;
        }
        Ok(batch)
    }

    /// Ends a sequence: frees its blocks and forgets it. Allowed any time, also while its
    /// step is in flight (then `update` skips it).
    pub fn finish(&mut self, id: SeqId) -> Result<SeqSummary, SchedError> {
        if !self.seqs.contains_key(&id) {
            return Err(SchedError::UnknownSeq(id));
        }
        self.drop_kv(id);
        let s = self.seqs.remove(&id).expect("checked");
        match s.state {
            State::Running => self.running.retain(|r| *r != id),
            State::Waiting => self.waiting.retain(|r| *r != id),
        }
        Ok(SeqSummary {
            id,
            prompt_len: s.prompt_len,
            output: s.tokens[s.prompt_len..].to_vec(),
            preemptions: s.preemptions,
            cached_tokens: s.cached_tokens.unwrap_or(0),
        })
    }

    /// Cancels a sequence like `finish`; `None` if it does not exist (aborting twice is harmless).
    pub fn abort(&mut self, id: SeqId) -> Option<SeqSummary> {
        self.finish(id).ok()
    }
}

/// A broken link between tables and pool is a bug in this module, not a runtime condition.
const SYNC: &str = "scheduler's block tables out of sync with its pool";

/// A block copy issued and not yet confirmed by `update`.
#[derive(Debug, Clone, Copy)]
struct PendingCopy {
    /// The sequence whose table holds `copy.dst`.
    owner: SeqId,
    copy: BlockCopy,
    /// The scheduler holds a reference to `copy.src` (the tables sharing it let go).
    held: bool,
}

/// The output being built and the budget left.
struct StepState {
    out: SchedulerOutput,
    budget: usize,
}

impl StepState {
    /// Schedules `n` known tokens of `s` and the `drafted` ones after them.
    fn push(&mut self, id: SeqId, s: &Seq, n: usize, drafted: &[u32]) {
        let start = s.num_computed;
        let mut tokens = s.tokens[start..start + n].to_vec();
        tokens.extend_from_slice(drafted);
        self.out.seqs.push(ScheduledSeq {
            id,
            tokens,
            start_pos: start,
            sample: start + n == s.tokens.len(),
            draft: drafted.len(),
        });
        self.budget -= n + drafted.len();
    }
}
