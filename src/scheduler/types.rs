//! The plain values that cross the scheduler's boundary: ids, config, errors, the per-step
//! output handed to the runner, and the summaries and stats handed to the engine.

use std::fmt;

use crate::kv::{BlockCopy, BlockId, HostSlot, KvError};

/// A sequence's id, chosen by the caller (one per request, or per sample of a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct SeqId(pub u64);

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}", self.0)
    }
}

/// A sampled token whose value is not known yet: `update` takes it in place of a token when
/// the engine schedules the next step before reading this one back (the GPU feeds the real
/// token to the next step), and [`super::Scheduler::resolve_pending`] replaces it.
pub const PENDING_TOKEN: u32 = u32::MAX;

/// Budgets and limits. `Default` gives everything; the engine sets `max_model_len` from the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences running at once (≥ 1).
    pub max_num_seqs: usize,
    /// Most tokens computed per step, all sequences together (≥ max_num_seqs).
    pub max_num_batched_tokens: usize,
    /// The model's context: most tokens a sequence's KV may hold (default: unlimited).
    pub max_model_len: usize,
    /// Most sequences waiting; `add` beyond it is refused with `QueueFull` (≥ 1).
    /// Preempted sequences return to the queue even past it: nothing admitted is dropped.
    pub max_waiting: usize,
    /// Blocks that admitting a waiting sequence must leave free (unless nothing runs), so
    /// fresh admissions do not preempt at once. `None`: 1% of the pool, rounded up (at most
    /// all blocks but one). An explicit value must be below the pool's size.
    pub watermark_blocks: Option<usize>,
    /// Reuse the KV of full prompt blocks other sequences computed (prefix cache, default on):
    /// admission takes the cached prefix and schedules only the rest; `update` registers every
    /// block it completes; freed blocks stay cached until evicted. Off: no lookups, nothing
    /// registered, so no hits.
    pub enable_prefix_cache: bool,
    /// Keys every layer of the model attends to at most (the largest sliding window; `None`,
    /// the default, when any layer sees the whole context). Set, every step gives back the
    /// blocks of each running sequence that no later query reads
    /// ([`crate::kv::blocks_out_of_window`]), leaving holes in its table, and a sequence
    /// needs at most [`crate::kv::window_peak_blocks`] blocks at once: `add` refuses only
    /// what even that cannot fit, so a sequence longer than the pool can run. Must be ≥ 1.
    pub sliding_window: Option<usize>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 64,
            max_num_batched_tokens: 256,
            max_model_len: usize::MAX,
            max_waiting: 1024,
            watermark_blocks: None,
            enable_prefix_cache: true,
            sliding_window: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    #[error("invalid scheduler config: {0}")]
    InvalidConfig(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("max_tokens is 0: nothing to generate")]
    MaxTokensZero,
    #[error("the prompt has {prompt} tokens, more than the model's context of {max_model_len}")]
    PromptTooLong { prompt: usize, max_model_len: usize },
    #[error(
        "the request needs {blocks_needed} KV blocks, more than the whole pool of {num_blocks}"
    )]
    NeverFits {
        blocks_needed: usize,
        num_blocks: usize,
    },
    #[error("the queue is full ({cap} requests waiting); try again later")]
    QueueFull { cap: usize },
    #[error("{0} already exists")]
    DuplicateId(SeqId),
    #[error("{0} does not exist")]
    UnknownSeq(SeqId),
    #[error("{0} is not running")]
    NotRunning(SeqId),
    #[error("{max} sequences already run")]
    TooManySeqs { max: usize },
    #[error("{0} has no sampled token waiting to be computed")]
    NoPendingToken(SeqId),
    #[error("{0}: token id {PENDING_TOKEN} is reserved for tokens not read back yet")]
    ReservedToken(SeqId),
    #[error("{0}'s last token is not known yet: resolve it first")]
    TokenPending(SeqId),
    #[error("a step is in flight: call update first")]
    StepInFlight,
    #[error("output of step {got} is not the one in flight ({expected:?})")]
    StaleOutput { expected: Option<u64>, got: u64 },
    #[error("{0} sampled but got no token")]
    MissingSample(SeqId),
    #[error("{0} got a token it did not sample (or too many)")]
    UnexpectedSample(SeqId),
    #[error("{0}: the tokens accepted are not the ones drafted (or a pending token was given)")]
    DraftMismatch(SeqId),
    #[error("{id} holds {blocks} blocks, more than the batch's {max_blocks} columns")]
    BatchTooWide {
        id: SeqId,
        blocks: usize,
        max_blocks: usize,
    },
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// Copy the KV of GPU block `block` (every layer) into host slot `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    pub block: BlockId,
    pub slot: HostSlot,
}

/// Write the KV image in host slot `slot` into GPU block `block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restore {
    pub slot: HostSlot,
    pub block: BlockId,
}

/// One sequence's work in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SeqId,
    /// The tokens to compute this step (never empty): the sequence's tokens at positions
    /// `start_pos..start_pos + tokens.len()`.
    pub tokens: Vec<u32>,
    /// Position of `tokens[0]` = tokens already computed; the KV holds
    /// `start_pos + tokens.len()` tokens after this step.
    pub start_pos: usize,
    /// The chunk reaches the end of the known tokens: the last row's logits give the next token.
    pub sample: bool,
    /// Speculative decoding: the last `draft` of `tokens` were drafted after the sequence's
    /// known tokens (a decode of its last token followed by them). Each of the entry's
    /// `draft + 1` rows gives logits; `update` takes the drafted tokens the model agreed with
    /// and the token after them, and their lookahead slots are kept only that far.
    pub draft: usize,
}

