use super::*;
use proptest::prelude::*;

#[test]
fn ten_tokens_in_blocks_of_four_take_three_blocks() {
    let mut pool = BlockPool::new(8, 4).unwrap();
    let mut t = BlockTable::new();
    t.grow_to(&mut pool, 10).unwrap();
    assert_eq!(t.blocks().len(), 3);
    assert_eq!(pool.num_free(), 5);
    // position 9 is offset 1 in the third block
    let third = t.blocks()[2].0;
    assert_eq!(t.slot(9, 4), Some(third * 4 + 1));
    assert_eq!(t.slot(10, 4), None);
    // growing within the last block allocates nothing
    t.grow_to(&mut pool, 12).unwrap();
    assert_eq!(pool.num_free(), 5);
    t.grow_to(&mut pool, 13).unwrap();
    assert_eq!(pool.num_free(), 4);
    t.release(&mut pool).unwrap();
    assert_eq!(pool.num_free(), 8);
}

#[test]
fn out_of_blocks_allocates_nothing() {
    let mut pool = BlockPool::new(2, 16).unwrap();
    let mut t = BlockTable::new();
    let err = t.grow_to(&mut pool, 33).unwrap_err();
    assert_eq!(
        err,
        KvError::OutOfBlocks {
            needed: 3,
            free: 2,
            total: 2
        }
    );
    assert_eq!(pool.num_free(), 2);
    assert!(t.blocks().is_empty());
}

#[test]
fn block_sizes_are_powers_of_two_up_to_256() {
    for bs in [1, 2, 16, 256] {
        assert!(BlockPool::new(4, bs).is_ok());
    }
    for bs in [0, 3, 24, 512] {
        assert_eq!(
            BlockPool::new(4, bs).unwrap_err(),
            KvError::BadBlockSize(bs)
        );
    }
}

#[test]
fn releasing_a_free_block_is_an_error() {
    let mut pool = BlockPool::new(2, 4).unwrap();
    let b = pool.allocate().unwrap();
    pool.release(b).unwrap();
    assert_eq!(pool.release(b).unwrap_err(), KvError::NotHeld(b));
    assert_eq!(pool.retain(b).unwrap_err(), KvError::NotHeld(b));
}

#[derive(Debug, Clone)]
enum Op {
    Grow { seq: usize, tokens: usize },
    Release { seq: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4usize, 1..40usize).prop_map(|(seq, tokens)| Op::Grow { seq, tokens }),
        1 => (0..4usize).prop_map(|seq| Op::Release { seq }),
    ]
}

proptest! {
    #[test]
    fn pool_and_tables_stay_consistent(
        bs_log in 0u32..5,
        num_blocks in 1usize..24,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let bs = 1usize << bs_log;
        let mut pool = BlockPool::new(num_blocks, bs).unwrap();
        let mut tables = vec![BlockTable::new(); 4];
        for op in ops {
            match op {
                Op::Grow { seq, tokens } => {
                    let want = tables[seq].num_tokens() + tokens;
                    let before = tables[seq].clone();
                    let free_before = pool.num_free();
                    if tables[seq].grow_to(&mut pool, want).is_err() {
                        prop_assert_eq!(&tables[seq], &before);
                        prop_assert_eq!(pool.num_free(), free_before);
                    }
                }
                Op::Release { seq } => tables[seq].release(&mut pool).unwrap(),
            }
            // ref counts equal the number of tables holding each block; free + used = total
            let mut holders = vec![0u32; num_blocks];
            for t in &tables {
                prop_assert_eq!(t.blocks().len(), BlockTable::blocks_needed(t.num_tokens(), bs));
                for b in t.blocks() {
                    holders[b.0 as usize] += 1;
                }
                // every token's slot lies in one of its own blocks
                for pos in 0..t.num_tokens() {
                    let slot = t.slot(pos, bs).unwrap();
                    prop_assert!(t.blocks().contains(&BlockId(slot / bs as u32)));
                }
            }
            for (i, h) in holders.iter().enumerate() {
                prop_assert_eq!(pool.ref_count(BlockId(i as u32)), *h);
            }
            let used = holders.iter().filter(|h| **h > 0).count();
            prop_assert_eq!(pool.num_free() + used, num_blocks);
        }
    }
}

