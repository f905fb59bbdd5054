//! The paged KV cache's CPU side: a pool of fixed-size blocks and per-sequence block tables.
//!
//! Pure logic, no GPU types. Invariants (checked by the property tests):
//! - every block is either on the free list (ref count 0) or held (ref count ≥ 1), never both;
//! - free + held = total;
//! - a block's ref count is its number of holders: the tables that list it, plus any caller that
//!   retained it directly (the scheduler keeps a copy's source alive until the copy has run);
//! - a block table holds exactly ceil(num_tokens / block_size) blocks, so only its last block
//!   may be partly empty, and every token's slot lies in one of its own blocks;
//! - a table never writes into a block another table also holds: full blocks are never written
//!   again, and appending into a shared, partly filled last block first copies it (copy-on-write).
//!
//! Costs: allocate is O(1) (pop the free list), release is O(1) (push it back), retain is O(1);
//! `BlockTable::fork` and `release` are O(blocks of the table); `grow_to`, `prepare_append` and
//! `truncate` are O(blocks allocated or released), plus O(1) for a copy-on-write.

use std::fmt;

/// Physical block index in the KV pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block {}", self.0)
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
    /// `grow_to` would write into a partly filled last block that another table shares;
    /// use `prepare_append`, which copies it first.
    #[error("{0} is shared: appending to it needs a copy-on-write (use prepare_append)")]
    SharedLastBlock(BlockId),
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

/// A fixed pool of physical blocks with reference counts.
#[derive(Debug, Clone)]
pub struct BlockPool {
    block_size: usize,
    /// Free blocks; the next allocation pops the last one.
    free: Vec<BlockId>,
    /// Holders of each block (0 = free).
    ref_counts: Vec<u32>,
}

impl BlockPool {
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self, KvError> {
        check_block_size(block_size)?;
        Ok(Self {
            block_size,
            // Reverse order so block 0 is handed out first (only cosmetic).
            free: (0..num_blocks as u32).rev().map(BlockId).collect(),
            ref_counts: vec![0; num_blocks],
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.ref_counts.get(id.0 as usize).copied().unwrap_or(0)
    }

    /// Takes a free block (ref count becomes 1).
    pub fn allocate(&mut self) -> Result<BlockId, KvError> {
        let id = self.free.pop().ok_or(KvError::OutOfBlocks {
            needed: 1,
            free: 0,
            total: self.num_blocks(),
        })?;
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
                    self.free.push(id);
                }
                Ok(())
            }
            _ => Err(KvError::NotHeld(id)),
        }
    }
}

/// One sequence's logical → physical block mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
    /// Tokens whose KV the table has room for and that the sequence has claimed.
    num_tokens: usize,
}

impl BlockTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
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
        let partial = self.num_tokens % pool.block_size() != 0;
        (new_len > self.num_tokens && partial && pool.ref_count(last) > 1).then_some(last)
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
    pub fn fork(&self, pool: &mut BlockPool) -> Result<BlockTable, KvError> {
        for (i, id) in self.blocks.iter().enumerate() {
            if let Err(e) = pool.retain(*id) {
                for done in &self.blocks[..i] {
                    pool.release(*done)?;
                }
                return Err(e);
            }
        }
        Ok(self.clone())
    }

    /// Shrinks the table to `num_tokens` tokens, releasing the blocks past
    /// ceil(num_tokens / block_size) (a no-op if it holds no more). O(blocks released).
    pub fn truncate(&mut self, pool: &mut BlockPool, num_tokens: usize) -> Result<(), KvError> {
        if num_tokens >= self.num_tokens {
            return Ok(());
        }
        let keep = Self::blocks_needed(num_tokens, pool.block_size());
        for id in self.blocks.drain(keep..) {
            pool.release(id)?;
        }
        self.num_tokens = num_tokens;
        Ok(())
    }

    /// KV slot of the token at `position`: block_id * block_size + position % block_size.
    pub fn slot(&self, position: usize, block_size: usize) -> Option<u32> {
        if position >= self.num_tokens {
            return None;
        }
        let block = self.blocks.get(position / block_size)?;
        Some(block.0 * block_size as u32 + (position % block_size) as u32)
    }

    /// Returns every block to the pool; the table becomes empty.
    pub fn release(&mut self, pool: &mut BlockPool) -> Result<(), KvError> {
        for id in self.blocks.drain(..) {
            pool.release(id)?;
        }
        self.num_tokens = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
