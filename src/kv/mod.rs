//! The paged KV cache's CPU side: a pool of fixed-size blocks and per-sequence block tables.
//!
//! Pure logic, no GPU types. Invariants (checked by the property tests):
//! - every block is exactly one of: on the free list (ref count 0, uncached), cached-free (ref
//!   count 0, registered in the prefix cache, evictable) or held (ref count ≥ 1), never two;
//! - free (uncached + cached-free) + held = total (`BlockPool::validate` checks all of this);
//! - a block's ref count is its number of holders: the tables that list it, plus any caller that
//!   retained it directly (the scheduler keeps a copy's source alive until the copy has run);
//! - a block table holds exactly ceil(num_tokens / block_size) entries, so only its last block
//!   may be partly empty; the leading entries may be *holes* ([`BlockId::HOLE`]: blocks given
//!   back by [`BlockTable::release_front`] because no later query reads them — every layer's
//!   sliding window has moved past them, see [`blocks_out_of_window`]). Holes are never read
//!   and never written, and hold nothing in the pool: a hole is only ever a full block's place,
//!   every held entry follows every hole, and every slot a table hands out lies in one of its
//!   own held blocks;
//! - a table never writes into a block another table also holds: full blocks are never written
//!   again, and appending into a shared, partly filled last block first copies it (copy-on-write).
//!
//! Prefix cache (see [`prefix_cache`]): a full block may be registered under a key naming its
//! whole prefix. A registered block whose ref count drops to 0 keeps its KV and stays cached
//! (*cached-free*): it counts as free (`num_free`, `free + used = total` still hold) and can be
//! taken again by a hit ([`BlockPool::acquire_cached`]). Allocation hands out uncached free
//! blocks first; when none is left it evicts the least recently freed cached-free leaf.
//! A cached block is full, so no table ever writes into it (tables append only into their own
//! partly filled last block, which is never cached); a held block is never evicted.
//!
//! Costs: allocate is O(1) (pop the free list; O(log n) when it evicts), release is O(1)
//! (push it back; O(log n) for a cached block), retain is O(1);
//! `BlockTable::fork` and `release` are O(blocks of the table); `grow_to`, `prepare_append`,
//! `truncate` and `release_front` are O(blocks allocated or released), plus O(1) for a
//! copy-on-write.
//!
//! Sliding windows. When every layer of a model attends only to the last `window` positions,
//! a block all of whose positions lie before the window of the next query is never read
//! again: the scheduler gives it back with [`BlockTable::release_front`] (one reference
//! dropped, so a block another table shares, or a cached one, lives on as usual) and the table
//! keeps a hole at its logical index, so positions still map to `position / block_size`.
//! A windowed sequence then holds at most [`window_peak_blocks`] blocks at once.

use std::fmt;

pub mod host_tier;
pub mod prefix_cache;

pub use host_tier::{HostSlot, HostTier};
use prefix_cache::PrefixCache;
pub use prefix_cache::{BlockHash, block_hash};

/// Physical block index in the KV pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

impl BlockId {
    /// A table entry whose block was given back (see the module docs): it names no block of
    /// any pool (no pool has 2^32 - 1 blocks), so a pool operation on it fails with
    /// `NotHeld` instead of touching another table's block.
    pub const HOLE: BlockId = BlockId(u32::MAX);

