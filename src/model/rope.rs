//! Rotary position embedding: the angle per position step of each rotated pair of a head,
//! with the family's scaling applied, and the factor that multiplies cos and sin (computed in
//! f32 step by step as transformers does, so the values match its bits; the YaRN ramp bounds
//! in f64 as its Python code computes them).

use super::config::{RopeConfig, RopeScaling};
use crate::gpu::graph::Rotary;

/// The frequencies of the global layers (base θ, with the scaling), or of the sliding-window
/// layers where they have their own base (`local`: base θ_local, unscaled, as Gemma 3).
/// `factors`: per-pair divisors that come with the weights: the GGUF `rope_freqs.weight` for
/// [`RopeScaling::FreqFactors`], LongRoPE's short or long set (chosen at load, see
/// [`RopeScaling::longrope_uses_long`]) for [`RopeScaling::LongRope`].
pub(crate) fn rotary(rope: &RopeConfig, local: bool, factors: Option<&[f32]>) -> Rotary {
    let dim = rope.rotary_dim;
    let theta = match (local, rope.local_theta) {
        (true, Some(t)) => t,
        _ => rope.theta,
    };
    // θ^(2i / dim): pair i turns by its inverse per position.
    let pos_freq = |i: usize| theta.powf((2 * i) as f32 / dim as f32);
    let base = (0..dim / 2).map(|i| 1.0 / pos_freq(i));
    let scaling = if local && rope.local_theta.is_some() {
        &RopeScaling::None
    } else {
        &rope.scaling
    };
    let factor_of = |i: usize| factors.and_then(|x| x.get(i)).copied().unwrap_or(1.0);
    let inv_freq = match *scaling {
        RopeScaling::None => base.collect(),
        RopeScaling::Linear { factor } => base.map(|f| f / factor).collect(),
        RopeScaling::FreqFactors => base.enumerate().map(|(i, f)| f / factor_of(i)).collect(),
        // transformers: 1 / (ext_factors · base^(2i/dim)).
        RopeScaling::LongRope { .. } => (0..dim / 2)
            .map(|i| 1.0 / (factor_of(i) * pos_freq(i)))
            .collect(),
        RopeScaling::Yarn {
            factor,
            original_context,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            let (low, high) = yarn_correction_range(
                beta_fast,
                beta_slow,
                dim,
                f64::from(theta),
                original_context,
                truncate,
            );
            // transformers' linear_ramp_factor: `if min == max: max += 0.001`, then
            // clamp((arange(dim/2) − min) / (max − min), 0, 1) in f32.
            let high = if low == high { high + 0.001 } else { high };
            let span = (high - low) as f32;
            (0..dim / 2)
                .map(|i| {
                    let p = pos_freq(i);
                    let extrapolation = 1.0 / p;
                    let interpolation = 1.0 / (factor * p);
                    let ramp = ((i as f32 - low as f32) / span).clamp(0.0, 1.0);
                    let keep = 1.0 - ramp;
                    interpolation * (1.0 - keep) + extrapolation * keep
                })
                .collect()
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context,
        } => {
            // Wavelengths longer than the original context / low_freq_factor are divided by
            // `factor`; shorter than context / high_freq_factor kept; a linear blend between.
            let context = original_context as f32;
            let low_wavelen = context / low_freq_factor;
            let high_wavelen = context / high_freq_factor;
            base.map(|f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / factor
                } else {
                    let smooth = (context / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * f / factor + smooth * f
                }
            })
            .collect()
        }
    };
    Rotary {
        style: rope.style,
        inv_freq,
        attention_factor: scaling.attention_factor(),
    }
}

