//! Draft-model speculation: a second, smaller model with the same tokenizer proposes each
//! speculating sequence's next k tokens greedily, from its own paged KV (its own block pool,
//! a block table per sequence). Before each engine step the draft model catches up on the
//! tokens its KV lacks (the prompt at first; then the tokens accepted since, after dropping
//! the drafts that were not), in chunks batched across sequences, then decodes k − 1 more
//! tokens for all of them in lockstep. The target model verifies as for n-gram drafts.

use std::collections::{HashMap, HashSet};

use crate::batch::{LogitRows, StepBatch};
use crate::error::{Error, Result};
use crate::generate::{Companion, Generator, ModelOptions, model_config};
use crate::gpu::GpuContext;
use crate::kv::BlockTable;
use crate::model::ModelFiles;
use crate::sampling::RowSampling;
use crate::scheduler::SeqId;
use crate::tokenizer::Tokenizer;

/// The draft model and each sequence's KV in it.
pub(crate) struct DraftModel {
    model: Generator,
    /// Tokens the target accepts ids below (drafts at or past it are cut).
    target_vocab: usize,
    seqs: HashMap<SeqId, DraftSeq>,
}

/// A sequence's KV in the draft model: the tokens written, in order.
#[derive(Default)]
struct DraftSeq {
    table: BlockTable,
    kv: Vec<u32>,
}

/// One forward's work for one sequence: `tokens` at `start`, and whether its last row is read.
struct Chunk {
    id: SeqId,
    tokens: Vec<u32>,
    start: usize,
    pick: bool,
}

/// The draft model's options: the target's storage type and batch shape.
fn draft_options(path: &std::path::Path, target: &ModelOptions) -> ModelOptions {
    let mut opts = ModelOptions::new(path);
    opts.dtype = target.dtype;
    opts.block_size = target.block_size;
    opts.max_seqs = target.max_seqs;
    opts.max_batch_tokens = target.max_batch_tokens;
    opts.max_model_len = target.max_model_len;
    opts
}

/// What the draft model at `path` takes from the device's memory next to the target (read
/// from its files before anything loads).
pub(crate) fn companion(path: &std::path::Path, target: &ModelOptions) -> Result<Companion> {
    let opts = draft_options(path, target);
    let files = ModelFiles::open(path)?;
    let cfg = model_config(&files, &opts)?;
    Ok(Companion::of(
        &cfg,
        &opts,
        files.gpu_weight_bytes(opts.dtype),
    ))
}

impl DraftModel {
    /// Loads the draft model at `path` with the target's storage type and batch shape, a KV
    /// pool of `num_blocks` blocks, and checks that its tokenizer is the target's, token for
    /// token (drafts are token ids: another vocabulary would draft nonsense).
    pub(crate) fn load(
        ctx: &GpuContext,
        path: &std::path::Path,
        target: &ModelOptions,
        target_tokenizer: Option<&Tokenizer>,
        target_vocab: usize,
        num_blocks: usize,
    ) -> Result<DraftModel> {
        let mut opts = draft_options(path, target);
        opts.num_blocks = Some(num_blocks);
        let model = Generator::load(ctx, &opts, &mut |_, _| {})?;
        same_vocabulary(target_tokenizer, model.tokenizer(), path)?;
        let vocab = model.config().vocab_size;
        if target_tokenizer.is_none() && vocab != target_vocab {
            return Err(Error::InvalidRequest(format!(
                "draft model {}: {vocab} token embeddings, the target has {target_vocab}; a \
                 draft model must share the target's vocabulary",
                path.display()
            )));
        }
        Ok(DraftModel {
            model,
            target_vocab,
            seqs: HashMap::new(),
        })
    }