#[test]
fn fork_shares_every_block_and_copies_the_partial_last_one_on_append() {
    // 10 tokens, block 4 → 3 blocks, the last holding 2 tokens (positions 8, 9).
    let mut pool = BlockPool::new(8, 4).unwrap();
    let mut parent = BlockTable::new();
    parent.grow_to(&mut pool, 10).unwrap();
    let child = &mut parent.fork(&mut pool).unwrap();
    assert_eq!(child.blocks(), parent.blocks());
    for b in parent.blocks() {
        assert_eq!(pool.ref_count(*b), 2);
    }
    assert_eq!(pool.num_free(), 5, "forking allocates nothing");
    let shared_last = parent.blocks()[2];
    // grow_to would write into the shared block: refused, nothing changes.
    assert_eq!(
        child.grow_to(&mut pool, 11).unwrap_err(),
        KvError::SharedLastBlock(shared_last)
    );
    assert_eq!(pool.num_free(), 5);
    // The child appends token 10: it gets its own copy of the last block.
    let copy = child.prepare_append(&mut pool, 11).unwrap().unwrap();
    assert_eq!(copy.src, shared_last);
    assert_eq!(child.blocks()[2], copy.dst);
    assert_ne!(copy.dst, copy.src);
    assert_eq!(pool.ref_count(copy.src), 1, "only the parent holds it now");
    assert_eq!(pool.ref_count(copy.dst), 1);
    assert_eq!(
        pool.ref_count(parent.blocks()[0]),
        2,
        "full blocks stay shared"
    );
    assert_eq!(pool.num_free(), 4);
    // The parent is now the last block's only holder: it appends in place.
    assert_eq!(parent.prepare_append(&mut pool, 12).unwrap(), None);
    assert_eq!(parent.blocks()[2], shared_last);
    // Appending past a full shared block allocates a new block, copies nothing.
    let mut a = BlockTable::new();
    a.grow_to(&mut pool, 4).unwrap();
    let mut b = a.fork(&mut pool).unwrap();
    assert_eq!(b.prepare_append(&mut pool, 5).unwrap(), None);
    assert_eq!(pool.ref_count(a.blocks()[0]), 2);
    for t in [&mut parent, child, &mut a, &mut b] {
        t.release(&mut pool).unwrap();
    }
    assert_eq!(pool.num_free(), 8);
}

#[test]
fn copy_on_write_is_all_or_nothing() {
    // 6 tokens, block 4 → 2 blocks, the second holding 2 tokens; a pool of 3 leaves 1 free.
    let mut pool = BlockPool::new(3, 4).unwrap();
    let mut parent = BlockTable::new();
    parent.grow_to(&mut pool, 6).unwrap();
    let mut child = parent.fork(&mut pool).unwrap();
    let before = child.clone();
    // 9 tokens: the copy of the last block plus a third block = 2 blocks, 1 free.
    assert_eq!(
        child.prepare_append(&mut pool, 9).unwrap_err(),
        KvError::OutOfBlocks {
            needed: 2,
            free: 1,
            total: 3
        }
    );
    assert_eq!(child, before);
    assert_eq!(pool.ref_count(parent.blocks()[1]), 2);
    assert_eq!(pool.num_free(), 1);
    // 8 tokens: only the copy, which fits.
    let copy = child.prepare_append(&mut pool, 8).unwrap().unwrap();
    assert_eq!(copy.src, parent.blocks()[1]);
    assert_eq!(pool.num_free(), 0);
    // A second fork leaves no block for the next copy: refused, nothing changes.
    let mut g = parent.fork(&mut pool).unwrap();
    let g_before = g.clone();
    assert_eq!(
        g.prepare_append(&mut pool, 7).unwrap_err(),
        KvError::OutOfBlocks {
            needed: 1,
            free: 0,
            total: 3
        }
    );
    assert_eq!(g, g_before);
    for t in [&mut parent, &mut child, &mut g] {
        t.release(&mut pool).unwrap();
    }
    assert_eq!(pool.num_free(), 3);
}

