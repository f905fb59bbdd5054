//! The draw the CPU [`super::Sampler`] and the GPU (shaders/sample.wgsl) share: the weights of
//! a row, the kept prefix (top-k, top-p in exact fixed point, min-p) and the exponential race
//! keyed per token, plus [`RowSampling`], the per-row parameters the GPU reads.

/// What the GPU sampler (shaders/sample.wgsl) needs for one logits row: the distribution's
/// shape and the key of this draw. The default is greedy: the row keeps the GPU's argmax.
///
/// The GPU draws by an exponential race: every kept token i gets E_i = -ln(u_i), with u_i a
/// hash of (key, i), and the token with the largest w_i / E_i wins, which picks i with
/// probability w_i / Σw. So one key per token replaces the CPU's one uniform draw, and a row's
/// pick depends on nothing but its logits and its key.
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct RowSampling {
    /// ≤ 0 (or NaN): greedy, the row keeps its argmax.
    pub temperature: f32,
    /// 0 or ≥ vocab: off.
    pub top_k: u32,
    /// ≥ 1: off.
    pub top_p: f32,
    /// 0: off.
    pub min_p: f32,
    /// The draw's key (a u64 from the sequence's stream), low word first.
    pub key: [u32; 2],
    pub _pad: [u32; 2],
}

impl Default for RowSampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            key: [0; 2],
            _pad: [0; 2],
        }
    }
}

impl RowSampling {
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0
    }

    pub fn key_u64(&self) -> u64 {
        self.key[0] as u64 | (self.key[1] as u64) << 32
    }
}

/// 2^24: the fixed-point scale of the top-p masses and of top_p itself.
pub(crate) const ONE24: f32 = 16_777_216.0;

/// The weights a random row is drawn from, or `None` where the pick is the argmax: greedy
/// (`!(temperature > 0)`), a row of one token, or an infinite maximum (+inf somewhere, or
/// nothing finite). NaN counts as -inf. w = exp((l - max) / T) in f32: exactly 1 at the
/// maximum, 0 at -inf (also when T is +inf, where the formula would give NaN).
/// shaders/sample.wgsl writes the same weights over the row.
pub fn weights(row: &[f32], p: &RowSampling) -> Option<Vec<f32>> {
    if p.is_greedy() || row.len() <= 1 {
        return None;
    }
    let key = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
    let m = row.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(key(l)));
    if m.is_infinite() {
        return None;
    }
    let t = p.temperature;
    Some(
        row.iter()
            .map(|&l| match key(l) {
                k if k == m => 1.0,
                f32::NEG_INFINITY => 0.0,
                k => ((k - m) / t).exp(),
            })
            .collect(),
    )
}

/// The fixed-point mass of a weight: `u32(w * 2^24)`, truncated.
fn mass(w: f32) -> u64 {
    (w * ONE24) as u32 as u64
}

/// The tokens the race runs over (the race does not depend on their order): in rank order
/// (weight descending, then id ascending; weights compared by their bits) when top-k or top-p
/// is on, else in id order. The top-k prefix (0 < top_k < vocab), within it the top-p prefix
/// (top_p < 1: the shortest one, at least one token, whose fixed-point mass reaches
/// `(M * u32(top_p * 2^24)) >> 24`, M the top-k prefix's mass, exactly), then min-p (drops
/// `w < min(min_p, 1)`) and weight 0. The GPU finds the same prefix by radix selection.
/// Cost: O(V) with neither top-k nor top-p, O(V + k log k) with top-k, O(V log V) with top-p
/// alone.
pub fn kept(w: &[f32], p: &RowSampling) -> Vec<u32> {
    let vocab = w.len();
    let rank = |i: &u32| (std::cmp::Reverse(w[*i as usize].to_bits()), *i);
    let mut order: Vec<u32> = (0..vocab as u32).collect();
    let top_k = p.top_k > 0 && (p.top_k as usize) < vocab;
    let top_p = p.top_p < 1.0;
    if top_k {
        let k = p.top_k as usize;
        order.select_nth_unstable_by_key(k - 1, rank);
        order.truncate(k);
    }
    if top_k || top_p {
        order.sort_unstable_by_key(rank);
    }
    if top_p {
        let total: u64 = order.iter().map(|&i| mass(w[i as usize])).sum();
        let p24 = (p.top_p.max(0.0) * ONE24) as u32;
        let target = ((total as u128 * p24 as u128) >> 24) as u64;
        let mut acc = 0u64;
        let mut len = order.len();
        for (n, &i) in order.iter().enumerate() {
            acc += mass(w[i as usize]);
            if acc >= target {
                len = n + 1;
                break;
            }
        }
        order.truncate(len);
    }
    let floor = if p.min_p > 0.0 { p.min_p.min(1.0) } else { 0.0 };
    order.retain(|&i| {
        let x = w[i as usize];
        x > 0.0 && x >= floor
    });
    order
}

