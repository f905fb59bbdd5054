//! Prefix-cache scheduling, step by step, with the arithmetic spelled out.

use super::tests::{prompt, sched, step, work};
use super::*;

fn cfg(cache: bool) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        watermark_blocks: Some(0),
        enable_prefix_cache: cache,
        ..Default::default()
    }
}

fn blocks(s: &Scheduler, id: u64) -> Vec<BlockId> {
    s.block_table(SeqId(id)).unwrap().blocks().to_vec()
}

fn run_alone(s: &mut Scheduler, id: u64, p: Vec<u32>) -> SeqSummary {
    s.add(SeqId(id), p, 1).unwrap();
    step(s);
    s.finish(SeqId(id)).unwrap()
}

#[test]
fn hits_stop_short_of_the_last_token_on_and_past_a_block_boundary() {
    // Blocks of 4. Seq 1 computes an 8-token prompt: 2 full blocks, registered, kept cached
    // after it finishes.
    let mut s = sched(16, 4, cfg(true));
    assert_eq!(run_alone(&mut s, 1, prompt(8, 0)).cached_tokens, 0);
    assert_eq!(s.stats().cached_blocks, 2);
    // The same 8 tokens: the hit is capped at (8 - 1) rounded down to blocks = 4 tokens, so
    // position 7 is computed for its logits: 4 tokens scheduled from position 4.
    s.add(SeqId(2), prompt(8, 0), 1).unwrap();
    assert_eq!(work(&step(&mut s)), vec![(2, 4, 4, true)]);
    assert_eq!(s.cached_tokens(SeqId(2)), Some(4));
    // One token past the boundary: (9 - 1) / 4 = 2 blocks = 8 tokens; 1 token computed.
    s.add(SeqId(3), prompt(9, 0), 1).unwrap();
    assert_eq!(work(&step(&mut s)), vec![(3, 1, 8, true)]);
    assert_eq!(s.cached_tokens(SeqId(3)), Some(8));
    // Seq 2 computed its second block itself; its key was already cached (seq 1's block), so
    // seq 3 hits seq 1's blocks: the first shared with seq 2, the second not.
    assert_eq!(blocks(&s, 3)[0], blocks(&s, 2)[0]);
    assert_ne!(blocks(&s, 3)[1], blocks(&s, 2)[1]);
    assert!(!s.pool().is_cached(blocks(&s, 2)[1]));
    let st = s.stats();
    // Queries 8 + 8 + 9 = 25 tokens, hits 0 + 4 + 8 = 12.
    assert_eq!((st.prefix_query_tokens, st.prefix_hit_tokens), (25, 12));
    assert!((st.prefix_hit_rate - 12.0 / 25.0).abs() < 1e-12);
    assert_eq!(s.finish(SeqId(3)).unwrap().cached_tokens, 8);
    // A 1-token (or any sub-block) prompt never hits.
    s.add(SeqId(4), prompt(1, 0), 1).unwrap();
    assert_eq!(work(&step(&mut s)), vec![(4, 1, 0, true)]);
}

#[test]
fn the_cached_blocks_are_the_ones_the_first_sequence_wrote() {
    let mut s = sched(16, 4, cfg(true));
    s.add(SeqId(1), prompt(10, 0), 5).unwrap();
    step(&mut s);
    let first = blocks(&s, 1);
    // While seq 1 still runs, seq 2 with the same prompt adopts its two full blocks (ref 2).
    s.add(SeqId(2), prompt(10, 0), 5).unwrap();
    let out = s.schedule();
    assert_eq!(work(&out), vec![(1, 1, 10, true), (2, 2, 8, true)]);
    assert_eq!(blocks(&s, 2)[..2], first[..2]);
    assert_ne!(
        blocks(&s, 2)[2],
        first[2],
        "the partial block is never shared"
    );
    assert!(first[..2].iter().all(|b| s.pool().ref_count(*b) == 2));
    // The batch writes only seq 2's own third block (positions 8, 9), and reads 10 tokens.
    let batch = s.step_batch(&out, 4).unwrap();
    let own = blocks(&s, 2)[2].0 * 4;
    assert_eq!(batch.slot_mapping[1..], [own, own + 1]);
    assert_eq!(batch.positions[1..], [8, 9]);
    assert_eq!(batch.context_lens, vec![11, 10]);
    s.update(&out, &[(SeqId(1), 1), (SeqId(2), 2)]).unwrap();
}

