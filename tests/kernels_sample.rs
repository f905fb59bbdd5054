//! The GPU sampler (shaders/sample.wgsl) against its CPU reference (`kernels::sample`), the
//! reference's kept set against the CPU `Sampler`'s support, and the GPU's draws against the
//! distribution they should follow.
//!
//! exp and ln may differ by ulps between the GPU and the CPU, so a GPU row is checked in two
//! steps: its weights (the row written in place) against the CPU's, within the precision
//! Vulkan grants exp; then the reference's selection and race run on the GPU's own weights,
//! whose pick the GPU must reproduce unless the race was a near tie (best two scores within
//! 1e-5 relative), which is counted and bounded.

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use common::plumbing::{Rng, ctx, run, u32s};
use wllm::WeightDType::F32;
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::{Sample, sample};
use wllm::gpu::tensor::read_words;
use wllm::sampling::{RowSampling, Sampler, SamplingParams};

/// What a left-alone row's id must still be: the value put there, distinct per row.
fn sentinel(r: usize) -> u32 {
    0xdead_0000 + r as u32
}

/// The pipelines, compiled once per test binary: the runtime's (`Sample::new`, 256 threads per
/// row) and two smaller workgroups, which must pick the same tokens.
fn kernel(wg: usize) -> &'static Sample {
    static K: [OnceLock<Sample>; 3] = [const { OnceLock::new() }; 3];
    match wg {
        256 => K[0].get_or_init(|| Sample::new(ctx())),
        64 => K[1].get_or_init(|| Sample::with_workgroup(ctx(), 64)),
        8 => K[2].get_or_init(|| Sample::with_workgroup(ctx(), 8)),
        _ => panic!("no pipeline for WG = {wg}"),
    }
}

/// Runs the runtime's kernel on `logits` (rows, vocab) with ids = sentinels: (ids, the row
/// written back).
fn gpu_sample(logits: &[f32], vocab: usize, params: &[RowSampling]) -> (Vec<u32>, Vec<f32>) {
    gpu_sample_wg(256, logits, vocab, params)
}

/// [`gpu_sample`] with `wg` threads per row.
fn gpu_sample_wg(
    wg: usize,
    logits: &[f32],
    vocab: usize,
    params: &[RowSampling],
) -> (Vec<u32>, Vec<f32>) {
    let rows = params.len();
    assert_eq!(logits.len(), rows * vocab);
    let words: Vec<u32> = logits.iter().map(|v| v.to_bits()).collect();
    let lt = GpuTensor::from_words(ctx(), "logits", &words, &[rows, vocab], F32).expect("logits");
    let ids = u32s("ids", &(0..rows).map(sentinel).collect::<Vec<_>>());
    let pt = u32s("params", bytemuck::cast_slice(params));
    let k = kernel(wg);
    let bg = k.bind(ctx(), &lt.buffer, &ids.buffer, &pt.buffer);
    run(|pass| k.encode(pass, &bg, rows, vocab));
    let out = read_words(ctx(), &ids.buffer).expect("read ids");
    let w = read_words(ctx(), &lt.buffer).expect("read weights");
    (out, w.into_iter().map(f32::from_bits).collect())
}

/// Counts over the rows checked, for the bounds and the printout.
#[derive(Default, Debug)]
struct Tally {
    rows: usize,
    sampled: usize,
    /// Rows whose GPU pick differs from the reference's race on the GPU's weights (each a
    /// near tie, or the check fails).
    near_tie_mismatches: usize,
    /// Rows where the full CPU reference (on the CPU's own weights) picks another token.
    cpu_weight_mismatches: usize,
    /// The worst weight error in ulps, over all weights and over those with |x| <= 1, where
    /// x = (l - max) / T (Vulkan lets exp's error grow with |x|).
    worst_ulps: u32,
    worst_ulps_near_max: u32,
    /// Rows whose top-k / top-p boundary cut through a run of equal weights (the id radix).
    partial_ties_k: usize,
    partial_ties_p: usize,
}

