//! Property tests: random add / step / finish / abort / fork sequences on tiny pools, with the
//! KV memory itself simulated. Each step runs the block copies, writes every scheduled token's
//! KV (a hash of the sequence's tokens up to it) into its slot, and then reads each sequence's
//! whole context back through its block-table row as the attention kernel would: any block
//! shared wrongly, freed early, or recomputed with other tokens reads back the wrong hash.
//!
//! Prompts are drawn from a few shared prefixes, and most configs turn the prefix cache on: a
//! sequence that adopted cached blocks reads back, through them, exactly the values a run
//! without the cache would have written (the KV value of a position depends only on the tokens
//! up to it), no step ever writes a slot of a cached block, and every cached block — held or
//! free — still holds the KV of the tokens its key names.
//!
//! A third of the configs set a sliding window: each step then reads back only the keys the
//! kernels read (from the window start of the step's first query), every free uncached block
//! is overwritten with garbage after each step (so reading a block given back fails), the
//! holes of each table are exactly the blocks its window has passed, and a sequence holds at
//! most `window_peak_blocks` blocks — requests longer than the pool included.
//!
//! With a host tier (a third of the cached configs), every eviction's block is captured when
//! its step is scheduled (as the GPU copies it before the forward pass), lands in its host
//! slot an op later (one in eight copies fails instead), and restores write host slots back
//! into the memory before the step runs: a restored block that holds other KV, or a slot
//! reused while a restore reads it, reads back wrong.
//!
//! Speculative steps draft random tokens after decodes and accept a random prefix of each
//! draft: the KV of rejected drafts sits in lookahead slots the next steps must write again
//! before reading, so reading back a stale one fails; a block that held only rejected drafts
//! must be back in the pool (the ref-count check), and no cached block holds a draft.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Add {
        prompt_len: usize,
        max_tokens: usize,
        stop_at: usize,
        /// Which shared prefix the prompt starts with (≥ PREFIXES: none).
        prefix: usize,
        /// Tokens taken from it (capped by the prompt's length).
        shared: usize,
        salted: bool,
    },
    /// Schedule, run, update.
    Step,
    /// Schedule and run, but abort the `pick`-th sequence before `update`.
    StepAbortingOne {
        pick: usize,
    },
    /// Schedule (and run the copies and forward if `ran`) but never call `update`.
    Abandon {
        ran: bool,
    },
    Finish {
        pick: usize,
    },
    Abort {
        pick: usize,
    },
    Fork {
        pick: usize,
        diverge: bool,
    },
    /// The engine's overlapped step: schedule (with the last overlapped step's tokens still
    /// pending), run, resolve the pending tokens (read back late), then update with pending
    /// tokens. What stops or is capped is finished only once its last token is resolved.
    OverlappedStep,
    /// Speculative decoding: schedule with random drafts (a random prefix of each is
    /// accepted), run, update; or abandon the step after running it.
    SpecStep {
        abandon: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..200usize, 0..200usize, 1..40usize, 0..PREFIXES + 1, 0..200usize, prop::bool::weighted(0.15))
            .prop_map(|(prompt_len, max_tokens, stop_at, prefix, shared, salted)| Op::Add {
                prompt_len, max_tokens, stop_at, prefix, shared, salted
            }),
        5 => Just(Op::Step),
        5 => Just(Op::OverlappedStep),
        4 => prop::bool::weighted(0.1).prop_map(|abandon| Op::SpecStep { abandon }),
        1 => (0..8usize).prop_map(|pick| Op::StepAbortingOne { pick }),
        1 => any::<bool>().prop_map(|ran| Op::Abandon { ran }),
        1 => (0..8usize).prop_map(|pick| Op::Finish { pick }),
        1 => (0..8usize).prop_map(|pick| Op::Abort { pick }),
        1 => (0..8usize, any::<bool>()).prop_map(|(pick, diverge)| Op::Fork { pick, diverge }),
    ]
}

