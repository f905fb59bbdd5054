//! The host tier's bookkeeping: which host slots hold a copy of the KV of which prefix blocks.
//!
//! When the GPU pool's prefix cache evicts a block, its KV (every layer's K and V: a block's
//! *image*) can be copied into a host slot instead of being lost; a later request whose prefix
//! reaches that block gets the image written back into a fresh GPU block instead of computing
//! it again. This type only decides which slot holds what; the bytes live with the engine.
//!
//! A slot is one of:
//! - *free*: holds nothing;
//! - *writing*: reserved for an evicted block whose image is on its way (the GPU copy has
//!   been issued, not read back yet): not found by lookups, not evictable;
//! - *ready*: holds the image of the block keyed `key` (a prefix-cache chain key: the block's
//!   tokens, its parent's key and the salt); found by [`HostTier::match_after`];
//! - *ready and pinned*: a restore is reading it (until the engine has handed the image to the
//!   GPU queue); not evictable.
//!
//! When no slot is free, reserving evicts the least recently used ready, unpinned slot among
//! the *leaves* (no ready slot names it as its parent), so a chain goes from its end and a
//! shared parent outlives its children, as in the GPU cache. That is [`BlockPool`]'s own
//! policy: the slots are a `BlockPool` whose blocks are registered once ready, held (ref
//! count 1) while writing and held again by each pin; so its `validate` checks this tier too.
//!
//! Costs: reserve O(log n) (plus an eviction), complete O(block_size + log n), lookups
//! O(blocks × block_size), pin / unpin O(log n).

use std::collections::HashMap;

use super::{BlockHash, BlockId, BlockPool, CachedBlock, KvError};

/// A slot of the host tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostSlot(pub u32);

impl HostSlot {
    fn block(self) -> BlockId {
        BlockId(self.0)
    }
}

/// The host tier's slots (see the module docs).
#[derive(Debug, Clone)]
pub struct HostTier {
    slots: BlockPool,
    /// Slots being written, with what they will hold.
    writing: HashMap<HostSlot, CachedBlock>,
    /// Keys of the slots being written.
    writing_keys: HashMap<BlockHash, HostSlot>,
}

impl HostTier {
    /// `num_slots` slots (≥ 1) of blocks of `block_size` tokens.
    pub fn new(num_slots: usize, block_size: usize) -> Result<HostTier, KvError> {
        if num_slots == 0 {
            return Err(KvError::OutOfBlocks {
                needed: 1,
                free: 0,
                total: 0,
            });
        }
        Ok(HostTier {
            slots: BlockPool::new(num_slots, block_size)?,
            writing: HashMap::new(),
            writing_keys: HashMap::new(),
        })
    }

    pub fn num_slots(&self) -> usize {
        self.slots.num_blocks()
    }

    /// Slots holding an image (pinned or not).
    pub fn num_ready(&self) -> usize {
        self.slots.num_cached()
    }

    /// Slots whose image is on its way.
    pub fn num_writing(&self) -> usize {
        self.writing.len()
    }

    /// Ready slots evicted to make room since the tier was made.
    pub fn num_evictions(&self) -> u64 {
        self.slots.num_evictions()
    }

    /// Whether a slot holds, or is being written with, the block keyed `key`. O(1).
    pub fn contains(&self, key: BlockHash) -> bool {
        self.slots.has_key(key) || self.writing_keys.contains_key(&key)
    }

    /// A slot for the image of `block` (an eviction from the GPU pool), now *writing*; `None`
    /// when the tier already has that key or every slot is writing or pinned. May evict the
    /// least recently used ready leaf.
    pub fn reserve(&mut self, block: CachedBlock) -> Option<HostSlot> {
        if self.contains(block.key) {
            return None;
        }
        let slot = HostSlot(self.slots.allocate().ok()?.0);
        self.writing_keys.insert(block.key, slot);
        self.writing.insert(slot, block);
        Some(slot)
    }

    /// The image of a writing slot has landed: the slot is ready (found by lookups, evictable).
    pub fn complete(&mut self, slot: HostSlot) -> Result<(), KvError> {
        let e = self.take_writing(slot)?;
        // Cannot collide: `reserve` refuses keys the tier has, writing or ready.
        self.slots
            .register(slot.block(), e.parent, &e.tokens, e.salt)?;
        self.slots.release(slot.block())
    }

    /// The image of a writing slot will not come (the copy failed): the slot is free again.
    pub fn abandon(&mut self, slot: HostSlot) -> Result<(), KvError> {
        self.take_writing(slot)?;
        self.slots.release(slot.block())
    }

    fn take_writing(&mut self, slot: HostSlot) -> Result<CachedBlock, KvError> {
        let e = (self.writing.remove(&slot)).ok_or(KvError::NotHeld(slot.block()))?;
        self.writing_keys.remove(&e.key);
        Ok(e)
    }

