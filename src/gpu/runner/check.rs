//! The runner's guard: a step batch that would index outside a buffer is an error, not UB.

use super::Runner;
use crate::batch::{FED_TOKEN, NO_MASK, StepBatch};
use crate::gpu::GpuError;

impl Runner {
    /// Every size and index the kernels will trust, checked against the runner's buffers.
    pub(super) fn check(&self, b: &StepBatch) -> Result<(), GpuError> {
        let bad = |msg: String| {
            Err(GpuError::Shape {
                op: "step batch",
                msg,
            })
        };
        let t = b.num_tokens();
        if t == 0 || t > self.rc.max_batch_tokens {
            return bad(format!(
                "{t} tokens (1..={} allowed)",
                self.rc.max_batch_tokens
            ));
        }
        if b.num_seqs() > self.rc.max_seqs || b.max_blocks == 0 || b.max_blocks > self.max_blocks {
            return bad(format!(
                "{} sequences × {} blocks (at most {} × 1..={})",
                b.num_seqs(),
                b.max_blocks,
                self.rc.max_seqs,
                self.max_blocks
            ));
        }
        if b.logit_rows.len() > self.max_logit_rows
            || b.logit_rows.iter().any(|r| *r as usize >= t)
            || b.full_logits.len() != b.logit_rows.len()
        {
            return bad(format!(
                "{} logits rows (at most {})",
                b.logit_rows.len(),
                self.max_logit_rows
            ));
        }
        if [&b.positions, &b.slot_mapping, &b.token_seq]
            .iter()
            .any(|v| v.len() != t)
            || b.block_tables.len() != b.num_seqs() * b.max_blocks
        {
            return bad("metadata lengths disagree".into());
        }
        // Attention reads a token's context through its row of `block_tables`: every
        // position must lie in a block of the row's width.
        let width_tokens = (b.max_blocks * self.rc.block_size) as u32;
        if let Some(p) = b.positions.iter().find(|p| **p >= width_tokens) {
            return bad(format!(
                "position {p} lies past the {} blocks of the batch's block-table rows",
                b.max_blocks
            ));
        }
        if let Some(id) = b
            .token_ids
            .iter()
            .find(|id| **id & FED_TOKEN == 0 && **id as usize >= self.vocab)
        {
            return bad(format!(
                "token id {id} outside the vocabulary of {}",
                self.vocab
            ));
        }
        // A fed token names a row of the step submitted last (its pick is always a valid id).
        if let Some(id) = b
            .token_ids
            .iter()
            .find(|id| **id & FED_TOKEN != 0 && (**id & !FED_TOKEN) as usize >= self.last_rows)
        {
            return bad(format!(
                "a token fed from row {} of the previous step, which had {} logits rows",
                id & !FED_TOKEN,
                self.last_rows
            ));
        }
        if let Some(p) = b
            .positions
            .iter()
            .find(|p| **p as usize >= self.max_positions)
        {
            return bad(format!(
                "position {p} beyond the {} positions a sequence can reach (the model's context, \
                 or the KV pool's tokens if fewer)",
                self.max_positions
            ));
        }
        let slots = (self.rc.num_blocks * self.rc.block_size) as u32;
        if b.slot_mapping.iter().any(|s| *s >= slots)
            || b.block_tables
                .iter()
                .any(|blk| *blk as usize >= self.rc.num_blocks)
            || b.token_seq.iter().any(|s| *s as usize >= b.num_seqs())
        {
            return bad("a slot, block or sequence index is out of range".into());
        }
        if b.row_sampling.len() != b.logit_rows.len() {
            return bad(format!(
                "{} sampling rows for {} logits rows",
                b.row_sampling.len(),
                b.logit_rows.len()
            ));
        }
        // The sampler replaces a row's logits by its weights: a row read back whole must
        // keep its logits.
        if b.full_logits
            .iter()
            .zip(&b.row_sampling)
            .any(|(full, s)| *full && !s.is_greedy())
        {
            return bad("a row read back whole cannot also be sampled on the GPU".into());
        }
        self.check_adjust(b)
    }

    /// The logits adjustments point inside their masks and biases, which fit the buffers.
    fn check_adjust(&self, b: &StepBatch) -> Result<(), GpuError> {
        let a = &b.adjust;
        if a.is_empty() {
            return Ok(());
        }
        let bad = |msg: String| {
            Err(GpuError::Shape {
                op: "logit adjust",
                msg,
            })
        };
        if a.rows.len() != b.logit_rows.len() {
            return bad(format!(
                "{} adjusted rows for {} logits rows",
                a.rows.len(),
                b.logit_rows.len()
            ));
        }
        let words = self.mask_words;
        let mask_total = a.num_masks * words;
        if a.num_masks > 0 && a.mask_words != words {
            return bad(format!(
                "masks of {} words; the vocabulary needs {words}",
                a.mask_words
            ));
        }
        if mask_total as u64 * 4 > self.meta.masks.size() {
            return bad(format!(
                "{} masks are more than one per sequence",
                a.num_masks
            ));
        }
        if !a.masks_later && a.masks.len() != mask_total {
            return bad(format!(
                "{} mask words for {} masks",
                a.masks.len(),
                a.num_masks
            ));
        }
        if a.biases.len() as u64 * 8 > self.meta.biases.size() {
            return bad(format!(
                "{} logit biases are too many for one step",
                a.biases.len()
            ));
        }
        for r in &a.rows {
            let mask_ok = r.mask_offset == NO_MASK
                || ((r.mask_offset as usize).is_multiple_of(words)
                    && r.mask_offset as usize + words <= mask_total);
            let bias_end = r.bias_start as usize + r.bias_count as usize;
            if !mask_ok || bias_end > a.biases.len() {
                return bad(format!(
                    "row adjustment {r:?} points outside the step's data"
                ));
            }
        }
        Ok(())
    }
}
