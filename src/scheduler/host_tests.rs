//! The host tier in the scheduler, step by step, with the arithmetic spelled out.

use super::tests::{prompt, sched, step, work};
use super::*;
use crate::kv::HostSlot;

/// 4 GPU blocks of 4 tokens, a host tier of `slots`.
fn tiered(slots: usize) -> Scheduler {
    let mut s = sched(
        4,
        4,
        SchedulerConfig {
            max_num_seqs: 4,
            max_num_batched_tokens: 64,
            watermark_blocks: Some(0),
            ..Default::default()
        },
    );
    s.enable_host_tier(slots).unwrap();
    s
}

/// Runs `p` alone to its first token and finishes it: its full blocks stay cached.
fn run_alone(s: &mut Scheduler, id: u64, p: Vec<u32>) -> SchedulerOutput {
    s.add(SeqId(id), p, 1).unwrap();
    let out = step(s);
    s.finish(SeqId(id)).unwrap();
    out
}

#[test]
fn an_evicted_prefix_comes_back_from_the_host_tier() {
    let mut s = tiered(8);
    // Seq 1: 12 tokens = 3 full blocks, cached after it finishes (3 cached-free, 1 free).
    let out = run_alone(&mut s, 1, prompt(12, 0));
    assert!(out.offloads.is_empty() && out.restores.is_empty());
    let first = s.stats();
    assert_eq!(first.cached_blocks, 3);
    // Seq 2: 16 other tokens need all 4 blocks: the free one, then the 3 cached ones are
    // evicted leaf first (block 2, 1, 0 of seq 1's chain) and offloaded to host slots.
    s.add(SeqId(2), prompt(16, 100), 1).unwrap();
    let out = s.schedule();
    assert_eq!(out.offloads.len(), 3);
    assert_eq!(s.host_tier().unwrap().num_writing(), 3);
    // Their images land.
    for o in &out.offloads {
        s.offload_done(o.slot, true).unwrap();
    }
    s.update(&out, &[(SeqId(2), 7)]).unwrap();
    s.finish(SeqId(2)).unwrap();
    assert_eq!(s.host_tier().unwrap().num_ready(), 3);
    // Seq 3 repeats seq 1's 12 tokens + 1: the GPU pool holds none of them any more (seq 2's
    // blocks replaced them), the host tier all 3 blocks: each is written into a fresh block
    // and only the 13th token is computed.
    s.add(SeqId(3), prompt(13, 0), 1).unwrap();
    let out = s.schedule();
    assert_eq!(work(&out), vec![(3, 1, 12, true)]);
    assert_eq!(out.restores.len(), 3);
    let table = s.block_table(SeqId(3)).unwrap().blocks().to_vec();
    let restored: Vec<BlockId> = out.restores.iter().map(|r| r.block).collect();
    assert_eq!(restored, table[..3]);
    // The slots in chain order hold seq 1's blocks 0, 1, 2.
    for (j, r) in out.restores.iter().enumerate() {
        let (_, tokens) = s.host_tier().unwrap().entry(r.slot).unwrap();
        assert_eq!(tokens, &prompt(12, 0)[j * 4..j * 4 + 4]);
    }
    // Restored blocks are not in the GPU cache until their step is confirmed.
    assert!(!s.pool().is_cached(table[0]));
    s.update(&out, &[(SeqId(3), 9)]).unwrap();
    assert!(table[..3].iter().all(|b| s.pool().is_cached(*b)));
    assert_eq!(s.cached_tokens(SeqId(3)), Some(12));
    let st = s.stats();
    assert_eq!((st.prefix_hit_tokens, st.host_hit_tokens), (0, 12));
    // Seq 3's four blocks came from seq 2's cached ones: those were offloaded too (3 + 4).
    assert_eq!((st.host.offloads, st.host.restores), (7, 3));
    // The pinned slots are released at the next schedule.
    s.schedule();
    s.host_tier().unwrap().validate().unwrap();
    s.pool().validate().unwrap();
}

