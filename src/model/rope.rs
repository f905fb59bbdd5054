//! Rotary position embedding: the angle per position step of each rotated pair of a head,
//! with the family's scaling applied (computed in f32, as transformers does).

use super::config::{RopeConfig, RopeScaling};
use crate::gpu::graph::Rotary;

/// The frequencies of the global layers (base θ, with the scaling), or of the sliding-window
/// layers where they have their own base (`local`: base θ_local, unscaled, as Gemma 3).
/// `factors`: the GGUF `rope_freqs.weight` divisors, for [`RopeScaling::FreqFactors`].
pub(crate) fn rotary(rope: &RopeConfig, local: bool, factors: Option<&[f32]>) -> Rotary {
    let dim = rope.rotary_dim;
    let theta = match (local, rope.local_theta) {
        (true, Some(t)) => t,
        _ => rope.theta,
    };
    // Pair i turns by θ^(−2i / dim) per position.
    let base = (0..dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32));
    let scaling = if local && rope.local_theta.is_some() {
        &RopeScaling::None
    } else {
        &rope.scaling
    };
    let inv_freq = match *scaling {
        RopeScaling::None => base.collect(),
        RopeScaling::Linear { factor } => base.map(|f| f / factor).collect(),
        RopeScaling::FreqFactors => base
            .enumerate()
            .map(|(i, f)| f / factors.and_then(|x| x.get(i)).copied().unwrap_or(1.0))
            .collect(),
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
    }
}