/// Ulps between two non-negative floats.
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

/// Whether the boundary of the rank prefix of length `len` splits the tokens of its weight.
fn cuts_a_tie(w: &[f32], order: &[u32], len: usize) -> bool {
    if len == 0 || len >= order.len() {
        return false;
    }
    w[order[len - 1] as usize].to_bits() == w[order[len] as usize].to_bits()
}

/// Where the top-k and top-p boundaries fall, for the coverage counts: (top-k prefix length,
/// top-p prefix length), each as `kept` computes them.
fn prefix_lengths(w: &[f32], p: &RowSampling) -> (Vec<u32>, usize, usize) {
    let mut order: Vec<u32> = (0..w.len() as u32).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(w[i as usize].to_bits()), i));
    let k_len = if p.top_k > 0 && (p.top_k as usize) < w.len() {
        p.top_k as usize
    } else {
        w.len()
    };
    let mut p_len = k_len;
    if p.top_p < 1.0 {
        let q = |i: u32| (w[i as usize] * 16_777_216.0) as u32 as u64;
        let total: u64 = order[..k_len].iter().map(|&i| q(i)).sum();
        let p24 = (p.top_p.max(0.0) * 16_777_216.0) as u32;
        let target = ((total as u128 * p24 as u128) >> 24) as u64;
        let mut acc = 0;
        for (n, &i) in order[..k_len].iter().enumerate() {
            acc += q(i);
            if acc >= target {
                p_len = n + 1;
                break;
            }
        }
    }
    (order, k_len, p_len)
}

/// Runs `logits` through the GPU and checks every row against the reference (see the module
/// doc), adding to `tally`.
#[track_caller]
fn check(logits: &[f32], vocab: usize, params: &[RowSampling], what: &str, tally: &mut Tally) {
    let (ids, gw) = gpu_sample(logits, vocab, params);
    let ids_in: Vec<u32> = (0..params.len()).map(sentinel).collect();
    let cpu = sample::reference(logits, vocab, params, &ids_in);
    for (r, p) in params.iter().enumerate() {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let grow = &gw[r * vocab..(r + 1) * vocab];
        tally.rows += 1;
        let Some(cw) = sample::weights(row, p) else {
            assert_eq!(
                ids[r],
                sentinel(r),
                "{what}: row {r} ({p:?}) was not left alone"
            );
            for (i, (g, l)) in grow.iter().zip(row).enumerate() {
                assert_eq!(g.to_bits(), l.to_bits(), "{what}: row {r} changed at {i}");
            }
            continue;
        };
        tally.sampled += 1;
        // The weights: within Vulkan's exp precision (3 + 2|x| ulps) plus the division's
        // (2.5 ulps of x, i.e. 2.5|x| ulps of exp(x)); subnormals may be flushed.
        let m = row
            .iter()
            .filter(|l| !l.is_nan())
            .fold(f32::NEG_INFINITY, |m, &l| m.max(l));
        for (i, (&g, &c)) in grow.iter().zip(&cw).enumerate() {
            if c < f32::MIN_POSITIVE && g < f32::MIN_POSITIVE {
                continue;
            }
            let x = if row[i].is_nan() {
                0.0
            } else {
                ((row[i] - m) / p.temperature).abs()
            };
            let d = ulps(g, c);
            assert!(
                (d as f32) <= 4.0 + 5.0 * x,
                "{what}: row {r} weight failed at index {i}: {g} vs {c} ({d} ulps, x = {x})"
            );
            tally.worst_ulps = tally.worst_ulps.max(d);
            if x <= 1.0 {
                tally.worst_ulps_near_max = tally.worst_ulps_near_max.max(d);
            }
        }
        // The selection and the race on the GPU's weights.
        let kept = sample::kept(grow, p);
        assert!(!kept.is_empty(), "{what}: row {r}: nothing kept");
        let race = sample::race(grow, &kept, p.key);
        if ids[r] != race.winner {
            let close = race.best - race.runner_up <= 1e-5 * race.best;
            assert!(
                close && kept.contains(&ids[r]),
                "{what}: row {r} ({p:?}): GPU picked {} where the reference picks {} \
                 (scores {} vs {})",
                ids[r],
                race.winner,
                race.best,
                race.runner_up
            );
            tally.near_tie_mismatches += 1;
        }
        if ids[r] != cpu[r] {
            tally.cpu_weight_mismatches += 1;
        }
        let (order, k_len, p_len) = prefix_lengths(grow, p);
        tally.partial_ties_k += cuts_a_tie(grow, &order, k_len) as usize;
        tally.partial_ties_p += (p_len < k_len && cuts_a_tie(grow, &order, p_len)) as usize;
    }
}

