//! Per-request state of the engine thread: the sampler, the detokenizer, the stop matcher,
//! and structured output's grammar and logit bias applied to rows sampled on the CPU.

use std::borrow::Cow;
use std::time::Instant;

use futures::channel::mpsc::UnboundedSender;

use super::{Event, StopMatcher};
use crate::sampling::{GrammarState, RowSampling, Sampler, apply_biases, apply_mask};
use crate::spec::{SpecConfig, SpecMethod, ngram_draft};
use crate::tokenizer::Detokenizer;

/// Per-request state the engine thread keeps beside the scheduler's.
pub(super) struct Active {
    pub(super) prompt_len: usize,
    pub(super) output: Vec<u32>,
    pub(super) max_tokens: usize,
    pub(super) ignore_eos: bool,
    pub(super) sampler: Sampler,
    pub(super) detok: Option<Detokenizer>,
    pub(super) stop: StopMatcher,
    pub(super) events: UnboundedSender<Event>,
    pub(super) submitted: Instant,
    pub(super) first_token: Option<Instant>,
    pub(super) prompt: Vec<u32>,
    pub(super) stop_string_hit: bool,
    /// Alternatives to report per token (None = no logprobs).
    pub(super) logprobs: Option<usize>,
    /// Sample the next token on the CPU whatever the engine's setting: a parallel-sampling
    /// sibling whose fork was refused redraws the first token its siblings drew on the CPU, so
    /// it must draw it the same way (the GPU agrees only up to exp/ln rounding).
    pub(super) cpu_next: bool,
    /// Structured output: where the text is in its grammar (advanced by every token).
    pub(super) grammar: Option<GrammarState>,
    /// `logit_bias`, sorted by token with duplicates summed.
    pub(super) logit_bias: Vec<(u32, f32)>,
    /// The grammar failed (llguidance's error): the request fails at its next token.
    pub(super) grammar_error: Option<String>,
    /// Speculative decoding, when this request uses it.
    pub(super) spec: Option<SpecState>,
    /// Its prompt's KV goes to the disk tier after the first token.
    pub(super) persist: bool,
}

/// A request's speculative decoding: its settings and how its drafts fared.
pub(super) struct SpecState {
    pub(super) cfg: SpecConfig,
    pub(super) drafted: u64,
    pub(super) accepted: u64,
    /// The sampler as it was before a verification step drew a key for each of its rows:
    /// put back and advanced by the rows used once the step is read back.
    pub(super) rewind: Option<Sampler>,
}

impl SpecState {
    pub(super) fn new(cfg: SpecConfig) -> SpecState {
        SpecState {
            cfg,
            drafted: 0,
            accepted: 0,
            rewind: None,
        }
    }

    /// Still worth drafting: acceptance not (yet) below the floor.
    fn worthwhile(&self) -> bool {
        self.drafted < self.cfg.min_drafted as u64
            || self.accepted as f64 >= self.cfg.min_acceptance * self.drafted as f64
    }
}

impl Active {
    /// Whether the logits need changing before a pick (a grammar mask or biases).
    pub(super) fn adjusts_logits(&self) -> bool {
        self.grammar.is_some() || !self.logit_bias.is_empty()
    }

    /// The row the sampler sees: `row` masked by the grammar and biased (a copy), or `row`
    /// itself when neither applies. Logprobs keep the model's own row.
    pub(super) fn adjusted<'a>(&mut self, row: &'a [f32]) -> Cow<'a, [f32]> {
        if !self.adjusts_logits() {
            return Cow::Borrowed(row);
        }
        let mut r = row.to_vec();
        if let Some(g) = self.grammar.as_mut() {
            match g.mask() {
                Ok(m) => apply_mask(&mut r, &m),
                Err(e) => self.grammar_error = Some(e),
            }
        }
        apply_biases(&mut r, &self.logit_bias);
        Cow::Owned(r)
    }

    /// Samples from `row` after the grammar and biases.
    pub(super) fn sample(&mut self, row: &[f32]) -> u32 {
        let r = self.adjusted(row);
        self.sampler.sample(&r, &self.prompt, &self.output)
    }

    /// Whether this request drafts this step: it speculates, its acceptance holds up and at
    /// most its `max_batch` sequences run.
    pub(super) fn drafts_now(&self, batch: usize) -> bool {
        self.spec
            .as_ref()
            .is_some_and(|s| s.worthwhile() && batch <= s.cfg.max_batch)
    }

    /// Up to `most` n-gram drafted tokens to follow `tokens` (the scheduler's prompt +
    /// output), when this request drafts now ([`Active::drafts_now`]).
    pub(super) fn draft(&self, tokens: &[u32], most: usize, batch: usize) -> Vec<u32> {
        let Some(s) = self.spec.as_ref().filter(|_| self.drafts_now(batch)) else {
            return Vec::new();
        };
        let k = most.min(s.cfg.num_tokens);
        match s.cfg.method {
            SpecMethod::Ngram { max_n, min_n } => ngram_draft(tokens, min_n, max_n, k),
            // The engine's draft model drafted before the step (`Worker::schedule`).
            SpecMethod::Draft { .. } => Vec::new(),
        }
    }

    /// The GPU picks of a verification step's `rows` rows: a key per row from this request's
    /// stream, as `rows` plain steps would draw them (the stream is put back by
    /// [`Active::verified`]). `None` where the CPU must sample.
    pub(super) fn verification_rows(&mut self, rows: usize) -> Option<Vec<RowSampling>> {
        let saved = self.sampler.clone();
        let picks: Option<Vec<RowSampling>> =
            (0..rows).map(|_| self.sampler.row_sampling()).collect();
        match (picks, self.spec.as_mut()) {
            (Some(p), Some(s)) => {
                s.rewind = Some(saved);
                Some(p)
            }
            // Penalties (no row draws a key), or not speculating: nothing drawn to undo.
            _ => {
                self.sampler = saved;
                None
            }
        }
    }

    /// A verification step of `drafted` tokens used `accepted` of them (and one row after
    /// them): counts it, and leaves the random stream where that many plain steps would.
    pub(super) fn verified(&mut self, drafted: usize, accepted: usize) {
        let Some(s) = self.spec.as_mut() else {
            return;
        };
        s.drafted += drafted as u64;
        s.accepted += accepted as u64;
        if let Some(mut sampler) = s.rewind.take() {
            for _ in 0..=accepted {
                sampler.row_sampling();
            }
            self.sampler = sampler;
        }
    }

    /// Fills `out` with the mask of the next token (all tokens allowed without a grammar or
    /// after a grammar error, which ends the request at its next token anyway).
    pub(super) fn fill_mask(&mut self, out: &mut [u32]) {
        let res = match self.grammar.as_mut() {
            Some(g) if self.grammar_error.is_none() => g.fill_mask(out),
            _ => {
                out.fill(u32::MAX);
                Ok(())
            }
        };
        if let Err(e) = res {
            out.fill(u32::MAX);
            self.grammar_error = Some(e);
        }
    }
}