#[test]
fn truncate_releases_only_the_blocks_past_the_new_length() {
    // 13 tokens, block 4 → 4 blocks; truncating to 5 keeps 2.
    let mut pool = BlockPool::new(6, 4).unwrap();
    let mut t = BlockTable::new();
    t.grow_to(&mut pool, 13).unwrap();
    let kept = t.blocks()[..2].to_vec();
    t.truncate(&mut pool, 5).unwrap();
    assert_eq!(t.blocks(), kept.as_slice());
    assert_eq!(t.num_tokens(), 5);
    assert_eq!(pool.num_free(), 4);
    t.truncate(&mut pool, 9).unwrap(); // longer than held: no-op
    assert_eq!(t.num_tokens(), 5);
    t.truncate(&mut pool, 0).unwrap();
    assert!(t.blocks().is_empty());
    assert_eq!(pool.num_free(), 6);
}

#[test]
fn forking_a_table_out_of_sync_with_its_pool_retains_nothing() {
    let mut pool = BlockPool::new(4, 4).unwrap();
    let mut t = BlockTable::new();
    t.grow_to(&mut pool, 8).unwrap();
    let stale = t.clone(); // blocks 0 and 1
    t.truncate(&mut pool, 4).unwrap(); // block 1 goes back to the pool
    // retaining block 0 succeeds, block 1 fails: the retain of block 0 is undone
    assert_eq!(
        stale.fork(&mut pool).unwrap_err(),
        KvError::NotHeld(BlockId(1))
    );
    assert_eq!(pool.ref_count(BlockId(0)), 1);
}

/// Operations on tables that may share blocks.
#[derive(Debug, Clone)]
enum ShareOp {
    Append { seq: usize, tokens: usize },
    Fork { from: usize, to: usize },
    Truncate { seq: usize, keep: usize },
    Release { seq: usize },
}

fn share_op() -> impl Strategy<Value = ShareOp> {
    prop_oneof![
        4 => (0..5usize, 1..20usize).prop_map(|(seq, tokens)| ShareOp::Append { seq, tokens }),
        2 => (0..5usize, 0..5usize).prop_map(|(from, to)| ShareOp::Fork { from, to }),
        1 => (0..5usize, 0..30usize).prop_map(|(seq, keep)| ShareOp::Truncate { seq, keep }),
        1 => (0..5usize).prop_map(|seq| ShareOp::Release { seq }),
    ]
}

