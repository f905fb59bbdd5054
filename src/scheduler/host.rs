//! The scheduler's side of the host tier ([`crate::kv::HostTier`]): evicted prefix blocks
//! copied to host slots, and found there again at admission.
//!
//! Each step, in this order on the GPU queue (the engine's side, see
//! [`super::SchedulerOutput`]):
//! 1. *offloads*: every block the pool evicted while this step was scheduled still holds the
//!    KV it was cached with (nothing writes a block before the step's forward pass), so its
//!    image is copied to a host slot reserved now (*writing*). The engine confirms each with
//!    [`Scheduler::offload_done`] once the bytes are in host memory; only then can a lookup
//!    find the slot. A block whose key the tier already holds is not copied again.
//! 2. *restores*: admission, after taking the blocks the GPU pool still caches, continues the
//!    chain in the host tier; each hit gets a fresh block of the sequence's table, and the
//!    slot's image is written into it. The slot is pinned (not evictable) until the next
//!    `schedule`, by which time the engine has handed the image to the GPU queue. The
//!    sequence counts those tokens as computed; `update` registers the blocks in the GPU
//!    cache like any block it completed (so a failed step never leaves a cached block whose
//!    image did not land).
//!
//! Windowed models (every layer sliding) keep no host tier: their cached prefixes are given
//! back as the window passes, so a restore would mostly write blocks released at once.

use super::types::{HostTierStats, Offload, Restore};
use super::{SYNC, SchedError, Scheduler, SeqId};
use crate::kv::{BlockHash, BlockId, CachedBlock, HostSlot, HostTier, block_hash};

/// The tier, the restores of the last step (pinned until the next one) and counters.
#[derive(Debug)]
pub(super) struct HostState {
    pub tier: HostTier,
    pinned: Vec<HostSlot>,
    offloads: u64,
    offloads_failed: u64,
    offloads_skipped: u64,
    restores: u64,
    pub hit_tokens: u64,
}

impl HostState {
    /// Pins each restored slot and pairs it with its fresh block (`tokens`: the tokens they
    /// hold).
    pub fn restore(
        &mut self,
        slots: &[HostSlot],
        blocks: &[BlockId],
        tokens: usize,
        out: &mut Vec<Restore>,
    ) {
        for (slot, block) in slots.iter().zip(blocks) {
            self.tier.pin(*slot).expect(SYNC);
            self.pinned.push(*slot);
            out.push(Restore {
                slot: *slot,
                block: *block,
            });
        }
        self.restores += slots.len() as u64;
        self.hit_tokens += tokens as u64;
    }
}

impl Scheduler {
    /// Keeps evicted prefix blocks in a host tier of `num_slots` blocks from now on (see the
    /// module docs). Refused without the prefix cache or with a sliding window.
    pub fn enable_host_tier(&mut self, num_slots: usize) -> Result<(), SchedError> {
        if !self.cfg.enable_prefix_cache || self.cfg.sliding_window.is_some() {
            return Err(SchedError::InvalidConfig(
                "a host tier needs the prefix cache and a model without sliding windows".into(),
            ));
        }
        let tier = HostTier::new(num_slots, self.pool.block_size())?;
        self.pool.record_evictions(true);
        self.host = Some(HostState {
            tier,
            pinned: Vec::new(),
            offloads: 0,
            offloads_failed: 0,
            offloads_skipped: 0,
            restores: 0,
            hit_tokens: 0,
        });
        Ok(())
    }

    /// The host tier, if enabled.
    pub fn host_tier(&self) -> Option<&HostTier> {
        self.host.as_ref().map(|h| &h.tier)
    }

    /// The image of `slot` (an offload of an earlier output) is in host memory (`ok`), or
    /// will never be (the copy failed: the slot is freed).
    pub fn offload_done(&mut self, slot: HostSlot, ok: bool) -> Result<(), SchedError> {
        let h = self
            .host
            .as_mut()
            .ok_or(SchedError::InvalidConfig("no host tier".into()))?;
        if ok {
            h.tier.complete(slot)?;
        } else {
            h.tier.abandon(slot)?;
            h.offloads_failed += 1;
        }
        Ok(())
    }

