//! `shaders/sample.wgsl`: random sampling on the GPU (temperature → top-k → top-p → min-p →
//! draw), so a sampled step reads back one id per sequence instead of its logits row.
//!
//! It runs after [`super::Argmax`] on the same `ids`: greedy rows keep the argmax, and so do
//! rows whose maximum is infinite (as [`crate::sampling::Sampler`] falls back to argmax there).
//! It picks what `Sampler::sample` picks without penalties (the same algorithm, see
//! [`crate::sampling`]): an exponential race over per-token hashes of the row's key, with
//! top-p masses in fixed point (2^-24 of the maximum's weight) summed exactly. So a row's pick
//! depends only on its logits and its
//! [`RowSampling`], never on the batch around it or on the reduction order.
//!
//! The CPU reference is [`crate::sampling`]'s algorithm, which the CPU [`crate::sampling::Sampler`]
//! also runs, split like the kernel's phases — [`weights`], [`kept`], [`race`] — so a test can
//! run the selection and the race on the weights the GPU wrote (exp and ln may differ by ulps
//! between the two). The kernel finds the kept prefix by radix selection; the reference sorts.

use crate::gpu::GpuContext;
use crate::gpu::pipeline::{Kernel, SAMPLE, grid_2d};
use crate::sampling::RowSampling;
pub use crate::sampling::{Race, kept, race, weights};

/// Threads per row. A power of two (the shader reduces in a tree); the 256-bin histograms are
/// cleared and filled by all of them.
pub(crate) const WG: usize = 256;

/// The largest workgroup [`Sample::with_workgroup`] takes (WebGPU's default invocation limit).
pub const MAX_WORKGROUP: usize = 256;

/// The largest vocabulary the kernel takes: the tie selection radixes over 24 bits of the id.
pub const MAX_VOCAB: usize = 1 << 24;

pub struct Sample {
    kernel: Kernel,
}

impl Sample {
    /// WG threads per row on the GPU kernel forms; 64 on the CPU forms, where every thread of a
    /// workgroup costs CPU time (the pick is the same).
    pub fn new(ctx: &GpuContext) -> Self {
        Self::with_workgroup(ctx, ctx.profile.sample_workgroup)
    }

    /// The kernel with `wg` threads per row (a power of two, at most [`MAX_WORKGROUP`]). The
    /// picks and weights do not depend on it; a smaller one is cheaper where every thread of a
    /// workgroup costs CPU time (lavapipe), which the tests use for their largest dispatch.
    pub fn with_workgroup(ctx: &GpuContext, wg: usize) -> Self {
        assert!(
            wg.is_power_of_two() && wg <= MAX_WORKGROUP,
            "sample: workgroup size {wg} is not a power of two <= {MAX_WORKGROUP}"
        );
        Self {
            kernel: Kernel::new(ctx, SAMPLE, &[("WG", wg as f64)]),
        }
    }

    /// `logits`: f32 (rows, vocab), read_write: a sampled row's logits are replaced by its
    /// weights exp((l - max) / T). `ids`: u32 (rows), read_write: the argmax on entry, a sampled
    /// row's pick on exit. `params`: [`RowSampling`] (rows), a storage buffer.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        logits: &wgpu::Buffer,
        ids: &wgpu::Buffer,
        params: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        self.kernel.bind(ctx, &[logits, ids, params])
    }

    /// One workgroup per row. Panics when `vocab` > [`MAX_VOCAB`].
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        rows: usize,
        vocab: usize,
    ) {
        assert!(
            vocab <= MAX_VOCAB,
            "sample: vocab {vocab} > {MAX_VOCAB} (ids are selected on 24 bits)"
        );
        let imm = [rows as u32, vocab as u32];
        self.kernel.dispatch(pass, bg, &imm, grid_2d(rows as u32));
    }
}

