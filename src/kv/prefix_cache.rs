//! Prefix cache bookkeeping: which physical blocks hold the KV of which full token blocks.
//!
//! Every full block of a sequence has a key, [`block_hash`]`(parent key, its tokens, salt)`, so
//! a key names the whole prefix up to and including that block. A block registered under a key
//! is *cached*; it stays cached while held and after its last holder lets go (ref count 0:
//! *cached-free*), until the pool needs a block and no uncached free block is left. Then the
//! least recently freed cached-free *leaf* (a block no cached block names as its parent) is
//! evicted: a chain goes from its end, and a shared parent outlives its children. Only when
//! every cached-free block still has cached children (those children are held by running
//! sequences that computed their own copy of the parent) is the least recently freed one
//! evicted anyway; its children stay cached and are found again once the parent's key is
//! registered again (keys name contents, not blocks).
//!
//! The hash is a 64-bit FNV-1a with a final avalanche, written here so keys are stable across
//! Rust versions. Collisions are treated as impossible but checked: an entry stores its
//! parent key, salt and tokens, and a lookup compares them all.
//!
//! Costs: lookup O(1) per block plus O(block_size) hashing and comparison; register O(log n);
//! freeing or taking a cached block O(log n); eviction O(log n).

use std::collections::{BTreeSet, HashMap};

use super::BlockId;

/// Key of a full block: a hash of its parent's key, its tokens and the cache salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

/// 64-bit FNV-1a with the splitmix64 finaliser: the project's stable hash (block keys, the
/// disk tier's namespaces), written here so it never changes with a Rust or crate version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv64(u64);

impl Fnv64 {
    pub fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// Length-prefixed, so consecutive fields cannot run into each other.
    pub fn field(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.bytes(bytes);
    }

    pub fn finish(self) -> u64 {
        // splitmix64 finaliser: spreads FNV's weak high bits.
        let mut h = self.0;
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        h
    }
}

/// The stable 64-bit key of a full block ([`Fnv64`] over parent key, salt and tokens as
/// little-endian bytes, each optional one behind a presence byte). O(tokens).
pub fn block_hash(parent: Option<BlockHash>, tokens: &[u32], salt: Option<u64>) -> BlockHash {
    let mut h = Fnv64::new();
    for v in [parent.map(|p| p.0), salt] {
        match v {
            Some(v) => {
                h.bytes(&[1]);
                h.u64(v);
            }
            None => h.bytes(&[0]),
        }
    }
    h.u64(tokens.len() as u64);
    for t in tokens {
        h.bytes(&t.to_le_bytes());
    }
    BlockHash(h.finish())
}

/// What a cached block holds, kept to check hits against collisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub block: BlockId,
    pub parent: Option<BlockHash>,
    pub salt: Option<u64>,
    pub tokens: Vec<u32>,
}

/// The cache's maps and its eviction order. The pool owns it and tells it when a cached
/// block's ref count moves between 0 and 1.
#[derive(Debug, Clone, Default)]
pub(super) struct PrefixCache {
    pub entries: HashMap<BlockHash, Entry>,
    /// Key each block is registered under.
    pub key_of: Vec<Option<BlockHash>>,
    /// Number of cached entries naming each key as their parent (whether or not it is cached).
    pub children: HashMap<BlockHash, u32>,
    /// When each cached-free block was last freed.
    pub freed_at: Vec<u64>,
    clock: u64,
    /// Every cached-free block, least recently freed first.
    pub cached_free: BTreeSet<(u64, BlockId)>,
    /// The cached-free blocks without cached children, least recently freed first.
    pub leaves: BTreeSet<(u64, BlockId)>,
    pub evictions: u64,
}