    /// The ready slots holding the blocks that follow the prefix keyed `parent` (`None`: from
    /// the first block), one per full block of `tokens`, as far as they match (at most
    /// `max_blocks`); takes nothing.
    pub fn match_after(
        &self,
        parent: Option<BlockHash>,
        tokens: &[u32],
        salt: Option<u64>,
        max_blocks: usize,
    ) -> Vec<HostSlot> {
        (self
            .slots
            .match_after(parent, tokens, salt, max_blocks)
            .into_iter())
        .map(|b| HostSlot(b.0))
        .collect()
    }

    /// A restore reads this ready slot: it cannot be evicted until [`HostTier::unpin`], and it
    /// becomes the most recently used.
    pub fn pin(&mut self, slot: HostSlot) -> Result<(), KvError> {
        self.slots.acquire_cached(slot.block())
    }

    pub fn unpin(&mut self, slot: HostSlot) -> Result<(), KvError> {
        if self.writing.contains_key(&slot) || !self.slots.is_cached(slot.block()) {
            return Err(KvError::NotCached(slot.block()));
        }
        self.slots.release(slot.block())
    }

    /// Key and tokens of a ready slot.
    pub fn entry(&self, slot: HostSlot) -> Option<(BlockHash, &[u32])> {
        let key = self.slots.cached_key(slot.block())?;
        Some((key, self.slots.cached_tokens(slot.block())?))
    }

    /// The pending write of a slot: what it will hold.
    pub fn writing(&self, slot: HostSlot) -> Option<&CachedBlock> {
        self.writing.get(&slot)
    }