/// The token the kernel picks for each row of `logits` (rows, vocab), given `ids_in` (the
/// argmax, which greedy rows and rows with an infinite maximum keep).
pub fn reference(logits: &[f32], vocab: usize, params: &[RowSampling], ids_in: &[u32]) -> Vec<u32> {
    assert!(vocab > 0, "vocab 0");
    logits
        .chunks(vocab)
        .zip(params)
        .zip(ids_in)
        .map(|((row, p), &id)| match weights(row, p) {
            Some(w) => race(&w, &kept(&w, p), p.key).winner,
            None => id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> RowSampling {
        RowSampling {
            temperature: t,
            key: [7, 9],
            ..Default::default()
        }
    }

    #[test]
    fn greedy_one_token_and_infinite_rows_keep_their_id() {
        let p = params(1.0);
        let logits = [1.0, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0, f32::INFINITY, 1.0];
        let greedy = RowSampling {
            temperature: f32::NAN,
            ..p
        };
        assert_eq!(
            reference(&logits, 3, &[greedy, p, p], &[40, 41, 42]),
            vec![40, reference(&logits[3..6], 3, &[p], &[0])[0], 42]
        );
        assert_eq!(reference(&[5.0], 1, &[p], &[3]), vec![3]);
        let nothing = [f32::NAN, f32::NEG_INFINITY];
        assert_eq!(weights(&nothing, &p), None);
    }

    #[test]
    fn weights_are_one_at_the_maximum_and_zero_at_minus_infinity() {
        let w = weights(&[f32::NAN, 2.0, f32::NEG_INFINITY, 1.0], &params(0.5)).unwrap();
        assert_eq!(w, vec![0.0, 1.0, 0.0, (-2.0f32).exp()]);
        let hot = weights(&[f32::NEG_INFINITY, 3.0, 1.0], &params(f32::INFINITY)).unwrap();
        assert_eq!(hot, vec![0.0, 1.0, 1.0]);
    }

    #[test]
    fn kept_is_a_rank_prefix_then_min_p() {
        // Rank order 1, 0, 3, 2, 4 (0 and 3 tie: lower id first); masses 2^24 · (1, 0.5, 0.5,
        // 0.25, 0) in that order.
        let w = [0.5, 1.0, 0.25, 0.5, 0.0];
        let k = |top_k, top_p, min_p| {
            kept(
                &w,
                &RowSampling {
                    top_k,
                    top_p,
                    min_p,
                    ..params(1.0)
                },
            )
        };
        // Neither top-k nor top-p: id order (the race does not depend on it).
        assert_eq!(k(0, 1.0, 0.0), vec![0, 1, 2, 3]);
        assert_eq!(k(2, 1.0, 0.0), vec![1, 0]);
        assert_eq!(k(5, 1.0, 0.0), vec![0, 1, 2, 3]);
        // Total 2.25: p = 0.5 needs 1.125 → two tokens; 0.4 needs 0.9 → one.
        assert_eq!(k(0, 0.5, 0.0), vec![1, 0]);
        assert_eq!(k(0, 0.4, 0.0), vec![1]);
        // Exactly reached: p = 8/9 needs 2.0 → three tokens.
        assert_eq!(k(0, 8.0 / 9.0, 0.0), vec![1, 0, 3]);
        // Within the top 2 (mass 1.5), p = 0.7 needs 1.05 → two.
        assert_eq!(k(2, 0.7, 0.0), vec![1, 0]);
        // top_p <= 0: the first token.
        assert_eq!(k(0, 0.0, 0.0), vec![1]);
        assert_eq!(k(0, 1.0, 0.5), vec![0, 1, 3]);
        assert_eq!(k(0, 1.0, 7.0), vec![1]);
    }

    #[test]
    fn the_race_picks_each_token_in_proportion_to_its_weight() {
        let w = [1.0, 0.5, 0.25, 0.0];
        let all = [0, 1, 2, 3];
        let n = 40_000;
        let mut counts = [0usize; 4];
        for key in 0..n {
            counts[race(&w, &all, [key, key / 3]).winner as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        for (i, want) in [4.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0].iter().enumerate() {
            let f = counts[i] as f64 / n as f64;
            let se = (want * (1.0 - want) / n as f64).sqrt();
            assert!((f - want).abs() < 4.5 * se, "token {i}: {f} vs {want}");
        }
    }

    /// The shader's `neg_log`, transcribed: it replaces the built-in `log`, whose absolute error
    /// near 1 would be a large relative error in the small E that win races.
    fn neg_log_wgsl(u: f32) -> f32 {
        let b = u.to_bits();
        let mut n = (b >> 23) as i32 - 127;
        let mut m = f32::from_bits((b & 0x007f_ffff) | 0x3f80_0000);
        if m > std::f32::consts::SQRT_2 {
            m *= 0.5;
            n += 1;
        }
        let s = (m - 1.0) / (m + 1.0);
        let z = s * s;
        let series = 1.0
            + z * (1.0 / 3.0
                + z * (1.0 / 5.0
                    + z * (1.0 / 7.0 + z * (1.0 / 9.0 + z * (1.0 / 11.0 + z * (1.0 / 13.0))))));
        let ln_m = 2.0 * s * series;
        let nf = n as f32;
        let (hi, lo) = (f32::from_bits(0x3f31_7180), f32::from_bits(0x3717_f7d1));
        -(nf * hi + (nf * lo + ln_m))
    }

    #[test]
    fn the_shaders_neg_log_is_within_a_few_ulps_for_every_u() {
        let mut worst = 0.0f64;
        for k in 0..1u32 << 23 {
            let u = crate::sampling::race_uniform(k << 9);
            assert_eq!(u as f64, (k as f64 + 0.5) / 8_388_608.0);
            let got = neg_log_wgsl(u) as f64;
            let want = -(u as f64).ln();
            assert!(got > 0.0, "u = {u}");
            let ulp = f32::from_bits((want as f32).to_bits() + 1) as f64 - (want as f32) as f64;
            worst = worst.max((got - want).abs() / ulp);
        }
        assert!(worst <= 4.0, "neg_log off by {worst} ulps");
    }
}
