//! Choosing the next token from a row of logits, from a seeded generator so the same seed and
//! the same logits give the same tokens.
//!
//! The processors run in vLLM's order: penalties → temperature → top-k → top-p → min-p → sample.
//! Penalties change the logits themselves, so they also apply before greedy (temperature 0)
//! picks its argmax; the rest only shape the distribution a random draw comes from.
//!
//! A random draw is an exponential race (as vLLM samples): each kept token i gets
//! E_i = -ln(u_i), u_i a hash of (the draw's key, i), and the largest w_i / E_i wins, which
//! picks i with probability w_i / Σw. The CPU ([`Sampler`]) and the GPU (shaders/sample.wgsl,
//! which the engine gives rows without penalties or logprobs on GPU adapters) run this same
//! algorithm on the same keys, so a sequence gets the same tokens whichever side samples it,
//! up to exp/ln rounding in a near tie. The top-p masses are fixed point (2^-24 of the largest weight) and summed exactly, so
//! the kept set does not depend on a summation order.
//!
//! Cost per CPU call, for a vocabulary of V and a context of C tokens:
//! - no penalty: the logits are not copied (a random draw does build a weight and an id
//!   vector of V entries);
//! - a penalty on: one copy of the row, O(V), plus a small map of the distinct context tokens, O(C);
//! - greedy: one pass, O(V); random with no top-k/top-p: a few passes, O(V), no sort;
//!   top-k: a selection, O(V + k log k); top-p without top-k: a full sort, O(V log V).

use std::borrow::Cow;
use std::collections::HashMap;

mod grammar;
mod race;

pub use grammar::{
    Grammar, GrammarCompiler, GrammarState, MAX_LOGIT_BIAS, apply_biases, apply_mask, merge_biases,
};
#[cfg(test)]
pub(crate) use race::race_uniform;
pub use race::{Race, RowSampling, kept, race, weights};

/// How to pick tokens. `Default` is greedy with every processor off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax, lowest id on ties). Otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1.0 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// HF/vLLM repetition penalty over tokens seen in the prompt or the output: a positive
    /// logit is divided by it, any other multiplied (1.0 = off; > 1 discourages repeats).
    pub repetition_penalty: f32,
    /// OpenAI presence penalty: subtracted once from the logit of every token already in the
    /// output (0 = off).
    pub presence_penalty: f32,
    /// OpenAI frequency penalty: subtracted from a token's logit once per time it is already
    /// in the output (0 = off).
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy with no logit processor: the token is the plain argmax of the logits (which
    /// the GPU computes, so such a row needs no logits read back).
    pub fn is_plain_greedy(&self) -> bool {
        (self.temperature.is_nan() || self.temperature <= 0.0) && !self.has_penalties()
    }

    /// Rejects values no processor can apply: a negative or non-finite temperature, top_p
    /// outside (0, 1], min_p outside [0, 1], a repetition penalty that is not positive, presence
    /// or frequency penalties outside OpenAI's [-2, 2], and NaN anywhere.
    pub fn validate(&self) -> Result<(), String> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(format!("temperature must be finite and >= 0, got {t}"));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {p}"));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(format!("min_p must be in [0, 1], got {m}"));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(format!(
                "repetition_penalty must be finite and > 0, got {r}"
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(format!("{name} must be in [-2, 2], got {v}"));
            }
        }
        Ok(())
    }

    /// Whether a repetition, presence or frequency penalty is on (they need the token
    /// history, so only the CPU sampler applies them).
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }
}

/// SplitMix64: small, fast and good enough for sampling; reproducible across platforms.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Index of the largest value; the lowest index wins ties; NaN ranks below every number (so
/// an all-NaN row gives 0). shaders/argmax.wgsl computes the same on the GPU.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in logits.iter().enumerate() {
        if !v.is_nan() && (*v > logits[best] || logits[best].is_nan()) {
            best = i;
        }
    }
    best as u32
}

/// The k largest (id, logit) pairs, largest first (ties: lower id first).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let k = k.min(idx.len());
    if k == 0 {
        return vec![];
    }
    idx.select_nth_unstable_by(k - 1, cmp);
    idx.truncate(k);
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, logits[i as usize])).collect()
}