    /// Checks the bookkeeping (for tests): the slots' pool is consistent, every writing slot
    /// is held once and not ready, and the key map agrees. O(slots).
    pub fn validate(&self) -> Result<(), String> {
        self.slots.validate()?;
        if self.writing.len() != self.writing_keys.len() {
            return Err("writing keys and slots disagree".into());
        }
        for (slot, e) in &self.writing {
            let b = slot.block();
            if self.slots.ref_count(b) != 1 || self.slots.is_cached(b) {
                return Err(format!("writing slot {} is ready or pinned", slot.0));
            }
            if self.writing_keys.get(&e.key) != Some(slot) {
                return Err(format!("writing slot {} is not under its key", slot.0));
            }
        }
        // Every held slot is writing or a pinned ready slot.
        for b in 0..self.num_slots() as u32 {
            let (id, slot) = (BlockId(b), HostSlot(b));
            let held = self.slots.ref_count(id) > 0;
            if held && !self.writing.contains_key(&slot) && !self.slots.is_cached(id) {
                return Err(format!("slot {b} is held but neither writing nor ready"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::block_hash;

    fn evicted(parent: Option<BlockHash>, tokens: &[u32]) -> CachedBlock {
        CachedBlock {
            block: BlockId(0),
            key: block_hash(parent, tokens, None),
            parent,
            salt: None,
            tokens: tokens.to_vec(),
        }
    }

    #[test]
    fn a_slot_is_found_only_once_its_image_landed() {
        let mut t = HostTier::new(2, 2).unwrap();
        let a = evicted(None, &[1, 2]);
        let s = t.reserve(a.clone()).unwrap();
        assert!(t.match_after(None, &[1, 2, 3], None, 1).is_empty());
        assert!(
            t.reserve(a.clone()).is_none(),
            "the key is on its way already"
        );
        t.complete(s).unwrap();
        assert_eq!(t.match_after(None, &[1, 2, 3], None, 1), vec![s]);
        assert!(t.reserve(a).is_none(), "the key is there");
        t.validate().unwrap();
    }

    #[test]
    fn full_tier_evicts_the_least_recently_used_leaf_and_never_a_pinned_slot() {
        // 3 slots: chain a → b, and c. Pinning c makes it the most recent and unevictable.
        let mut t = HostTier::new(3, 1).unwrap();
        let a = evicted(None, &[1]);
        let b = evicted(Some(a.key), &[2]);
        let c = evicted(None, &[3]);
        let sa = t.reserve(a.clone()).unwrap();
        let sb = t.reserve(b.clone()).unwrap();
        let sc = t.reserve(c.clone()).unwrap();
        for s in [sc, sa, sb] {
            t.complete(s).unwrap();
        }
        assert_eq!(t.num_ready(), 3);
        t.pin(sc).unwrap();
        // c is pinned, a has a child: b (the leaf) goes first, then a, then nothing.
        let d = t.reserve(evicted(None, &[4])).unwrap();
        assert_eq!(d, sb);
        assert!(t.match_after(Some(a.key), &[2], None, 1).is_empty());
        t.complete(d).unwrap();
        t.pin(d).unwrap();
        assert_eq!(t.reserve(evicted(None, &[5])), Some(sa));
        assert_eq!(
            t.reserve(evicted(None, &[6])),
            None,
            "all writing or pinned"
        );
        t.unpin(sc).unwrap();
        t.validate().unwrap();
        assert_eq!(t.num_evictions(), 2);
    }

    #[test]
    fn an_abandoned_write_frees_its_slot_and_checks_its_caller() {
        let mut t = HostTier::new(1, 1).unwrap();
        let s = t.reserve(evicted(None, &[7])).unwrap();
        assert!(t.unpin(s).is_err(), "a writing slot is not pinned");
        t.abandon(s).unwrap();
        assert!(t.complete(s).is_err(), "nothing to complete");
        assert!(!t.contains(block_hash(None, &[7], None)));
        assert!(t.reserve(evicted(None, &[8])).is_some());
        t.validate().unwrap();
    }

    mod props {
        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// An eviction of the block with these tokens after the block of key index
            /// `parent` (from the keys seen so far), or a chain start.
            Reserve {
                tokens: u32,
                parent: Option<usize>,
            },
            Complete(usize),
            Abandon(usize),
            Pin(usize),
            Unpin(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0..6u32, prop::option::of(0..16usize))
                    .prop_map(|(tokens, parent)| Op::Reserve { tokens, parent }),
                3 => (0..16usize).prop_map(Op::Complete),
                1 => (0..16usize).prop_map(Op::Abandon),
                2 => (0..16usize).prop_map(Op::Pin),
                2 => (0..16usize).prop_map(Op::Unpin),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

            /// Random reserves, completions, failures, pins and unpins against a model of
            /// what each slot holds: a slot is never handed out twice, a pinned or writing
            /// slot is never evicted, a lookup finds exactly the ready slots of its chain, and
            /// free + writing + ready = slots throughout.
            #[test]
            fn host_slots_are_never_leaked_or_used_twice(
                num_slots in 1..6usize,
                ops in prop::collection::vec(op(), 1..80),
            ) {
                let mut t = HostTier::new(num_slots, 1).unwrap();
                // Model: slot → (entry, pins) for ready slots; writing slots apart.
                let mut ready: HashMap<HostSlot, (CachedBlock, u32)> = HashMap::new();
                let mut writing: HashMap<HostSlot, CachedBlock> = HashMap::new();
                let mut keys: Vec<BlockHash> = Vec::new();
                for op in ops {
                    match op {
                        Op::Reserve { tokens, parent } => {
                            let parent = parent.and_then(|i| keys.get(i).copied());
                            let b = evicted(parent, &[tokens]);
                            let known = ready.values().any(|(e, _)| e.key == b.key)
                                || writing.values().any(|e| e.key == b.key);
                            match t.reserve(b.clone()) {
                                Some(slot) => {
                                    prop_assert!(!known, "a key reserved twice");
                                    prop_assert!(!writing.contains_key(&slot), "slot used twice");
                                    if let Some((_, pins)) = ready.remove(&slot) {
                                        prop_assert_eq!(pins, 0, "a pinned slot was evicted");
                                    }
                                    keys.push(b.key);
                                    writing.insert(slot, b);
                                }
                                None => {
                                    let evictable = ready.values().any(|(_, p)| *p == 0);
                                    let free = num_slots > ready.len() + writing.len();
                                    prop_assert!(known || (!free && !evictable));
                                }
                            }
                        }
                        Op::Complete(i) | Op::Abandon(i) => {
                            let slot = HostSlot((i % num_slots) as u32);
                            let done = matches!(op, Op::Complete(_));
                            let r = if done { t.complete(slot) } else { t.abandon(slot) };
                            match writing.remove(&slot) {
                                Some(b) => {
                                    prop_assert!(r.is_ok());
                                    if done {
                                        ready.insert(slot, (b, 0));
                                    }
                                }
                                None => prop_assert!(r.is_err()),
                            }
                        }
                        Op::Pin(i) | Op::Unpin(i) => {
                            let slot = HostSlot((i % num_slots) as u32);
                            let pin = matches!(op, Op::Pin(_));
                            let r = if pin { t.pin(slot) } else { t.unpin(slot) };
                            match ready.get_mut(&slot) {
                                Some((_, pins)) if pin => {
                                    prop_assert!(r.is_ok());
                                    *pins += 1;
                                }
                                Some((_, pins)) if *pins > 0 => {
                                    prop_assert!(r.is_ok());
                                    *pins -= 1;
                                }
                                _ => prop_assert!(r.is_err()),
                            }
                        }
                    }
                    t.validate().map_err(TestCaseError::fail)?;
                    prop_assert_eq!(t.num_ready(), ready.len());
                    prop_assert_eq!(t.num_writing(), writing.len());
                    // Every ready slot is found by its own chain position, with its tokens.
                    for (slot, (e, _)) in &ready {
                        prop_assert_eq!(t.match_after(e.parent, &e.tokens, None, 1), vec![*slot]);
                        prop_assert_eq!(t.entry(*slot).map(|(k, _)| k), Some(e.key));
                    }
                    for e in writing.values() {
                        prop_assert!(t.match_after(e.parent, &e.tokens, None, 1).is_empty());
                    }
                }
            }
        }
    }
}
