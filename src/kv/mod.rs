//! The paged KV cache's CPU side: a pool of fixed-size blocks and per-sequence block tables.
//!
//! Pure logic, no GPU types. Invariants (checked by the property tests):
//! - every block is either on the free list (ref count 0) or held (ref count ≥ 1), never both;
//! - free + held = total;
//! - a block table holds exactly ceil(num_tokens / block_size) blocks, so only its last block
//!   may be partly empty, and every token's slot lies in one of its own blocks.
//!
//! Costs: allocate is O(1) (pop the free list), free is O(1) (push it back).

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
    /// All-or-nothing: on `OutOfBlocks` nothing was allocated.
    pub fn grow_to(&mut self, pool: &mut BlockPool, num_tokens: usize) -> Result<(), KvError> {
        let need = Self::blocks_needed(num_tokens, pool.block_size());
        let extra = need.saturating_sub(self.blocks.len());
        if extra > pool.num_free() {
            return Err(KvError::OutOfBlocks {
                needed: extra,
                free: pool.num_free(),
                total: pool.num_blocks(),
            });
        }
        for _ in 0..extra {
            self.blocks.push(pool.allocate()?);
        }
        self.num_tokens = self.num_tokens.max(num_tokens);
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
