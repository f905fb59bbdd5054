//! `shaders/logit_adjust.wgsl`: grammar masks and `logit_bias` on the GPU sampling path, so a
//! constrained or biased row is still picked on the GPU (one id read back, not its logits).
//!
//! It runs on the logits right before the argmax (and the sampler). Per row, a [`RowAdjust`]
//! names an optional allowed-token mask in the `masks` words (a cleared bit makes that logit
//! -inf) and a range of [`TokenBias`] entries, added after the mask. Rows without either keep
//! their logits bit for bit.

pub use crate::batch::{NO_MASK, RowAdjust, TokenBias};
use crate::gpu::GpuContext;
use crate::gpu::pipeline::{Kernel, LOGIT_ADJUST};

/// Threads per workgroup (one column each).
const WG: usize = 256;

/// The most workgroups in one grid dimension.
const MAX_GROUPS: usize = 65535;

pub struct LogitAdjust {
    kernel: Kernel,
}

impl LogitAdjust {
    pub fn new(ctx: &GpuContext) -> Self {
        Self {
            kernel: Kernel::new(ctx, LOGIT_ADJUST, &[("WG", WG as f64)]),
        }
    }

    /// `logits`: f32 (rows, vocab), changed in place; `row_adjust`: a [`RowAdjust`] per row;
    /// `masks`: u32 words the rows' `mask_offset`s point into (each mask vocab / 32 words,
    /// rounded up); `biases`: [`TokenBias`] entries, each row's range sorted by token with no
    /// duplicates ([`pack_biases`]). wgpu binds no empty buffer: pass at least one word to
    /// `masks` and one entry to `biases` even when no row uses them.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        logits: &wgpu::Buffer,
        row_adjust: &wgpu::Buffer,
        masks: &wgpu::Buffer,
        biases: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[logits, row_adjust, masks, biases])
    }

    /// Any `rows` and `vocab` (the grid is capped at 65535 × 65535 workgroups and the threads
    /// loop over the rest), as long as rows × vocab < 2^32. Records nothing when either is 0.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        rows: usize,
        vocab: usize,
    ) {
        debug_assert!((rows as u64) * (vocab as u64) <= u32::MAX as u64);
        let imm = [rows as u32, vocab as u32];
        self.kernel.dispatch(pass, bg, &imm, grid(rows, vocab));
    }
}

/// Workgroups for `rows` × `vocab`: column chunks along x, rows along y, each capped.
fn grid(rows: usize, vocab: usize) -> [u32; 3] {
    [
        vocab.div_ceil(WG).min(MAX_GROUPS) as u32,
        rows.min(MAX_GROUPS) as u32,
        1,
    ]
}

/// Packs per-row `logit_bias` lists for the kernel: each row's list is merged
/// ([`crate::sampling::merge_biases`]: sorted by token, duplicate tokens summed) and appended
/// to one entry list. Returns one [`RowAdjust`] per row (no mask: `mask_offset` is
/// [`NO_MASK`]; set it for masked rows) pointing at its entries (`bias_count` 0 for an empty
/// list), and the entries. Tokens >= vocab may stay in: the kernel ignores them.
pub fn pack_biases(per_row: &[&[(u32, f32)]]) -> (Vec<RowAdjust>, Vec<TokenBias>) {
    let mut rows = Vec::with_capacity(per_row.len());
    let mut entries = Vec::new();
    for list in per_row {
        let merged = crate::sampling::merge_biases(list);
        rows.push(RowAdjust {
            mask_offset: NO_MASK,
            bias_start: entries.len() as u32,
            bias_count: merged.len() as u32,
            pad: 0,
        });
        entries.extend(
            merged
                .iter()
                .map(|&(token, bias)| TokenBias { token, bias }),
        );
    }
    (rows, entries)
}

