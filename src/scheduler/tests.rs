//! Step-by-step scheduler tests with the arithmetic spelled out.

use super::*;

/// A config with the given caps and no watermark (tests that want one set it).
fn cfg(max_num_seqs: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens: budget,
        watermark_blocks: Some(0),
        ..Default::default()
    }
}

pub(super) fn sched(num_blocks: usize, block_size: usize, cfg: SchedulerConfig) -> Scheduler {
    Scheduler::new(cfg, BlockPool::new(num_blocks, block_size).unwrap()).unwrap()
}

pub(super) fn prompt(len: usize, first: u32) -> Vec<u32> {
    (first..first + len as u32).collect()
}

/// (id, tokens, start_pos, sample) of each entry.
pub(super) fn work(out: &SchedulerOutput) -> Vec<(u64, usize, usize, bool)> {
    out.seqs
        .iter()
        .map(|e| (e.id.0, e.tokens.len(), e.start_pos, e.sample))
        .collect()
}

/// One engine step: schedule, sample token `1000 + id` for every sampling sequence, update.
pub(super) fn step(s: &mut Scheduler) -> SchedulerOutput {
    let out = s.schedule();
    let sampled: Vec<_> = out
        .sampling_ids()
        .map(|id| (id, 1000 + id.0 as u32))
        .collect();
    s.update(&out, &sampled).unwrap();
    out
}

fn blocks_of(s: &Scheduler, id: u64) -> usize {
    s.block_table(SeqId(id)).unwrap().blocks().len()
}

#[test]
fn config_defaults_and_checks() {
    // 1% of 150 blocks rounded up = 2; of 3 blocks = 1; a pool of 1 keeps none back.
    let d = SchedulerConfig::default();
    assert_eq!(
        (d.max_num_seqs, d.max_num_batched_tokens, d.max_waiting),
        (64, 256, 1024)
    );
    let wm = |n| {
        Scheduler::new(d.clone(), BlockPool::new(n, 16).unwrap())
            .unwrap()
            .watermark_blocks()
    };
    assert_eq!((wm(150), wm(3), wm(1)), (2, 1, 0));
    let bad = |c: SchedulerConfig, n| Scheduler::new(c, BlockPool::new(n, 16).unwrap()).is_err();
    assert!(bad(
        SchedulerConfig {
            watermark_blocks: Some(4),
            ..d.clone()
        },
        4
    ));
    assert!(bad(
        SchedulerConfig {
            max_num_batched_tokens: 8,
            max_num_seqs: 9,
            ..d.clone()
        },
        4
    ));
    assert!(bad(
        SchedulerConfig {
            max_num_seqs: 0,
            ..d.clone()
        },
        4
    ));
    assert!(bad(d.clone(), 0));
}

#[test]
fn add_rejects_only_what_can_never_run() {
    // Pool: 4 blocks of 4 = 16 slots. KV needed = prompt + max_tokens - 1 (the last token is
    // never fed back), capped by the context.
    let c = SchedulerConfig {
        max_model_len: 20,
        max_waiting: 2,
        ..cfg(4, 64)
    };
    let mut s = sched(4, 4, c);
    assert_eq!(s.add(SeqId(1), vec![], 5), Err(SchedError::EmptyPrompt));
    assert_eq!(s.add(SeqId(1), vec![1], 0), Err(SchedError::MaxTokensZero));
    assert_eq!(
        s.add(SeqId(1), prompt(21, 0), 1),
        Err(SchedError::PromptTooLong {
            prompt: 21,
            max_model_len: 20
        })
    );
    // 10 + 7 - 1 = 16 KV tokens → 4 blocks: fits. 10 + 8 - 1 = 17 → 5 blocks: never.
    assert_eq!(
        s.add(SeqId(1), prompt(10, 0), 8),
        Err(SchedError::NeverFits {
            blocks_needed: 5,
            num_blocks: 4
        })
    );
    s.add(SeqId(1), prompt(10, 0), 7).unwrap();
    assert_eq!(
        s.add(SeqId(1), prompt(3, 0), 1),
        Err(SchedError::DuplicateId(SeqId(1)))
    );
    s.add(SeqId(2), prompt(3, 0), 1).unwrap();
    // Two wait: the third is refused, not queued.
    assert_eq!(
        s.add(SeqId(3), prompt(3, 0), 1),
        Err(SchedError::QueueFull { cap: 2 })
    );
    assert_eq!(s.num_waiting(), 2);
    step(&mut s); // both admitted: room in the queue again
    s.add(SeqId(3), prompt(3, 0), 1).unwrap();

    // A context of 16 caps a 1000-token request at 16 - 1 = 15 KV tokens → 4 blocks: fits.
    let mut s = sched(
        4,
        4,
        SchedulerConfig {
            max_model_len: 16,
            ..cfg(4, 64)
        },
    );
    s.add(SeqId(1), prompt(10, 0), 1000).unwrap();
}

