//! Per-request state of the engine thread: the sampler, the detokenizer, the stop matcher,
//! and structured output's grammar and logit bias applied to rows sampled on the CPU.

use std::borrow::Cow;
use std::time::Instant;

use futures::channel::mpsc::UnboundedSender;

use super::{Event, StopMatcher};
use crate::sampling::{GrammarState, Sampler, apply_biases, apply_mask};
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
