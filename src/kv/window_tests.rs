//! Giving back the blocks a sliding window has passed: the arithmetic, holes in tables,
//! sharing (forks, the prefix cache), and a property test over random tables.

use super::*;
use proptest::prelude::*;

#[test]
fn window_24_block_8_after_40_tokens_gives_back_blocks_0_and_1() {
    // The next query sits at position 40 and reads keys 40 + 1 - 24 = 17 ..= 40. Block 1
    // holds 8..=15 (all before 17): gone; block 2 holds 16..=23 (17 is in it): kept.
    assert_eq!(blocks_out_of_window(40, 24, 8), 2);
    let mut pool = BlockPool::new(8, 8).unwrap();
    let mut t = BlockTable::new();
    t.grow_to(&mut pool, 40).unwrap(); // 5 blocks
    let b = t.blocks().to_vec();
    assert_eq!(t.release_front(&mut pool, 2).unwrap(), 2);
    // The table is [hole, hole, b2, b3, b4]: 5 logical entries, 3 held.
    assert_eq!(
        t.blocks(),
        &[BlockId::HOLE, BlockId::HOLE, b[2], b[3], b[4]]
    );
    assert_eq!(t.held_blocks(), &b[2..]);
    assert_eq!((t.num_holes(), t.num_tokens()), (2, 40));
    assert_eq!((pool.num_used(), pool.num_free()), (3, 5));
    assert_eq!(pool.ref_count(b[0]), 0);
    // Positions in holes have no slot; position 16 is offset 0 of b2.
    assert_eq!(t.slot(15, 8), None);
    assert_eq!(t.slot(16, 8), Some(b[2].0 * 8));
    // Giving back again is a no-op; growing appends after the holes.
    assert_eq!(t.release_front(&mut pool, 2).unwrap(), 0);
    t.grow_to(&mut pool, 41).unwrap();
    assert_eq!(t.blocks().len(), 6);
    // Release skips the holes: no double free.
    t.release(&mut pool).unwrap();
    assert_eq!(pool.num_free(), 8);
    pool.validate().unwrap();
}

#[test]
fn window_arithmetic_at_the_edges() {
    // Nothing goes while the whole sequence is inside the window: 23 computed, window 24,
    // the next query (23) reads keys 0..=23.
    assert_eq!(blocks_out_of_window(23, 24, 8), 0);
    // 31 computed: the next query reads 8..=31, block 0 (0..=7) goes.
    assert_eq!(blocks_out_of_window(30, 24, 8), 0);
    assert_eq!(blocks_out_of_window(31, 24, 8), 1);
    // Window 1: a query reads only its own key, so every computed block goes.
    assert_eq!(blocks_out_of_window(8, 1, 4), 2);
    assert_eq!(blocks_out_of_window(9, 1, 4), 2);
    // Blocks of 1, window 3, 10 computed: the next query reads 8..=10: blocks 0..=7 go.
    assert_eq!(blocks_out_of_window(10, 3, 1), 8);
    // Peaks: window 24, blocks of 8: 4 between steps (after 30 tokens, blocks 0..=3), 4 for
    // a decode, 5 for a chunk of 8 (ceil(38 / 8)); with blocks of 4: 7 for a decode.
    assert_eq!(window_peak_blocks(24, 8, 0), 4);
    assert_eq!(window_peak_blocks(24, 8, 1), 4);
    assert_eq!(window_peak_blocks(24, 8, 8), 5);
    assert_eq!(window_peak_blocks(24, 4, 1), 7);
    assert_eq!(window_peak_blocks(1, 1, 1), 1);
    // The bound is reached: every c from 0 to 200 and chunk 1..=9, blocks of 8.
    for bs in [1, 2, 8] {
        for chunk in 0..10 {
            let mut worst = 0;
            for c in 0..200usize {
                let held =
                    BlockTable::blocks_needed(c + chunk, bs) - blocks_out_of_window(c, 24, bs);
                assert!(
                    held <= window_peak_blocks(24, bs, chunk),
                    "c {c} chunk {chunk}"
                );
                worst = worst.max(held);
            }
            assert_eq!(
                worst,
                window_peak_blocks(24, bs, chunk),
                "bs {bs} chunk {chunk}"
            );
        }
    }
}

