//! `shaders/feed_tokens.wgsl`: a step scheduled while the step before it still runs takes
//! the tokens that step picks straight from its `ids` buffer, so the CPU never waits for
//! them before submitting (see [`crate::batch::StepBatch::feed_from_previous_step`]).

use crate::batch::FED_TOKEN;
use crate::gpu::GpuContext;
use crate::gpu::pipeline::{FEED_TOKENS, Kernel};

const WG: usize = 64;

pub struct FeedTokens {
    kernel: Kernel,
}

impl FeedTokens {
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            kernel: Kernel::new(ctx, FEED_TOKENS, &[]),
        }
    }

    /// `token_ids`: u32 (T), rewritten in place; `ids`: u32, the previous step's picks.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        token_ids: &wgpu::Buffer,
        ids: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[token_ids, ids])
    }

    /// Resolves the marks among the first `num_tokens` ids against `num_ids` picks.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_tokens: usize,
        num_ids: usize,
    ) {
        let imm = [num_tokens as u32, num_ids as u32];
        let groups = num_tokens.div_ceil(WG) as u32;
        self.kernel.dispatch(pass, bg, &imm, [groups, 1, 1]);
    }
}

/// What the kernel computes: marked ids replaced by the pick they name (0 past `ids`).
pub fn reference(token_ids: &[u32], ids: &[u32]) -> Vec<u32> {
    token_ids
        .iter()
        .map(|&t| {
            if t & FED_TOKEN == 0 {
                t
            } else {
                ids.get((t & !FED_TOKEN) as usize).copied().unwrap_or(0)
            }
        })
        .collect()
}