#[test]
fn ten_tokens_in_blocks_of_four_take_three_blocks_then_decode() {
    let mut s = sched(8, 4, cfg(4, 64));
    s.add(SeqId(7), prompt(10, 0), 10).unwrap(); // KV ≤ 10 + 10 - 1 = 19 → 5 of 8 blocks
    let out = step(&mut s);
    assert_eq!(work(&out), vec![(7, 10, 0, true)]);
    assert_eq!(out.num_batched_tokens, 10);
    // 10 tokens, block 4 → 3 blocks; 8 - 3 = 5 free.
    assert_eq!(blocks_of(&s, 7), 3);
    assert_eq!(s.pool().num_free(), 5);
    assert_eq!(s.output(SeqId(7)), Some(&[1007][..]));
    // Decode position 10 and 11 stay in block 3; position 12 takes a 4th block.
    for pos in [10, 11] {
        let out = step(&mut s);
        assert_eq!(work(&out), vec![(7, 1, pos, true)]);
        assert_eq!(out.seqs[0].tokens, vec![1007]);
        assert_eq!(blocks_of(&s, 7), 3);
    }
    step(&mut s);
    assert_eq!(blocks_of(&s, 7), 4);
    assert_eq!(s.output(SeqId(7)).unwrap().len(), 4);
    let st = s.stats();
    // 13 tokens in 4 blocks of 4: 16 slots, 3 empty → waste 3/16.
    assert_eq!(
        (st.tokens_held, st.allocated_slots, st.blocks_used),
        (13, 16, 4)
    );
    assert!((st.waste - 3.0 / 16.0).abs() < 1e-12);
}

#[test]
fn a_600_token_prompt_with_budget_256_runs_in_chunks_256_256_88() {
    let mut s = sched(64, 16, cfg(4, 256));
    s.add(SeqId(1), prompt(600, 0), 10).unwrap();
    let chunks: Vec<_> = (0..3).map(|_| work(&step(&mut s))).collect();
    assert_eq!(
        chunks,
        vec![
            vec![(1, 256, 0, false)],
            vec![(1, 256, 256, false)],
            vec![(1, 88, 512, true)], // 600 - 512 = 88, the only one that samples
        ]
    );
    // 600 tokens in blocks of 16 → 38 blocks (37.5 rounded up).
    assert_eq!(blocks_of(&s, 1), 38);
    assert_eq!(s.output(SeqId(1)), Some(&[1001][..]));
}