    /// How far the GPU cache and the host tier (ready or on its way) already hold the chain of
    /// `tokens`' full blocks under `salt`, at most `max_blocks`: (blocks, the last one's key).
    /// Where a loader (the disk tier) would start. O(blocks × block_size).
    pub fn resident_prefix(
        &self,
        tokens: &[u32],
        salt: Option<u64>,
        max_blocks: usize,
    ) -> (usize, Option<BlockHash>) {
        let mut parent = None;
        let mut n = 0;
        for chunk in tokens.chunks_exact(self.pool.block_size()).take(max_blocks) {
            let key = block_hash(parent, chunk, salt);
            let on_host = self.host.as_ref().is_some_and(|h| h.tier.contains(key));
            if !self.pool.has_key(key) && !on_host {
                break;
            }
            parent = Some(key);
            n += 1;
        }
        (n, parent)
    }

    /// A host slot for an image from elsewhere (the disk tier) of the block `b` describes
    /// (its `block` is ignored); confirm it with [`Scheduler::offload_done`] once the image
    /// is stored. `None` without a host tier, when the tier has the key, or when every slot
    /// is writing or pinned.
    pub fn reserve_host_slot(&mut self, b: CachedBlock) -> Option<HostSlot> {
        self.host.as_mut()?.tier.reserve(b)
    }

    /// The full blocks of `id`'s prompt whose KV is computed, each with its prefix-cache key
    /// (what the disk tier stores; the keys `update` computed when it registered them). Empty
    /// with the prefix cache off. O(blocks × block_size) to copy the tokens.
    pub fn computed_prompt_blocks(&self, id: SeqId) -> Vec<CachedBlock> {
        let Some(s) = self.seqs.get(&id) else {
            return Vec::new();
        };
        if !self.cfg.enable_prefix_cache {
            return Vec::new();
        }
        let bs = self.pool.block_size();
        let full = (s.num_computed.min(s.prompt_len) / bs).min(s.keys.len());
        (0..full)
            .filter(|j| !s.table.blocks()[*j].is_hole())
            .map(|j| CachedBlock {
                block: s.table.blocks()[j],
                key: s.keys[j],
                parent: j.checked_sub(1).map(|p| s.keys[p]),
                salt: s.salt,
                tokens: s.tokens[j * bs..(j + 1) * bs].to_vec(),
            })
            .collect()
    }

    /// Reserves a host slot for every block evicted since the last call.
    pub(super) fn offload_evictions(&mut self) -> Vec<Offload> {
        let evicted = self.pool.take_evictions();
        let Some(h) = self.host.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in evicted {
            let block = e.block;
            if h.tier.contains(e.key) {
                continue;
            }
            match h.tier.reserve(e) {
                Some(slot) => out.push(Offload { block, slot }),
                None => h.offloads_skipped += 1,
            }
        }
        h.offloads += out.len() as u64;
        out
    }

    /// Unpins the slots the last step restored from.
    pub(super) fn unpin_restores(&mut self) {
        if let Some(h) = self.host.as_mut() {
            for slot in h.pinned.drain(..) {
                h.tier.unpin(slot).expect(SYNC);
            }
        }
    }

    pub(super) fn host_stats(&self) -> HostTierStats {
        let Some(h) = &self.host else {
            return HostTierStats::default();
        };
        HostTierStats {
            slots: h.tier.num_slots(),
            ready: h.tier.num_ready(),
            writing: h.tier.num_writing(),
            offloads: h.offloads,
            offloads_failed: h.offloads_failed,
            offloads_skipped: h.offloads_skipped,
            restores: h.restores,
            evictions: h.tier.num_evictions(),
        }
    }
}
