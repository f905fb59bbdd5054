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
