//! Speculative decoding in the scheduler: room for drafted tokens (lookahead slots) and what
//! `update` keeps of them.
//!
//! A decode may carry k drafted tokens: its entry computes the last known token and the k
//! drafts in one chunk (k + 1 logits rows), their KV written to lookahead slots of the
//! sequence's own blocks. The drafts never enter the sequence's tokens until `update` is told
//! which the model agreed with: it then gets the accepted drafts (a prefix of the drafts)
//! followed by the token sampled after them — 1 to k + 1 tokens — appends them, counts the
//! accepted drafts' KV as computed and truncates the table to that, so a block that held only
//! rejected drafts goes back to the pool at once and a rejected slot is written again before
//! anything reads it. Prefix-cache registration runs after that, over accepted tokens only.
//!
//! k is bounded so that a draft changes nothing else a step does:
//! - the sequence cannot outgrow its limits: accepting every draft and the token after them
//!   stays within `max_tokens` and the context (so within what `add` sized it by);
//! - the budget: every decode still to be scheduled keeps its one token;
//! - blocks: the lookahead needs only free blocks, beyond one spare (a copy-on-write) and
//!   one for each decode still to schedule, so a draft never preempts anybody;
//! - a sequence whose last token is still pending (an overlapped step) gets none.

use super::{PENDING_TOKEN, Scheduler, SeqId};
use crate::kv::BlockTable;

impl Scheduler {
    /// A sequence's prompt and output (what a drafter continues).
    pub fn tokens(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| s.tokens.as_slice())
    }

    /// Whether `id` runs with exactly its last token to compute (what a draft can follow).
    pub fn is_decoding(&self, id: SeqId) -> bool {
        self.seqs.get(&id).is_some_and(|s| {
            s.state == super::State::Running
                && s.pending(self.cfg.max_model_len) == 1
                && s.tokens.last() != Some(&PENDING_TOKEN)
        })
    }

    /// Most tokens `id` (about to decode one token) may draft this step, with `budget` tokens
    /// left in the step and `decodes_left` decodes after it still to schedule.
    pub(super) fn draft_room(&self, id: SeqId, budget: usize, decodes_left: usize) -> usize {
        let s = &self.seqs[&id];
        if s.tokens.last() == Some(&PENDING_TOKEN) {
            return 0;
        }
        let out = s.tokens.len() - s.prompt_len;
        let by_tokens = s.max_tokens.saturating_sub(out + 1);
        let by_context = self.cfg.max_model_len.saturating_sub(s.tokens.len() + 1);
        let by_budget = budget.saturating_sub(1 + decodes_left);
        let mut k = by_tokens.min(by_context).min(by_budget);
        let bs = self.pool.block_size();
        let held = s.table.blocks().len();
        let free = self.pool.num_free();
        let base = BlockTable::blocks_needed(s.num_computed + 1, bs).saturating_sub(held);
        // Shrink to what free blocks hold beyond the decode's own, one spare (a copy on write)
        // and one for each decode still to schedule, so a draft never makes one preempt.
        while k > 0 {
            let grown = BlockTable::blocks_needed(s.num_computed + 1 + k, bs).saturating_sub(held);
            if grown <= base || grown + decodes_left < free {
                break;
            }
            k -= 1;
        }
        k
    }
}