/// What the kernel computes, on `logits` (`rows.len()` rows of `vocab`) in place: per row the
/// mask ([`crate::sampling::apply_mask`]), then the biases ([`crate::sampling::apply_biases`],
/// the CPU sampler's own steps). Panics where the kernel's input contract is broken: a mask
/// past the end of `masks`, a bias range past the end of `biases`, or a row's entries not
/// strictly increasing by token (where the kernel would add only one of two equal tokens).
pub fn reference(
    logits: &mut [f32],
    vocab: usize,
    rows: &[RowAdjust],
    masks: &[u32],
    biases: &[TokenBias],
) {
    for (r, a) in rows.iter().enumerate() {
        let row = &mut logits[r * vocab..(r + 1) * vocab];
        if a.mask_offset != NO_MASK {
            let start = a.mask_offset as usize;
            crate::sampling::apply_mask(row, &masks[start..start + vocab.div_ceil(32)]);
        }
        let start = a.bias_start as usize;
        let entries = &biases[start..start + a.bias_count as usize];
        assert!(
            entries.windows(2).all(|w| w[0].token < w[1].token),
            "row {r}: bias entries must be sorted by token without duplicates"
        );
        let pairs: Vec<(u32, f32)> = entries.iter().map(|b| (b.token, b.bias)).collect();
        crate::sampling::apply_biases(row, &pairs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_biases_merges_and_points_each_row_at_its_entries() {
        let a: &[(u32, f32)] = &[(7, 1.0), (2, 0.5), (7, 2.0)];
        let b: &[(u32, f32)] = &[];
        let c: &[(u32, f32)] = &[(0, -1.0)];
        let (rows, entries) = pack_biases(&[a, b, c]);
        let e = |token, bias| TokenBias { token, bias };
        assert_eq!(entries, vec![e(2, 0.5), e(7, 3.0), e(0, -1.0)]);
        let r = |bias_start, bias_count| RowAdjust {
            mask_offset: NO_MASK,
            bias_start,
            bias_count,
            pad: 0,
        };
        assert_eq!(rows, vec![r(0, 2), r(2, 0), r(2, 1)]);
    }

    #[test]
    fn reference_masks_then_biases_and_leaves_plain_rows_alone() {
        let vocab = 33;
        let nan = f32::from_bits(0x7fc0_0042);
        let mut logits: Vec<f32> = (0..2 * vocab).map(|i| i as f32).collect();
        logits[vocab + 5] = nan;
        // Row 0: tokens 0 and 32 allowed; biases on 0 (allowed), 1 (masked), 40 (>= vocab).
        let masks = [1u32, 1];
        let (mut rows, entries) = pack_biases(&[&[(1, 5.0), (0, 2.0), (40, 1.0)], &[]]);
        rows[0].mask_offset = 0;
        let before = logits.clone();
        reference(&mut logits, vocab, &rows, &masks, &entries);
        assert_eq!(logits[0], 2.0);
        assert_eq!(logits[32], 32.0);
        assert!((1..32).all(|v| logits[v] == f32::NEG_INFINITY));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&logits[vocab..]), bits(&before[vocab..]));
    }

    #[test]
    fn the_grid_covers_any_size_within_the_limits() {
        assert_eq!(grid(1, 1), [1, 1, 1]);
        assert_eq!(grid(3, 49157), [193, 3, 1]);
        assert_eq!(grid(70_000, 1 << 24), [65535, 65535, 1]);
        assert_eq!(grid(0, 5)[1], 0);
    }

    #[test]
    #[should_panic(expected = "sorted by token")]
    fn reference_rejects_unmerged_biases() {
        let entries = [
            TokenBias {
                token: 3,
                bias: 1.0,
            },
            TokenBias {
                token: 3,
                bias: 1.0,
            },
        ];
        let rows = [RowAdjust {
            bias_count: 2,
            ..RowAdjust::default()
        }];
        reference(&mut [0.0; 4], 4, &rows, &[0], &entries);
    }
}
