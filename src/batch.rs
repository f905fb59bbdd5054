//! The step batch: the one plain value that crosses from scheduling to the GPU runner.
//!
//! All tokens of all sequences in a step are packed back to back with no padding; per-token
//! metadata tells the kernels which sequence and which KV slot each belongs to.

use crate::kv::BlockTable;
use crate::sampling::RowSampling;

/// Top bit of a token id in [`StepBatch::token_ids`]: the id is the token the previous step
/// picked for the logits row in the low bits (see [`StepBatch::feed_from_previous_step`]).
pub const FED_TOKEN: u32 = 0x8000_0000;

/// What `block_tables` holds where a table has no block: past its end, and in its holes
/// (`kv::BlockId::HOLE`: blocks released because every layer's sliding window has moved past
/// them). The kernels never read those entries — a query's walk starts at its window's first
/// block and stops at its context's last — so any in-range block id will do; 0 keeps every
/// entry a valid block, which the runner checks.
pub const HOLE_ENTRY: u32 = 0;

/// Which of a sequence's rows in this step need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// None (a prefill chunk that does not reach the prompt's end).
    None,
    /// The last token only (sampling the next token).
    Last,
    /// Every token (teacher-forced scoring, like prompt_logprobs).
    All,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepBatch {
    /// Token ids, all sequences packed back to back (T entries).
    pub token_ids: Vec<u32>,
    /// Position of each token within its sequence (T).
    pub positions: Vec<u32>,
    /// KV slot of each token: block_id * block_size + position % block_size (T).
    pub slot_mapping: Vec<u32>,
    /// Index of each token's sequence within this batch = its row of `block_tables` (T).
    pub token_seq: Vec<u32>,
    /// Sequence s owns tokens query_start[s]..query_start[s + 1] (S + 1 entries, starts at 0).
    pub query_start: Vec<u32>,
    /// Tokens of sequence s in the KV cache once this step has run (S).
    pub context_lens: Vec<u32>,
    /// (S, max_blocks) physical block ids, row-major; entries past a table's end, and the
    /// holes of a table (blocks given back once out of every sliding window), are
    /// [`HOLE_ENTRY`].
    pub block_tables: Vec<u32>,
    /// Columns of `block_tables`: the most blocks any sequence may hold.
    pub max_blocks: usize,
    /// Token rows (indices into 0..T) whose logits are returned, in output order.
    pub logit_rows: Vec<u32>,
    /// One per entry of `logit_rows`: whether its whole logits row is read back. The GPU
    /// picks a token for every row (its argmax, or a sample per `row_sampling`) and that id
    /// is always returned, so a row sampled on the GPU needs only its id (4 bytes instead of
    /// 4 × vocab). `push_sequence` sets true; see [`StepBatch::sample_on_gpu`].
    pub full_logits: Vec<bool>,
    /// One per entry of `logit_rows`: how the GPU picks that row's token. Greedy (the
    /// default) keeps the argmax; a row read back whole is always greedy here, since the
    /// sampler overwrites its logits with weights.
    pub row_sampling: Vec<RowSampling>,
    /// How rows picked on the GPU are changed before the pick (grammar masks, logit bias).
    pub adjust: LogitAdjustments,
}

/// `RowAdjust::mask_offset` of a row without a mask.
pub const NO_MASK: u32 = u32::MAX;

/// How the `logit_adjust` kernel changes one logits row (see `shaders/logit_adjust.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RowAdjust {
    /// First word of the row's allowed-token mask in [`LogitAdjustments::masks`], or [`NO_MASK`].
    pub mask_offset: u32,
    /// The row's biases: `biases[bias_start..bias_start + bias_count]`.
    pub bias_start: u32,
    pub bias_count: u32,
    pub pad: u32,
}

impl Default for RowAdjust {
    fn default() -> Self {
        Self {
            mask_offset: NO_MASK,
            bias_start: 0,
            bias_count: 0,
            pad: 0,
        }
    }
}

/// One `logit_bias` entry as the kernel reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TokenBias {
    pub token: u32,
    pub bias: f32,
}

/// The logits adjustments of a step: per row an optional allowed-token mask (bit v % 32 of
/// word v / 32 of the row's mask; a cleared bit makes the logit -inf) and biases added after
/// the mask. Empty (`rows` empty) when no row is adjusted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitAdjustments {
    /// One per logits row once any row is adjusted.
    pub rows: Vec<RowAdjust>,
    /// Words of one mask (the vocabulary / 32, rounded up).
    pub mask_words: usize,
    /// Masks that `rows` point into, back to back; when `masks_later` is set, the caller
    /// hands them over after the submit instead ([`crate::gpu::Runner::submit_masks`]).
    pub masks: Vec<u32>,
    /// Masks the rows point to (the length `masks` will have).
    pub num_masks: usize,
    /// Sorted by token within a row, no duplicate tokens.
    pub biases: Vec<TokenBias>,
    /// The masks depend on tokens not read back yet: the runner submits the forward pass at
    /// once and the pick when the masks arrive.
    pub masks_later: bool,
}

