//! The runner's side of the KV host tier: whole blocks of every layer's pools read to and
//! written from host images (see [`crate::gpu::kv_transfer`]).

use super::Runner;
use crate::gpu::GpuError;
use crate::gpu::kv_transfer::{BlockGeometry, BlockReadback, read_blocks, write_blocks};

impl Runner {
    /// The geometry of this runner's KV blocks (and so of their host images).
    pub fn kv_block_geometry(&self) -> BlockGeometry {
        BlockGeometry {
            block_size: self.rc.block_size,
            kv_dim: self.attention_shape.kv_dim(),
            dtype: self.rc.kv_dtype,
            num_blocks: self.rc.num_blocks,
            layers: self.k_pools.len(),
        }
    }

    /// Starts copying `blocks` to the host (see [`read_blocks`]): submitted now, so it sees
    /// every step submitted before and no write made after.
    pub fn read_kv_blocks(&mut self, blocks: &[u32]) -> Result<BlockReadback, GpuError> {
        let geo = self.kv_block_geometry();
        read_blocks(
            &self.ctx,
            &self.k_pools,
            &self.v_pools,
            self.kv_storage,
            geo,
            blocks,
        )
    }

    /// Restores host images into blocks (see [`write_blocks`]): submitted now, so it lands
    /// after every read submitted before and before the next step.
    pub fn write_kv_blocks(&mut self, writes: &[(u32, &[u8])]) -> Result<(), GpuError> {
        let geo = self.kv_block_geometry();
        write_blocks(
            &self.ctx,
            &self.k_pools,
            &self.v_pools,
            self.kv_storage,
            geo,
            writes,
        )
    }
}
