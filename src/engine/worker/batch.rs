//! Preparing a step's batch on the engine thread: which rows the GPU picks, where pending
//! tokens come from, and the grammar masks of constrained rows.

use std::collections::HashMap;

use super::Worker;
use crate::batch::StepBatch;
use crate::scheduler::{PENDING_TOKEN, SchedulerOutput, SeqId};

impl Worker {
    /// Marks the rows the GPU picks (greedy or sampled, no penalties, no logprobs, no
    /// siblings waiting on the row: they read back their token only) and points every
    /// pending token at its row of the step in flight.
    pub(super) fn prepare_batch(
        &mut self,
        out: &SchedulerOutput,
        mut batch: StepBatch,
    ) -> Result<(StepBatch, Vec<SeqId>), String> {
        let mut masked = Vec::new();
        let mut next_row = 0;
        for s in out.seqs.iter().filter(|s| s.sample) {
            let row = next_row;
            next_row += s.num_logit_rows();
            if self.forks.contains_key(&s.id) {
                continue;
            }
            let Some(a) = self.active.get_mut(&s.id) else {
                continue;
            };
            let gpu_can = a.logprobs.is_none()
                && !a.cpu_next
                && (self.gpu_sampling || a.sampler.params().is_plain_greedy());
            if s.draft > 0 {
                // A verification: each row picked with the key its plain step would draw.
                if gpu_can && let Some(rows) = a.verification_rows(s.num_logit_rows()) {
                    for (i, rs) in rows.into_iter().enumerate() {
                        batch.sample_on_gpu(row + i, rs);
                        if !a.logit_bias.is_empty() {
                            batch.bias_row(row + i, &a.logit_bias);
                        }
                    }
                }
                continue;
            }
            if gpu_can && let Some(rs) = a.sampler.row_sampling() {
                batch.sample_on_gpu(row, rs);
                // The mask needs the sequence's last token, which may still be on the GPU:
                // it is computed once the step before is read back (`fill_masks`).
                if a.grammar.is_some() {
                    batch.mask_row(row, self.runner.mask_words());
                    batch.adjust.masks_later = true;
                    masked.push(s.id);
                }
                if !a.logit_bias.is_empty() {
                    batch.bias_row(row, &a.logit_bias);
                }
            }
        }
        // Row of each sequence in the step in flight (one map, not a search per token).
        let rows: HashMap<SeqId, u32> = (self.in_flight.iter())
            .flat_map(|f| f.rows.iter().enumerate())
            .map(|(row, id)| (*id, row as u32))
            .collect();
        for t in 0..batch.num_tokens() {
            if batch.token_ids[t] != PENDING_TOKEN {
                continue;
            }
            let id = out.seqs[batch.token_seq[t] as usize].id;
            let row = rows
                .get(&id)
                .ok_or_else(|| format!("{id}'s pending token is in no step in flight"))?;
            batch.feed_from_previous_step(t, *row);
        }
        Ok((batch, masked))
    }

    /// The masks of a step's constrained rows (`masked`, in row order), once every token
    /// before them has been read back: a sequence that has finished since gets an all-allowed
    /// mask (its row is dropped).
    /// Fills `self.masks` (kept between steps: no allocation per step).
    pub(super) fn fill_masks(&mut self, masked: &[SeqId]) {
        let words = self.runner.mask_words();
        self.masks.clear();
        self.masks.resize(masked.len() * words, u32::MAX);
        for (id, out) in masked.iter().zip(self.masks.chunks_mut(words)) {
            if let Some(a) = self.active.get_mut(id) {
                a.fill_mask(out);
            }
        }
    }
}
