//! `shaders/copy_blocks.wgsl`: copy-on-write of whole KV blocks inside one layer's K and V pools.
//!
//! A pool is (num_blocks * block_size, kv_dim) elements stored as `u32` words, so a block is a
//! contiguous run of [`words_per_block`] words and the copy never looks at the element type.
//! One dispatch copies every (src, dst) pair of one layer: the pairs live in a storage buffer
//! that the runner fills once per step and binds with each layer's K and V buffers.

use crate::gpu::pipeline::{COPY_BLOCKS, Kernel};
use crate::gpu::{GpuContext, GpuError, WeightDType};

use super::groups_for;

pub struct CopyBlocks {
    kernel: Kernel,
}

impl CopyBlocks {
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            kernel: Kernel::new(ctx, COPY_BLOCKS, &[]),
        }
    }

    /// `pairs`: u32 (P, 2) `[src, dst]` block ids (see [`check_pairs`]); `k_cache`, `v_cache`:
    /// one layer's pools, each (num_blocks * words_per_block) words.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        pairs: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[pairs, k_cache, v_cache])
    }

    /// Copies the first `num_pairs` pairs of the bound pair buffer, `words_per_block` words each.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_pairs: usize,
        words_per_block: usize,
    ) {
        let imm = [num_pairs as u32, words_per_block as u32];
        self.kernel
            .dispatch(pass, bg, &imm, groups_for(num_pairs * words_per_block, 256));
    }
}

/// Words of one block: block_size * kv_dim elements, two f16 or one f32 per word.
/// `kv_dim` must be even (as kv_write needs), so an f16 block is a whole number of words.
pub fn words_per_block(block_size: usize, kv_dim: usize, dtype: WeightDType) -> usize {
    debug_assert!(kv_dim.is_multiple_of(2), "kv_dim {kv_dim} must be even");
    match dtype {
        WeightDType::F32 => block_size * kv_dim,
        WeightDType::F16 => block_size * kv_dim / 2,
    }
}

/// The kernel's contract on its pairs: every id below `num_blocks`, no destination also a
/// source, and a destination listed twice always with the same source. Threads of different
/// pairs run in any order, so breaking it would make the result depend on scheduling.
/// O(P log P).
pub fn check_pairs(pairs: &[[u32; 2]], num_blocks: usize) -> Result<(), GpuError> {
    let bad = |msg: String| {
        Err(GpuError::Shape {
            op: "copy_blocks",
            msg,
        })
    };
    let mut dst_src = std::collections::BTreeMap::new();
    for &[src, dst] in pairs {
        if src as usize >= num_blocks || dst as usize >= num_blocks {
            return bad(format!("pair [{src}, {dst}] outside {num_blocks} blocks"));
        }
        match dst_src.insert(dst, src) {
            Some(prev) if prev != src => {
                return bad(format!(
                    "block {dst} is the destination of {prev} and {src}"
                ));
            }
            _ => {}
        }
    }
    if let Some(&[src, dst]) = pairs.iter().find(|[s, _]| dst_src.contains_key(s)) {
        return bad(format!(
            "block {src} is both copied from (to {dst}) and written"
        ));
    }
    Ok(())
}

/// Copies block `src` over block `dst` in both pools (u32 words), in pair order.
pub fn reference(
    pairs: &[[u32; 2]],
    words_per_block: usize,
    k_cache: &mut [u32],
    v_cache: &mut [u32],
) {
    for &[src, dst] in pairs {
        let (s, d) = (
            src as usize * words_per_block,
            dst as usize * words_per_block,
        );
        k_cache.copy_within(s..s + words_per_block, d);
        v_cache.copy_within(s..s + words_per_block, d);
    }
}