fn config() -> impl Strategy<Value = (SchedulerConfig, usize, usize)> {
    (
        (2..=12usize, 0..=4u32, 1..=6usize, 0..40usize),
        prop_oneof![Just(usize::MAX), 3..80usize],
        1..=8usize,
        0..4usize,
        prop::bool::weighted(0.8),
        prop_oneof![2 => Just(None), 1 => (1..40usize).prop_map(Some)],
    )
        .prop_map(
            |(
                (num_blocks, bs_log, max_num_seqs, extra),
                max_model_len,
                max_waiting,
                wm,
                cache,
                window,
            )| {
                let cfg = SchedulerConfig {
                    max_num_seqs,
                    max_num_batched_tokens: max_num_seqs + extra,
                    max_model_len,
                    max_waiting,
                    // 0..=2 blocks, or the default
                    watermark_blocks: (wm < 3).then(|| wm.min(num_blocks - 1)),
                    enable_prefix_cache: cache,
                    sliding_window: window,
                };
                (cfg, num_blocks, 1 << bs_log)
            },
        )
}

/// Shared prompt prefixes per test case.
const PREFIXES: usize = 3;

/// KV value of position `pos`: a hash of the tokens up to and including it.
fn kv_value(tokens: &[u32], pos: usize) -> u64 {
    tokens[..=pos]
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, t| {
            (h ^ u64::from(*t)).wrapping_mul(0x100_0000_01b3)
        })
}

struct Harness {
    s: Scheduler,
    /// What each live sequence's tokens must be: prompt + every token sampled for it.
    model: HashMap<SeqId, Vec<u32>>,
    /// Output length at which the "engine" stops it (like an EOS).
    stop_at: HashMap<SeqId, usize>,
    memory: Vec<u64>,
    next_id: u64,
    rng: u64,
    /// Shared prompt beginnings (the second extends the first's first half).
    prefixes: Vec<Vec<u32>>,
    /// The real tokens of the last overlapped step, pending in the scheduler, and what its
    /// update reported capped.
    pending: Vec<(SeqId, u32)>,
    pending_capped: Vec<SeqId>,
    /// Host tier: each slot's image, and the offloads copied but not confirmed yet.
    host_memory: Vec<u64>,
    offloading: Vec<(crate::kv::HostSlot, Vec<u64>)>,
}

