//! Which block files a namespace directory holds, for its size cap: the least recently used
//! *leaf* (a file no other file names as its parent) goes first, so a chain shrinks from its
//! end and a shared prefix outlives the blocks that extend it — a file whose parent is gone
//! could never be reached (loads walk a chain from its start).
//!
//! Costs: insert, touch and remove O(log n); evict O(log n).

use std::collections::{BTreeSet, HashMap};

use crate::kv::BlockHash;

#[derive(Debug, Default)]
pub(super) struct DiskIndex {
    /// Each file's parent key and last use.
    entries: HashMap<BlockHash, (Option<BlockHash>, u64)>,
    /// Files naming each key as their parent (whether or not that key has a file).
    children: HashMap<BlockHash, u32>,
    /// Files without children, least recently used first.
    leaves: BTreeSet<(u64, BlockHash)>,
    clock: u64,
}

impl DiskIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_leaf(&self, key: BlockHash) -> bool {
        self.children.get(&key).copied().unwrap_or(0) == 0
    }

    /// Records a file for `key` (used now); an existing one is touched.
    pub fn insert(&mut self, key: BlockHash, parent: Option<BlockHash>) {
        if self.entries.contains_key(&key) {
            self.touch(key);
            return;
        }
        self.clock += 1;
        self.entries.insert(key, (parent, self.clock));
        if self.is_leaf(key) {
            self.leaves.insert((self.clock, key));
        }
        if let Some(p) = parent {
            *self.children.entry(p).or_default() += 1;
            if let Some((_, t)) = self.entries.get(&p) {
                self.leaves.remove(&(*t, p));
            }
        }
    }

    /// `key` was used now (a load).
    pub fn touch(&mut self, key: BlockHash) {
        let leaf = self.is_leaf(key);
        let Some((_, tick)) = self.entries.get_mut(&key) else {
            return;
        };
        self.clock += 1;
        if leaf {
            self.leaves.remove(&(*tick, key));
            self.leaves.insert((self.clock, key));
        }
        *tick = self.clock;
    }

    /// `key`'s file is gone (rejected or evicted).
    pub fn remove(&mut self, key: BlockHash) {
        let Some((parent, tick)) = self.entries.remove(&key) else {
            return;
        };
        self.leaves.remove(&(tick, key));
        if let Some(p) = parent {
            let c = self.children.get_mut(&p).expect("parent counted");
            *c -= 1;
            if *c == 0 {
                self.children.remove(&p);
                if let Some((_, t)) = self.entries.get(&p) {
                    self.leaves.insert((*t, p));
                }
            }
        }
    }

    /// Forgets the least recently used leaf and returns its key (`None` when empty). A
    /// forest of files always has a leaf.
    pub fn evict(&mut self) -> Option<BlockHash> {
        let (_, key) = *self.leaves.first()?;
        self.remove(key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_shrink_from_their_ends_least_recently_used_first() {
        let k = BlockHash;
        let mut ix = DiskIndex::default();
        // Chain 1 → 2 → 3, and 4 (written last).
        ix.insert(k(1), None);
        ix.insert(k(2), Some(k(1)));
        ix.insert(k(3), Some(k(2)));
        ix.insert(k(4), None);
        // 3 is the oldest leaf; then 2 becomes one, older than 4.
        assert_eq!(ix.evict(), Some(k(3)));
        assert_eq!(ix.evict(), Some(k(2)));
        // Loading 1 makes it the most recent: 4 goes before it.
        ix.touch(k(1));
        assert_eq!(ix.evict(), Some(k(4)));
        assert_eq!(ix.evict(), Some(k(1)));
        assert_eq!((ix.evict(), ix.len()), (None, 0));
    }

    #[test]
    fn a_child_written_before_its_parent_keeps_the_parent_from_being_a_leaf() {
        let k = BlockHash;
        let mut ix = DiskIndex::default();
        ix.insert(k(2), Some(k(1)));
        ix.insert(k(1), None);
        assert_eq!(ix.evict(), Some(k(2)));
        ix.insert(k(5), Some(k(1)));
        ix.remove(k(5));
        assert_eq!(ix.evict(), Some(k(1)));
    }
}