#[test]
fn early_reuse_a_request_admitted_during_prefill_and_decode_takes_written_blocks() {
    // Blocks of 4, budget 12. Seq 1: 20-token prompt, prefilled 12 then 8.
    let mut s = sched(
        32,
        4,
        SchedulerConfig {
            max_num_batched_tokens: 12,
            ..cfg(true)
        },
    );
    s.add(SeqId(1), prompt(20, 0), 10).unwrap();
    assert_eq!(work(&step(&mut s)), vec![(1, 12, 0, false)]);
    // Its first 3 blocks are written (update ran): seq 2 gets them while seq 1 still prefills.
    s.add(SeqId(2), prompt(20, 0), 10).unwrap();
    let out = step(&mut s);
    assert_eq!(work(&out), vec![(1, 8, 12, true), (2, 4, 12, false)]);
    assert_eq!(s.cached_tokens(SeqId(2)), Some(12));
    assert_eq!(blocks(&s, 2)[..3], blocks(&s, 1)[..3]);
    // Seq 1 now decodes; its 5 full prompt blocks are written. Seq 3 (same prompt + 2 more
    // tokens, 22) hits (22 - 1) / 4 = 5 blocks = 20 tokens.
    let mut p3 = prompt(20, 0);
    p3.extend([77, 78]);
    s.add(SeqId(3), p3, 10).unwrap();
    let out = step(&mut s);
    assert_eq!(
        work(&out),
        vec![(1, 1, 20, true), (2, 4, 16, true), (3, 2, 20, true)]
    );
    assert_eq!(s.cached_tokens(SeqId(3)), Some(20));
    assert_eq!(blocks(&s, 3)[..5], blocks(&s, 1)[..5]);
}

#[test]
fn multi_turn_reuses_the_first_turns_prompt_and_output() {
    // Turn 1: 6-token prompt, 7 tokens out (blocks of 4). Its KV holds 6 + 7 - 1 = 12 tokens
    // (the last sampled token is never fed back): 3 full blocks.
    let mut s = sched(16, 4, cfg(true));
    s.add(SeqId(1), prompt(6, 0), 7).unwrap();
    while s.output(SeqId(1)).unwrap().len() < 7 {
        step(&mut s);
    }
    let turn1 = s.finish(SeqId(1)).unwrap();
    assert_eq!(s.stats().cached_blocks, 3);
    // Turn 2: the whole first turn + 3 new tokens = 16 tokens: (16 - 1) / 4 = 3 blocks hit.
    let mut p2 = prompt(6, 0);
    p2.extend(&turn1.output);
    p2.extend([500, 501, 502]);
    s.add(SeqId(2), p2.clone(), 4).unwrap();
    let out = step(&mut s);
    assert_eq!(work(&out), vec![(2, 4, 12, true)]);
    assert_eq!(out.seqs[0].tokens, p2[12..]);
    assert_eq!(s.finish(SeqId(2)).unwrap().cached_tokens, 12);
}