proptest! {
    /// Simulates the KV memory itself: every append writes a value unique to (table, position)
    /// into its slot, copies run as the GPU would, and each table must read back exactly what
    /// it wrote — so no table ever writes into a block another table reads.
    #[test]
    fn shared_tables_never_see_each_others_writes(
        bs_log in 0u32..5,
        num_blocks in 1usize..16,
        ops in prop::collection::vec(share_op(), 1..80),
    ) {
        let bs = 1usize << bs_log;
        let mut pool = BlockPool::new(num_blocks, bs).unwrap();
        let mut tables = vec![BlockTable::new(); 5];
        // what each table has written at each of its positions
        let mut contents: Vec<Vec<u64>> = vec![Vec::new(); 5];
        let mut memory = vec![u64::MAX; num_blocks * bs];
        let mut next_value = 0u64;
        for op in ops {
            match op {
                ShareOp::Append { seq, tokens } => {
                    let t = &mut tables[seq];
                    let new_len = t.num_tokens() + tokens;
                    let before = t.clone();
                    let free_before = pool.num_free();
                    match t.prepare_append(&mut pool, new_len) {
                        Ok(copy) => {
                            if let Some(c) = copy {
                                let (s, d) = (c.src.0 as usize * bs, c.dst.0 as usize * bs);
                                memory.copy_within(s..s + bs, d);
                            }
                            for pos in before.num_tokens()..new_len {
                                let slot = t.slot(pos, bs).unwrap() as usize;
                                memory[slot] = next_value;
                                contents[seq].push(next_value);
                                next_value += 1;
                            }
                        }
                        Err(KvError::OutOfBlocks { .. }) => {
                            prop_assert_eq!(&*t, &before);
                            prop_assert_eq!(pool.num_free(), free_before);
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                ShareOp::Fork { from, to } => {
                    if from != to {
                        tables[to].release(&mut pool).unwrap();
                        tables[to] = tables[from].fork(&mut pool).unwrap();
                        contents[to] = contents[from].clone();
                    }
                }
                ShareOp::Truncate { seq, keep } => {
                    tables[seq].truncate(&mut pool, keep).unwrap();
                    contents[seq].truncate(keep);
                }
                ShareOp::Release { seq } => {
                    tables[seq].release(&mut pool).unwrap();
                    contents[seq].clear();
                }
            }
            let mut holders = vec![0u32; num_blocks];
            for (t, want) in tables.iter().zip(&contents) {
                prop_assert_eq!(t.num_tokens(), want.len());
                prop_assert_eq!(t.blocks().len(), BlockTable::blocks_needed(t.num_tokens(), bs));
                for b in t.blocks() {
                    holders[b.0 as usize] += 1;
                }
                for (pos, v) in want.iter().enumerate() {
                    let slot = t.slot(pos, bs).unwrap();
                    prop_assert!(t.blocks().contains(&BlockId(slot / bs as u32)));
                    prop_assert_eq!(memory[slot as usize], *v, "position {} reads another's write", pos);
                }
            }
            for (i, h) in holders.iter().enumerate() {
                prop_assert_eq!(pool.ref_count(BlockId(i as u32)), *h);
            }
            let used = holders.iter().filter(|h| **h > 0).count();
            prop_assert_eq!(pool.num_free() + used, num_blocks);
        }
    }
}

// ---- prefix cache ----

/// A table of `tokens`, every full block registered as a chain; returns it.
fn cached_table(pool: &mut BlockPool, tokens: &[u32]) -> BlockTable {
    let bs = pool.block_size();
    let mut t = BlockTable::new();
    t.grow_to(pool, tokens.len()).unwrap();
    let mut parent = None;
    for (j, chunk) in tokens.chunks_exact(bs).enumerate() {
        pool.register(t.blocks()[j], parent, chunk, None).unwrap();
        parent = Some(block_hash(parent, chunk, None));
    }
    t
}

#[test]
fn block_hash_is_stable_and_chains_parent_tokens_and_salt() {
    // Pinned: keys must not change across Rust versions or runs.
    assert_eq!(
        block_hash(None, &[1, 2, 3], None),
        block_hash(None, &[1, 2, 3], None)
    );
    let k = block_hash(None, &[1, 2, 3, 4], None);
    assert_eq!(k, BlockHash(0xcadf_a9cb_830a_c532), "{:#x}", k.0);
    assert_ne!(block_hash(Some(k), &[1, 2, 3, 4], None), k);
    assert_ne!(block_hash(None, &[1, 2, 3, 4], Some(0)), k);
    assert_ne!(
        block_hash(None, &[1, 2, 3, 4], Some(0)),
        block_hash(None, &[1, 2, 3, 4], Some(1))
    );
    assert_ne!(block_hash(None, &[1, 2, 4, 3], None), k);
}

#[test]
fn freed_blocks_stay_cached_and_a_chain_is_evicted_from_its_end() {
    // 3 blocks of 2; 6 tokens → a chain of 3 full blocks b0 ← b1 ← b2.
    let mut pool = BlockPool::new(3, 2).unwrap();
    let tokens = [1, 2, 3, 4, 5, 6];
    let mut t = cached_table(&mut pool, &tokens);
    let chain = t.blocks().to_vec();
    // Released in order b0, b1, b2: b0 is the least recently freed, but b2 is the only leaf.
    t.release(&mut pool).unwrap();
    assert_eq!(
        (pool.num_free(), pool.num_cached(), pool.num_cached_free()),
        (3, 3, 3)
    );
    assert_eq!(pool.match_prefix(&tokens, None, 3), chain);
    for left in [2, 1, 0] {
        let b = pool.allocate().unwrap();
        assert_eq!(b, chain[left], "the chain's end goes first");
        assert_eq!(pool.match_prefix(&tokens, None, 3), chain[..left]);
        pool.validate().unwrap();
    }
    assert_eq!(pool.num_evictions(), 3);
    assert_eq!(pool.num_cached(), 0);
}

#[test]
fn a_shared_parent_outlives_its_children() {
    // Parent P = [1, 2]; children C1 = [3, 4] (table A) and C2 = [5, 6] (table B, which
    // adopted P from the cache). 3 blocks of 2.
    let mut pool = BlockPool::new(3, 2).unwrap();
    let mut a = cached_table(&mut pool, &[1, 2, 3, 4]);
    let (p, c1) = (a.blocks()[0], a.blocks()[1]);
    let mut b = BlockTable::new();
    assert_eq!(pool.match_prefix(&[1, 2, 5, 6], None, 2), vec![p]);
    b.adopt_cached(&mut pool, &[p]).unwrap();
    assert_eq!((b.num_tokens(), pool.ref_count(p)), (2, 2));
    b.grow_to(&mut pool, 4).unwrap();
    let c2 = b.blocks()[1];
    let kp = pool.cached_key(p).unwrap();
    assert!(pool.register(c2, Some(kp), &[5, 6], None).unwrap());
    // Freed in order C1, P, C2: P is older than C2, but C2 is a leaf and P is not.
    a.release(&mut pool).unwrap();
    b.release(&mut pool).unwrap();
    pool.validate().unwrap();
    assert_eq!(pool.allocate().unwrap(), c1);
    assert_eq!(pool.allocate().unwrap(), c2);
    assert_eq!(
        pool.match_prefix(&[1, 2, 5, 6], None, 2),
        vec![p],
        "P is still cached"
    );
    assert_eq!(pool.allocate().unwrap(), p);
    pool.validate().unwrap();
}

#[test]
fn uncached_free_blocks_are_handed_out_before_any_eviction() {
    // 4 blocks of 2: one cached-free block, three uncached.
    let mut pool = BlockPool::new(4, 2).unwrap();
    let mut t = cached_table(&mut pool, &[7, 8]);
    let cached = t.blocks()[0];
    t.release(&mut pool).unwrap();
    let got: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
    assert!(!got.contains(&cached));
    assert_eq!((pool.num_evictions(), pool.num_free()), (0, 1));
    assert_eq!(pool.allocate().unwrap(), cached);
    assert_eq!(pool.num_evictions(), 1);
    assert_eq!(
        pool.allocate().unwrap_err(),
        KvError::OutOfBlocks {
            needed: 1,
            free: 0,
            total: 4
        }
    );
}

#[test]
fn a_hit_checks_tokens_salt_and_parent_and_takes_cached_blocks_only() {
    let mut pool = BlockPool::new(4, 2).unwrap();
    let t = cached_table(&mut pool, &[1, 2, 3, 4]);
    assert_eq!(pool.match_prefix(&[1, 2, 3, 4, 5], None, 9).len(), 2);
    assert_eq!(pool.match_prefix(&[1, 2, 3, 5], None, 9).len(), 1);
    assert_eq!(
        pool.match_prefix(&[3, 4], None, 9).len(),
        0,
        "a block matches only after its parent"
    );
    assert_eq!(
        pool.match_prefix(&[1, 2, 3, 4], Some(1), 9).len(),
        0,
        "another salt"
    );
    assert_eq!(pool.match_prefix(&[1, 2, 3, 4], None, 1).len(), 1, "capped");
    assert_eq!(
        pool.match_prefix(&[1], None, 9).len(),
        0,
        "partial blocks never match"
    );
    // Registering a second block under a cached key changes nothing.
    let dup = pool.allocate().unwrap();
    assert!(!pool.register(dup, None, &[1, 2], None).unwrap());
    assert!(!pool.is_cached(dup));
    assert_eq!(pool.acquire_cached(dup), Err(KvError::NotCached(dup)));
    let mut other = BlockTable::new();
    assert_eq!(
        other.adopt_cached(&mut pool, &[dup]),
        Err(KvError::NotCached(dup))
    );
    other.grow_to(&mut pool, 1).unwrap();
    assert_eq!(
        other.adopt_cached(&mut pool, &t.blocks()[..1]),
        Err(KvError::TableNotEmpty)
    );
    pool.validate().unwrap();
}

#[test]
fn a_cached_block_is_never_copied_on_write_and_forks_share_it() {
    // A table adopting a cached full block and appending gets a fresh block for the new
    // tokens; the cached one is never the target of a write or a copy.
    let mut pool = BlockPool::new(6, 2).unwrap();
    let mut a = cached_table(&mut pool, &[1, 2]);
    let shared = a.blocks()[0];
    let mut b = BlockTable::new();
    b.adopt_cached(&mut pool, &[shared]).unwrap();
    let mut c = b.fork(&mut pool).unwrap();
    assert_eq!(pool.ref_count(shared), 3);
    for t in [&mut a, &mut b, &mut c] {
        assert_eq!(t.prepare_append(&mut pool, 3).unwrap(), None);
        assert_ne!(t.blocks()[1], shared);
    }
    pool.validate().unwrap();
}

#[test]
fn with_no_free_leaf_the_oldest_cached_free_block_goes_and_its_children_come_back_with_it() {
    // 3 blocks of 2. Table X computed [1, 2] first (cached). Table Y computed the same tokens
    // in its own block (a duplicate: not registered) and then [3, 4] after them (cached, its
    // parent key is X's). X goes away: its block is cached-free but not a leaf (its child is
    // held by Y), and nothing else is free.
    let mut pool = BlockPool::new(3, 2).unwrap();
    let mut x = cached_table(&mut pool, &[1, 2]);
    let px = x.blocks()[0];
    let mut y = BlockTable::new();
    y.grow_to(&mut pool, 4).unwrap();
    let k0 = block_hash(None, &[1, 2], None);
    assert!(!pool.register(y.blocks()[0], None, &[1, 2], None).unwrap());
    assert!(
        pool.register(y.blocks()[1], Some(k0), &[3, 4], None)
            .unwrap()
    );
    x.release(&mut pool).unwrap();
    pool.validate().unwrap();
    // The fallback evicts it anyway; Y's block stays cached but unreachable...
    assert_eq!(pool.allocate().unwrap(), px);
    assert_eq!(pool.match_prefix(&[1, 2, 3, 4], None, 2), vec![]);
    assert!(pool.is_cached(y.blocks()[1]));
    // ...until the same prefix is registered again: keys name contents, not blocks.
    assert!(pool.register(y.blocks()[0], None, &[1, 2], None).unwrap());
    assert_eq!(pool.match_prefix(&[1, 2, 3, 4], None, 2), y.blocks());
    pool.validate().unwrap();
}