#[test]
fn only_full_blocks_are_given_back_and_truncating_into_a_hole_is_refused() {
    // 10 tokens, blocks of 4: blocks 0 and 1 are full, block 2 holds 8..=9.
    let mut pool = BlockPool::new(4, 4).unwrap();
    let mut t = BlockTable::new();
    t.grow_to(&mut pool, 10).unwrap();
    // Asking for 3 gives back the 2 full ones only.
    assert_eq!(t.release_front(&mut pool, 3).unwrap(), 2);
    assert_eq!(t.num_holes(), 2);
    // Truncating to 6 would end inside hole 1: refused, nothing changes.
    let before = t.clone();
    assert_eq!(
        t.truncate(&mut pool, 6).unwrap_err(),
        KvError::EndsInHole { tokens: 6 }
    );
    assert_eq!(t, before);
    // To 8: the table ends with a full hole ([hole, hole]); appending opens a fresh block.
    t.truncate(&mut pool, 8).unwrap();
    assert_eq!((t.blocks(), pool.num_free()), (&[BlockId::HOLE; 2][..], 4));
    assert_eq!(t.copy_needed(&pool, 9), None);
    t.grow_to(&mut pool, 9).unwrap();
    assert_eq!(t.held_blocks().len(), 1);
    t.truncate(&mut pool, 0).unwrap();
    assert_eq!((t.num_holes(), pool.num_free()), (0, 4));
}

#[test]
fn a_shared_or_cached_block_outlives_one_holder_giving_it_back() {
    // Blocks of 2: a table of 6 tokens, its first block cached, forked once.
    let mut pool = BlockPool::new(6, 2).unwrap();
    let mut a = BlockTable::new();
    a.grow_to(&mut pool, 6).unwrap();
    let b0 = a.blocks()[0];
    assert!(pool.register(b0, None, &[1, 2], None).unwrap());
    let mut b = a.fork(&mut pool).unwrap();
    // a gives back blocks 0 and 1: b still holds them (ref count 2 → 1).
    assert_eq!(a.release_front(&mut pool, 2).unwrap(), 2);
    assert_eq!(pool.ref_count(b0), 1);
    assert_eq!(pool.num_used(), 3);
    // A fork of a table with holes shares its holes and retains only its held blocks.
    let mut c = a.fork(&mut pool).unwrap();
    assert_eq!(c.blocks(), a.blocks());
    assert_eq!(pool.ref_count(a.blocks()[2]), 3);
    // b gives back block 0 too: it is cached, so it stays cached-free under its key and a
    // hit still finds it; block 1 (uncached) goes to the free list.
    assert_eq!(b.release_front(&mut pool, 2).unwrap(), 2);
    assert_eq!((pool.ref_count(b0), pool.num_cached_free()), (0, 1));
    assert_eq!(pool.match_prefix(&[1, 2, 3], None, 1), vec![b0]);
    for t in [&mut a, &mut b, &mut c] {
        t.release(&mut pool).unwrap();
    }
    assert_eq!(pool.num_free(), 6);
    pool.validate().unwrap();
}

/// Operations on tables that share blocks and give back the ones their window passed.
#[derive(Debug, Clone)]
enum Op {
    Append {
        seq: usize,
        tokens: usize,
    },
    Fork {
        from: usize,
        to: usize,
    },
    /// Give back what a window of `window` keys has passed after the table's tokens.
    Slide {
        seq: usize,
        window: usize,
    },
    Truncate {
        seq: usize,
        keep: usize,
    },
    Release {
        seq: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 1..12usize).prop_map(|(seq, tokens)| Op::Append { seq, tokens }),
        1 => (0..4usize, 0..4usize).prop_map(|(from, to)| Op::Fork { from, to }),
        3 => (0..4usize, 1..20usize).prop_map(|(seq, window)| Op::Slide { seq, window }),
        1 => (0..4usize, 0..40usize).prop_map(|(seq, keep)| Op::Truncate { seq, keep }),
        1 => (0..4usize).prop_map(|seq| Op::Release { seq }),
    ]
}