#[test]
fn decodes_run_before_prefill_chunks_and_new_admissions() {
    let mut s = sched(64, 16, cfg(4, 256));
    s.add(SeqId(1), prompt(5, 0), 50).unwrap();
    step(&mut s);
    // A 600-token prompt arrives; seq 1 decodes every step, the prompt gets the rest.
    s.add(SeqId(2), prompt(600, 0), 5).unwrap();
    assert_eq!(
        work(&step(&mut s)),
        vec![(1, 1, 5, true), (2, 255, 0, false)]
    );
    // A third request waits while seq 2's prefill continues (budget used up).
    s.add(SeqId(3), prompt(4, 0), 5).unwrap();
    assert_eq!(
        work(&step(&mut s)),
        vec![(1, 1, 6, true), (2, 255, 255, false)]
    );
    // 600 - 510 = 90 left: seq 2 finishes its prompt and samples; seq 3 is admitted behind it.
    let out = step(&mut s);
    assert_eq!(
        work(&out),
        vec![(1, 1, 7, true), (2, 90, 510, true), (3, 4, 0, true)]
    );
    assert_eq!(out.num_batched_tokens, 95);
    assert_eq!(
        out.sampling_ids().collect::<Vec<_>>(),
        vec![SeqId(1), SeqId(2), SeqId(3)]
    );
    // Now all three decode.
    assert_eq!(
        work(&step(&mut s)),
        vec![(1, 1, 8, true), (2, 1, 600, true), (3, 1, 4, true)]
    );
}

#[test]
fn admission_is_fcfs_under_the_seq_cap_and_the_budget() {
    // Budget 8, two sequences at most.
    let mut s = sched(64, 4, cfg(2, 8));
    for (id, len) in [(1, 5), (2, 5), (3, 1)] {
        s.add(SeqId(id), prompt(len, 0), 10).unwrap();
    }
    // 5 + 3: seq 2 gets the 3 tokens left and does not sample; seq 3 waits (cap 2).
    assert_eq!(work(&step(&mut s)), vec![(1, 5, 0, true), (2, 3, 0, false)]);
    assert_eq!((s.num_running(), s.num_waiting()), (2, 1));
    assert_eq!(work(&step(&mut s)), vec![(1, 1, 5, true), (2, 2, 3, true)]);
    s.finish(SeqId(1)).unwrap();
    assert_eq!(work(&step(&mut s)), vec![(2, 1, 5, true), (3, 1, 0, true)]);
}

#[test]
fn the_queue_head_that_does_not_fit_blocks_the_queue() {
    // 6 blocks of 4. Seq 1 holds 2. Seq 2 (16 tokens = 4 blocks) would leave 0 < watermark 1
    // free; seq 3 (1 block) would fit, but does not overtake.
    // (No prefix cache: seq 2's prompt starts with seq 1's, and this is about admission.)
    let mut s = sched(
        6,
        4,
        SchedulerConfig {
            watermark_blocks: Some(1),
            enable_prefix_cache: false,
            ..cfg(4, 64)
        },
    );
    s.add(SeqId(1), prompt(8, 0), 4).unwrap();
    step(&mut s);
    s.add(SeqId(2), prompt(16, 0), 4).unwrap();
    s.add(SeqId(3), prompt(2, 0), 4).unwrap();
    assert_eq!(work(&step(&mut s)), vec![(1, 1, 8, true)]); // pos 8 takes block 3: 3 free
    assert_eq!(s.num_waiting(), 2);
    // Once nothing runs, the watermark no longer applies: seq 2 takes 4 of 6 blocks; then
    // seq 3's 1 block + watermark 1 ≤ 2 free.
    s.finish(SeqId(1)).unwrap();
    assert_eq!(work(&step(&mut s)), vec![(2, 16, 0, true), (3, 2, 0, true)]);
    assert_eq!(s.pool().num_free(), 1);
}

#[test]
fn a_sequence_that_needs_the_whole_pool_runs_alone() {
    // 3 blocks of 4, watermark 2: alone, 12 KV tokens fit exactly (prompt 9 + 4 - 1).
    let mut s = sched(
        3,
        4,
        SchedulerConfig {
            watermark_blocks: Some(2),
            ..cfg(4, 64)
        },
    );
    s.add(SeqId(1), prompt(9, 0), 4).unwrap();
    for pos in [0, 9, 10, 11] {
        let out = step(&mut s);
        assert_eq!(out.seqs[0].start_pos, pos);
    }
    assert_eq!(s.pool().num_free(), 0);
    // Output: 4 tokens = max_tokens: capped, never scheduled again.
    let out = s.schedule();
    assert!(out.is_empty());
    assert_eq!(out.length_capped, vec![SeqId(1)]);
    s.update(&out, &[]).unwrap();
    assert_eq!(s.finish(SeqId(1)).unwrap().output.len(), 4);
    assert_eq!(s.pool().num_free(), 3);
}