fn key(rng: &mut Rng) -> [u32; 2] {
    let k = rng.next_u64();
    [k as u32, (k >> 32) as u32]
}

/// The parameter mix for a vocabulary: temperature only, top-k, top-p, min-p, combinations,
/// greedy (with the other fields set, to show they are ignored).
fn param_mix(vocab: usize) -> Vec<RowSampling> {
    let v = vocab as u32;
    let s = |t: f32, top_k: u32, top_p: f32, min_p: f32| RowSampling {
        temperature: t,
        top_k,
        top_p,
        min_p,
        ..Default::default()
    };
    let mut out = vec![
        s(0.3, 0, 1.0, 0.0),
        s(0.7, 0, 1.0, 0.0),
        s(1.0, 0, 1.0, 0.0),
    ];
    for k in [1, 2, 40, v.saturating_sub(1), v, v + 5] {
        out.push(s(0.8, k, 1.0, 0.0));
    }
    for p in [0.05, 0.5, 0.9, 0.999] {
        out.push(s(1.2, 0, p, 0.0));
    }
    for m in [0.05, 0.5] {
        out.push(s(0.9, 0, 1.0, m));
    }
    out.extend([
        s(0.7, 40, 0.9, 0.05),
        s(1.0, 2, 0.5, 0.0),
        s(1.5, v.saturating_sub(1), 0.999, 0.5),
        s(0.6, 40, 1.0, 0.5),
        s(2.0, 3, 0.05, 0.05),
        s(0.0, 5, 0.5, 0.1),
        s(-1.0, 0, 1.0, 0.0),
        s(f32::NAN, 40, 0.9, 0.0),
    ]);
    out
}

/// Random logits: N(0, scale²), quantized to `step` when given (so equal weights, and ties at
/// every boundary, are common).
fn logits_row(rng: &mut Rng, vocab: usize, scale: f32, step: Option<f32>) -> Vec<f32> {
    rng.normals(vocab, scale)
        .into_iter()
        .map(|v| step.map_or(v, |s| (v / s).round() * s))
        .collect()
}

fn report(what: &str, t: &Tally) {
    println!(
        "{what}: {} rows, {} sampled; GPU != reference on GPU weights (near ties): {}; \
         GPU != reference on CPU weights: {}; worst weight error {} ulps ({} where |x| <= 1); \
         boundaries inside ties: top-k {}, top-p {}",
        t.rows,
        t.sampled,
        t.near_tie_mismatches,
        t.cpu_weight_mismatches,
        t.worst_ulps,
        t.worst_ulps_near_max,
        t.partial_ties_k,
        t.partial_ties_p
    );
}