    /// Greedy drafts of up to `k` tokens after each sequence's `tokens` (prompt + output).
    /// A sequence the draft pool cannot hold gets none this step. Sequences not asked for
    /// and not in `keep` are forgotten (their blocks freed).
    pub(crate) fn draft(
        &mut self,
        want: &[(SeqId, &[u32])],
        k: usize,
        keep: &HashSet<SeqId>,
    ) -> Result<HashMap<SeqId, Vec<u32>>> {
        let pool_stale: Vec<SeqId> = (self.seqs.keys())
            .filter(|id| !keep.contains(id))
            .copied()
            .collect();
        for id in pool_stale {
            self.forget(id)?;
        }
        let mut drafts: HashMap<SeqId, Vec<u32>> = HashMap::new();
        if k == 0 {
            return Ok(drafts);
        }
        // Drop what the KV holds past the tokens both agree on (rejected drafts).
        let mut pending: Vec<Chunk> = Vec::new();
        for (id, tokens) in want {
            let s = self.seqs.entry(*id).or_default();
            let common =
                s.kv.iter()
                    .zip(tokens.iter())
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(tokens.len().saturating_sub(1));
            let (_, pool) = self.model.parts_mut();
            s.table.truncate(pool, common)?;
            s.kv.truncate(common);
            pending.push(Chunk {
                id: *id,
                tokens: tokens[common..].to_vec(),
                start: common,
                pick: true,
            });
        }
        // Catch up (in chunks the step budget allows), picking d1 after each last token.
        let budget = self.model.runner_mut().runner_config().max_batch_tokens;
        while !pending.is_empty() {
            let mut step = Vec::new();
            let mut left = budget;
            pending.retain_mut(|c| {
                if left == 0 {
                    return true;
                }
                let n = c.tokens.len().min(left);
                left -= n;
                let rest = c.tokens.split_off(n);
                step.push(Chunk {
                    id: c.id,
                    tokens: std::mem::replace(&mut c.tokens, rest),
                    start: c.start,
                    pick: c.tokens.is_empty(),
                });
                c.start += n;
                !c.tokens.is_empty()
            });
            for (id, tok) in self.forward(&step)? {
                drafts.entry(id).or_default().push(tok);
            }
        }
        // Then k − 1 lockstep decodes, each feeding every sequence's last draft.
        for _ in 1..k {
            let step: Vec<Chunk> = drafts
                .iter()
                .filter(|(id, d)| {
                    self.seqs.contains_key(id)
                        && d.last().is_some_and(|t| (*t as usize) < self.target_vocab)
                })
                .map(|(id, d)| Chunk {
                    id: *id,
                    tokens: vec![*d.last().expect("filtered")],
                    start: self.seqs[id].kv.len(),
                    pick: true,
                })
                .collect();
            if step.is_empty() {
                break;
            }
            for (id, tok) in self.forward(&step)? {
                drafts.get_mut(&id).expect("drafting").push(tok);
            }
        }
        for d in drafts.values_mut() {
            if let Some(cut) = d.iter().position(|t| *t as usize >= self.target_vocab) {
                d.truncate(cut);
            }
        }
        Ok(drafts)
    }

    /// Runs one batch of chunks; the greedy pick after each chunk that asks for one. A
    /// sequence whose blocks do not fit is forgotten and left out.
    fn forward(&mut self, chunks: &[Chunk]) -> Result<Vec<(SeqId, u32)>> {
        let bs = self.model.pool().block_size();
        let max_blocks = self.model.runner_mut().max_blocks();
        let mut batch = StepBatch::new(max_blocks);
        let mut rows = Vec::new();
        for c in chunks {
            let end = c.start + c.tokens.len();
            // Forgotten earlier in this step (its blocks did not fit): no draft.
            let Some(s) = self.seqs.get_mut(&c.id) else {
                continue;
            };
            let (_, pool) = self.model.parts_mut();
            if s.table.grow_to(pool, end).is_err() {
                log::debug!("draft model: no KV blocks for {}; no draft this step", c.id);
                self.forget(c.id)?;
                continue;
            }
            let logits = if c.pick {
                LogitRows::Last
            } else {
                LogitRows::None
            };
            batch
                .push_sequence(&c.tokens, c.start, &s.table, bs, logits)
                .ok_or_else(|| Error::InvalidRequest("draft sequence too long".into()))?;
            s.kv.extend_from_slice(&c.tokens);
            if c.pick {
                batch.sample_on_gpu(rows.len(), RowSampling::default());
                rows.push(c.id);
            }
        }
        if batch.num_tokens() == 0 {
            return Ok(Vec::new());
        }
        let out = self.model.runner_mut().forward(&batch)?;
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, out.token(i)))
            .collect())
    }

    /// Frees `id`'s draft KV.
    pub(crate) fn forget(&mut self, id: SeqId) -> Result<()> {
        if let Some(mut s) = self.seqs.remove(&id) {
            let (_, pool) = self.model.parts_mut();
            s.table.release(pool)?;
        }
        Ok(())
    }
}

/// Both models must tokenize alike: the same vocabulary, token for token.
fn same_vocabulary(
    target: Option<&Tokenizer>,
    draft: Option<&Tokenizer>,
    path: &std::path::Path,
) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::InvalidRequest(format!(
            "draft model {}: {why}; a draft model must share the target's tokenizer",
            path.display()
        )))
    };
    let (t, d) = match (target, draft) {
        (Some(t), Some(d)) => (t, d),
        (None, None) => return Ok(()),
        _ => return refuse("one model has a tokenizer and the other none".into()),
    };
    if t.vocab_size() != d.vocab_size() {
        return refuse(format!(
            "its vocabulary has {} tokens, the target's {}",
            d.vocab_size(),
            t.vocab_size()
        ));
    }
    if let Some(id) = (0..t.vocab_size() as u32).find(|&i| t.token_bytes(i) != d.token_bytes(i)) {
        return refuse(format!("token {id} differs"));
    }
    Ok(())
}
