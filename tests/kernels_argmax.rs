//! The GPU argmax (greedy sampling) against the CPU's `sampling::argmax`, and both against the
//! definition: the largest non-NaN value, lowest index on ties, 0 for an all-NaN row.
//!
//! Rows are random (vocab sizes around the workgroup size and SmolLM2's 49152 + 5), coarsely
//! quantized so that ties are common, and hand-made edge rows: NaN, ±inf, -0.0 next to 0.0,
//! the maximum first or last.

mod common;

use common::plumbing::{ctx, run};
use wllm::WeightDType::F32;
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::{Argmax, argmax};
use wllm::gpu::tensor::read_words;

fn gpu_argmax(logits: &[f32], vocab: usize) -> Vec<u32> {
    let rows = logits.len() / vocab;
    let words: Vec<u32> = logits.iter().map(|v| v.to_bits()).collect();
    let lt = GpuTensor::from_words(ctx(), "logits", &words, &[rows, vocab], F32).expect("logits");
    let ids = GpuTensor::zeros(ctx(), "ids", &[rows], F32).expect("ids");
    let k = Argmax::new(ctx());
    let bg = k.bind(ctx(), &lt.buffer, &ids.buffer);
    run(|pass| k.encode(pass, &bg, rows, vocab));
    read_words(ctx(), &ids.buffer).expect("read ids")
}

/// The definition, written independently of both implementations.
fn definition(row: &[f32]) -> u32 {
    let best = row
        .iter()
        .filter(|v| !v.is_nan())
        .fold(None::<f32>, |m, &v| Some(m.map_or(v, |m| m.max(v))));
    match best {
        None => 0,
        Some(b) => row.iter().position(|&v| v == b).unwrap() as u32,
    }
}

fn check(logits: &[f32], vocab: usize, what: &str) {
    let want: Vec<u32> = logits.chunks(vocab).map(definition).collect();
    assert_eq!(argmax::reference(logits, vocab), want, "{what}: CPU argmax");
    assert_eq!(gpu_argmax(logits, vocab), want, "{what}: GPU argmax");
}

fn random_rows(rows: usize, vocab: usize, levels: Option<f32>, seed: u64) -> Vec<f32> {
    let mut rng = wllm::sampling::Rng::new(seed);
    (0..rows * vocab)
        .map(|_| {
            let v = (rng.next_f64() as f32 - 0.5) * 40.0;
            levels.map_or(v, |l| (v / l).round() * l)
        })
        .collect()
}

#[test]
fn random_rows_match_the_cpu() {
    for (i, &vocab) in [1usize, 2, 63, 64, 65, 1000, 49157].iter().enumerate() {
        for rows in [1usize, 3, 5] {
            let l = random_rows(rows, vocab, None, 7 + i as u64 * 10 + rows as u64);
            check(&l, vocab, &format!("random {rows}×{vocab}"));
        }
    }
}

#[test]
fn ties_go_to_the_lowest_index() {
    // Values on a grid of 8: many rows have the maximum several times.
    for &vocab in &[65usize, 777, 4099] {
        let l = random_rows(9, vocab, Some(8.0), vocab as u64);
        let maxima = l
            .chunks(vocab)
            .filter(|r| {
                let m = r.iter().cloned().fold(f32::MIN, f32::max);
                r.iter().filter(|&&v| v == m).count() > 1
            })
            .count();
        assert!(maxima > 0, "the test data should contain tied maxima");
        check(&l, vocab, &format!("ties ×{vocab}"));
    }
}

#[test]
fn nan_infinities_and_signed_zeros() {
    let vocab = 130;
    let nan = f32::NAN;
    let mut rows: Vec<Vec<f32>> = Vec::new();
    let base = |fill: f32| vec![fill; vocab];
    // All NaN: 0.
    rows.push(base(nan));
    // NaN everywhere but one finite value near the end.
    let mut r = base(nan);
    r[127] = -3.0;
    rows.push(r);
    // NaN first, then -inf everywhere: the first -inf (index 1).
    let mut r = base(f32::NEG_INFINITY);
    r[0] = nan;
    rows.push(r);
    // +inf twice: the first.
    let mut r = random_rows(1, vocab, None, 3);
    r[90] = f32::INFINITY;
    r[40] = f32::INFINITY;
    rows.push(r);
    // -0.0 before 0.0 with everything else negative: equal values, lower index.
    let mut r = base(-1.0);
    r[70] = -0.0;
    r[71] = 0.0;
    rows.push(r);
    // Maximum at the last and at the first index.
    let mut r = random_rows(1, vocab, None, 4);
    r[vocab - 1] = 100.0;
    rows.push(r);
    let mut r = random_rows(1, vocab, None, 5);
    r[0] = 100.0;
    rows.push(r);
    let flat: Vec<f32> = rows.concat();
    check(&flat, vocab, "edge rows");
    assert_eq!(
        gpu_argmax(&flat, vocab),
        vec![0, 127, 1, 40, 70, vocab as u32 - 1, 0]
    );
}
