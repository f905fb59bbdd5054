//! A running sequence's block bookkeeping after its KV is written: registering its full
//! blocks in the prefix cache, and giving back the blocks its sliding window has passed.
//!
//! Sliding windows (`SchedulerConfig::sliding_window` = W, the largest window of a model whose
//! every layer has one). After `update` confirms a sequence's first c tokens, every later
//! query sits at a position ≥ c (the next decode token, or the next prefill chunk's first
//! token), and reads no key before c + 1 − W; so the leading
//! [`blocks_out_of_window`]`(c, W, bs)` = floor((c + 1 − W) / bs) blocks are given back
//! (`BlockTable::release_front`: one reference each, so a forked sibling or the prefix cache
//! keeps a block it also holds) and leave holes. Window 24, blocks of 8, 40 tokens computed:
//! the next query (position 40) reads keys 17..=40, so blocks 0 and 1 go and the table reads
//! [hole, hole, b2, b3, b4]. Registration runs first, so a block is in the prefix cache (when
//! its key was new) before it is given back, and the cache never records a hole; a released
//! cached block stays cached-free under its key and a later request can still hit the chain
//! from its first block. Admission does the same with the cached blocks a hit adopts: those
//! the window has passed are adopted and given back at once, costing no free block.
//!
//! With the release, a sequence holds at most [`window_peak_blocks`]`(W, bs, chunk)` blocks
//! during a step of `chunk` tokens, so `add` refuses a request only when that (for the
//! largest chunk it can get) exceeds the pool, not when its whole KV does.

use super::{SYNC, SchedulerConfig, Seq};
use crate::kv::{BlockPool, BlockTable, block_hash, blocks_out_of_window, window_peak_blocks};
use crate::scheduler::PENDING_TOKEN;

/// Registers in the prefix cache every block of `s` that its computed tokens now fill and
/// that is not registered yet (its KV was written by the step `update` confirms). A block
/// whose prefix another block already holds stays unregistered, and so does a hole (a block
/// given back before it could be registered: none, since registration runs first). O(blocks
/// registered × block_size).
pub(super) fn register_full_blocks(pool: &mut BlockPool, s: &mut Seq) {
    let bs = pool.block_size();
    let full = s.num_computed / bs;
    while s.keys.len() < full {
        let j = s.keys.len();
        debug_assert!(
            !s.tokens[j * bs..(j + 1) * bs].contains(&PENDING_TOKEN),
            "a computed block with a pending token"
        );
        let parent = s.keys.last().copied();
        s.keys
            .push(block_hash(parent, &s.tokens[j * bs..(j + 1) * bs], s.salt));
    }
    for j in s.num_registered..full {
        let parent = j.checked_sub(1).map(|p| s.keys[p]);
        let block = s.table.blocks()[j];
        if block.is_hole() {
            continue;
        }
        pool.register(block, parent, &s.tokens[j * bs..(j + 1) * bs], s.salt)
            .expect(SYNC);
    }
    s.num_registered = s.num_registered.max(full);
}

/// Gives back the blocks of `s` that no query after its computed tokens reads (see the
/// module docs); nothing without a window. O(blocks released).
pub(super) fn release_out_of_window(pool: &mut BlockPool, window: Option<usize>, s: &mut Seq) {
    if let Some(w) = window {
        let passed = blocks_out_of_window(s.num_computed, w, pool.block_size());
        s.table.release_front(pool, passed).expect(SYNC);
    }
}

/// Most blocks a request whose KV reaches `kv_tokens` tokens holds at once: all of them
/// without a window; with one, at most `window_peak_blocks` for the largest chunk a step can
/// give it (the step budget, or its whole KV).
pub(super) fn peak_blocks(cfg: &SchedulerConfig, block_size: usize, kv_tokens: usize) -> usize {
    let all = BlockTable::blocks_needed(kv_tokens, block_size);
    match cfg.sliding_window {
        Some(w) => {
            let chunk = kv_tokens.min(cfg.max_num_batched_tokens);
            all.min(window_peak_blocks(w, block_size, chunk))
        }
        None => all,
    }
}