#[test]
fn max_model_len_caps_generation() {
    // Context 8: a 6-token prompt gets 2 tokens (length 8); a prompt of exactly 8 gets one,
    // sampled from its full 8-token KV.
    let mut s = sched(
        16,
        4,
        SchedulerConfig {
            max_model_len: 8,
            ..cfg(4, 64)
        },
    );
    s.add(SeqId(1), prompt(6, 0), 100).unwrap();
    s.add(SeqId(2), prompt(8, 0), 100).unwrap();
    let out = s.schedule();
    assert_eq!(work(&out), vec![(1, 6, 0, true), (2, 8, 0, true)]);
    let capped = s.update(&out, &[(SeqId(1), 5), (SeqId(2), 5)]).unwrap();
    assert_eq!(capped, vec![SeqId(2)]);
    let out = s.schedule();
    assert_eq!(work(&out), vec![(1, 1, 6, true)]);
    assert_eq!(out.length_capped, vec![SeqId(2)]);
    assert_eq!(s.update(&out, &[(SeqId(1), 6)]).unwrap(), vec![SeqId(1)]);
    assert_eq!(s.output(SeqId(1)), Some(&[5, 6][..]));
    let out = s.schedule();
    assert!(out.is_empty());
    assert_eq!(out.length_capped, vec![SeqId(1), SeqId(2)]);
    // KV held: 7 for seq 1 (its last token never computed), 8 for seq 2.
    assert_eq!(s.stats().tokens_held, 15);
}

#[test]
fn out_of_blocks_preempts_the_most_recently_admitted_which_later_resumes() {
    // 4 blocks of 4. Seqs 1 and 2: 8-token prompts, 2 blocks each: the pool is full.
    // (No prefix cache: this spells out a recompute from scratch.)
    let mut s = sched(
        4,
        4,
        SchedulerConfig {
            enable_prefix_cache: false,
            ..cfg(4, 64)
        },
    );
    s.add(SeqId(1), prompt(8, 0), 5).unwrap();
    s.add(SeqId(2), prompt(8, 100), 5).unwrap();
    s.add(SeqId(3), prompt(1, 0), 5).unwrap(); // 1 block + watermark 0 > 0 free: waits
    assert_eq!(work(&step(&mut s)), vec![(1, 8, 0, true), (2, 8, 0, true)]);
    assert_eq!(s.pool().num_free(), 0);
    // Seq 1 decodes position 8: needs a 3rd block; none free → seq 2 (admitted last) goes.
    let out = step(&mut s);
    assert_eq!(work(&out), vec![(1, 1, 8, true)]);
    assert_eq!(out.preempted, vec![SeqId(2)]);
    assert_eq!(s.num_preemptions(), 1);
    assert_eq!(s.block_table(SeqId(2)).unwrap().blocks().len(), 0);
    assert_eq!(s.output(SeqId(2)), Some(&[1002][..]), "its output is kept");
    // Requeued at the front: ahead of seq 3. Seq 1 holds 3 blocks, 1 free; seq 2 needs
    // 8 + 1 = 9 tokens = 3 blocks to recompute: it waits, and seq 3 may not overtake it.
    assert_eq!(
        s.waiting.iter().copied().collect::<Vec<_>>(),
        vec![SeqId(2), SeqId(3)]
    );
    assert_eq!(work(&step(&mut s)), vec![(1, 1, 9, true)]);
    let done = s.finish(SeqId(1)).unwrap();
    assert_eq!(done.output, vec![1001; 3]);
    // Recomputed from prompt + output in one chunk, sampling its second token.
    let out = s.schedule();
    assert_eq!(work(&out), vec![(2, 9, 0, true), (3, 1, 0, true)]);
    let mut want = prompt(8, 100);
    want.push(1002);
    assert_eq!(out.seqs[0].tokens, want);
    s.update(&out, &[(SeqId(2), 7), (SeqId(3), 9)]).unwrap();
    assert_eq!(s.output(SeqId(2)), Some(&[1002, 7][..]));
    // 9 tokens recomputed (positions 0..8): it decodes position 9 next.
    assert_eq!(work(&step(&mut s)), vec![(2, 1, 9, true), (3, 1, 1, true)]);
    assert_eq!(s.finish(SeqId(2)).unwrap().preemptions, 1);
}