#[test]
fn a_slot_still_writing_or_failed_is_never_restored() {
    let mut s = tiered(8);
    run_alone(&mut s, 1, prompt(12, 0));
    s.add(SeqId(2), prompt(16, 100), 1).unwrap();
    let out = s.schedule();
    s.update(&out, &[(SeqId(2), 7)]).unwrap();
    s.finish(SeqId(2)).unwrap();
    // Not confirmed yet: seq 3 computes everything.
    s.add(SeqId(3), prompt(13, 0), 1).unwrap();
    let out3 = s.schedule();
    assert_eq!(work(&out3), vec![(3, 13, 0, true)]);
    assert!(out3.restores.is_empty());
    s.update(&out3, &[(SeqId(3), 1)]).unwrap();
    // The copies fail: the slots are freed, nothing is ever found there.
    for o in &out.offloads {
        s.offload_done(o.slot, false).unwrap();
    }
    assert_eq!(s.stats().host.offloads_failed, 3);
    assert_eq!(s.host_tier().unwrap().num_ready(), 0);
    // Confirming a slot twice is an error, not a corruption.
    assert!(s.offload_done(out.offloads[0].slot, true).is_err());
    s.host_tier().unwrap().validate().unwrap();
}

#[test]
fn the_host_tier_keeps_one_copy_of_a_block_and_evicts_its_least_recent_leaf() {
    // 2 host slots for 3 evicted blocks: the third eviction finds both slots writing.
    let mut s = tiered(2);
    run_alone(&mut s, 1, prompt(12, 0));
    // Seq 2 is aborted before its step is confirmed: it leaves no cached block behind.
    s.add(SeqId(2), prompt(16, 100), 1).unwrap();
    let out = s.schedule();
    s.abort(SeqId(2));
    s.update(&out, &[]).unwrap();
    assert_eq!(out.offloads.len(), 2);
    assert_eq!(s.stats().host.offloads_skipped, 1);
    // Evicted leaf first: seq 1's blocks 2 then 1 got the slots, block 0 was skipped.
    let tier = s.host_tier().unwrap();
    let want: Vec<&[u32]> = vec![&[8, 9, 10, 11], &[4, 5, 6, 7]];
    let got: Vec<&[u32]> = (out.offloads.iter())
        .map(|o| tier.writing(o.slot).unwrap().tokens.as_slice())
        .collect();
    assert_eq!(got, want);
    for o in &out.offloads {
        s.offload_done(o.slot, true).unwrap();
    }
    // Without block 0 the chain cannot start in the host tier: seq 3 computes everything.
    s.add(SeqId(3), prompt(13, 0), 1).unwrap();
    let out = s.schedule();
    assert_eq!(work(&out), vec![(3, 13, 0, true)]);
    assert!(out.restores.is_empty());
    s.update(&out, &[(SeqId(3), 5)]).unwrap();
    s.finish(SeqId(3)).unwrap();
    // Seq 3's blocks are cached on the GPU again; when seq 4 evicts them, blocks 1 and 2 are
    // in the host tier already (not copied again), block 0 takes the least recently used
    // leaf slot.
    s.add(SeqId(4), prompt(16, 200), 1).unwrap();
    let out = step(&mut s);
    assert_eq!(out.offloads.len(), 1);
    assert_eq!(s.host_tier().unwrap().num_evictions(), 1);
    s.host_tier().unwrap().validate().unwrap();
}

#[test]
fn a_host_tier_needs_the_prefix_cache_and_no_window() {
    let c = |cache, window| SchedulerConfig {
        enable_prefix_cache: cache,
        sliding_window: window,
        ..Default::default()
    };
    assert!(sched(4, 4, c(false, None)).enable_host_tier(4).is_err());
    assert!(sched(4, 4, c(true, Some(8))).enable_host_tier(4).is_err());
    assert!(sched(4, 4, c(true, None)).enable_host_tier(0).is_err());
    let mut s = sched(4, 4, c(true, None));
    assert!(s.offload_done(HostSlot(0), true).is_err(), "no tier");
}