    pub fn is_hole(self) -> bool {
        self == Self::HOLE
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_hole() {
            write!(f, "a released block (hole)")
        } else {
            write!(f, "block {}", self.0)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("out of KV blocks: need {needed}, {free} free of {total}")]
    OutOfBlocks {
        needed: usize,
        free: usize,
        total: usize,
    },
    #[error("block size {0} must be a power of two from 1 to 256")]
    BadBlockSize(usize),
    #[error("{0} is not held")]
    NotHeld(BlockId),
    #[error("{0} is not in the prefix cache")]
    NotCached(BlockId),
    /// Cached blocks can only start a table: they are a prefix of its tokens.
    #[error("cached blocks can only be adopted by an empty table")]
    TableNotEmpty,
    /// `grow_to` would write into a partly filled last block that another table shares;
    /// use `prepare_append`, which copies it first.
    #[error("{0} is shared: appending to it needs a copy-on-write (use prepare_append)")]
    SharedLastBlock(BlockId),
    /// Truncating to `tokens` would leave the table ending inside a released block, so the
    /// next append would write into a hole.
    #[error("truncating to {tokens} tokens would end the table inside a released block")]
    EndsInHole { tokens: usize },
}

/// A copy the GPU runner performs before the step's forward pass: every slot of `src` (K and V,
/// all layers) into `dst`. Produced by copy-on-write; `dst` is a fresh block of the appending
/// table, `src` the shared block it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockCopy {
    pub src: BlockId,
    pub dst: BlockId,
}

/// Checks a block size: a power of two in 1..=256.
pub fn check_block_size(block_size: usize) -> Result<(), KvError> {
    if block_size.is_power_of_two() && block_size <= 256 {
        Ok(())
    } else {
        Err(KvError::BadBlockSize(block_size))
    }
}

/// Leading blocks of a sequence that no query after its first `num_computed` tokens reads,
/// when every layer's window is at most `window` keys (window ≥ 1).
///
/// The attention kernels give a query at position p the keys j with p - j < window, i.e.
/// j ≥ p + 1 - window (`window_start` in shaders/cpu/paged_attention_serial.wgsl and
/// shaders/gpu/paged_attention_split.wgsl: keys before it are
/// never read, and the block walk starts at its block). Every later query — the next decode
/// token, or the first token of the next prefill chunk — sits at p ≥ num_computed, so it
/// reads no key before lo = num_computed + 1 - window (paged_attention_serial's shared walk
/// starts at the earliest window start among one sequence's tokens of a step, all of them at
/// positions ≥ num_computed; the split form's partitions start at lo too). Block b holds
/// positions b·bs ..= (b+1)·bs - 1; it is never read again iff its last position is below lo:
/// (b+1)·bs - 1 < lo ⟺ (b+1)·bs ≤ num_computed + 1 - window. So blocks
/// 0 .. floor((num_computed + 1 - window) / bs) go, none while num_computed + 1 ≤ window.
/// Example: window 24, blocks of 8, 40 tokens computed: the next query (position 40) reads
/// keys 17..=40, so blocks 0 (0..=7) and 1 (8..=15) go and block 2 (16..=23) stays:
/// floor((40 + 1 - 24) / 8) = floor(17 / 8) = 2. Every released block is full (its last
/// position is below num_computed), so it is never a shared, partly filled last block.
pub fn blocks_out_of_window(num_computed: usize, window: usize, block_size: usize) -> usize {
    (num_computed + 1).saturating_sub(window) / block_size
}

/// Most blocks a sequence holds at once when it gives back what [`blocks_out_of_window`]
/// allows after every step, during a step that computes `chunk` tokens (0: between steps):
/// ceil((window + chunk + block_size - 2) / block_size).
///
/// Before a step from position c the table holds the blocks from the one holding
/// lo = c + 1 - window (or from block 0) on; the step grows it to c + chunk tokens. The first
/// held block starts at most bs - 1 positions before lo, so the held blocks span at most
/// (bs - 1) + (window - 1) + chunk positions. Window 24, blocks of 8: 4 between steps
/// (ceil(30 / 8); reached after 30 tokens: blocks 0..=3, as the query at 30 still reads key 7)
/// and 4 during a decode step (ceil(31 / 8)); that is at most ceil(window / bs) + 1 plus
/// the blocks the step's chunk grows into.
pub fn window_peak_blocks(window: usize, block_size: usize, chunk: usize) -> usize {
    (window + chunk + block_size)
        .saturating_sub(2)
        .div_ceil(block_size)
}

/// A fixed pool of physical blocks with reference counts.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    /// Free blocks not in the prefix cache; the next allocation pops the last one.
    free: Vec<BlockId>,
    /// Holders of each block (0 = free, possibly cached).
    ref_counts: Vec<u32>,
    /// Registered full blocks, held or cached-free.
    cache: PrefixCache,
    /// What evictions since the last [`BlockPool::take_evictions`] took out of the cache,
    /// when recorded (a host tier keeps a copy of the KV they held).
    evicted: Option<Vec<CachedBlock>>,
}