#[test]
fn a_needy_sequence_admitted_last_preempts_itself() {
    // Seq 1: 7 tokens (pos 7 still in block 2); seq 2: 8 tokens (pos 8 needs block 3).
    let mut s = sched(4, 4, cfg(4, 64));
    s.add(SeqId(1), prompt(7, 0), 5).unwrap();
    s.add(SeqId(2), prompt(8, 0), 5).unwrap();
    step(&mut s);
    let out = step(&mut s);
    assert_eq!(work(&out), vec![(1, 1, 7, true)]);
    assert_eq!(out.preempted, vec![SeqId(2)]);
    assert_eq!(
        (s.num_running(), s.num_waiting(), s.pool().num_free()),
        (1, 1, 2)
    );
}

#[test]
fn a_victim_already_scheduled_this_step_is_unscheduled() {
    // Seq 1 decodes; seq 2 is mid-prefill (admitted second); seq 3, a fork of seq 1, decodes
    // and counts as admitted last. 5 blocks of 4, budget 8.
    let mut s = sched(5, 4, cfg(4, 8));
    s.add(SeqId(1), prompt(4, 0), 9).unwrap(); // KV ≤ 4 + 9 - 1 = 12 → 3 blocks
    s.add(SeqId(2), prompt(12, 100), 2).unwrap(); // KV ≤ 13 → 4 blocks
    assert_eq!(work(&step(&mut s)), vec![(1, 4, 0, true), (2, 4, 0, false)]);
    s.fork(SeqId(1), SeqId(3), Some(77)).unwrap(); // shares seq 1's one (full) block
    assert_eq!(s.pool().num_free(), 3);
    // Decode pass: seqs 1 and 3 cross into a new block each (position 4) → 1 free.
    // Prefill pass: seq 2 gets 8 - 2 = 6 tokens (positions 4..10 → 3 blocks, 2 more): none
    // left → preempt seq 3, already scheduled: its block and its token come back.
    let out = s.schedule();
    assert_eq!(work(&out), vec![(1, 1, 4, true), (2, 6, 4, false)]);
    assert_eq!(out.preempted, vec![SeqId(3)]);
    assert_eq!(out.num_batched_tokens, 7);
    assert_eq!(s.pool().num_free(), 0);
    assert_eq!(s.output(SeqId(3)), Some(&[77][..]));
    s.update(&out, &[(SeqId(1), 5)]).unwrap();
    assert_eq!(s.waiting.front(), Some(&SeqId(3)));
}

#[test]
fn abort_frees_blocks_at_once_and_update_skips_it() {
    let mut s = sched(8, 4, cfg(4, 64));
    s.add(SeqId(1), prompt(9, 0), 5).unwrap();
    s.add(SeqId(2), prompt(4, 0), 5).unwrap();
    let out = s.schedule();
    assert_eq!(s.pool().num_free(), 8 - 3 - 1);
    // Aborted while its step is in flight: blocks back within the call.
    let summary = s.abort(SeqId(1)).unwrap();
    assert_eq!((summary.prompt_len, summary.output.len()), (9, 0));
    assert_eq!(s.pool().num_free(), 7);
    assert_eq!(s.abort(SeqId(1)), None);
    assert_eq!(s.finish(SeqId(1)), Err(SchedError::UnknownSeq(SeqId(1))));
    // Its sample is ignored; seq 2's is required.
    assert_eq!(
        s.update(&out, &[(SeqId(1), 3)]),
        Err(SchedError::MissingSample(SeqId(2)))
    );
    s.update(&out, &[(SeqId(1), 3), (SeqId(2), 4)]).unwrap();
    assert_eq!(s.output(SeqId(2)), Some(&[4][..]));
    // A waiting sequence aborts too.
    s.add(SeqId(3), prompt(2, 0), 1).unwrap();
    assert!(s.abort(SeqId(3)).is_some());
    assert_eq!((s.num_running(), s.num_waiting()), (1, 0));
}