/// The outcome of the exponential race.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Race {
    pub winner: u32,
    /// The winner's score w / E.
    pub best: f32,
    /// The best score among the others (-inf when there is none): how close the race was.
    pub runner_up: f32,
}

/// The race over `kept` (ids into `w`): token i scores w_i / E_i with E_i = -ln(u_i), u_i in
/// (0, 1) from `key` and i ([`race_uniform`]); the highest score wins, the lowest id on ties.
/// Token i wins with probability w_i / Σ w over `kept`.
pub fn race(w: &[f32], kept: &[u32], key: [u32; 2]) -> Race {
    let seed = pcg(key[0] ^ pcg(key[1]));
    let mut r = Race {
        winner: u32::MAX,
        best: f32::NEG_INFINITY,
        runner_up: f32::NEG_INFINITY,
    };
    for &i in kept {
        let w = w[i as usize];
        if w.is_nan() || w <= 0.0 {
            continue;
        }
        let bits = pcg(seed ^ pcg(i));
        let u = race_uniform(bits);
        let score = w / -u.ln();
        if score > r.best || (score == r.best && i < r.winner) {
            r.runner_up = r.best;
            r.best = score;
            r.winner = i;
        } else {
            r.runner_up = r.runner_up.max(score);
        }
    }
    r
}

/// A race's uniform draw from 23 hash bits: (k + 1/2) 2^-23, strictly inside (0, 1), so
/// -ln u > 0 and no token's score is infinite (u = 1 would make any kept token, however
/// unlikely, win outright). Exact in f32.
pub(crate) fn race_uniform(bits: u32) -> f32 {
    ((bits >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// The race's integer hash (PCG's output permutation of one LCG step), as the shader has it.
fn pcg(v: u32) -> u32 {
    let s = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let t = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277_803_737);
    (t >> 22) ^ t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Rng;

    #[test]
    fn the_race_never_draws_a_negligible_token_from_a_large_vocabulary() {
        // Two tokens hold all but ~1e-13 of the mass. A uniform that could reach 1 would give
        // every token a 2^-24 chance to win outright: ~9 stray picks in these 3000 draws.
        let vocab = 49_152;
        let mut logits = vec![-40.0f32; vocab];
        logits[7] = 0.0;
        logits[30_000] = -1.0;
        let p = RowSampling {
            temperature: 1.0,
            ..Default::default()
        };
        let w = weights(&logits, &p).unwrap();
        let all = kept(&w, &p);
        assert_eq!(all.len(), vocab);
        let mut rng = Rng::new(5);
        let mut top = 0;
        for _ in 0..3000 {
            let k = rng.next_u64();
            let won = race(&w, &all, [k as u32, (k >> 32) as u32]).winner;
            assert!(won == 7 || won == 30_000, "drew {won}");
            top += usize::from(won == 7);
        }
        // P(7) = 1 / (1 + e^-1) = 0.731; 4.5 standard errors is ±0.037.
        let f = top as f64 / 3000.0;
        assert!((f - 0.731).abs() < 0.037, "{f}");
    }
}