/// A block of the prefix cache: where it is and what it holds. As an eviction (what the pool
/// took out of the cache to hand the block out again) its KV is still there until the
/// next write into it, and `key`, `parent`, `salt` and `tokens` say what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBlock {
    pub block: BlockId,
    pub key: BlockHash,
    pub parent: Option<BlockHash>,
    pub salt: Option<u64>,
    pub tokens: Vec<u32>,
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self, KvError> {
        check_block_size(block_size)?;
        Ok(Self {
            block_size,
            // Reverse order so block 0 is handed out first (only cosmetic).
            free: (0..num_blocks as u32).rev().map(BlockId).collect(),
            ref_counts: vec![0; num_blocks],
            cache: PrefixCache::new(num_blocks),
            evicted: None,
        })
    }

    /// Starts (or stops) keeping what each eviction took out of the cache, for
    /// [`BlockPool::take_evictions`].
    pub fn record_evictions(&mut self, on: bool) {
        self.evicted = on.then(Vec::new);
    }

    /// The evictions since the last call (oldest first), when recording.
    pub fn take_evictions(&mut self) -> Vec<CachedBlock> {
        self.evicted
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Free blocks, uncached and cached-free (a cached-free block is evicted when allocated).
    pub fn num_free(&self) -> usize {
        self.free.len() + self.cache.cached_free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.ref_counts.get(id.0 as usize).copied().unwrap_or(0)
    }

    /// Takes a free block (ref count becomes 1): an uncached one if any, else it evicts the
    /// least recently freed cached-free leaf.
    pub fn allocate(&mut self) -> Result<BlockId, KvError> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (id, key, e) = self.cache.evict().ok_or(KvError::OutOfBlocks {
                    needed: 1,
                    free: 0,
                    total: self.num_blocks(),
                })?;
                if let Some(log) = &mut self.evicted {
                    log.push(CachedBlock {
                        block: id,
                        key,
                        parent: e.parent,
                        salt: e.salt,
                        tokens: e.tokens,
                    });
                }
                id
            }
        };
        self.ref_counts[id.0 as usize] = 1;
        Ok(id)
    }

    /// One more holder of an already-held block (sharing between sequences).
    pub fn retain(&mut self, id: BlockId) -> Result<(), KvError> {
        match self.ref_counts.get_mut(id.0 as usize) {
            Some(rc) if *rc > 0 => {
                *rc += 1;
                Ok(())
            }
            _ => Err(KvError::NotHeld(id)),
        }
    }

    /// Drops one holder; the block returns to the free list when none are left.
    pub fn release(&mut self, id: BlockId) -> Result<(), KvError> {
        match self.ref_counts.get_mut(id.0 as usize) {
            Some(rc) if *rc > 0 => {
                *rc -= 1;
                if *rc == 0 {
                    if self.cache.is_cached(id) {
                        self.cache.on_freed(id);
                    } else {
                        self.free.push(id);
                    }
                }
                Ok(())
            }
            _ => Err(KvError::NotHeld(id)),
        }
    }

    /// One more holder of a cached block, held or cached-free (a prefix-cache hit). O(log n).
    pub fn acquire_cached(&mut self, id: BlockId) -> Result<(), KvError> {
        if !self.cache.is_cached(id) {
            return Err(KvError::NotCached(id));
        }
        let rc = &mut self.ref_counts[id.0 as usize];
        if *rc == 0 {
            self.cache.on_taken(id);
        }
        *rc += 1;
        Ok(())
    }

    /// The cached blocks holding the longest prefix of `tokens`' full blocks (at most
    /// `max_blocks` of them) under `salt`, in order; takes nothing. O(blocks × block_size).
    pub fn match_prefix(
        &self,
        tokens: &[u32],
        salt: Option<u64>,
        max_blocks: usize,
    ) -> Vec<BlockId> {
        self.match_after(None, tokens, salt, max_blocks)
    }

    /// [`BlockPool::match_prefix`] for the blocks that follow the prefix keyed `parent`:
    /// `tokens` start at a block boundary after it. O(blocks × block_size).
    pub fn match_after(
        &self,
        mut parent: Option<BlockHash>,
        tokens: &[u32],
        salt: Option<u64>,
        max_blocks: usize,
    ) -> Vec<BlockId> {
        let mut hits = Vec::new();
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let key = block_hash(parent, chunk, salt);
            match self.cache.lookup(key, parent, chunk, salt) {
                Some(id) => hits.push(id),
                None => break,
            }
            parent = Some(key);
        }
        hits
    }

    /// Registers the held, full block `id` as holding `tokens` (exactly one block) after the
    /// prefix keyed `parent`, under `key` = `block_hash(parent, tokens, salt)`. Returns false
    /// and changes nothing when that key is already cached (another block computed the same
    /// prefix) or `id` already has a key. The caller guarantees the block's KV is written.
    pub fn register(
        &mut self,
        id: BlockId,
        parent: Option<BlockHash>,
        tokens: &[u32],
        salt: Option<u64>,
    ) -> Result<bool, KvError> {
        if self.ref_count(id) == 0 {
            return Err(KvError::NotHeld(id));
        }
        debug_assert_eq!(tokens.len(), self.block_size, "only full blocks are cached");
        let key = block_hash(parent, tokens, salt);
        Ok(self.cache.register(id, key, parent, salt, tokens))
    }

    pub fn is_cached(&self, id: BlockId) -> bool {
        self.cache.is_cached(id)
    }

    /// Whether some block is cached under `key`. O(1).
    pub fn has_key(&self, key: BlockHash) -> bool {
        self.cache.entries.contains_key(&key)
    }

    /// The key `id` is cached under.
    pub fn cached_key(&self, id: BlockId) -> Option<BlockHash> {
        self.cache.key_of.get(id.0 as usize).copied().flatten()
    }

    /// The tokens a cached block holds the KV of.
    pub fn cached_tokens(&self, id: BlockId) -> Option<&[u32]> {
        let key = self.cached_key(id)?;
        self.cache.entries.get(&key).map(|e| e.tokens.as_slice())
    }

    /// The parent key a cached block was registered under.
    pub fn cached_parent(&self, id: BlockId) -> Option<Option<BlockHash>> {
        let key = self.cached_key(id)?;
        self.cache.entries.get(&key).map(|e| e.parent)
    }

    /// Blocks registered in the prefix cache, held or free.
    pub fn num_cached(&self) -> usize {
        self.cache.entries.len()
    }

    /// Cached blocks nobody holds (they count in `num_free`).
    pub fn num_cached_free(&self) -> usize {
        self.cache.cached_free.len()
    }

    /// Cached blocks evicted since the pool was made.
    pub fn num_evictions(&self) -> u64 {
        self.cache.evictions
    }

    /// Checks the pool's bookkeeping: each block is exactly one of uncached-free, cached-free
    /// and held; the cache's maps and eviction sets agree. O(blocks). For tests.
    pub fn validate(&self) -> Result<(), String> {
        let mut on_free_list = vec![false; self.num_blocks()];
        for id in &self.free {
            let b = id.0 as usize;
            if on_free_list[b] || self.ref_counts[b] != 0 || self.cache.is_cached(*id) {
                return Err(format!("{id} is on the free list twice, held or cached"));
            }
            on_free_list[b] = true;
        }
        for (b, rc) in self.ref_counts.iter().enumerate() {
            let id = BlockId(b as u32);
            if *rc == 0 && !on_free_list[b] && !self.cache.is_cached(id) {
                return Err(format!("{id} is leaked: free but on no list"));
            }
        }
        self.cache.validate(&self.ref_counts)
    }
}