#[test]
fn update_checks_its_output_and_samples() {
    let mut s = sched(8, 4, cfg(4, 64));
    s.add(SeqId(1), prompt(3, 0), 5).unwrap();
    let old = s.schedule();
    let out = s.schedule(); // the first is abandoned
    assert_eq!(work(&out), work(&old));
    assert_eq!(
        s.update(&old, &[(SeqId(1), 1)]),
        Err(SchedError::StaleOutput {
            expected: Some(out.step),
            got: old.step
        })
    );
    assert_eq!(
        s.update(&out, &[]),
        Err(SchedError::MissingSample(SeqId(1)))
    );
    assert_eq!(
        s.update(&out, &[(SeqId(1), 1), (SeqId(1), 2)]),
        Err(SchedError::UnexpectedSample(SeqId(1)))
    );
    assert_eq!(
        s.update(&out, &[(SeqId(9), 1)]),
        Err(SchedError::UnexpectedSample(SeqId(9)))
    );
    s.update(&out, &[(SeqId(1), 1)]).unwrap();
    assert_eq!(
        s.update(&out, &[(SeqId(1), 1)]),
        Err(SchedError::StaleOutput {
            expected: None,
            got: out.step
        })
    );
    assert_eq!(
        s.pool().num_used(),
        1,
        "the abandoned step's reservation was not doubled"
    );
}

#[test]
fn fork_shares_blocks_and_the_first_append_copies_on_write() {
    // 6-token prompt, block 4 → 2 blocks, the second half full (positions 4, 5).
    let mut s = sched(8, 4, cfg(4, 64));
    s.add(SeqId(1), prompt(6, 0), 5).unwrap();
    assert_eq!(
        s.fork(SeqId(1), SeqId(2), None),
        Err(SchedError::NotRunning(SeqId(1)))
    );
    step(&mut s);
    assert_eq!(
        s.fork(SeqId(1), SeqId(1), None),
        Err(SchedError::DuplicateId(SeqId(1)))
    );
    s.fork(SeqId(1), SeqId(2), Some(42)).unwrap();
    let shared = s.block_table(SeqId(1)).unwrap().blocks().to_vec();
    assert_eq!(s.block_table(SeqId(2)).unwrap().blocks(), shared.as_slice());
    assert!(shared.iter().all(|b| s.pool().ref_count(*b) == 2));
    assert_eq!(s.pool().num_used(), 2);
    assert_eq!(s.output(SeqId(2)), Some(&[42][..]));
    // Both decode position 6: seq 1 copies the shared block; seq 2 then holds it alone and
    // writes in place.
    let out = s.schedule();
    assert_eq!(work(&out), vec![(1, 1, 6, true), (2, 1, 6, true)]);
    assert_eq!(out.seqs[1].tokens, vec![42]);
    let fresh = s.block_table(SeqId(1)).unwrap().blocks()[1];
    assert_eq!(
        out.block_copies,
        vec![BlockCopy {
            src: shared[1],
            dst: fresh
        }]
    );
    assert_eq!(s.block_table(SeqId(2)).unwrap().blocks(), shared.as_slice());
    assert_eq!(
        s.pool().ref_count(shared[0]),
        2,
        "the full block stays shared"
    );
    assert_eq!(
        (s.pool().ref_count(shared[1]), s.pool().ref_count(fresh)),
        (1, 1)
    );
    // The batch: seq 2's row reads its own blocks.
    let batch = s.step_batch(&out, 4).unwrap();
    assert_eq!(
        batch.slot_mapping,
        vec![fresh.0 * 4 + 2, shared[1].0 * 4 + 2]
    );
    assert_eq!(batch.logit_rows, vec![0, 1]);
    s.update(&out, &[(SeqId(1), 7), (SeqId(2), 8)]).unwrap();
    // Stats count the shared block once: 4 (shared) + 3 + 3 tokens in 3 blocks.
    assert_eq!(s.stats().tokens_held, 10);
    // A fork needs a pending sampled token to replace, and room under max_num_seqs.
    let mut t = sched(8, 4, cfg(1, 64));
    t.add(SeqId(1), prompt(6, 0), 5).unwrap();
    step(&mut t);
    assert_eq!(
        t.fork(SeqId(1), SeqId(2), None),
        Err(SchedError::TooManySeqs { max: 1 })
    );
    let mut u = sched(8, 4, cfg(2, 4));
    u.add(SeqId(1), prompt(6, 0), 5).unwrap();
    step(&mut u); // 4 of 6 prompt tokens: nothing sampled yet
    assert_eq!(
        u.fork(SeqId(1), SeqId(2), Some(1)),
        Err(SchedError::NoPendingToken(SeqId(1)))
    );
    let _out = u.schedule();
    assert_eq!(
        u.fork(SeqId(1), SeqId(2), None),
        Err(SchedError::StepInFlight)
    );
}