/// Applies the repetition, frequency and presence penalties in place (vLLM's order).
/// `prompt` only feeds the repetition penalty; `output` feeds all three. Ids outside the row
/// are ignored. O(|prompt| + |output|) with a map of the distinct tokens.
pub fn apply_penalties(
    logits: &mut [f32],
    params: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
) {
    let rep = params.repetition_penalty;
    // token → times it occurs in the output (0: only in the prompt)
    let mut counts: HashMap<u32, u32> = HashMap::new();
    if rep != 1.0 {
        for &t in prompt {
            counts.entry(t).or_insert(0);
        }
    }
    for &t in output {
        *counts.entry(t).or_insert(0) += 1;
    }
    for (&t, &n) in &counts {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if rep != 1.0 {
            *l = if *l > 0.0 { *l / rep } else { *l * rep };
        }
        if n > 0 {
            *l -= params.frequency_penalty * n as f32 + params.presence_penalty;
        }
    }
}

/// The row of a random draw with `p` (its key the next of `rng`), or `None` for greedy.
fn random_row(p: &SamplingParams, rng: &mut Rng) -> Option<RowSampling> {
    if p.temperature.is_nan() || p.temperature <= 0.0 {
        return None;
    }
    let key = rng.next_u64();
    Some(RowSampling {
        temperature: p.temperature,
        top_k: p.top_k.min(u32::MAX as usize) as u32,
        top_p: p.top_p,
        min_p: p.min_p,
        key: [key as u32, (key >> 32) as u32],
        _pad: [0; 2],
    })
}

