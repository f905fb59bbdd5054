//! The engine's side of speculative decoding: drafting at schedule time and verifying a
//! step's drafted rows (the scheduler keeps the KV; see src/spec and the scheduler's spec.rs).
//!
//! A verification row is picked exactly as the plain step at its position would pick it —
//! the same logits bits (batch invariance), the same sampling key (drawn from the request's
//! stream in order, then rewound to the rows used) — and a draft is accepted only while it
//! equals that pick. So the output is the plain decode's, token for token, greedy or seeded.

use std::collections::{HashMap, HashSet};

use super::Worker;
use crate::engine::{DEFAULT_SPEC_TOKENS, Request, TokenLogprob};
use crate::gpu::Logits;
use crate::scheduler::{ScheduledSeq, SchedulerOutput, SeqId};
use crate::spec::{SpecConfig, SpecMethod};

impl Worker {
    /// The speculation `req` runs with: its own choice over the engine's; none under a
    /// grammar (drafts would need the matcher's rollback).
    pub(super) fn spec_for(&self, req: &Request) -> Option<SpecConfig> {
        if req.grammar.is_some() {
            return None;
        }
        match (req.speculative, self.spec.clone()) {
            (Some(false), _) => None,
            (Some(true), None) => Some(SpecConfig::ngram(DEFAULT_SPEC_TOKENS)),
            (_, cfg) => cfg,
        }
    }

    /// The scheduler's next step, with drafts for the speculating sequences about to decode.
    /// Drafting needs every token known: a step in flight is read back first (only when
    /// some request drafts now, so the others keep overlapping). With a draft
    /// model, it drafts for all of them at once before the step is scheduled.
    pub(super) fn schedule(&mut self) -> SchedulerOutput {
        // Requests that stopped drafting (low acceptance, a large batch) keep the overlap.
        let batch = self.sched.num_running();
        if !self.active.values().any(|a| a.drafts_now(batch)) {
            return self.sched.schedule();
        }
        self.drain();
        let modelled = self.model_drafts(batch);
        let active = &self.active;
        self.sched
            .schedule_with_drafts(|id, tokens, most| match modelled.get(&id) {
                Some(d) => d[..d.len().min(most)].to_vec(),
                None => active
                    .get(&id)
                    .map_or_else(Vec::new, |a| a.draft(tokens, most, batch)),
            })
    }

    /// The draft model's drafts for every sequence that drafts with it now.
    fn model_drafts(&mut self, batch: usize) -> HashMap<SeqId, Vec<u32>> {
        let (Some(model), Some(cfg)) = (self.draft.as_mut(), self.spec.as_ref()) else {
            return HashMap::new();
        };
        // The scheduler's own token lists, borrowed: no copy per sequence per step.
        let want: Vec<(SeqId, &[u32])> = (self.active.iter())
            .filter(|(id, a)| {
                a.drafts_now(batch)
                    && a.spec
                        .as_ref()
                        .is_some_and(|s| matches!(s.cfg.method, SpecMethod::Draft { .. }))
                    && self.sched.is_decoding(**id)
            })
            .filter_map(|(id, _)| Some((*id, self.sched.tokens(*id)?)))
            .collect();
        let keep: HashSet<SeqId> = self.active.keys().copied().collect();
        match model.draft(&want, cfg.num_tokens, &keep) {
            Ok(d) => d,
            Err(e) => {
                log::warn!("draft model: {e}; no drafts this step");
                HashMap::new()
            }
        }
    }

    /// The tokens of entry `e`'s verification rows `first..=first + e.draft`: the pick at
    /// each row while it equals the draft there, then the pick after the last accepted draft.
    pub(super) fn verify(
        &mut self,
        e: &ScheduledSeq,
        first: usize,
        logits: &Logits,
        sampled: &mut Vec<(SeqId, u32)>,
        logprobs: &mut HashMap<SeqId, Vec<TokenLogprob>>,
    ) {
        let Some(a) = self.active.get_mut(&e.id) else {
            return;
        };
        let drafted = e.drafted();
        let before = a.output.len();
        let mut tokens = Vec::with_capacity(drafted.len() + 1);
        for i in 0..=drafted.len() {
            let tok = match logits.row(first + i) {
                // Sampled on the CPU: penalties see the accepted drafts before this row.
                Some(row) => {
                    let tok = a.sample(row);
                    if let Some(k) = a.logprobs {
                        let lp = super::token_logprob(row, tok, k);
                        logprobs.entry(e.id).or_default().push(lp);
                    }
                    tok
                }
                None => logits.token(first + i),
            };
            tokens.push(tok);
            if drafted.get(i) != Some(&tok) {
                break;
            }
            a.output.push(tok);
        }
        a.output.truncate(before);
        a.verified(drafted.len(), tokens.len() - 1);
        sampled.extend(tokens.into_iter().map(|t| (e.id, t)));
    }
}