impl Harness {
    fn rand(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 50_000) as u32
    }

    /// Sizes are scaled to the pool (1..=its slots), so most requests fit and some never do.
    fn make_prefixes(&mut self) {
        let slots = self.s.pool().num_blocks() * self.s.pool().block_size();
        let first: Vec<u32> = (0..slots).map(|_| self.rand() % 8).collect();
        let mut second = first[..slots / 2].to_vec();
        second.extend((slots / 2..slots).map(|_| self.rand()));
        let third = (0..slots).map(|_| self.rand()).collect();
        self.prefixes = vec![first, second, third];
    }

    fn add(&mut self, a: &Op) {
        let Op::Add {
            prompt_len,
            max_tokens,
            stop_at,
            prefix,
            shared,
            salted,
        } = *a
        else {
            unreachable!()
        };
        let slots = self.s.pool().num_blocks() * self.s.pool().block_size();
        // With a window, requests up to three times the pool: they fit when their peak does.
        let cap = slots
            * if self.s.cfg.sliding_window.is_some() {
                3
            } else {
                1
            };
        let (prompt_len, max_tokens) = (1 + prompt_len % cap, 1 + max_tokens % cap);
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let mut prompt: Vec<u32> = match self.prefixes.get(prefix) {
            Some(p) => p[..shared.min(prompt_len).min(p.len())].to_vec(),
            None => Vec::new(),
        };
        while prompt.len() < prompt_len {
            let t = self.rand();
            prompt.push(t);
        }
        let salt = salted.then_some(7);
        if self
            .s
            .add_with_salt(id, prompt.clone(), max_tokens, salt)
            .is_ok()
        {
            self.model.insert(id, prompt);
            self.stop_at.insert(id, stop_at);
        }
    }

    /// What the scheduler must hold for `id`: the model's tokens, the last one still
    /// `PENDING_TOKEN` if an overlapped step sampled it and it is not resolved yet.
    fn expected(&self, id: SeqId) -> Vec<u32> {
        let mut t = self.model[&id].clone();
        if self.pending.iter().any(|(p, _)| *p == id) {
            *t.last_mut().expect("sampled") = PENDING_TOKEN;
        }
        t
    }

    /// The overlapped step's tokens arrive: resolve them, then finish what is capped or stopped.
    fn resolve(&mut self) {
        for (id, tok) in std::mem::take(&mut self.pending) {
            if self.model.contains_key(&id) {
                self.s.resolve_pending(id, tok).expect("pending");
            } else {
                // Finished or aborted meanwhile: nothing to resolve.
                assert!(self.s.resolve_pending(id, tok).is_err());
            }
        }
        let capped = std::mem::take(&mut self.pending_capped);
        self.finish_done(capped);
    }

    /// Finishes `capped` and every sequence whose output reached its stop length.
    fn finish_done(&mut self, capped: Vec<SeqId>) {
        let stopped: Vec<SeqId> = (self.model.keys())
            .filter(|id| self.s.output(**id).unwrap().len() >= self.stop_at[*id])
            .copied()
            .collect();
        for id in capped.into_iter().chain(stopped) {
            if self.model.contains_key(&id) {
                let summary = self.s.finish(id).ok();
                self.remove(id, summary);
            }
        }
    }

    fn overlapped_step(&mut self) -> Result<SchedulerOutput, TestCaseError> {
        let out = self.s.schedule();
        self.transfer(&out);
        self.check_output(&out)?;
        self.check(true)?;
        self.run(&out)?;
        self.resolve();
        let sampled = self.sample(&out);
        let placeholders: Vec<(SeqId, u32)> =
            sampled.iter().map(|(id, _)| (*id, PENDING_TOKEN)).collect();
        self.pending_capped = self.s.update(&out, &placeholders).expect("update");
        self.poison_free_blocks();
        for (id, tok) in sampled {
            if let Some(t) = self.model.get_mut(&id) {
                t.push(tok);
                self.pending.push((id, tok));
            }
        }
        Ok(out)
    }

    fn live(&self) -> Vec<SeqId> {
        self.s
            .running
            .iter()
            .chain(&self.s.waiting)
            .copied()
            .collect()
    }

    fn remove(&mut self, id: SeqId, summary: Option<SeqSummary>) {
        let tokens = self.model.remove(&id).expect("modelled");
        let summary = summary.expect("live");
        assert_eq!(summary.output, tokens[summary.prompt_len..]);
        self.stop_at.remove(&id);
    }

    /// The engine right after `schedule`: offloads copy blocks out (landing later, see
    /// `land_offloads`), then restores write host images in.
    fn transfer(&mut self, out: &SchedulerOutput) {
        let bs = self.s.pool().block_size();
        for o in &out.offloads {
            let at = o.block.0 as usize * bs;
            self.offloading
                .push((o.slot, self.memory[at..at + bs].to_vec()));
        }
        for r in &out.restores {
            let (from, to) = (r.slot.0 as usize * bs, r.block.0 as usize * bs);
            let image = self.host_memory[from..from + bs].to_vec();
            self.memory[to..to + bs].copy_from_slice(&image);
        }
    }

    /// Offloads copied earlier land in their slots (one in eight fails).
    fn land_offloads(&mut self) {
        let bs = self.s.pool().block_size();
        for (slot, image) in std::mem::take(&mut self.offloading) {
            let ok = !self.rand().is_multiple_of(8);
            if ok {
                let at = slot.0 as usize * bs;
                self.host_memory[at..at + bs].copy_from_slice(&image);
            }
            self.s.offload_done(slot, ok).expect("a writing slot");
        }
    }

    /// The runner: copies, KV writes, then every context read back through the block tables
    /// (with a window, from the window start of the step's first query on, as the kernels do).
    fn run(&mut self, out: &SchedulerOutput) -> Result<(), TestCaseError> {
        let bs = self.s.pool().block_size();
        for c in &out.block_copies {
            let (src, dst) = (c.src.0 as usize * bs, c.dst.0 as usize * bs);
            self.memory.copy_within(src..src + bs, dst);
        }
        // With a window a table may have more logical blocks (holes included) than the pool.
        let widest = (out.seqs.iter())
            .map(|e| self.s.block_table(e.id).unwrap().blocks().len())
            .max();
        let max_blocks = widest.unwrap_or(0).max(self.s.pool().num_blocks());
        let batch = self.s.step_batch(out, max_blocks).expect("batch builds");
        for (i, e) in out.seqs.iter().enumerate() {
            let expected = self.expected(e.id);
            let known = e.tokens.len() - e.draft;
            // The same tokens at the same positions, however often it was recomputed (a
            // pending one as the placeholder the GPU fills in; the KV below is the real one's).
            prop_assert_eq!(
                &e.tokens[..known],
                &expected[e.start_pos..e.start_pos + known]
            );
            prop_assert_eq!(e.sample, e.start_pos + known == self.model[&e.id].len());
            // Drafts follow a decode's one known token; KV is computed from them too.
            prop_assert!(e.draft == 0 || (e.sample && known == 1));
            let mut tokens = self.model[&e.id].clone();
            tokens.extend_from_slice(e.drafted());
            let tokens = &tokens;
            let row = &batch.block_tables[i * max_blocks..(i + 1) * max_blocks];
            let table = self.s.block_table(e.id).unwrap();
            for r in batch.query_start[i] as usize..batch.query_start[i + 1] as usize {
                let slot = batch.slot_mapping[r];
                // every slot lies in a block of its own sequence's table
                prop_assert!(table.blocks().contains(&BlockId(slot / bs as u32)));
                // the batch covers uncached tokens only: no cached block is ever written
                prop_assert!(
                    !self.s.pool().is_cached(BlockId(slot / bs as u32)),
                    "{} writes position {} into a cached block",
                    e.id,
                    batch.positions[r]
                );
                self.memory[slot as usize] = kv_value(tokens, batch.positions[r] as usize);
            }
            let lo = (self.s.cfg.sliding_window).map_or(0, |w| (e.start_pos + 1).saturating_sub(w));
            for pos in lo..batch.context_lens[i] as usize {
                prop_assert!(
                    !table.blocks()[pos / bs].is_hole(),
                    "{} reads a hole at {}",
                    e.id,
                    pos
                );
                let slot = row[pos / bs] as usize * bs + pos % bs;
                prop_assert_eq!(
                    self.memory[slot],
                    kv_value(tokens, pos),
                    "{} position {}",
                    e.id,
                    pos
                );
            }
        }
        Ok(())
    }

    /// A token per sampling entry; an entry with drafts first gets a random prefix of them.
    fn sample(&mut self, out: &SchedulerOutput) -> Vec<(SeqId, u32)> {
        let entries: Vec<(SeqId, Vec<u32>)> = (out.seqs.iter().filter(|e| e.sample))
            .map(|e| (e.id, e.drafted().to_vec()))
            .collect();
        let mut sampled = Vec::new();
        for (id, drafted) in entries {
            let accepted = match drafted.len() {
                0 => 0,
                k => self.rand() as usize % (k + 1),
            };
            sampled.extend(drafted[..accepted].iter().map(|t| (id, *t)));
            sampled.push((id, self.rand()));
        }
        sampled
    }

    /// Schedules with up to 4 random drafts per decode (checking what the drafter is shown
    /// and that drafts stay within the sequence's limits), runs, then updates or abandons.
    fn spec_step(&mut self, abandon: bool) -> Result<SchedulerOutput, TestCaseError> {
        let mut rng = self.rng;
        let (model, mut shown) = (&self.model, Vec::new());
        let out = self.s.schedule_with_drafts(|id, tokens, most| {
            shown.push((id, tokens == &model[&id][..], most));
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = (rng % 5) as usize;
            (0..k).map(|i| (rng >> (8 * i)) as u32 % 64).collect()
        });
        self.rng = rng;
        self.transfer(&out);
        for (id, same, most) in shown {
            prop_assert!(same, "{} drafts from other tokens", id);
            prop_assert!(most > 0);
        }
        self.check_output(&out)?;
        self.check(true)?;
        for e in out.seqs.iter().filter(|e| e.draft > 0) {
            let s = &self.s.seqs[&e.id];
            prop_assert!(s.output().len() + e.draft < s.max_tokens);
            prop_assert!(s.tokens.len() + e.draft < self.s.cfg.max_model_len);
        }
        self.run(&out)?;
        if !abandon {
            let sampled = self.sample(&out);
            self.update(&out, &sampled)?;
        }
        Ok(out)
    }

    /// Overwrites every free block nobody caches with garbage: KV read from a block given
    /// back (out of the window) or freed no longer matches.
    fn poison_free_blocks(&mut self) {
        let (n, bs) = (self.s.pool().num_blocks(), self.s.pool().block_size());
        for b in (0..n as u32).map(BlockId) {
            if self.s.pool().ref_count(b) == 0 && !self.s.pool().is_cached(b) {
                let at = b.0 as usize * bs;
                self.memory[at..at + bs].fill(u64::MAX - 1);
            }
        }
    }

    /// Applies samples to the model and finishes what the engine would: capped or stopped.
    fn update(
        &mut self,
        out: &SchedulerOutput,
        sampled: &[(SeqId, u32)],
    ) -> Result<(), TestCaseError> {
        let capped = self.s.update(out, sampled).expect("update");
        for (id, tok) in sampled {
            if let Some(t) = self.model.get_mut(id) {
                t.push(*tok);
            }
        }
        self.finish_done(capped);
        self.poison_free_blocks();
        Ok(())
    }

    fn step(&mut self, abort: Option<usize>) -> Result<SchedulerOutput, TestCaseError> {
        let out = self.s.schedule();
        self.transfer(&out);
        self.check_output(&out)?;
        self.check(true)?;
        self.run(&out)?;
        let sampled = self.sample(&out);
        if let Some(pick) = abort {
            let live = self.live();
            if !live.is_empty() {
                let id = live[pick % live.len()];
                let summary = self.s.abort(id);
                self.remove(id, summary);
            }
        }
        self.update(&out, &sampled)?;
        Ok(out)
    }

    fn check_output(&self, out: &SchedulerOutput) -> Result<(), TestCaseError> {
        let cfg = &self.s.cfg;
        if let Some(t) = self.s.host_tier() {
            t.validate().map_err(TestCaseError::fail)?;
            // Each restore reads a ready slot into a block of an admitted sequence's table
            // that the step does not write.
            for r in &out.restores {
                prop_assert!(t.entry(r.slot).is_some(), "restore from a slot not ready");
                prop_assert!(self.s.pool().ref_count(r.block) == 1);
            }
            for o in &out.offloads {
                prop_assert!(t.writing(o.slot).is_some());
            }
        } else {
            prop_assert!(out.offloads.is_empty() && out.restores.is_empty());
        }
        let total: usize = out.seqs.iter().map(|e| e.tokens.len()).sum();
        prop_assert_eq!(out.num_batched_tokens, total);
        prop_assert!(total <= cfg.max_num_batched_tokens);
        let mut seen = std::collections::HashSet::new();
        for e in &out.seqs {
            prop_assert!(seen.insert(e.id), "{} twice", e.id);
            prop_assert!(!e.tokens.is_empty());
            prop_assert!(self.s.running.contains(&e.id));
            prop_assert!(!out.preempted.contains(&e.id));
            // the KV never holds more than the context
            prop_assert!(e.start_pos + e.tokens.len() <= cfg.max_model_len);
        }
        Ok(())
    }

    /// The scheduler's invariants (module docs), against the pool and the model.
    fn check(&self, in_flight: bool) -> Result<(), TestCaseError> {
        let s = &self.s;
        let n = s.pool.num_blocks();
        let bs = s.pool.block_size();
        prop_assert!(s.running.len() <= s.cfg.max_num_seqs);
        prop_assert_eq!(s.running.len() + s.waiting.len(), s.seqs.len());
        prop_assert_eq!(s.seqs.len(), self.model.len());
        let mut holders = vec![0u32; n];
        for (id, seq) in &s.seqs {
            let running = s.running.contains(id);
            prop_assert_eq!(running, !s.waiting.contains(id));
            prop_assert_eq!(seq.state == State::Running, running);
            prop_assert_eq!(&seq.tokens, &self.expected(*id));
            prop_assert!(seq.output().len() <= seq.max_tokens);
            let kv_max = max_kv_tokens(seq.prompt_len, seq.max_tokens, s.cfg.max_model_len);
            prop_assert!(seq.table.num_tokens() <= kv_max);
            prop_assert!(seq.num_computed <= seq.table.num_tokens());
            prop_assert_eq!(
                seq.table.blocks().len(),
                BlockTable::blocks_needed(seq.table.num_tokens(), bs)
            );
            if !running {
                prop_assert!(seq.table.blocks().is_empty());
                prop_assert_eq!(seq.num_computed, 0);
            } else if !in_flight {
                prop_assert_eq!(seq.table.num_tokens(), seq.num_computed);
            }
            prop_assert!(
                seq.table.blocks()[..seq.table.num_holes()]
                    .iter()
                    .all(|b| b.is_hole())
            );
            for b in seq.table.held_blocks() {
                prop_assert!(!b.is_hole());
                holders[b.0 as usize] += 1;
            }
            self.check_window(seq)?;
        }
        if !in_flight {
            prop_assert!(s.copies.is_empty());
        }
        for p in &s.copies {
            if p.held {
                holders[p.copy.src.0 as usize] += 1;
            }
        }
        // no leaked or doubly freed block: ref counts = holders; free + used = total
        for (b, h) in holders.iter().enumerate() {
            prop_assert_eq!(s.pool.ref_count(BlockId(b as u32)), *h, "block {}", b);
        }
        let used = holders.iter().filter(|h| **h > 0).count();
        prop_assert_eq!(s.pool.num_free() + used, n);
        let st = s.stats();
        prop_assert_eq!(st.blocks_used + st.blocks_free, st.blocks_total);
        prop_assert!(st.tokens_held <= st.allocated_slots);
        // tokens_held counts each running block once, at the most any table wrote into it.
        let mut fill = vec![0usize; n];
        for id in &s.running {
            let t = &s.seqs[id].table;
            for (j, b) in t.blocks().iter().enumerate().skip(t.num_holes()) {
                let f = &mut fill[b.0 as usize];
                *f = (*f).max((t.num_tokens() - j * bs).min(bs));
            }
        }
        prop_assert_eq!(st.tokens_held, fill.iter().sum::<usize>());
        self.check_cache()
    }

    /// Holes are exactly the blocks the window has passed, and the blocks held stay within
    /// the window's peak: ceil(W / bs) + 1 beyond what the step in flight grows.
    fn check_window(&self, seq: &Seq) -> Result<(), TestCaseError> {
        let bs = self.s.pool.block_size();
        let t = &seq.table;
        let Some(w) = self.s.cfg.sliding_window else {
            prop_assert_eq!(t.num_holes(), 0);
            return Ok(());
        };
        if seq.state == State::Waiting {
            return Ok(());
        }
        let (c, n) = (seq.num_computed, t.num_tokens());
        prop_assert_eq!(t.num_holes(), crate::kv::blocks_out_of_window(c, w, bs));
        let held = t.held_blocks().len();
        prop_assert!(held <= crate::kv::window_peak_blocks(w, bs, n - c));
        let growth = BlockTable::blocks_needed(n, bs) - BlockTable::blocks_needed(c, bs);
        prop_assert!(held - growth <= w.div_ceil(bs) + 1);
        Ok(())
    }

    /// The prefix cache against the pool, the tables and the simulated memory.
    fn check_cache(&self) -> Result<(), TestCaseError> {
        let s = &self.s;
        let (n, bs) = (s.pool.num_blocks(), s.pool.block_size());
        if let Err(e) = s.pool.validate() {
            return Err(TestCaseError::fail(e));
        }
        let st = s.stats();
        prop_assert!(st.prefix_hit_tokens <= st.prefix_query_tokens);
        let cached: Vec<BlockId> = (0..n as u32)
            .map(BlockId)
            .filter(|b| s.pool.is_cached(*b))
            .collect();
        prop_assert_eq!(st.cached_blocks, cached.len());
        if !s.cfg.enable_prefix_cache {
            prop_assert_eq!((st.prefix_hit_tokens, st.cached_blocks), (0, 0));
        }
        // A cached block in a table holds that table's tokens at its positions.
        for seq in s.seqs.values() {
            let t = &seq.table;
            for (j, b) in t.blocks().iter().enumerate().skip(t.num_holes()) {
                if let Some(toks) = s.pool.cached_tokens(*b) {
                    prop_assert!(
                        seq.num_computed >= (j + 1) * bs,
                        "cached block beyond the KV"
                    );
                    prop_assert_eq!(toks, &seq.tokens[j * bs..(j + 1) * bs]);
                }
            }
            prop_assert!(seq.num_registered * bs <= seq.num_computed);
        }
        // Every cached block whose chain is still cached holds the KV of its whole prefix.
        let by_key: HashMap<BlockHash, BlockId> = cached
            .iter()
            .map(|b| (s.pool.cached_key(*b).unwrap(), *b))
            .collect();
        for b in &cached {
            let mut chain = vec![*b];
            let mut complete = true;
            while let Some(Some(parent)) = s.pool.cached_parent(*chain.last().unwrap()) {
                match by_key.get(&parent) {
                    Some(p) => chain.push(*p),
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            if !complete {
                continue;
            }
            let prefix: Vec<u32> = chain
                .iter()
                .rev()
                .flat_map(|c| s.pool.cached_tokens(*c).unwrap().iter().copied())
                .collect();
            let base = (chain.len() - 1) * bs;
            for i in 0..bs {
                prop_assert_eq!(
                    self.memory[b.0 as usize * bs + i],
                    kv_value(&prefix, base + i),
                    "cached {} offset {}",
                    b,
                    i
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_workloads_keep_every_invariant_and_all_finish(
        (cfg, num_blocks, bs) in config(),
        ops in prop::collection::vec(op(), 1..150),
        seed in 1u64..,
        host_slots in prop_oneof![2 => Just(0usize), 1 => 1..8usize],
    ) {
        let pool = BlockPool::new(num_blocks, bs).unwrap();
        let tiered = host_slots > 0 && cfg.enable_prefix_cache && cfg.sliding_window.is_none();
        let mut s = Scheduler::new(cfg, pool).unwrap();
        if tiered {
            s.enable_host_tier(host_slots).unwrap();
        }
        let mut h = Harness {
            s,
            model: HashMap::new(),
            stop_at: HashMap::new(),
            memory: vec![u64::MAX; num_blocks * bs],
            next_id: 0,
            rng: seed,
            prefixes: Vec::new(),
            pending: Vec::new(),
            pending_capped: Vec::new(),
            host_memory: vec![u64::MAX - 2; host_slots * bs],
            offloading: Vec::new(),
        };
        h.make_prefixes();
        for op in ops {
            h.land_offloads();
            // Only admissions and overlapped steps come while overlapped tokens are pending.
            if !matches!(op, Op::Add { .. } | Op::OverlappedStep) {
                h.resolve();
            }
            let in_flight = match op {
                Op::OverlappedStep => { h.overlapped_step()?; false }
                Op::Add { .. } => {
                    h.add(&op);
                    h.s.in_flight.is_some()
                }
                Op::Step => { h.step(None)?; false }
                Op::SpecStep { abandon } => { h.spec_step(abandon)?; abandon }
                Op::StepAbortingOne { pick } => { h.step(Some(pick))?; false }
                Op::Abandon { ran } => {
                    let out = h.s.schedule();
                    h.transfer(&out);
                    h.check_output(&out)?;
                    if ran {
                        h.run(&out)?;
                    }
                    true
                }
                Op::Finish { pick } | Op::Abort { pick } => {
                    let live = h.live();
                    if !live.is_empty() {
                        let id = live[pick % live.len()];
                        let summary = match op {
                            Op::Finish { .. } => h.s.finish(id).ok(),
                            _ => h.s.abort(id),
                        };
                        h.remove(id, summary);
                    }
                    h.s.in_flight.is_some()
                }
                Op::Fork { pick, diverge } => {
                    let running = h.s.running.clone();
                    if !running.is_empty() {
                        let parent = running[pick % running.len()];
                        let child = SeqId(h.next_id);
                        h.next_id += 1;
                        let tok = h.rand();
                        let last = diverge.then_some(tok);
                        if h.s.fork(parent, child, last).is_ok() {
                            let mut tokens = h.model[&parent].clone();
                            if let Some(t) = last {
                                *tokens.last_mut().unwrap() = t;
                            }
                            h.model.insert(child, tokens);
                            h.stop_at.insert(child, h.stop_at[&parent]);
                        }
                    }
                    h.s.in_flight.is_some()
                }
            };
            h.check(in_flight)?;
        }
        // Drain: keep stepping and finishing; everything ends, never two idle steps in a row.
        let mut idle = 0;
        for _ in 0..20_000 {
            if h.model.is_empty() {
                break;
            }
            let out = if seed % 3 == 1 {
                h.overlapped_step()?
            } else if seed % 3 == 2 {
                h.resolve();
                h.spec_step(false)?
            } else {
                h.resolve();
                h.step(None)?
            };
            h.check(false)?;
            idle = if out.is_empty() { idle + 1 } else { 0 };
            prop_assert!(idle < 2, "no progress: {} waiting, {} running", h.s.num_waiting(), h.s.num_running());
        }
        h.resolve();
        h.land_offloads();
        prop_assert!(h.model.is_empty(), "{} sequences never finished", h.model.len());
        if let Some(t) = h.s.host_tier() {
            prop_assert_eq!(t.num_writing(), 0);
        }
        prop_assert_eq!(h.s.pool().num_free(), num_blocks);
        prop_assert_eq!(h.s.pool().num_cached_free(), h.s.pool().num_cached());
    }
}
