//! `update`: what a step that ran changes — KV written, copies confirmed, sampled (and, for a
//! speculative entry, accepted drafted) tokens appended — and `resolve_pending`.

use std::collections::HashMap;

use super::blocks::{register_full_blocks, release_out_of_window};
use super::types::ScheduledSeq;
use super::{PENDING_TOKEN, SYNC, SchedError, Scheduler, SchedulerOutput, Seq, SeqId, State};

impl Scheduler {
    /// Records that `out` ran: its tokens' KV is written, its block copies are done, and each
    /// sampling sequence got the token in `sampled` — an entry with drafted tokens gets, in
    /// order, the drafts the model accepted (a prefix of them) and the token after them (see
    /// spec.rs). Entries of sequences finished or aborted since `schedule` are skipped (their
    /// samples ignored). Returns the sequences that are now length-capped (max_tokens or
    /// max_model_len reached): finish them with `Length`. Validates everything before
    /// changing anything.
    pub fn update(
        &mut self,
        out: &SchedulerOutput,
        sampled: &[(SeqId, u32)],
    ) -> Result<Vec<SeqId>, SchedError> {
        if self.in_flight != Some(out.step) {
            return Err(SchedError::StaleOutput {
                expected: self.in_flight,
                got: out.step,
            });
        }
        let rows: HashMap<SeqId, &ScheduledSeq> = (out.seqs.iter())
            .filter(|e| e.sample)
            .map(|e| (e.id, e))
            .collect();
        // Per sampling sequence: (tokens given, the last). A token that follows another must
        // have been preceded by the draft at that place (no allocation per sequence).
        let mut got: HashMap<SeqId, (usize, u32)> = HashMap::with_capacity(sampled.len());
        for &(id, tok) in sampled {
            let e = rows.get(&id).ok_or(SchedError::UnexpectedSample(id))?;
            let (n, last) = got.entry(id).or_insert((0, tok));
            if *n > e.draft {
                return Err(SchedError::UnexpectedSample(id));
            }
            if e.draft > 0 && (tok == PENDING_TOKEN || (*n > 0 && *last != e.drafted()[*n - 1])) {
                return Err(SchedError::DraftMismatch(id));
            }
            *n += 1;
            *last = tok;
        }
        // Alive: still running with the KV this entry extended (not finished, aborted or re-added).
        let alive = |s: Option<&Seq>, e: &ScheduledSeq| {
            s.is_some_and(|s| s.state == State::Running && s.num_computed == e.start_pos)
        };
        for e in &out.seqs {
            if e.sample && alive(self.seqs.get(&e.id), e) && !got.contains_key(&e.id) {
                return Err(SchedError::MissingSample(e.id));
            }
        }
        self.in_flight = None;
        for p in self.copies.drain(..) {
            if p.held {
                self.pool.release(p.copy.src).expect(SYNC);
            }
        }
        let mut capped = Vec::new();
        for e in &out.seqs {
            if !alive(self.seqs.get(&e.id), e) {
                continue;
            }
            let s = self.seqs.get_mut(&e.id).expect("alive");
            let given = got.get(&e.id).copied();
            // Accepted drafts join the tokens; the rejected ones' lookahead slots go.
            let accepted = given.map_or(0, |(n, _)| n - 1).min(e.draft);
            s.tokens.extend_from_slice(&e.drafted()[..accepted]);
            s.num_computed += e.tokens.len() - e.draft + accepted;
            if e.draft > 0 {
                s.table
                    .truncate(&mut self.pool, s.num_computed)
                    .expect(SYNC);
                self.spec_drafted += e.draft as u64;
                self.spec_accepted += accepted as u64;
            }
            if self.cfg.enable_prefix_cache {
                register_full_blocks(&mut self.pool, s);
            }
            release_out_of_window(&mut self.pool, self.cfg.sliding_window, s);
            if let Some((_, tok)) = given {
                s.tokens.push(tok);
            }
            if s.is_capped(self.cfg.max_model_len) {
                capped.push(e.id);
            }
        }
        Ok(capped)
    }

    /// Sets the last token of `id`, which `update` recorded as [`PENDING_TOKEN`], to `tok`
    /// (running or waiting, e.g. preempted meanwhile). O(1).
    pub fn resolve_pending(&mut self, id: SeqId, tok: u32) -> Result<(), SchedError> {
        let s = self.seqs.get_mut(&id).ok_or(SchedError::UnknownSeq(id))?;
        let has_output = s.tokens.len() > s.prompt_len;
        match s.tokens.last_mut() {
            Some(last) if *last == PENDING_TOKEN && has_output => {
                if tok == PENDING_TOKEN {
                    return Err(SchedError::ReservedToken(id));
                }
                *last = tok;
                Ok(())
            }
            _ => Err(SchedError::NoPendingToken(id)),
        }
    }
}
