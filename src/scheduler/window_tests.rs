//! Sliding windows: the blocks a window has passed are given back every step, with the
//! arithmetic spelled out (window W, blocks of bs, c tokens computed: the next query at c
//! reads keys c + 1 − W ..= c, so floor((c + 1 − W) / bs) leading blocks go).

use super::tests::{prompt, sched, step, work};
use super::*;
use crate::kv::window_peak_blocks;

fn cfg(window: usize, budget: usize, cache: bool) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: budget,
        watermark_blocks: Some(0),
        enable_prefix_cache: cache,
        sliding_window: Some(window),
        ..Default::default()
    }
}

fn table(s: &Scheduler, id: u64) -> &BlockTable {
    s.block_table(SeqId(id)).unwrap()
}

#[test]
fn window_24_block_8_after_40_tokens_the_table_is_two_holes_then_three_blocks() {
    let mut s = sched(8, 8, cfg(24, 64, false));
    s.add(SeqId(1), prompt(40, 0), 10).unwrap();
    // One 40-token chunk: 5 blocks while it runs.
    let out = s.schedule();
    assert_eq!(work(&out), vec![(1, 40, 0, true)]);
    assert_eq!(s.pool().num_used(), 5);
    let b = table(&s, 1).blocks().to_vec();
    s.update(&out, &[(SeqId(1), 7)]).unwrap();
    // 40 computed: the next query (position 40) reads keys 17..=40; blocks 0 (0..=7) and
    // 1 (8..=15) go: [hole, hole, b2, b3, b4].
    assert_eq!(
        table(&s, 1).blocks(),
        &[BlockId::HOLE, BlockId::HOLE, b[2], b[3], b[4]]
    );
    assert_eq!((s.pool().num_used(), s.pool().num_free()), (3, 5));
    assert_eq!(s.stats().tokens_held, 24, "positions 16..=39");
    // Decodes at 40..=46 keep block 2 (the query at 47 is the first that skips key 23).
    for c in 41..=47 {
        step(&mut s);
        let holes = if c < 47 { 2 } else { 3 };
        assert_eq!(table(&s, 1).num_holes(), holes, "{c} computed");
    }
    // 47 computed: floor((47 + 1 - 24) / 8) = 3; blocks 3..=5 held (position 40 opened b5).
    assert_eq!(s.pool().num_used(), 3);
    let done = s.finish(SeqId(1)).unwrap();
    assert_eq!(done.output.len(), 8);
    assert_eq!(
        s.pool().num_free(),
        8,
        "finish skips the holes: no double free"
    );
    s.pool().validate().unwrap();
}

#[test]
fn add_measures_a_windowed_request_by_its_peak_not_its_whole_kv() {
    // Prompt 20 + 100 tokens → 119 KV tokens = 15 blocks of 8. Window 24, 8-token chunks:
    // at most ceil((24 + 8 + 8 - 2) / 8) = 5 blocks at once.
    assert_eq!(window_peak_blocks(24, 8, 8), 5);
    let mut s = sched(5, 8, cfg(24, 8, false));
    s.add(SeqId(1), prompt(20, 0), 100).unwrap();
    // A 4-block pool is too small even for the peak.
    let mut tiny = sched(4, 8, cfg(24, 8, false));
    assert_eq!(
        tiny.add(SeqId(1), prompt(20, 0), 100),
        Err(SchedError::NeverFits {
            blocks_needed: 5,
            num_blocks: 4
        })
    );
    // Without a window the whole KV must fit.
    let mut plain = sched(
        5,
        8,
        SchedulerConfig {
            sliding_window: None,
            ..cfg(24, 8, false)
        },
    );
    assert_eq!(
        plain.add(SeqId(1), prompt(20, 0), 100),
        Err(SchedError::NeverFits {
            blocks_needed: 15,
            num_blocks: 5
        })
    );
    // A window of 0 is refused.
    assert!(Scheduler::new(cfg(0, 8, false), BlockPool::new(4, 8).unwrap()).is_err());
}

#[test]
fn a_sequence_three_times_the_pool_runs_to_the_end_without_preemption() {
    // The request above in its 5-block pool: prefill in chunks of 8, then 99 decodes.
    let mut s = sched(5, 8, cfg(24, 8, false));
    s.add(SeqId(1), prompt(20, 0), 100).unwrap();
    let mut peak = 0;
    while s.output(SeqId(1)).unwrap().len() < 100 {
        let out = s.schedule();
        peak = peak.max(s.pool().num_used());
        let sampled: Vec<_> = out.sampling_ids().map(|id| (id, 5)).collect();
        s.update(&out, &sampled).unwrap();
        let t = table(&s, 1);
        assert!(t.held_blocks().len() <= window_peak_blocks(24, 8, 0));
    }
    // Its chunks never straddle the window badly enough for 5: the prefill holds at most
    // 3 blocks (20 tokens), and a decode at most ceil((24 + 1 + 8 - 2) / 8) = 4.
    assert_eq!(s.num_preemptions(), 0);
    assert_eq!(peak, window_peak_blocks(24, 8, 1));
    assert_eq!(
        table(&s, 1).blocks().len(),
        15,
        "119 tokens, 15 logical blocks"
    );
    s.finish(SeqId(1)).unwrap();
    assert_eq!(s.pool().num_free(), 5);
}