impl ScheduledSeq {
    /// Logits rows of this entry: its last token's (`sample`), plus one per drafted token.
    pub fn num_logit_rows(&self) -> usize {
        if self.sample { 1 + self.draft } else { 0 }
    }

    /// The drafted tokens.
    pub fn drafted(&self) -> &[u32] {
        &self.tokens[self.tokens.len() - self.draft..]
    }
}

/// The plain value that crosses from the scheduler to the runner for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// Step number; `update` accepts only the output of the step in flight.
    pub step: u64,
    /// Work per sequence, decodes first, then prefill chunks, then new admissions; the batch
    /// rows follow this order, and logits row i belongs to the i-th entry with `sample`.
    /// Each id appears at most once; every id is running.
    pub seqs: Vec<ScheduledSeq>,
    /// Host tier: GPU blocks evicted from the prefix cache whose KV image is to be copied to
    /// host slots (first, before anything below writes a block: an evicted block may be
    /// handed out again in this very step). Confirm each with `Scheduler::offload_done`.
    pub offloads: Vec<Offload>,
    /// Host tier: images to write from host slots into fresh GPU blocks of admitted
    /// sequences (after the offloads, before the forward pass: those sequences read them).
    /// Issue them even if the step is then abandoned: the sequences count those tokens as
    /// computed from now on.
    pub restores: Vec<Restore>,
    /// Copy-on-write copies to run before the forward pass, in order. Each `dst` is in the
    /// table of a sequence; each `src` stays held until `update`.
    pub block_copies: Vec<BlockCopy>,
    /// Sequences preempted this step (now at the front of the queue, with no blocks);
    /// none of them is in `seqs`.
    pub preempted: Vec<SeqId>,
    /// Length-capped sequences still alive (see `update`): never scheduled; finish them with
    /// `Length`. Empty when the engine finishes what `update` reported.
    pub length_capped: Vec<SeqId>,
    /// Sum of `seqs[i].tokens.len()`; ≤ max_num_batched_tokens.
    pub num_batched_tokens: usize,
}

impl SchedulerOutput {
    /// Ids of the sequences that sample, in logits-row order (an entry with drafted tokens
    /// has [`ScheduledSeq::num_logit_rows`] rows, the first of them at its place here).
    pub fn sampling_ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.iter().filter(|s| s.sample).map(|s| s.id)
    }

    /// Whether any entry carries drafted tokens (the step's tokens are then known only once
    /// it is read back: it cannot be overlapped with the next).
    pub fn has_drafts(&self) -> bool {
        self.seqs.iter().any(|s| s.draft > 0)
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// What a sequence amounted to, returned by `finish` and `abort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSummary {
    pub id: SeqId,
    pub prompt_len: usize,
    pub output: Vec<u32>,
    /// Times this sequence was preempted and recomputed.
    pub preemptions: usize,
    /// Prompt tokens whose KV came from the prefix cache (the GPU pool or the host tier) at
    /// its first admission (0 if it was never admitted or the cache is off);
    /// `usage.prompt_tokens_details.cached_tokens`.
    pub cached_tokens: usize,
}

/// The host tier's counters (see [`SchedulerStats::host`]); all cumulative but `slots`,
/// `ready` and `writing`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostTierStats {
    pub slots: usize,
    pub ready: usize,
    pub writing: usize,
    pub offloads: u64,
    pub offloads_failed: u64,
    pub offloads_skipped: u64,
    pub restores: u64,
    pub evictions: u64,
}

/// Memory accounting, as `engine.stats()` reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SchedulerStats {
    pub block_size: usize,
    pub blocks_total: usize,
    pub blocks_used: usize,
    pub blocks_free: usize,
    /// Slots holding a token's KV; a block shared by several tables counts once.
    pub tokens_held: usize,
    /// blocks_used × block_size.
    pub allocated_slots: usize,
    /// (allocated_slots − tokens_held) / allocated_slots; 0 when nothing is allocated.
    pub waste: f64,
    /// Preemptions since the scheduler started.
    pub preemptions: u64,
    pub waiting: usize,
    pub running: usize,
    /// Tokens looked up in the prefix cache, summed over admissions (each admission, also a
    /// re-admission after preemption, queries its whole token list). 0 with the cache off.
    pub prefix_query_tokens: u64,
    /// Of those, tokens whose KV was found cached (so not computed): in the GPU pool, and
    /// restored from the host tier.
    pub prefix_hit_tokens: u64,
    pub host_hit_tokens: u64,
    /// prefix_hit_tokens / prefix_query_tokens; 0 before any query.
    pub prefix_hit_rate: f64,
    /// Blocks registered in the prefix cache now, held or free.
    pub cached_blocks: usize,
    /// Cached blocks evicted to make room, since the scheduler started.
    pub evictions: u64,
    /// The host tier (zeros without one): its slots, those holding an image, blocks copied
    /// to it (offloads issued) and back (restores), evictions it skipped for want of a free
    /// slot, and its own evictions.
    pub host: HostTierStats,
    /// Speculative decoding: tokens drafted and verified, and of those accepted, since the
    /// scheduler started.
    pub spec_drafted: u64,
    pub spec_accepted: u64,
}