#[test]
fn an_abandoned_step_reissues_its_block_copies() {
    let mut s = sched(8, 4, cfg(4, 64));
    s.add(SeqId(1), prompt(6, 0), 5).unwrap();
    step(&mut s);
    s.fork(SeqId(1), SeqId(2), Some(42)).unwrap();
    let first = s.schedule();
    assert_eq!(first.block_copies.len(), 1);
    // Seq 2, the copy source's other holder, goes away while the copy is unconfirmed: the
    // scheduler keeps the source alive.
    let src = first.block_copies[0].src;
    s.abort(SeqId(2)).unwrap();
    assert_eq!(s.pool().ref_count(src), 1);
    let again = s.schedule();
    assert_eq!(again.block_copies, first.block_copies);
    assert_eq!(work(&again), vec![(1, 1, 6, true)]);
    s.update(&again, &[(SeqId(1), 3)]).unwrap();
    assert_eq!(
        s.pool().ref_count(src),
        0,
        "released once the copy is confirmed"
    );
    assert_eq!(s.pool().num_used(), 2);
}

#[test]
fn step_batch_rows_follow_the_output() {
    let mut s = sched(16, 4, cfg(4, 64));
    s.add(SeqId(1), prompt(5, 0), 5).unwrap();
    step(&mut s);
    s.add(SeqId(2), prompt(3, 10), 5).unwrap();
    let out = s.schedule();
    let batch = s.step_batch(&out, 4).unwrap();
    assert_eq!(batch.token_ids, vec![1001, 10, 11, 12]);
    assert_eq!(batch.positions, vec![5, 0, 1, 2]);
    assert_eq!(batch.query_start, vec![0, 1, 4]);
    assert_eq!(batch.context_lens, vec![6, 3]);
    assert_eq!(batch.logit_rows, vec![0, 3]);
    // A table wider than the batch's columns is an error, not a truncated row.
    assert_eq!(
        s.step_batch(&out, 1),
        Err(SchedError::BatchTooWide {
            id: SeqId(1),
            blocks: 2,
            max_blocks: 1
        })
    );
}