/// YaRN's ramp bounds in pair indices (transformers' `find_correction_range`, in f64): the
/// pair that turns `beta_fast` times over the original context, and the one that turns
/// `beta_slow` times; rounded outwards with `truncate`, then clamped to [0, dim − 1].
fn yarn_correction_range(
    beta_fast: f64,
    beta_slow: f64,
    dim: usize,
    theta: f64,
    original_context: usize,
    truncate: bool,
) -> (f64, f64) {
    let correction_dim = |rotations: f64| {
        dim as f64 * (original_context as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    (low.max(0.0), high.min(dim as f64 - 1.0))
}

/// YaRN's default attention factor (transformers' and llama.cpp's `get_mscale`):
/// 0.1 · mscale · ln(factor) + 1, or 1 when the factor is at most 1.
pub(crate) fn yarn_mscale(factor: f64, mscale: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * mscale * factor.ln() + 1.0
    }
}

/// LongRoPE's default attention factor (transformers' and llama.cpp's converter's):
/// sqrt(1 + ln(s) / ln(original)) for a context stretched `s` times, 1 when `s` ≤ 1.
pub(crate) fn longrope_attention_factor(stretch: f64, original_context: usize) -> f64 {
    if stretch <= 1.0 {
        1.0
    } else {
        (1.0 + stretch.ln() / (original_context as f64).ln()).sqrt()
    }
}

#[cfg(test)]
mod tests {
    //! Expected values: transformers 5.25's `_compute_yarn_parameters` /
    //! `_compute_longrope_parameters` on the configs of tests/fixtures/arch/tiny-*-{yarn,
    //! longrope} (printed by scripts/make_rope_scaling_goldens.py).
    use super::*;
    use crate::model::RopeStyle;
    use crate::model::config::LongRopeFactors;

    fn rope(theta: f32, rotary_dim: usize, scaling: RopeScaling) -> RopeConfig {
        RopeConfig {
            theta,
            local_theta: None,
            style: RopeStyle::Half,
            rotary_dim,
            scaling,
        }
    }

    /// Relative error at most 2 f32 ulps (powf may round differently from torch's pow).
    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                ((g - w) / w).abs() <= 2.0 * f32::EPSILON,
                "pair {i}: {g} vs transformers' {w}"
            );
        }
    }

    #[test]
    fn yarn_defaults_match_transformers() {
        // tiny-qwen3-yarn: head_dim 64, θ 1e6, factor 4, original context 64, betas 32/1,
        // truncate: ramp bounds floor(−2.65) → 0 and ceil(5.38) = 6.
        let factor = 4.0;
        let r = rope(
            1e6,
            64,
            RopeScaling::Yarn {
                factor,
                original_context: 64,
                beta_fast: 32.0,
                beta_slow: 1.0,
                truncate: true,
                attention_factor: yarn_mscale(4.0, 1.0) as f32,
            },
        );
        assert_eq!(
            yarn_correction_range(32.0, 1.0, 64, 1e6, 64, true),
            (0.0, 6.0)
        );
        let rot = rotary(&r, false, None);
        assert_close(
            &rot.inv_freq[..9],
            &[
                1.0,
                0.56820893,
                0.31627238,
                0.17115124,
                0.08891397,
                0.043304328,
                0.018747354,
                0.012174188,
                0.007905695,
            ],
        );
        assert_close(&rot.inv_freq[31..], &[3.8498163e-07]);
        // transformers' attention_scaling 1.138629436111989, as f32.
        assert_eq!(rot.attention_factor, 1.1386294);
    }

    #[test]
    fn yarn_fractional_ramp_matches_transformers() {
        // tiny-qwen2-yarn: head_dim 32, θ 1e4, factor 3, original 128, betas 8/2, truncate
        // false (ramp from 1.62 to 4.03), explicit attention factor 1.25.
        let r = rope(
            1e4,
            32,
            RopeScaling::Yarn {
                factor: 3.0,
                original_context: 128,
                beta_fast: 8.0,
                beta_slow: 2.0,
                truncate: false,
                attention_factor: 1.25,
            },
        );
        let rot = rotary(&r, false, None);
        assert_close(
            &rot.inv_freq,
            &[
                1.0,
                0.56234133,
                0.28329158,
                0.110078916,
                0.034219198,
                0.01874471,
                0.010540925,
                0.005927598,
                0.0033333334,
                0.0018744711,
                0.0010540927,
                0.0005927598,
                0.00033333333,
                0.0001874471,
                0.00010540926,
                5.9275986e-05,
            ],
        );
        assert_eq!(rot.attention_factor, 1.25);
    }

    #[test]
    fn longrope_matches_transformers_for_both_factor_sets() {
        // tiny-phi3-longrope: head_dim 16 × partial 0.75 = 12 rotated dims, θ 1e4, original
        // context 32 in a 512-token model: attention factor sqrt(1 + ln 16 / ln 32).
        let factors = LongRopeFactors {
            short: vec![1.2973, 1.0348, 1.3788, 1.3272, 1.159, 1.4047],
            long: vec![1.4118, 2.7164, 3.7165, 4.1799, 6.7307, 7.3063],
        };
        let attention = longrope_attention_factor(512.0 / 32.0, 32);
        assert!((attention - 1.3416407864998738).abs() < 1e-15);
        let scaling = RopeScaling::LongRope {
            factors: Some(factors.clone()),
            original_context: 32,
            attention_factor: attention as f32,
        };
        assert!(!scaling.longrope_uses_long(32));
        assert!(scaling.longrope_uses_long(33));
        let r = rope(1e4, 12, scaling);
        let short = rotary(&r, false, Some(&factors.short));
        assert_close(
            &short.inv_freq,
            &[
                0.77083176,
                0.20819815,
                0.03366397,
                0.0075346595,
                0.0018588733,
                0.00033043278,
            ],
        );
        let long = rotary(&r, false, Some(&factors.long));
        assert_close(
            &long.inv_freq,
            &[
                0.7083156,
                0.07931212,
                0.012489137,
                0.0023924017,
                0.00032009068,
                6.352859e-05,
            ],
        );
        assert_eq!(short.attention_factor, 1.3416408);
        assert_eq!(long.attention_factor, 1.3416408);
    }

    #[test]
    fn unscaled_families_keep_an_attention_factor_of_one() {
        let r = rope(1e4, 8, RopeScaling::None);
        let rot = rotary(&r, false, None);
        assert_eq!(rot.attention_factor, 1.0);
        assert_eq!(rot.inv_freq[0], 1.0);
        // Gemma 3's sliding layers: own base, never scaled.
        let mut r = rope(
            1e6,
            8,
            RopeScaling::Yarn {
                factor: 8.0,
                original_context: 64,
                beta_fast: 32.0,
                beta_slow: 1.0,
                truncate: true,
                attention_factor: 1.2,
            },
        );
        r.local_theta = Some(1e4);
        let local = rotary(&r, true, None);
        assert_eq!(local.attention_factor, 1.0);
        assert_eq!(local.inv_freq[1], 1.0 / 1e4f32.powf(0.25));
    }

    #[test]
    fn yarn_default_attention_factor_is_mscale() {
        assert_eq!(yarn_mscale(1.0, 1.0), 1.0);
        assert_eq!(yarn_mscale(0.5, 1.0), 1.0);
        assert!((yarn_mscale(4.0, 1.0) - 1.138629436111989).abs() < 1e-15);
        assert_eq!(longrope_attention_factor(1.0, 4096), 1.0);
    }
}