impl LogitAdjustments {
    /// Whether any row is changed.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl StepBatch {
    /// An empty batch whose block-table rows are `max_blocks` wide.
    pub fn new(max_blocks: usize) -> Self {
        Self {
            query_start: vec![0],
            max_blocks,
            ..Default::default()
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.context_lens.len()
    }

    /// Appends one sequence's tokens for this step: `tokens` sit at positions
    /// `start_pos..start_pos + tokens.len()`, whose slots `table` must already cover.
    /// Returns `None` (leaving the batch unchanged) if the table does not cover them or
    /// holds more than `max_blocks` blocks.
    pub fn push_sequence(
        &mut self,
        tokens: &[u32],
        start_pos: usize,
        table: &BlockTable,
        block_size: usize,
        logits: LogitRows,
    ) -> Option<()> {
        if table.blocks().len() > self.max_blocks || tokens.is_empty() {
            return None;
        }
        let slots: Vec<u32> = (start_pos..start_pos + tokens.len())
            .map(|pos| table.slot(pos, block_size))
            .collect::<Option<_>>()?;
        let seq = self.num_seqs() as u32;
        let first_row = self.token_ids.len() as u32;
        self.token_ids.extend_from_slice(tokens);
        self.positions
            .extend((start_pos..start_pos + tokens.len()).map(|p| p as u32));
        self.slot_mapping.extend(slots);
        self.token_seq
            .extend(std::iter::repeat_n(seq, tokens.len()));
        self.query_start.push(self.token_ids.len() as u32);
        self.context_lens.push((start_pos + tokens.len()) as u32);
        // The row is written in place: no allocation per sequence per step.
        let start = self.block_tables.len();
        self.block_tables
            .resize(start + self.max_blocks, HOLE_ENTRY);
        for (dst, b) in self.block_tables[start..].iter_mut().zip(table.blocks()) {
            if !b.is_hole() {
                *dst = b.0;
            }
        }
        let last_row = self.token_ids.len() as u32;
        match logits {
            LogitRows::None => {}
            LogitRows::Last => self.logit_rows.push(last_row - 1),
            LogitRows::All => self.logit_rows.extend(first_row..last_row),
        }
        self.full_logits.resize(self.logit_rows.len(), true);
        self.row_sampling
            .resize(self.logit_rows.len(), RowSampling::default());
        Some(())
    }

    /// Returns only the argmax of logits row `i` (the i-th entry of `logit_rows`), not its
    /// logits: for greedy sampling without logit processors.
    pub fn argmax_only(&mut self, i: usize) {
        self.sample_on_gpu(i, RowSampling::default());
    }

    /// Has the GPU pick logits row `i`'s token as `sampling` says and returns only that id.
    pub fn sample_on_gpu(&mut self, i: usize, sampling: RowSampling) {
        self.full_logits[i] = false;
        self.row_sampling[i] = sampling;
    }

    /// Token `t` is whatever the step before this one picks for its logits row `prev_row`:
    /// the GPU copies it from that step's output before this step reads any token, so this
    /// step can be submitted before the previous one is read back (the engine's overlapped
    /// scheduling). Valid only when the step submitted just before this one had that row.
    pub fn feed_from_previous_step(&mut self, t: usize, prev_row: u32) {
        debug_assert!(prev_row < FED_TOKEN);
        self.token_ids[t] = FED_TOKEN | prev_row;
    }

    /// Whether any token comes from the previous step ([`StepBatch::feed_from_previous_step`]).
    pub fn has_fed_tokens(&self) -> bool {
        self.token_ids.iter().any(|t| t & FED_TOKEN != 0)
    }

    /// Gives logits row `i` (picked on the GPU) an allowed-token mask of `words` words, the
    /// next of the step's masks, and returns its index among them. Its contents go in
    /// `adjust.masks` (or follow the submit, with `adjust.masks_later`).
    pub fn mask_row(&mut self, i: usize, words: usize) -> usize {
        self.grow_adjust_rows();
        let k = self.adjust.num_masks;
        self.adjust.rows[i].mask_offset = (k * words) as u32;
        self.adjust.mask_words = words;
        self.adjust.num_masks += 1;
        k
    }

    /// Adds `biases` (sorted by token, no duplicates) to logits row `i` before its pick.
    pub fn bias_row(&mut self, i: usize, biases: &[(u32, f32)]) {
        self.grow_adjust_rows();
        let start = self.adjust.biases.len();
        self.adjust.biases.extend(
            biases
                .iter()
                .map(|&(token, bias)| TokenBias { token, bias }),
        );
        self.adjust.rows[i].bias_start = start as u32;
        self.adjust.rows[i].bias_count = biases.len() as u32;
    }

    fn grow_adjust_rows(&mut self) {
        self.adjust
            .rows
            .resize(self.logit_rows.len(), RowAdjust::default());
    }

    /// Whether any row is sampled (not greedy) on the GPU.
    pub fn samples_on_gpu(&self) -> bool {
        self.row_sampling.iter().any(|s| !s.is_greedy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::BlockPool;

    #[test]
    fn holes_become_the_sentinel_and_are_never_a_slot() {
        // Blocks of 4, 13 tokens: 4 blocks; the first two given back (window 4 after 13
        // tokens computed: floor((13 + 1 - 4) / 4) = 2).
        let mut pool = BlockPool::new(8, 4).unwrap();
        let mut t = BlockTable::new();
        t.grow_to(&mut pool, 13).unwrap();
        let kept = t.blocks()[2..].to_vec();
        assert_eq!(t.release_front(&mut pool, 2).unwrap(), 2);
        t.grow_to(&mut pool, 14).unwrap();
        let mut batch = StepBatch::new(6);
        batch
            .push_sequence(&[9], 13, &t, 4, LogitRows::Last)
            .unwrap();
        assert_eq!(
            batch.block_tables,
            vec![HOLE_ENTRY, HOLE_ENTRY, kept[0].0, kept[1].0, 0, 0]
        );
        assert_eq!(batch.slot_mapping, vec![kept[1].0 * 4 + 1]);
        // a position inside a hole has no slot: the batch refuses it, no panic
        assert!(
            batch
                .push_sequence(&[9], 3, &t, 4, LogitRows::Last)
                .is_none()
        );
        t.release(&mut pool).unwrap();
        assert_eq!(pool.num_free(), 8);
    }

    #[test]
    fn two_sequences_pack_without_padding() {
        let mut pool = BlockPool::new(8, 4).unwrap();
        let mut a = BlockTable::new();
        let mut b = BlockTable::new();
        a.grow_to(&mut pool, 6).unwrap(); // 2 blocks
        b.grow_to(&mut pool, 9).unwrap(); // 3 blocks
        let mut batch = StepBatch::new(4);
        batch
            .push_sequence(&[1, 2, 3, 4, 5, 6], 0, &a, 4, LogitRows::Last)
            .unwrap();
        // b decodes its 9th token (position 8)
        batch.push_sequence(&[7], 8, &b, 4, LogitRows::All).unwrap();
        assert_eq!(batch.num_tokens(), 7);
        assert_eq!(batch.query_start, vec![0, 6, 7]);
        assert_eq!(batch.context_lens, vec![6, 9]);
        assert_eq!(batch.token_seq, vec![0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(batch.positions, vec![0, 1, 2, 3, 4, 5, 8]);
        assert_eq!(batch.logit_rows, vec![5, 6]);
        assert_eq!(batch.full_logits, vec![true, true]);
        batch.argmax_only(0);
        assert_eq!(batch.full_logits, vec![false, true]);
        assert_eq!(batch.row_sampling, vec![RowSampling::default(); 2]);
        assert!(!batch.samples_on_gpu());
        let hot = RowSampling {
            temperature: 0.7,
            ..Default::default()
        };
        batch.sample_on_gpu(1, hot);
        assert_eq!(batch.full_logits, vec![false, false]);
        assert_eq!(batch.row_sampling, vec![RowSampling::default(), hot]);
        assert!(batch.samples_on_gpu());
        assert!(!batch.has_fed_tokens());
        batch.feed_from_previous_step(6, 3);
        assert_eq!(batch.token_ids[6], FED_TOKEN | 3);
        assert!(batch.has_fed_tokens());
        // position 8 is offset 0 of b's third block
        assert_eq!(batch.slot_mapping[6], b.blocks()[2].0 * 4);
        assert_eq!(batch.block_tables.len(), 8);
        // a position the table does not cover is refused
        assert!(
            batch
                .push_sequence(&[1], 9, &b, 4, LogitRows::Last)
                .is_none()
        );
        assert_eq!(batch.num_seqs(), 2);
    }
}