#[test]
fn forks_share_holes_and_finishing_both_frees_everything_once() {
    // Window 8, blocks of 4. A 14-token prompt: 14 computed → floor((15 - 8) / 4) = 1 hole.
    let mut s = sched(8, 4, cfg(8, 64, false));
    s.add(SeqId(1), prompt(14, 0), 6).unwrap();
    step(&mut s);
    assert_eq!(table(&s, 1).num_holes(), 1);
    s.fork(SeqId(1), SeqId(2), Some(9)).unwrap();
    assert_eq!(table(&s, 2).blocks(), table(&s, 1).blocks());
    let shared = table(&s, 1).blocks()[1];
    assert_eq!(s.pool().ref_count(shared), 2);
    // Both decode position 14 (the child copies the shared partial last block) and reach 15
    // computed: floor(8 / 4) = 2 holes each; block 1 leaves both tables and the pool.
    let out = step(&mut s);
    assert_eq!(out.block_copies.len(), 1);
    assert_eq!((table(&s, 1).num_holes(), table(&s, 2).num_holes()), (2, 2));
    assert_eq!(s.pool().ref_count(shared), 0);
    // Blocks 2 (shared, full) and the two private last blocks.
    assert_eq!(s.pool().num_used(), 3);
    s.finish(SeqId(1)).unwrap();
    s.finish(SeqId(2)).unwrap();
    assert_eq!(s.pool().num_free(), 8);
    s.pool().validate().unwrap();
}

#[test]
fn a_prefix_hit_gives_back_the_cached_blocks_the_window_passed_at_admission() {
    // Window 8, blocks of 4, a 5-block pool, 8-token chunks: a request holds at most
    // ceil((8 + 8 + 4 - 2) / 4) = 5 blocks. Seq 1 computes a 20-token prompt (5 blocks, all
    // registered) in chunks 0..8, 8..16, 16..20; 20 computed → floor((21 - 8) / 4) = 3 go
    // back, cached-free.
    let mut s = sched(5, 4, cfg(8, 8, true));
    s.add(SeqId(1), prompt(20, 0), 1).unwrap();
    for _ in 0..3 {
        step(&mut s);
    }
    assert_eq!(table(&s, 1).num_holes(), 3);
    assert_eq!((s.pool().num_used(), s.stats().cached_blocks), (2, 5));
    s.finish(SeqId(1)).unwrap();
    // Seq 2: the same 20 tokens and one more. The hit is 5 blocks (20 tokens); at 20 computed
    // the window has passed blocks 0..=2, which are taken and given back at once. It needs
    // 2 revived + 1 fresh = 3 blocks — 6 if it kept every hit, more than the pool.
    let mut p = prompt(20, 0);
    p.push(77);
    s.add(SeqId(2), p, 1).unwrap();
    let out = s.schedule();
    assert_eq!(work(&out), vec![(2, 1, 20, true)]);
    assert_eq!(table(&s, 2).num_holes(), 3);
    assert_eq!(s.pool().num_used(), 3);
    assert_eq!(s.cached_tokens(SeqId(2)), Some(20));
    // Its fresh block (position 20) found no uncached free block: it evicted the least
    // recently freed cached block, block 0 of the chain (given back first), so 4 stay cached.
    assert_eq!((s.stats().cached_blocks, s.stats().evictions), (4, 1));
    s.update(&out, &[(SeqId(2), 5)]).unwrap();
    s.finish(SeqId(2)).unwrap();
    assert_eq!(s.pool().num_free(), 5);
    s.pool().validate().unwrap();
}

#[test]
fn preemption_drops_holes_and_blocks_and_the_victim_recomputes_from_scratch() {
    // Window 8, blocks of 4, 5 blocks, no cache. Seqs 1 and 2: 8-token prompts, 2 blocks
    // each. Both decode position 8 and need a third block: one is free, so seq 2 (admitted
    // last) preempts itself.
    let mut s = sched(5, 4, cfg(8, 64, false));
    s.add(SeqId(1), prompt(8, 0), 12).unwrap();
    s.add(SeqId(2), prompt(8, 100), 12).unwrap();
    step(&mut s);
    let out = step(&mut s);
    assert_eq!(out.preempted, vec![SeqId(2)]);
    assert!(table(&s, 2).blocks().is_empty());
    assert_eq!(table(&s, 2).num_holes(), 0);
    // Seq 1 runs on and gives back block 0 at 11 computed (floor((12 - 8) / 4) = 1): seq 2
    // then fits again and recomputes its 9 tokens from position 0.
    let mut readmitted = None;
    for _ in 0..30 {
        let out = step(&mut s);
        if let Some(e) = out
            .seqs
            .iter()
            .find(|e| e.id == SeqId(2) && e.start_pos == 0)
        {
            readmitted.get_or_insert(e.tokens.len());
        }
        for id in [1, 2] {
            if s.contains(SeqId(id)) && s.output(SeqId(id)).unwrap().len() == 12 {
                s.finish(SeqId(id)).unwrap();
            }
        }
    }
    assert_eq!(readmitted, Some(9));
    assert!(!s.contains(SeqId(1)) && !s.contains(SeqId(2)));
    assert_eq!(s.pool().num_free(), 5);
    s.pool().validate().unwrap();
}
