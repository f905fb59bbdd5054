//! Synthetic serving workloads for `wllm bench throughput`: per-request prompt and output
//! lengths drawn from ranges, and Poisson arrival times, each from its own seeded RNG, so the
//! batched run and the one-at-a-time baseline see exactly the same requests on the same schedule.

use std::fmt;
use std::str::FromStr;

use wllm::engine::{Prompt, Request};
use wllm::sampling::Rng;

/// A token count: `N`, a half-open range `A..B` (A ≤ n < B, as in Rust) or an inclusive range
/// `A..=B`. Held as inclusive bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LenSpec {
    pub min: usize,
    pub max: usize,
}

impl LenSpec {
    #[cfg(test)]
    pub fn fixed(n: usize) -> Self {
        LenSpec { min: n, max: n }
    }

    pub fn is_fixed(&self) -> bool {
        self.min == self.max
    }

    /// Uniform over `min..=max`. A fixed length draws nothing from `rng`.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        if self.is_fixed() {
            return self.min;
        }
        self.min + (rng.next_u64() % (self.max - self.min + 1) as u64) as usize
    }

    /// `N` for a fixed length, else the string `A..B` (half-open), for JSON.
    pub fn to_json(self) -> serde_json::Value {
        if self.is_fixed() {
            self.min.into()
        } else {
            self.to_string().into()
        }
    }
}