#[test]
fn random_rows_match_the_reference() {
    let mut rng = Rng::new(11);
    let mut tally = Tally::default();
    for vocab in [1usize, 2, 255, 256, 257, 1000, 49157] {
        let mix = param_mix(vocab);
        // Small vocabularies get many rows per call, SmolLM2's size one per parameter set.
        let reps = if vocab > 5000 { 1 } else { 8 };
        let mut params = Vec::new();
        let mut logits = Vec::new();
        for rep in 0..reps {
            for (j, p) in mix.iter().enumerate() {
                let (scale, step) = match (rep + j) % 4 {
                    0 => (1.0, None),
                    1 => (3.0, Some(0.5)),
                    2 => (6.0, None),
                    _ => (2.0, Some(1.0)),
                };
                logits.extend(logits_row(&mut rng, vocab, scale, step));
                params.push(RowSampling {
                    key: key(&mut rng),
                    ..*p
                });
            }
        }
        check(
            &logits,
            vocab,
            &params,
            &format!("vocab {vocab}"),
            &mut tally,
        );
    }
    report("random rows", &tally);
    assert!(
        tally.near_tie_mismatches * 1000 <= tally.rows,
        "more than 1 near-tie mismatch per 1000 rows: {tally:?}"
    );
    assert!(
        tally.partial_ties_k > 0 && tally.partial_ties_p > 0,
        "the data should cut through ties at both boundaries: {tally:?}"
    );
}

#[test]
fn awkward_sizes_and_several_rows() {
    let mut rng = Rng::new(12);
    let mut tally = Tally::default();
    for (vocab, rows) in [(3usize, 7usize), (100, 5), (513, 3), (4099, 2), (257, 33)] {
        let mix = param_mix(vocab);
        let params: Vec<RowSampling> = (0..rows)
            .map(|r| RowSampling {
                key: key(&mut rng),
                ..mix[(r * 5 + vocab) % mix.len()]
            })
            .collect();
        let logits: Vec<f32> = (0..rows)
            .flat_map(|r| logits_row(&mut rng, vocab, 2.0, (r % 2 == 1).then_some(0.25)))
            .collect();
        check(
            &logits,
            vocab,
            &params,
            &format!("{rows}×{vocab}"),
            &mut tally,
        );
    }
    report("awkward sizes", &tally);
    assert!(tally.near_tie_mismatches * 1000 <= tally.rows, "{tally:?}");
}

