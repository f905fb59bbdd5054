//! What the scheduler reports about its pool and queues.

use std::collections::HashMap;

use super::{Scheduler, SchedulerStats};
use crate::kv::BlockId;

impl Scheduler {
    pub fn stats(&self) -> SchedulerStats {
        let bs = self.pool.block_size();
        // Fill of each held block: the most any table holding it has written. A block with
        // one reference belongs to its table alone and counts directly; only shared ones
        // (forks, prefix-cache hits) go through the map. This runs a few times per engine
        // step, so at 256 sequences it must not hash every block.
        let mut tokens_held = 0;
        let mut shared_fill: HashMap<BlockId, usize> = HashMap::new();
        for id in &self.running {
            let t = &self.seqs[id].table;
            // Holes (blocks given back out of the sliding window) hold nothing.
            for (j, b) in t.blocks().iter().enumerate().skip(t.num_holes()) {
                let n = (t.num_tokens() - j * bs).min(bs);
                if self.pool.ref_count(*b) == 1 {
                    tokens_held += n;
                } else {
                    let f = shared_fill.entry(*b).or_default();
                    *f = (*f).max(n);
                }
            }
        }
        tokens_held += shared_fill.values().sum::<usize>();
        let allocated_slots = self.pool.num_used() * bs;
        let waste = if allocated_slots == 0 {
            0.0
        } else {
            (allocated_slots - tokens_held) as f64 / allocated_slots as f64
        };
        let host_hits = self.host.as_ref().map_or(0, |h| h.hit_tokens);
        SchedulerStats {
            block_size: bs,
            blocks_total: self.pool.num_blocks(),
            blocks_used: self.pool.num_used(),
            blocks_free: self.pool.num_free(),
            tokens_held,
            allocated_slots,
            waste,
            preemptions: self.num_preemptions,
            waiting: self.waiting.len(),
            running: self.running.len(),
            prefix_query_tokens: self.prefix_query_tokens,
            prefix_hit_tokens: self.prefix_hit_tokens,
            host_hit_tokens: host_hits,
            prefix_hit_rate: if self.prefix_query_tokens == 0 {
                0.0
            } else {
                (self.prefix_hit_tokens + host_hits) as f64 / self.prefix_query_tokens as f64
            },
            cached_blocks: self.pool.num_cached(),
            evictions: self.pool.num_evictions(),
            host: self.host_stats(),
            spec_drafted: self.spec_drafted,
            spec_accepted: self.spec_accepted,
        }
    }
}