#[test]
fn with_the_cache_off_nothing_hits_and_nothing_is_cached() {
    let mut s = sched(16, 4, cfg(false));
    run_alone(&mut s, 1, prompt(9, 0));
    s.add(SeqId(2), prompt(9, 0), 1).unwrap();
    assert_eq!(work(&step(&mut s)), vec![(2, 9, 0, true)]);
    assert_eq!(s.cached_tokens(SeqId(2)), Some(0));
    let st = s.stats();
    assert_eq!(
        (
            st.prefix_query_tokens,
            st.prefix_hit_tokens,
            st.cached_blocks,
            st.evictions
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(st.prefix_hit_rate, 0.0);
}

#[test]
fn salts_separate_caches() {
    let mut s = sched(16, 4, cfg(true));
    s.add_with_salt(SeqId(1), prompt(9, 0), 1, Some(1)).unwrap();
    step(&mut s);
    s.finish(SeqId(1)).unwrap();
    // Salt 2 and no salt miss; salt 1 hits 8 tokens.
    s.add_with_salt(SeqId(2), prompt(9, 0), 1, Some(2)).unwrap();
    s.add(SeqId(3), prompt(9, 0), 1).unwrap();
    s.add_with_salt(SeqId(4), prompt(9, 0), 1, Some(1)).unwrap();
    let out = step(&mut s);
    assert_eq!(
        work(&out),
        vec![(2, 9, 0, true), (3, 9, 0, true), (4, 1, 8, true)]
    );
}

#[test]
fn a_hit_after_eviction_recomputes_what_was_evicted() {
    // 4 blocks of 4. Seq 1: 13 tokens = 3 full blocks (cached) + 1 partial: the whole pool.
    let mut s = sched(4, 4, cfg(true));
    let a = prompt(13, 0);
    s.add(SeqId(1), a.clone(), 1).unwrap();
    step(&mut s);
    let chain = blocks(&s, 1);
    s.finish(SeqId(1)).unwrap();
    assert_eq!((s.pool().num_free(), s.stats().cached_blocks), (4, 3));
    // Seq 2, unrelated, 5 tokens = 2 blocks: the uncached partial block, then one eviction —
    // the chain's end (block 3 of seq 1), not its least recently freed head.
    s.add(SeqId(2), prompt(5, 100), 1).unwrap();
    step(&mut s);
    assert_eq!(s.stats().evictions, 1);
    assert!(blocks(&s, 2).contains(&chain[2]));
    s.finish(SeqId(2)).unwrap();
    // Seq 1's prompt again: (13 - 1) / 4 = 3 blocks wanted, 2 still cached: 8 tokens hit, the
    // evicted block and the rest (5 tokens) are computed again.
    s.add(SeqId(3), a.clone(), 1).unwrap();
    let out = step(&mut s);
    assert_eq!(work(&out), vec![(3, 5, 8, true)]);
    assert_eq!(out.seqs[0].tokens, a[8..]);
    assert_eq!(blocks(&s, 3)[..2], chain[..2]);
    assert_eq!(s.cached_tokens(SeqId(3)), Some(8));
    // And the recomputed block is cached again: 3 full blocks of seq 3, plus seq 2's one.
    assert!(s.pool().is_cached(blocks(&s, 3)[2]));
    s.pool().validate().unwrap();
}

#[test]
fn preemption_releases_into_the_cache_and_the_recompute_hits() {
    // 5 blocks of 4. Seqs 1 and 2: 8-token prompts, 2 full blocks each (cached): 1 free.
    let mut s = sched(5, 4, cfg(true));
    s.add(SeqId(1), prompt(8, 0), 9).unwrap();
    s.add(SeqId(2), prompt(8, 100), 9).unwrap();
    step(&mut s);
    let b2 = blocks(&s, 2);
    // Both decode position 8, each needing a 3rd block: seq 1 takes the last one, seq 2
    // (admitted last) preempts itself. Its blocks go back cached-free, not wiped.
    let out = step(&mut s);
    assert_eq!(work(&out), vec![(1, 1, 8, true)]);
    assert_eq!(out.preempted, vec![SeqId(2)]);
    assert!(
        b2.iter()
            .all(|b| s.pool().is_cached(*b) && s.pool().ref_count(*b) == 0)
    );
    assert_eq!(s.pool().num_free(), 2);
    s.finish(SeqId(1)).unwrap();
    // Recompute of prompt + its 1 output token = 9 tokens: (9 - 1) / 4 = 2 blocks hit, its
    // own; only the output token is computed.
    let out = step(&mut s);
    assert_eq!(work(&out), vec![(2, 1, 8, true)]);
    assert_eq!(blocks(&s, 2)[..2], b2[..]);
    let st = s.stats();
    assert_eq!(
        (st.prefix_query_tokens, st.prefix_hit_tokens, st.evictions),
        (25, 8, 0)
    );
    let summary = s.finish(SeqId(2)).unwrap();
    // cached_tokens reports the first admission (no hit then), as usage does.
    assert_eq!((summary.preemptions, summary.cached_tokens), (1, 0));
    s.pool().validate().unwrap();
}