#[test]
fn nan_infinities_equal_rows_and_odd_parameters() {
    let vocab = 300;
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let mut rng = Rng::new(13);
    let t = |temperature: f32| RowSampling {
        temperature,
        key: [5, 6],
        ..Default::default()
    };
    let random = |rng: &mut Rng| logits_row(rng, vocab, 2.0, None);
    let mut rows: Vec<(Vec<f32>, RowSampling)> = Vec::new();
    // 0: NaN sprinkled over a random row.
    let mut r = random(&mut rng);
    for i in (0..vocab).step_by(7) {
        r[i] = nan;
    }
    rows.push((r, t(1.0)));
    // 1, 2: all NaN; all -inf: left alone.
    rows.push((vec![nan; vocab], t(1.0)));
    rows.push((vec![-inf; vocab], t(1.0)));
    // 3: NaN and -inf around one finite value: that value.
    let mut r = vec![-inf; vocab];
    r.iter_mut().step_by(3).for_each(|v| *v = nan);
    r[200] = -50.0;
    rows.push((
        r,
        RowSampling {
            top_p: 0.9,
            ..t(0.5)
        },
    ));
    // 4: +inf somewhere: left alone (the CPU also keeps the argmax).
    let mut r = random(&mut rng);
    r[123] = inf;
    rows.push((r, t(1.0)));
    // 5-7: all equal: top-k takes the lowest ids, top-p the fewest lowest ids reaching p.
    rows.push((vec![0.25; vocab], RowSampling { top_k: 5, ..t(1.0) }));
    rows.push((
        vec![-3.0; vocab],
        RowSampling {
            top_p: 0.1,
            ..t(0.7)
        },
    ));
    rows.push((
        vec![7.0; vocab],
        RowSampling {
            min_p: 1.0,
            ..t(2.0)
        },
    ));
    // 8: -0.0 and 0.0 as the maximum, the rest far below.
    let mut r = vec![-100.0; vocab];
    r[10] = -0.0;
    r[11] = 0.0;
    rows.push((r, RowSampling { top_k: 1, ..t(1.0) }));
    // 9-11: extreme temperatures: tiny (every weight but the max underflows), huge, +inf.
    rows.push((random(&mut rng), t(1e-30)));
    rows.push((random(&mut rng), t(1e30)));
    let mut r = random(&mut rng);
    r[9] = -inf;
    rows.push((r, t(inf)));
    // 12-16: odd parameters: top_p <= 0 (the first token), NaN top_p / min_p (off), min_p above
    // 1 (as 1), top_k = u32::MAX (off).
    rows.push((
        random(&mut rng),
        RowSampling {
            top_p: -0.5,
            ..t(1.0)
        },
    ));
    rows.push((
        random(&mut rng),
        RowSampling {
            top_p: nan,
            ..t(1.0)
        },
    ));
    rows.push((
        random(&mut rng),
        RowSampling {
            min_p: nan,
            ..t(1.0)
        },
    ));
    rows.push((
        random(&mut rng),
        RowSampling {
            min_p: 3.0,
            ..t(1.0)
        },
    ));
    rows.push((
        random(&mut rng),
        RowSampling {
            top_k: u32::MAX,
            ..t(1.0)
        },
    ));
    let logits: Vec<f32> = rows.iter().flat_map(|(r, _)| r.clone()).collect();
    let params: Vec<RowSampling> = rows.iter().map(|(_, p)| *p).collect();
    let mut tally = Tally::default();
    check(&logits, vocab, &params, "edge rows", &mut tally);
    report("edge rows", &tally);
    assert_eq!(tally.near_tie_mismatches, 0);

    let (ids, _) = gpu_sample(&logits, vocab, &params);
    let argmax = |r: usize| wllm::sampling::argmax(&rows[r].0);
    assert_eq!(ids[1], sentinel(1));
    assert_eq!(ids[2], sentinel(2));
    assert_eq!(ids[3], 200);
    assert_eq!(ids[4], sentinel(4));
    assert!(ids[5] < 5, "top-k of equal weights: {}", ids[5]);
    // 300 equal weights, p = 0.1: the smallest n with n·2^24 >= 300·2^24·p24 / 2^24 = 30.0…
    assert!(ids[6] < 30, "top-p of equal weights: {}", ids[6]);
    assert_eq!(ids[8], 10);
    assert_eq!(ids[9], argmax(9));
    assert_eq!(ids[12], argmax(12));
    assert_eq!(ids[15], argmax(15));
}

/// The tokens `Sampler::sample` can pick (no penalties), derived from its code in f64: sort
/// by logit, top-k, weights exp((l - max) / T), the shortest prefix whose cumulative weight
/// reaches p · total, min-p, weight > 0. `None` when a boundary is too close to call (the
/// cumulative weight within 1e-4 of the target, a weight within 1e-4 of min_p).
fn cpu_support(logits: &[f32], p: &SamplingParams) -> Option<BTreeSet<u32>> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if p.top_k > 0 && p.top_k < order.len() {
        order.truncate(p.top_k);
    }
    let max = logits[order[0]] as f64;
    let w: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / p.temperature as f64).exp())
        .collect();
    let mut keep = w.len();
    if p.top_p < 1.0 {
        let total: f64 = w.iter().sum();
        let target = p.top_p as f64 * total;
        let mut acc = 0.0;
        let mut found = false;
        for (n, x) in w.iter().enumerate() {
            acc += x;
            if (acc - target).abs() < 1e-4 * total {
                return None;
            }
            if acc >= target && !found {
                keep = n + 1;
                found = true;
            }
        }
    }
    let floor = p.min_p as f64;
    if w.iter().any(|x| (x - floor).abs() < 1e-4 * floor.max(1e-3)) {
        return None;
    }
    Some(
        order[..keep]
            .iter()
            .zip(&w)
            .filter(|(_, x)| **x > 0.0 && **x >= floor)
            .map(|(&i, _)| i as u32)
            .collect(),
    )
}