/// One sequence's logical → physical block mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    /// Logical block i → its physical block; the first `holes` are [`BlockId::HOLE`].
    blocks: Vec<BlockId>,
    /// Leading entries given back by `release_front` (never read again).
    holes: usize,
    /// Tokens whose KV the table has room for and that the sequence has claimed.
    num_tokens: usize,
}

impl BlockTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every logical block in order, [`BlockId::HOLE`] where one was given back (only
    /// leading entries): ceil(num_tokens / block_size) entries.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// The blocks the table holds (a reference each): `blocks()` without its leading holes.
    pub fn held_blocks(&self) -> &[BlockId] {
        &self.blocks[self.holes..]
    }

    /// Leading logical blocks given back by [`BlockTable::release_front`].
    pub fn num_holes(&self) -> usize {
        self.holes
    }

    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Blocks a sequence of `num_tokens` tokens needs: ceil(num_tokens / block_size).
    pub fn blocks_needed(num_tokens: usize, block_size: usize) -> usize {
        num_tokens.div_ceil(block_size)
    }

    /// Grows the table to hold `num_tokens` tokens, allocating only the blocks it crosses into.
    /// All-or-nothing: on `OutOfBlocks` nothing was allocated. For a table that may share its
    /// last block (after `fork`), this refuses with `SharedLastBlock` rather than let two
    /// sequences write one block; use [`BlockTable::prepare_append`] there.
    pub fn grow_to(&mut self, pool: &mut BlockPool, num_tokens: usize) -> Result<(), KvError> {
        if let Some(shared) = self.copy_needed(pool, num_tokens) {
            return Err(KvError::SharedLastBlock(shared));
        }
        self.prepare_append(pool, num_tokens).map(|_| ())
    }

    /// The shared block that appending up to `new_len` tokens would have to copy first: the
    /// last block, when it is partly filled, held by another table too, and the table grows.
    /// O(1).
    pub fn copy_needed(&self, pool: &BlockPool, new_len: usize) -> Option<BlockId> {
        let last = *self.blocks.last()?;
        let partial = !self.num_tokens.is_multiple_of(pool.block_size());
        // A hole is never the partly filled last block (release_front and truncate see to
        // it), and holds nothing to copy.
        let shared = !last.is_hole() && pool.ref_count(last) > 1;
        (new_len > self.num_tokens && partial && shared).then_some(last)
    }

    /// Makes room for `new_len` tokens (a no-op if the table already holds that many).
    /// Copy-on-write: if the partly filled last block is shared, a fresh block replaces it in
    /// this table, the table drops its reference to the shared one, and the returned
    /// [`BlockCopy`] must run before anything is written or read through the new block.
    /// Then allocates the blocks the new tokens cross into.
    /// All-or-nothing: on `OutOfBlocks` (needing the copy's block plus the new ones) the table
    /// and the pool are unchanged. O(1 + blocks allocated).
    pub fn prepare_append(
        &mut self,
        pool: &mut BlockPool,
        new_len: usize,
    ) -> Result<Option<BlockCopy>, KvError> {
        let copy_src = self.copy_needed(pool, new_len);
        debug_assert!(
            new_len <= self.num_tokens
                || self.num_tokens.is_multiple_of(pool.block_size())
                || self.blocks.len() > self.holes,
            "appending into a released block"
        );
        let need = Self::blocks_needed(new_len, pool.block_size());
        let extra = need.saturating_sub(self.blocks.len());
        let wanted = extra + usize::from(copy_src.is_some());
        if wanted > pool.num_free() {
            return Err(KvError::OutOfBlocks {
                needed: wanted,
                free: pool.num_free(),
                total: pool.num_blocks(),
            });
        }
        let copy = match copy_src {
            Some(src) => {
                let dst = pool.allocate()?;
                *self
                    .blocks
                    .last_mut()
                    .expect("copy_needed implies a last block") = dst;
                pool.release(src)?;
                Some(BlockCopy { src, dst })
            }
            None => None,
        };
        for _ in 0..extra {
            self.blocks.push(pool.allocate()?);
        }
        self.num_tokens = self.num_tokens.max(new_len);
        Ok(copy)
    }

    /// A second table sharing every block of this one (each block's ref count goes up by one);
    /// the first of the two to append into the partly filled last block copies it.
    /// O(blocks). On error (a block this table lists is not held: a table out of sync with its
    /// pool) nothing was retained.
    /// Holes are copied as holes: neither table will read those positions again.
    pub fn fork(&self, pool: &mut BlockPool) -> Result<BlockTable, KvError> {
        let held = self.held_blocks();
        for (i, id) in held.iter().enumerate() {
            if let Err(e) = pool.retain(*id) {
                for done in &held[..i] {
                    pool.release(*done)?;
                }
                return Err(e);
            }
        }
        Ok(self.clone())
    }

    /// Starts an empty table with cached blocks (a prefix-cache hit): each one's ref count goes
    /// up by one and the table holds `blocks.len() × block_size` tokens. All-or-nothing.
    /// O(blocks × log n).
    pub fn adopt_cached(
        &mut self,
        pool: &mut BlockPool,
        blocks: &[BlockId],
    ) -> Result<(), KvError> {
        if !self.blocks.is_empty() {
            return Err(KvError::TableNotEmpty);
        }
        if let Some(b) = blocks.iter().find(|b| !pool.is_cached(**b)) {
            return Err(KvError::NotCached(*b));
        }
        for b in blocks {
            pool.acquire_cached(*b)?;
        }
        self.blocks = blocks.to_vec();
        self.num_tokens = blocks.len() * pool.block_size();
        Ok(())
    }

    /// Shrinks the table to `num_tokens` tokens, releasing the blocks past
    /// ceil(num_tokens / block_size) (a no-op if it holds no more). Refused with `EndsInHole`
    /// (nothing changes) where the new last block would be a partly filled hole; truncating
    /// to 0 always works. O(blocks released).
    pub fn truncate(&mut self, pool: &mut BlockPool, num_tokens: usize) -> Result<(), KvError> {
        if num_tokens >= self.num_tokens {
            return Ok(());
        }
        let bs = pool.block_size();
        let keep = Self::blocks_needed(num_tokens, bs);
        if !num_tokens.is_multiple_of(bs) && keep <= self.holes {
            return Err(KvError::EndsInHole { tokens: num_tokens });
        }
        for id in self.blocks.drain(keep..) {
            if !id.is_hole() {
                pool.release(id)?;
            }
        }
        self.holes = self.holes.min(keep);
        self.num_tokens = num_tokens;
        Ok(())
    }

    /// Gives back the blocks before logical block `upto` that it still holds (one reference
    /// each, so a shared or cached block lives on) and leaves holes in their place: positions
    /// keep their logical blocks, and no slot in a hole is ever handed out again. Only full
    /// blocks: `upto` is capped at num_tokens / block_size. Returns how many it released.
    /// O(blocks released).
    pub fn release_front(&mut self, pool: &mut BlockPool, upto: usize) -> Result<usize, KvError> {
        let upto = upto.min(self.num_tokens / pool.block_size());
        let mut released = 0;
        while self.holes < upto {
            let id = std::mem::replace(&mut self.blocks[self.holes], BlockId::HOLE);
            if let Err(e) = pool.release(id) {
                self.blocks[self.holes] = id;
                return Err(e);
            }
            self.holes += 1;
            released += 1;
        }
        Ok(released)
    }

    /// KV slot of the token at `position`: block_id * block_size + position % block_size.
    /// `None` past the table's tokens or in a hole.
    pub fn slot(&self, position: usize, block_size: usize) -> Option<u32> {
        if position >= self.num_tokens {
            return None;
        }
        let block = self.blocks.get(position / block_size)?;
        if block.is_hole() {
            return None;
        }
        Some(block.0 * block_size as u32 + (position % block_size) as u32)
    }

    /// Returns every held block to the pool (holes hold nothing); the table becomes empty.
    pub fn release(&mut self, pool: &mut BlockPool) -> Result<(), KvError> {
        for id in self.blocks.drain(..) {
            if !id.is_hole() {
                pool.release(id)?;
            }
        }
        self.holes = 0;
        self.num_tokens = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;