/// Overlapped steps: `update` takes `PENDING_TOKEN` for a sample not read back yet, the next
/// step decodes it as a pending token, and `resolve_pending` fills it in before the next
/// `update`. Full blocks are hashed only once their tokens are known.
#[test]
fn pending_tokens_are_decoded_then_resolved() {
    let mut s = sched(8, 4, cfg(4, 64));
    s.add(SeqId(1), prompt(3, 10), 8).unwrap();
    let out = s.schedule();
    assert_eq!(work(&out), vec![(1, 3, 0, true)]);
    assert!(
        s.update(&out, &[(SeqId(1), PENDING_TOKEN)])
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.output(SeqId(1)).unwrap(), &[PENDING_TOKEN]);
    // Not resolvable twice, nor with the placeholder, nor for an unknown sequence.
    assert_eq!(
        s.resolve_pending(SeqId(1), PENDING_TOKEN),
        Err(SchedError::ReservedToken(SeqId(1)))
    );
    // Nor may a prompt carry the placeholder.
    assert_eq!(
        s.add(SeqId(5), vec![1, PENDING_TOKEN], 4),
        Err(SchedError::ReservedToken(SeqId(5)))
    );
    assert_eq!(
        s.resolve_pending(SeqId(9), 5),
        Err(SchedError::UnknownSeq(SeqId(9)))
    );
    // A sequence whose last token is unknown cannot be copied as it is.
    assert_eq!(
        s.fork(SeqId(1), SeqId(2), None),
        Err(SchedError::TokenPending(SeqId(1)))
    );
    // The next step decodes the pending token (position 3 fills the first block).
    let out2 = s.schedule();
    assert_eq!(out2.seqs[0].tokens, vec![PENDING_TOKEN]);
    assert_eq!(work(&out2), vec![(1, 1, 3, true)]);
    s.resolve_pending(SeqId(1), 77).unwrap();
    assert_eq!(
        s.resolve_pending(SeqId(1), 78),
        Err(SchedError::NoPendingToken(SeqId(1)))
    );
    assert_eq!(s.output(SeqId(1)).unwrap(), &[77]);
    s.update(&out2, &[(SeqId(1), PENDING_TOKEN)]).unwrap();
    // The first block (10, 11, 12, 77) is cached under its real tokens: a new prompt with
    // them finds it.
    s.resolve_pending(SeqId(1), 78).unwrap();
    let mut p = prompt(3, 10);
    p.extend([77, 1, 2]);
    s.add(SeqId(3), p, 4).unwrap();
    let out3 = s.schedule();
    assert_eq!(work(&out3), vec![(1, 1, 4, true), (3, 2, 4, true)]);
    assert_eq!(s.cached_tokens(SeqId(3)), Some(4));
}

/// A sequence preempted while its last token is pending keeps it, is resolved while it
/// waits, and is recomputed with the real token.
#[test]
fn a_pending_token_survives_preemption() {
    // 2 blocks of 2: two sequences of 2 prompt tokens fill the pool; the first decode of
    // each needs a new block, so the later one is preempted.
    let mut s = sched(2, 2, cfg(2, 8));
    s.add(SeqId(1), vec![1, 2], 3).unwrap();
    s.add(SeqId(2), vec![3, 4], 3).unwrap();
    let out = s.schedule();
    assert_eq!(work(&out), vec![(1, 2, 0, true), (2, 2, 0, true)]);
    let pending = [(SeqId(1), PENDING_TOKEN), (SeqId(2), PENDING_TOKEN)];
    s.update(&out, &pending).unwrap();
    let out2 = s.schedule();
    assert_eq!(out2.preempted, vec![SeqId(2)]);
    assert_eq!(work(&out2), vec![(1, 1, 2, true)]);
    s.resolve_pending(SeqId(1), 50).unwrap();
    s.resolve_pending(SeqId(2), 60).unwrap();
    s.update(&out2, &[(SeqId(1), 51)]).unwrap();
    s.finish(SeqId(1)).unwrap();
    let out3 = s.schedule();
    assert_eq!(out3.seqs[0].tokens, vec![3, 4, 60]);
    assert_eq!(work(&out3), vec![(2, 3, 0, true)]);
}
