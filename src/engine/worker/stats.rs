//! What the engine thread publishes after each step: the stats snapshot, then the Finished
//! events held until it counts their blocks as returned.

use std::sync::atomic::Ordering;

use super::Worker;
use crate::engine::EngineStats;

impl Worker {
    /// Publishes the stats, then sends the Finished events held since the last call: a
    /// caller that sees Finished also sees its blocks returned.
    pub(super) fn publish_finished(&mut self) {
        self.publish_stats();
        for (events, ev) in self.finished_events.drain(..) {
            let _ = events.unbounded_send(ev);
        }
    }

    pub(super) fn publish_stats(&self) {
        let st = self.sched.stats();
        let forking: usize = self.forks.values().map(Vec::len).sum();
        self.shared.held.store(
            self.active.len() + forking + self.tiers.num_parked(),
            Ordering::SeqCst,
        );
        if let Ok(mut s) = self.shared.stats.lock() {
            *s = EngineStats {
                blocks_used: st.blocks_used,
                blocks_free: st.blocks_free,
                tokens_held: st.tokens_held,
                kv_waste_pct: st.waste * 100.0,
                mean_kv_waste_pct: if self.steps == 0 {
                    0.0
                } else {
                    self.waste_sum / self.steps as f64 * 100.0
                },
                preemptions: st.preemptions,
                requests_waiting: st.waiting + self.shared.queued.load(Ordering::SeqCst),
                requests_running: st.running,
                requests_finished: self.finished,
                peak_blocks_used: self.peak_blocks,
                steps: self.steps,
                mean_step_us: self.step_us_sum / self.steps.max(1) as f64,
                mean_host_us_per_step: self.host_us_sum / self.steps.max(1) as f64,
                overlapped_steps: self.overlapped_steps,
                prefix_query_tokens: st.prefix_query_tokens,
                prefix_hit_tokens: st.prefix_hit_tokens,
                prefix_hit_rate: st.prefix_hit_rate,
                cached_blocks: st.cached_blocks,
                evictions: st.evictions,
                spec_drafted_tokens: st.spec_drafted,
                spec_accepted_tokens: st.spec_accepted,
                kv_tiers: self.tier_stats(&st),
                ..s.clone()
            };
        }
    }
}