#[test]
fn the_kept_set_is_the_cpu_samplers_support() {
    let mut rng = Rng::new(14);
    let vocab = 200;
    let mut compared = 0;
    for trial in 0..60 {
        // Distinct logits 0.07 apart (a shuffled grid with jitter): no ties anywhere.
        let mut grid: Vec<f32> = (0..vocab)
            .map(|i| i as f32 * 0.07 + rng.range(0.0, 0.02) as f32)
            .collect();
        rng.shuffle(&mut grid);
        let params = SamplingParams {
            temperature: [0.5, 0.8, 1.0, 1.7][trial % 4],
            top_k: [0, 1, 7, 60, 199, 200, 500][trial % 7],
            top_p: [1.0, 0.3, 0.8, 0.95, 0.999][trial % 5],
            min_p: [0.0, 0.0, 0.02, 0.3][(trial / 3) % 4],
            seed: trial as u64,
            ..Default::default()
        };
        let Some(support) = cpu_support(&grid, &params) else {
            continue;
        };
        compared += 1;
        let row = RowSampling {
            temperature: params.temperature,
            top_k: params.top_k as u32,
            top_p: params.top_p,
            min_p: params.min_p,
            key: [trial as u32, 1],
            _pad: [0; 2],
        };
        let w = sample::weights(&grid, &row).expect("a sampled row");
        let kept: BTreeSet<u32> = sample::kept(&w, &row).into_iter().collect();
        assert_eq!(kept, support, "trial {trial}: {params:?}");
        // And what Sampler actually draws stays inside it.
        let mut s = Sampler::new(params.clone());
        for _ in 0..200 {
            let t = s.sample(&grid, &[], &[]);
            assert!(support.contains(&t), "trial {trial}: Sampler drew {t}");
        }
    }
    assert!(compared >= 40, "only {compared} trials were clear-cut");
}

#[test]
fn gpu_draws_follow_the_kept_distribution() {
    // 7 tokens at T = 0.7, three processor settings, 22,000 rows each with its own key, all in
    // one dispatch of 66,000 rows (so past 65535 workgroups: the grid's y dimension too). With
    // 64 threads per row, a quarter of the runtime's 256 that lavapipe would run for 7 tokens
    // (`the_pick_does_not_depend_on_the_workgroup_size` shows it makes no difference).
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5, 0.0, 1.8];
    let vocab = logits.len();
    let n = 22_000;
    // Weights 1, .75, .49, .24, .12, .06, .01 (tokens 1, 6, 4, 0, 2, 5, 3). Temperature only;
    // top-p 0.8 alone (keeps 3); top-k 6 (drops 3), then top-p 0.97 (drops 5), then min-p 0.2
    // (drops 2).
    let settings = [(0, 1.0, 0.0), (0, 0.8, 0.0), (6, 0.97, 0.2)];
    let mut rng = Rng::new(15);
    let mut params = Vec::new();
    for &(top_k, top_p, min_p) in &settings {
        for _ in 0..n {
            params.push(RowSampling {
                temperature: 0.7,
                top_k,
                top_p,
                min_p,
                key: key(&mut rng),
                _pad: [0; 2],
            });
        }
    }
    let all: Vec<f32> = (0..params.len()).flat_map(|_| logits).collect();
    let t0 = std::time::Instant::now();
    let (ids, _) = gpu_sample_wg(64, &all, vocab, &params);
    println!(
        "{} rows × {vocab} on the GPU: {:?}",
        params.len(),
        t0.elapsed()
    );
    for (s, &(top_k, top_p, min_p)) in settings.iter().enumerate() {
        let sp = SamplingParams {
            temperature: 0.7,
            top_k: top_k as usize,
            top_p,
            min_p,
            ..Default::default()
        };
        let support = cpu_support(&logits, &sp).expect("clear-cut setting");
        let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let w = |i: u32| ((logits[i as usize] as f64 - max) / 0.7).exp();
        let total: f64 = support.iter().map(|&i| w(i)).sum();
        let mut counts = vec![0usize; vocab];
        for &id in &ids[s * n..(s + 1) * n] {
            counts[id as usize] += 1;
        }
        let mut line = Vec::new();
        for (i, &c) in counts.iter().enumerate() {
            let f = c as f64 / n as f64;
            if !support.contains(&(i as u32)) {
                assert_eq!(c, 0, "setting {s}: token {i} is outside the kept set");
                continue;
            }
            let want = w(i as u32) / total;
            let se = (want * (1.0 - want) / n as f64).sqrt();
            line.push(format!("{i}: {f:.4}/{want:.4}"));
            assert!(
                (f - want).abs() <= 4.5 * se,
                "setting {s} ({sp:?}): token {i} drawn {f}, probability {want} (se {se})"
            );
        }
        println!("setting {s}: {}", line.join(", "));
    }
}