/// A sampler for one sequence: its parameters and its own random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// `params` should have passed [`SamplingParams::validate`]; out-of-range values are not
    /// rejected here, only clamped where they would otherwise break the arithmetic.
    pub fn new(params: SamplingParams) -> Self {
        let rng = Rng::new(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// How the GPU can pick this sequence's next token, when it can: penalties need the
    /// token history and stay on the CPU ([`Sampler::sample`]). A random row draws its key
    /// from this sampler's stream (one draw per token, as `sample` does); greedy draws none.
    pub fn row_sampling(&mut self) -> Option<RowSampling> {
        if self.params.has_penalties() {
            return None;
        }
        Some(random_row(&self.params, &mut self.rng).unwrap_or_default())
    }

    /// The next token after `prompt` followed by `output` (the tokens generated so far), given
    /// the model's logits for that position. Draws one random number unless greedy.
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], output: &[u32]) -> u32 {
        let p = &self.params;
        let logits: Cow<[f32]> = if p.has_penalties() && !(prompt.is_empty() && output.is_empty()) {
            let mut row = logits.to_vec();
            apply_penalties(&mut row, p, prompt, output);
            Cow::Owned(row)
        } else {
            Cow::Borrowed(logits)
        };
        let logits = &logits[..];
        // The same draw the GPU makes (shaders/sample.wgsl), keyed by this sequence's stream.
        match random_row(p, &mut self.rng) {
            None => argmax(logits),
            Some(rs) => match weights(logits, &rs) {
                Some(w) => race(&w, &kept(&w, &rs), rs.key).winner,
                None => argmax(logits),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every token `params` picks from `logits` over `n` draws (with a fixed context).
    fn support(
        params: SamplingParams,
        logits: &[f32],
        prompt: &[u32],
        output: &[u32],
    ) -> BTreeSet<u32> {
        let mut s = Sampler::new(params);
        (0..400).map(|_| s.sample(logits, prompt, output)).collect()
    }

    fn random(seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            seed,
            ..Default::default()
        }
    }

    fn set(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    #[test]
    fn default_is_greedy_with_everything_off_and_valid() {
        let p = SamplingParams::default();
        assert_eq!(p.temperature, 0.0);
        assert_eq!((p.top_k, p.top_p, p.min_p), (0, 1.0, 0.0));
        assert_eq!(
            (
                p.repetition_penalty,
                p.presence_penalty,
                p.frequency_penalty
            ),
            (1.0, 0.0, 0.0)
        );
        assert!(!p.has_penalties());
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn greedy_picks_the_largest_and_the_lowest_id_on_ties() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.0, 0.5, 0.2], &[], &[]), 1);
        // The context is ignored when every penalty is off.
        assert_eq!(s.sample(&[0.0, 0.5, 0.2], &[1, 1], &[1]), 1);
    }

    #[test]
    fn top_k_orders_by_logit() {
        assert_eq!(
            top_k(&[1.0, 5.0, 3.0, 5.0], 3),
            vec![(1, 5.0), (3, 5.0), (2, 3.0)]
        );
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        // Token 0 in the prompt, 2 in the output (twice: applied once), 4 never seen.
        let mut l = [3.0, 1.0, -1.0, 0.0, 2.0];
        apply_penalties(&mut l, &p, &[0, 9], &[2, 2]);
        assert_eq!(l, [1.5, 1.0, -2.0, 0.0, 2.0]);
        // Greedy sees the penalised row: 0 (3.0 → 1.5) loses to 4 (2.0).
        let mut s = Sampler::new(p.clone());
        assert_eq!(s.sample(&[3.0, 1.0, -1.0, 0.0, 2.0], &[0], &[]), 4);
        assert_eq!(s.sample(&[3.0, 1.0, -1.0, 0.0, 2.0], &[], &[]), 0);
        // A penalty below 1 encourages repeats.
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 0.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&[3.0, 2.0], &[1], &[]), 1);
    }

    #[test]
    fn frequency_and_presence_penalties_count_output_tokens_only() {
        let p = SamplingParams {
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Default::default()
        };
        // Output: token 1 three times, token 2 once; token 0 only in the prompt.
        let mut l = [1.0, 1.0, 1.0, 1.0];
        apply_penalties(&mut l, &p, &[0, 0], &[1, 2, 1, 1]);
        // 1: 1 - 0.5*3 - 0.25 = -0.75; 2: 1 - 0.5 - 0.25 = 0.25.
        assert_eq!(l, [1.0, -0.75, 0.25, 1.0]);
        // Greedy: 1 leads by 0.6 but is in the output twice: 2.0 - 1.0 - 0.25 = 0.75 < 1.4.
        let mut s = Sampler::new(p);
        assert_eq!(s.sample(&[1.4, 2.0, 0.0], &[1], &[1, 1]), 0);
        // Only in the prompt: no frequency/presence penalty.
        assert_eq!(s.sample(&[1.4, 2.0, 0.0], &[1, 1, 1], &[]), 1);
        // Negative values (allowed down to -2) encourage repeats.
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: -1.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[1.4, 0.5, 0.0], &[], &[1]), 1);
    }

    #[test]
    fn penalties_ignore_ids_outside_the_row() {
        let p = SamplingParams {
            repetition_penalty: 1.5,
            frequency_penalty: 1.0,
            ..Default::default()
        };
        let mut l = [1.0, 2.0];
        apply_penalties(&mut l, &p, &[7], &[2, 1000]);
        assert_eq!(l, [1.0, 2.0]);
    }

    #[test]
    fn temperature_spreads_choices_and_greedy_does_not() {
        let logits = [1.0, 1.1, 0.9, 1.05];
        assert_eq!(support(random(1), &logits, &[], &[]), set(&[0, 1, 2, 3]));
        assert_eq!(
            support(SamplingParams::default(), &logits, &[], &[]),
            set(&[1])
        );
        // A tiny temperature is greedy in effect (the others weigh about e^-500).
        let cold = SamplingParams {
            temperature: 1e-4,
            ..random(1)
        };
        assert_eq!(support(cold, &logits, &[], &[]), set(&[1]));
    }

    #[test]
    fn temperature_scales_the_distribution() {
        // logits ln 1, ln 3: p = 1/4, 3/4 at T = 1; at T = 2, √1 : √3 → p(0) ≈ 0.366.
        let logits = [0.0f32, 3f32.ln()];
        let freq = |t: f32| {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                seed: 11,
                ..Default::default()
            });
            (0..20000)
                .filter(|_| s.sample(&logits, &[], &[]) == 0)
                .count() as f64
                / 20000.0
        };
        assert!((freq(1.0) - 0.25).abs() < 0.015, "{}", freq(1.0));
        assert!((freq(2.0) - 0.366).abs() < 0.015, "{}", freq(2.0));
    }

    #[test]
    fn top_k_keeps_exactly_the_k_largest() {
        let logits = [0.5, 3.0, 2.9, -1.0, 2.8, 0.0];
        let k = |k| SamplingParams {
            top_k: k,
            ..random(2)
        };
        assert_eq!(support(k(1), &logits, &[], &[]), set(&[1]));
        assert_eq!(support(k(3), &logits, &[], &[]), set(&[1, 2, 4]));
        // k past the vocabulary = all.
        assert_eq!(support(k(100), &logits, &[], &[]), set(&[0, 1, 2, 3, 4, 5]));
        // Ties at the cut: the lower id stays.
        assert_eq!(support(k(2), &[1.0, 2.0, 1.0, 1.0], &[], &[]), set(&[0, 1]));
        // At any temperature.
        let hot = SamplingParams {
            temperature: 5.0,
            ..k(1)
        };
        assert_eq!(support(hot, &[0.0, 1.0, 0.9], &[], &[]), set(&[1]));
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 (logits ln of them).
        let logits = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
        let p = |p| SamplingParams {
            top_p: p,
            ..random(3)
        };
        assert_eq!(support(p(0.4), &logits, &[], &[]), set(&[0]));
        assert_eq!(support(p(0.6), &logits, &[], &[]), set(&[0, 1]));
        assert_eq!(support(p(0.8), &logits, &[], &[]), set(&[0, 1, 2]));
        assert_eq!(support(p(1.0), &logits, &[], &[]), set(&[0, 1, 2, 3]));
        // The order does not depend on the ids: the most likely token listed last.
        let rev = [0.125f32.ln(), 0.125f32.ln(), 0.25f32.ln(), 0.5f32.ln()];
        assert_eq!(support(p(0.6), &rev, &[], &[]), set(&[2, 3]));
        // After top-k the mass is renormalised: top 2 → 2/3, 1/3, so p = 0.6 keeps one.
        let kp = SamplingParams { top_k: 2, ..p(0.6) };
        assert_eq!(support(kp, &logits, &[], &[]), set(&[0]));
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_most_likely() {
        // Probabilities proportional to 8, 4, 2, 1.
        let logits = [8f32.ln(), 4f32.ln(), 2f32.ln(), 1f32.ln()];
        let m = |m| SamplingParams {
            min_p: m,
            ..random(4)
        };
        assert_eq!(support(m(0.3), &logits, &[], &[]), set(&[0, 1]));
        assert_eq!(support(m(0.2), &logits, &[], &[]), set(&[0, 1, 2]));
        assert_eq!(support(m(1.0), &logits, &[], &[]), set(&[0]));
        assert_eq!(support(m(0.0), &logits, &[], &[]), set(&[0, 1, 2, 3]));
        // Relative to the temperature-scaled distribution: at T = 2 the ratios are
        // 1, 0.71, 0.5, 0.35, so 0.4 keeps three where it keeps two at T = 1.
        assert_eq!(support(m(0.4), &logits, &[], &[]), set(&[0, 1]));
        let warm = SamplingParams {
            temperature: 2.0,
            ..m(0.4)
        };
        assert_eq!(support(warm, &logits, &[], &[]), set(&[0, 1, 2]));
    }

    #[test]
    fn processors_run_in_vllm_order() {
        // The penalty comes first: token 0 leads until the repetition penalty cuts 4.0 to 1.0,
        // so top-k 1 then keeps token 1.
        let p = SamplingParams {
            repetition_penalty: 4.0,
            top_k: 1,
            ..random(5)
        };
        assert_eq!(support(p, &[4.0, 2.0, 0.0], &[], &[0]), set(&[1]));
        // min-p after top-p: top-p 0.9 keeps 0, 1, 2 (8, 4, 2 of 15 = 0.93); min-p 0.3 then
        // drops 2 (2/8 < 0.3).
        let logits = [8f32.ln(), 4f32.ln(), 2f32.ln(), 1f32.ln()];
        let both = SamplingParams {
            top_p: 0.9,
            min_p: 0.3,
            ..random(6)
        };
        assert_eq!(support(both, &logits, &[], &[]), set(&[0, 1]));
    }

    #[test]
    fn nan_and_infinite_logits_do_not_break_sampling() {
        let inf = f32::NEG_INFINITY;
        assert_eq!(
            support(random(7), &[inf, 1.0, f32::NAN, inf], &[], &[]),
            set(&[1])
        );
        let k = SamplingParams {
            top_k: 2,
            ..random(7)
        };
        assert_eq!(
            support(k, &[f32::NAN, 1.0, 0.5, inf], &[], &[]),
            set(&[1, 2])
        );
        assert_eq!(
            Sampler::new(random(7)).sample(&[inf, inf, inf], &[], &[]),
            0
        );
        assert_eq!(Sampler::new(random(7)).sample(&[], &[], &[]), 0);
        assert_eq!(
            Sampler::new(random(7)).sample(&[0.0, f32::INFINITY, 1.0], &[], &[]),
            1
        );
    }

    #[test]
    fn same_seed_and_logits_give_the_same_tokens() {
        let rows: Vec<Vec<f32>> = (0..64)
            .map(|i| {
                (0..50)
                    .map(|j| ((i * 7 + j * 13) % 17) as f32 * 0.3)
                    .collect()
            })
            .collect();
        let params = SamplingParams {
            temperature: 0.8,
            top_k: 20,
            top_p: 0.9,
            min_p: 0.05,
            repetition_penalty: 1.3,
            presence_penalty: 0.2,
            frequency_penalty: 0.1,
            seed: 42,
        };
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            let prompt = [3u32, 5, 8];
            let mut out = Vec::new();
            for row in &rows {
                let t = s.sample(row, &prompt, &out);
                out.push(t);
            }
            out
        };
        assert_eq!(run(&params), run(&params));
        assert!(run(&params).iter().collect::<BTreeSet<_>>().len() >= 3);
        let other = SamplingParams {
            seed: 43,
            ..params.clone()
        };
        assert_ne!(run(&params), run(&other));
    }

    #[test]
    fn row_sampling_draws_one_key_per_token_and_leaves_penalties_to_the_cpu() {
        let d = SamplingParams::default;
        // Greedy: the GPU keeps its argmax and nothing is drawn.
        let mut s = Sampler::new(d());
        assert_eq!(s.row_sampling(), Some(RowSampling::default()));
        assert!(RowSampling::default().is_greedy());
        // Penalties need the history: CPU.
        for p in [
            SamplingParams {
                repetition_penalty: 1.1,
                ..d()
            },
            SamplingParams {
                temperature: 0.8,
                presence_penalty: 0.5,
                ..d()
            },
        ] {
            assert_eq!(Sampler::new(p).row_sampling(), None);
        }
        // Random: the shape is copied and the keys are the seed's stream, one per call.
        let p = SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.05,
            seed: 9,
            ..d()
        };
        let mut s = Sampler::new(p);
        let mut rng = Rng::new(9);
        for _ in 0..3 {
            let r = s.row_sampling().unwrap();
            assert!(!r.is_greedy());
            assert_eq!(
                (r.temperature, r.top_k, r.top_p, r.min_p),
                (0.8, 40, 0.9, 0.05)
            );
            assert_eq!(r.key_u64(), rng.next_u64());
        }
    }

    #[test]
    fn validate_rejects_what_no_processor_can_apply() {
        let ok = |p: SamplingParams| p.validate();
        let d = SamplingParams::default;
        let good = [
            SamplingParams {
                temperature: 1.5,
                top_k: 5,
                top_p: 0.01,
                min_p: 1.0,
                ..d()
            },
            SamplingParams {
                repetition_penalty: 0.5,
                presence_penalty: -2.0,
                frequency_penalty: 2.0,
                ..d()
            },
        ];
        for p in good {
            assert_eq!(ok(p.clone()), Ok(()), "{p:?}");
        }
        let nan = f32::NAN;
        let bad = [
            SamplingParams {
                temperature: -0.1,
                ..d()
            },
            SamplingParams {
                temperature: nan,
                ..d()
            },
            SamplingParams {
                temperature: f32::INFINITY,
                ..d()
            },
            SamplingParams { top_p: 0.0, ..d() },
            SamplingParams { top_p: 1.01, ..d() },
            SamplingParams { top_p: nan, ..d() },
            SamplingParams {
                min_p: -0.01,
                ..d()
            },
            SamplingParams { min_p: 1.5, ..d() },
            SamplingParams { min_p: nan, ..d() },
            SamplingParams {
                repetition_penalty: 0.0,
                ..d()
            },
            SamplingParams {
                repetition_penalty: -1.0,
                ..d()
            },
            SamplingParams {
                repetition_penalty: nan,
                ..d()
            },
            SamplingParams {
                presence_penalty: nan,
                ..d()
            },
            SamplingParams {
                presence_penalty: 2.5,
                ..d()
            },
            SamplingParams {
                frequency_penalty: nan,
                ..d()
            },
            SamplingParams {
                frequency_penalty: -3.0,
                ..d()
            },
        ];
        for p in bad {
            assert!(ok(p.clone()).is_err(), "accepted {p:?}");
        }
    }
}