proptest! {
    /// The KV memory simulated: each append writes values unique to (table, position), copies
    /// run as the GPU would, and every free block is overwritten with garbage after each
    /// operation. Each table reads back exactly what it wrote at every position it still
    /// holds; holes hold no reference; ref counts equal the tables holding each block.
    #[test]
    fn tables_with_holes_keep_ref_counts_and_never_lose_held_kv(
        bs_log in 0u32..4,
        num_blocks in 1usize..16,
        ops in prop::collection::vec(op(), 1..100),
    ) {
        let bs = 1usize << bs_log;
        let mut pool = BlockPool::new(num_blocks, bs).unwrap();
        let mut tables = vec![BlockTable::new(); 4];
        let mut contents: Vec<Vec<u64>> = vec![Vec::new(); 4];
        let mut memory = vec![u64::MAX; num_blocks * bs];
        let mut next_value = 0u64;
        for op in ops {
            match op {
                Op::Append { seq, tokens } => {
                    let t = &mut tables[seq];
                    let old = t.num_tokens();
                    let before = t.clone();
                    match t.prepare_append(&mut pool, old + tokens) {
                        Ok(copy) => {
                            if let Some(c) = copy {
                                let (s, d) = (c.src.0 as usize * bs, c.dst.0 as usize * bs);
                                memory.copy_within(s..s + bs, d);
                            }
                            for pos in old..old + tokens {
                                memory[t.slot(pos, bs).unwrap() as usize] = next_value;
                                contents[seq].push(next_value);
                                next_value += 1;
                            }
                        }
                        Err(KvError::OutOfBlocks { .. }) => prop_assert_eq!(&*t, &before),
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Fork { from, to } => {
                    if from != to {
                        tables[to].release(&mut pool).unwrap();
                        tables[to] = tables[from].fork(&mut pool).unwrap();
                        contents[to] = contents[from].clone();
                    }
                }
                Op::Slide { seq, window } => {
                    let t = &mut tables[seq];
                    let n = t.num_tokens();
                    t.release_front(&mut pool, blocks_out_of_window(n, window, bs)).unwrap();
                    // At most the window's peak is held (between steps: chunk 0).
                    prop_assert!(t.held_blocks().len() <= window_peak_blocks(window, bs, 0));
                }
                Op::Truncate { seq, keep } => {
                    let t = &mut tables[seq];
                    match t.truncate(&mut pool, keep) {
                        Ok(()) => contents[seq].truncate(keep),
                        Err(KvError::EndsInHole { .. }) => {
                            prop_assert!(keep % bs != 0 && keep.div_ceil(bs) <= t.num_holes());
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Release { seq } => {
                    tables[seq].release(&mut pool).unwrap();
                    contents[seq].clear();
                }
            }
            // Garbage into every free block: a held position must never live in one.
            for b in 0..num_blocks {
                if pool.ref_count(BlockId(b as u32)) == 0 {
                    memory[b * bs..(b + 1) * bs].fill(u64::MAX - 1);
                }
            }
            let mut holders = vec![0u32; num_blocks];
            for (t, want) in tables.iter().zip(&contents) {
                prop_assert_eq!(t.num_tokens(), want.len());
                prop_assert_eq!(t.blocks().len(), BlockTable::blocks_needed(t.num_tokens(), bs));
                let h = t.num_holes();
                prop_assert!(t.blocks()[..h].iter().all(|b| b.is_hole()));
                prop_assert!(t.held_blocks().iter().all(|b| !b.is_hole()));
                // a hole is only ever a full block
                prop_assert!(h * bs <= t.num_tokens());
                for b in t.held_blocks() {
                    holders[b.0 as usize] += 1;
                }
                for (pos, v) in want.iter().enumerate() {
                    match t.slot(pos, bs) {
                        None => prop_assert!(pos < h * bs, "position {} lost its slot", pos),
                        Some(slot) => {
                            prop_assert!(pos >= h * bs);
                            prop_assert_eq!(memory[slot as usize], *v, "position {}", pos);
                        }
                    }
                }
            }
            for (i, h) in holders.iter().enumerate() {
                prop_assert_eq!(pool.ref_count(BlockId(i as u32)), *h);
            }
            let used = holders.iter().filter(|h| **h > 0).count();
            prop_assert_eq!(pool.num_free() + used, num_blocks);
            prop_assert!(pool.validate().is_ok());
        }
        for t in &mut tables {
            t.release(&mut pool).unwrap();
        }
        prop_assert_eq!(pool.num_free(), num_blocks);
    }
}