#[test]
fn a_rows_pick_does_not_depend_on_its_batch() {
    let vocab = 1000;
    let mut rng = Rng::new(16);
    let mix = param_mix(vocab);
    let targets = [
        RowSampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.05,
            key: [1, 2],
            _pad: [0; 2],
        },
        RowSampling {
            temperature: 1.3,
            top_p: 0.5,
            key: [3, 4],
            ..Default::default()
        },
        RowSampling {
            temperature: 1.0,
            key: [5, 6],
            ..Default::default()
        },
    ];
    for (t, target) in targets.iter().enumerate() {
        let row = logits_row(&mut rng, vocab, 3.0, (t == 1).then_some(0.5));
        let (alone, alone_w) = gpu_sample(&row, vocab, &[*target]);
        let mut logits = Vec::new();
        let mut params = Vec::new();
        for r in 0..51 {
            if r == 37 {
                logits.extend(&row);
                params.push(*target);
            } else {
                logits.extend(logits_row(&mut rng, vocab, 2.0, None));
                params.push(RowSampling {
                    key: key(&mut rng),
                    ..mix[r % mix.len()]
                });
            }
        }
        let (batch, batch_w) = gpu_sample(&logits, vocab, &params);
        assert_eq!(batch[37], alone[0], "target {t}: alone vs at index 37");
        let w37 = &batch_w[37 * vocab..38 * vocab];
        assert!(
            w37.iter()
                .zip(&alone_w)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "target {t}: weights differ in the batch"
        );
    }
}

#[test]
fn the_pick_does_not_depend_on_the_workgroup_size() {
    let mut rng = Rng::new(17);
    for vocab in [7usize, 257, 4099] {
        let mix = param_mix(vocab);
        let params: Vec<RowSampling> = mix
            .iter()
            .chain(&mix)
            .map(|p| RowSampling {
                key: key(&mut rng),
                ..*p
            })
            .collect();
        let logits: Vec<f32> = (0..params.len())
            .flat_map(|r| logits_row(&mut rng, vocab, 2.5, (r % 2 == 0).then_some(0.5)))
            .collect();
        let (ids, w) = gpu_sample_wg(256, &logits, vocab, &params);
        for wg in [64, 8] {
            let (ids_wg, w_wg) = gpu_sample_wg(wg, &logits, vocab, &params);
            assert_eq!(ids_wg, ids, "vocab {vocab}: WG {wg} vs 256");
            for (i, (a, b)) in w_wg.iter().zip(&w).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "vocab {vocab}: WG {wg} weight {i}"
                );
            }
        }
    }
}