impl PrefixCache {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            key_of: vec![None; num_blocks],
            freed_at: vec![0; num_blocks],
            ..Self::default()
        }
    }

    pub fn is_cached(&self, id: BlockId) -> bool {
        self.key_of.get(id.0 as usize).is_some_and(Option::is_some)
    }

    fn is_leaf(&self, key: BlockHash) -> bool {
        self.children.get(&key).copied().unwrap_or(0) == 0
    }

    /// The cached block holding exactly (parent, tokens, salt), if any.
    pub fn lookup(
        &self,
        key: BlockHash,
        parent: Option<BlockHash>,
        tokens: &[u32],
        salt: Option<u64>,
    ) -> Option<BlockId> {
        let e = self.entries.get(&key)?;
        (e.parent == parent && e.salt == salt && e.tokens == tokens).then_some(e.block)
    }

    /// Re-files a cached-free block in the leaf set after its children changed.
    fn refresh_leaf(&mut self, key: BlockHash) {
        let Some(e) = self.entries.get(&key) else {
            return;
        };
        let item = (self.freed_at[e.block.0 as usize], e.block);
        if self.cached_free.contains(&item) {
            if self.is_leaf(key) {
                self.leaves.insert(item);
            } else {
                self.leaves.remove(&item);
            }
        }
    }

    /// Registers held block `id` under `key`. False (nothing changes) if the key is already
    /// cached (another block computed the same prefix first) or the block already has a key.
    pub fn register(
        &mut self,
        id: BlockId,
        key: BlockHash,
        parent: Option<BlockHash>,
        salt: Option<u64>,
        tokens: &[u32],
    ) -> bool {
        if self.entries.contains_key(&key) || self.is_cached(id) {
            return false;
        }
        self.entries.insert(
            key,
            Entry {
                block: id,
                parent,
                salt,
                tokens: tokens.to_vec(),
            },
        );
        self.key_of[id.0 as usize] = Some(key);
        if let Some(p) = parent {
            *self.children.entry(p).or_default() += 1;
            self.refresh_leaf(p);
        }
        true
    }

    /// A cached block's last holder let go: it becomes evictable.
    pub fn on_freed(&mut self, id: BlockId) {
        let key = self.key_of[id.0 as usize].expect("caller checked: cached");
        self.clock += 1;
        self.freed_at[id.0 as usize] = self.clock;
        let item = (self.clock, id);
        self.cached_free.insert(item);
        if self.is_leaf(key) {
            self.leaves.insert(item);
        }
    }

    /// A cached-free block is taken by a hit: no longer evictable.
    pub fn on_taken(&mut self, id: BlockId) {
        let item = (self.freed_at[id.0 as usize], id);
        self.cached_free.remove(&item);
        self.leaves.remove(&item);
    }

    /// Evicts the least recently freed cached-free leaf (or, if none, the least recently
    /// freed cached-free block): it leaves the cache, and its ref count stays 0. Returns the
    /// block with the key and entry it was cached under.
    pub fn evict(&mut self) -> Option<(BlockId, BlockHash, Entry)> {
        let (tick, id) = self
            .leaves
            .first()
            .or_else(|| self.cached_free.first())
            .copied()?;
        self.cached_free.remove(&(tick, id));
        self.leaves.remove(&(tick, id));
        let key = self.key_of[id.0 as usize]
            .take()
            .expect("evictable blocks are cached");
        let e = self.entries.remove(&key).expect("key_of and entries agree");
        if let Some(p) = e.parent {
            let c = self.children.get_mut(&p).expect("parent counted");
            *c -= 1;
            if *c == 0 {
                self.children.remove(&p);
            }
            self.refresh_leaf(p);
        }
        self.evictions += 1;
        Some((id, key, e))
    }

    /// Checks the cache against the pool's ref counts (for tests). O(blocks + entries).
    pub fn validate(&self, ref_counts: &[u32]) -> Result<(), String> {
        let mut children: HashMap<BlockHash, u32> = HashMap::new();
        for (key, e) in &self.entries {
            if self.key_of[e.block.0 as usize] != Some(*key) {
                return Err(format!("{} is not registered under its entry", e.block));
            }
            if let Some(p) = e.parent {
                *children.entry(p).or_default() += 1;
            }
        }
        if children != self.children {
            return Err("children counts are off".into());
        }
        let mut free = 0;
        for (b, key) in self.key_of.iter().enumerate() {
            let id = BlockId(b as u32);
            let Some(key) = key else { continue };
            if self.entries.get(key).map(|e| e.block) != Some(id) {
                return Err(format!("{id} has a key with no entry"));
            }
            let item = (self.freed_at[b], id);
            let in_free = self.cached_free.contains(&item);
            if in_free != (ref_counts[b] == 0) {
                return Err(format!(
                    "{id}: evictable = {in_free}, ref count {}",
                    ref_counts[b]
                ));
            }
            if self.leaves.contains(&item) != (in_free && self.is_leaf(*key)) {
                return Err(format!("{id}: leaf set is off"));
            }
            free += usize::from(in_free);
        }
        if free != self.cached_free.len() || self.leaves.len() > free {
            return Err("evictable sets hold blocks that are not cached-free".into());
        }
        Ok(())
    }
}