impl FromStr for LenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{t}`: expected N, A..B (B excluded) or A..=B (B included)"))
        };
        let (min, max) = if let Some((a, b)) = t.split_once("..=") {
            (num(a)?, num(b)?)
        } else if let Some((a, b)) = t.split_once("..") {
            let (a, b) = (num(a)?, num(b)?);
            if b <= a {
                return Err(format!(
                    "`{t}` is empty: A..B excludes B (write A..=B to include it)"
                ));
            }
            (a, b - 1)
        } else {
            let n = num(t)?;
            (n, n)
        };
        if min == 0 {
            return Err(format!("`{t}`: a length is at least 1"));
        }
        if max < min {
            return Err(format!("`{t}` is empty"));
        }
        Ok(LenSpec { min, max })
    }
}

impl fmt::Display for LenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_fixed() {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..{}", self.min, self.max + 1)
        }
    }
}

/// Parses `--request-rate`: requests per second, `inf` for all at once.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: expected requests per second or inf"))?;
    if r.is_nan() || r <= 0.0 {
        return Err(format!("`{s}`: the request rate must be positive"));
    }
    Ok(r)
}

/// What each request asks for and when it arrives (seconds from the start of the run).
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub prompt_lens: Vec<usize>,
    pub output_lens: Vec<usize>,
    pub arrivals_s: Vec<f64>,
    seed: u64,
}

impl Workload {
    /// `n` requests with lengths drawn uniformly from `prompt` and `output`, arriving as a
    /// Poisson process of `rate` requests/s (exponential gaps; the first at t = 0), or all at
    /// t = 0 when `rate` is infinite.
    pub fn synthetic(n: usize, prompt: LenSpec, output: LenSpec, rate: f64, seed: u64) -> Self {
        let mut lens = Rng::new(seed ^ 0x6C65_6E67_7468_7321);
        let mut arrive = Rng::new(seed ^ 0x6172_7269_7661_6C73);
        let (mut prompt_lens, mut output_lens) = (Vec::new(), Vec::new());
        for _ in 0..n {
            prompt_lens.push(prompt.sample(&mut lens));
            output_lens.push(output.sample(&mut lens));
        }
        let mut t = 0.0;
        let arrivals_s = (0..n)
            .map(|i| {
                if i > 0 && rate.is_finite() {
                    // Inverse CDF of Exp(rate); 1 - u is in (0, 1].
                    t += -(1.0 - arrive.next_f64()).ln() / rate;
                }
                t
            })
            .collect();
        Workload {
            prompt_lens,
            output_lens,
            arrivals_s,
            seed,
        }
    }

    /// The requests: random token ids (from 100 up, away from special tokens, where the
    /// vocabulary allows), `ignore_eos` so each produces exactly its output length.
    pub fn requests(&self, vocab: usize) -> Vec<Request> {
        // Same token stream as the fixed-length workload always had for a given seed.
        let mut rng = Rng::new(self.seed);
        let lo = if vocab > 100 { 100 } else { 0 };
        let span = (vocab - lo).max(1) as u64;
        self.prompt_lens
            .iter()
            .zip(&self.output_lens)
            .map(|(&p, &o)| {
                let ids = (0..p)
                    .map(|_| (lo as u64 + rng.next_u64() % span) as u32)
                    .collect();
                let mut r = Request::new(Prompt::Ids(ids));
                r.max_tokens = o;
                r.ignore_eos = true;
                r
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn len_specs_parse_and_sample_within_bounds() {
        assert_eq!("32".parse::<LenSpec>(), Ok(LenSpec::fixed(32)));
        assert_eq!(
            "16..48".parse::<LenSpec>(),
            Ok(LenSpec { min: 16, max: 47 })
        );
        assert_eq!(
            "16..=48".parse::<LenSpec>(),
            Ok(LenSpec { min: 16, max: 48 })
        );
        assert_eq!("4..5".parse::<LenSpec>(), Ok(LenSpec::fixed(4)));
        for bad in ["0", "8..8", "9..=8", "0..4", "x", "4..", "..4", "-1"] {
            assert!(bad.parse::<LenSpec>().is_err(), "{bad}");
        }
        assert_eq!("16..48".parse::<LenSpec>().unwrap().to_string(), "16..48");
        let s = LenSpec { min: 3, max: 5 };
        let mut rng = Rng::new(7);
        let mut seen = [false; 3];
        for _ in 0..200 {
            let n = s.sample(&mut rng);
            assert!((3..=5).contains(&n));
            seen[n - 3] = true;
        }
        assert_eq!(seen, [true; 3]);
        assert!(parse_rate("inf").unwrap().is_infinite());
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(
            parse_rate("0").is_err() && parse_rate("-1").is_err() && parse_rate("nan").is_err()
        );
    }

    #[test]
    fn workloads_are_reproducible_and_arrivals_poisson() {
        let p = LenSpec { min: 4, max: 7 };
        let o = LenSpec { min: 2, max: 3 };
        let a = Workload::synthetic(2000, p, o, 50.0, 1);
        assert_eq!(a, Workload::synthetic(2000, p, o, 50.0, 1));
        assert_ne!(a, Workload::synthetic(2000, p, o, 50.0, 2));
        // The rate changes the schedule only, not the lengths.
        let b = Workload::synthetic(2000, p, o, f64::INFINITY, 1);
        assert_eq!(
            (&a.prompt_lens, &a.output_lens),
            (&b.prompt_lens, &b.output_lens)
        );
        assert!(b.arrivals_s.iter().all(|&t| t == 0.0));
        assert_eq!(a.arrivals_s[0], 0.0);
        assert!(a.arrivals_s.windows(2).all(|w| w[1] >= w[0]));
        // 1999 gaps of mean 1/50 s.
        let mean_gap = a.arrivals_s[1999] / 1999.0;
        assert!((mean_gap - 0.02).abs() < 0.002, "{mean_gap}");
        let reqs = a.requests(512);
        assert_eq!(reqs.len(), 2000);
        for (r, (&pl, &ol)) in reqs.iter().zip(a.prompt_lens.iter().zip(&a.output_lens)) {
            let Prompt::Ids(ids) = &r.prompt else {
                panic!("ids")
            };
            assert_eq!(ids.len(), pl);
            assert!(ids.iter().all(|&t| (100..512).contains(&t)));
            assert_eq!(r.max_tokens, ol);
            assert!(r.ignore_eos);
        }
        // A fixed-length workload keeps the token stream it always had.
        let f = Workload::synthetic(2, LenSpec::fixed(3), LenSpec::fixed(1), f64::INFINITY, 1234);
        let mut rng = Rng::new(1234);
        let want: Vec<u32> = (0..3)
            .map(|_| 100 + (rng.next_u64() % 412) as u32)
            .collect();
        let Prompt::Ids(got) = &f.requests(512)[0].prompt else {
            panic!("ids")
        };
        assert_eq!(got, &want);
    }
}
