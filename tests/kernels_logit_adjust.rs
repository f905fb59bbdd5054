//! The GPU `logit_adjust` kernel (grammar masks and logit_bias) against its CPU reference, bit
//! for bit, and both against the definition written here: a disallowed token is -inf whatever
//! it was, an allowed one gets its (summed) biases added, tokens >= vocab are ignored, rows
//! without adjustments are untouched.
//!
//! Awkward sizes: vocab 1, 31..33, 255, 257 and SmolLM2's 49152 + 5; rows with a mask only,
//! biases only, both, neither; all-zero, all-one and random masks; NaN and ±inf logits; biases
//! on the first and last token, duplicated, past the vocabulary and on masked tokens. Then
//! grids past the 65535-workgroup limit in both dimensions.

mod common;

use common::plumbing::{ctx, run};
use wllm::WeightDType::F32;
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::LogitAdjust;
use wllm::gpu::kernels::logit_adjust::{self, RowAdjust, TokenBias, pack_biases};
use wllm::gpu::tensor::read_words;
use wllm::sampling::Rng;

/// One row's adjustment as the test builds it (biases unmerged, in any order).
#[derive(Clone)]
struct Case {
    mask: Option<Vec<u32>>,
    biases: Vec<(u32, f32)>,
}

/// The kernel's inputs for `cases`: rows, masks back to back, merged biases.
fn pack(cases: &[Case], words: usize) -> (Vec<RowAdjust>, Vec<u32>, Vec<TokenBias>) {
    let lists: Vec<&[(u32, f32)]> = cases.iter().map(|c| &c.biases[..]).collect();
    let (mut rows, biases) = pack_biases(&lists);
    let mut masks = Vec::new();
    for (r, c) in rows.iter_mut().zip(cases) {
        if let Some(m) = &c.mask {
            assert_eq!(m.len(), words);
            r.mask_offset = masks.len() as u32;
            masks.extend_from_slice(m);
        }
    }
    (rows, masks, biases)
}

fn gpu_adjust(logits: &[f32], vocab: usize, cases: &[Case]) -> Vec<u32> {
    let (rows, mut masks, mut biases) = pack(cases, vocab.div_ceil(32));
    // wgpu binds no empty buffer.
    masks.push(0);
    biases.push(TokenBias::default());
    let lw: Vec<u32> = logits.iter().map(|v| v.to_bits()).collect();
    gpu_run(&lw, vocab, &rows, &masks, &biases)
}

fn gpu_run(
    logits: &[u32],
    vocab: usize,
    rows: &[RowAdjust],
    masks: &[u32],
    biases: &[TokenBias],
) -> Vec<u32> {
    let w =
        |v: &[u32], name: &str| GpuTensor::from_words(ctx(), name, v, &[v.len()], F32).expect(name);
    let l = w(logits, "logits");
    let r = w(bytemuck::cast_slice(rows), "rows");
    let m = w(masks, "masks");
    let b = w(bytemuck::cast_slice(biases), "biases");
    let k = LogitAdjust::new(ctx());
    let bg = k.bind(ctx(), &l.buffer, &r.buffer, &m.buffer, &b.buffer);
    run(|pass| k.encode(pass, &bg, rows.len(), vocab));
    read_words(ctx(), &l.buffer).expect("read logits")
}

/// The definition, independent of both implementations.
fn definition(logits: &[f32], vocab: usize, cases: &[Case]) -> Vec<u32> {
    let mut out = logits.to_vec();
    for (r, c) in cases.iter().enumerate() {
        for v in 0..vocab {
            let x = &mut out[r * vocab + v];
            if let Some(m) = &c.mask
                && m[v / 32] & (1 << (v % 32)) == 0
            {
                *x = f32::NEG_INFINITY;
            }
            let mine: Vec<f32> = c
                .biases
                .iter()
                .filter(|b| b.0 as usize == v)
                .map(|b| b.1)
                .collect();
            if !mine.is_empty() {
                *x += mine.iter().sum::<f32>();
            }
        }
    }
    out.iter().map(|v| v.to_bits()).collect()
}

#[track_caller]
fn assert_words(got: &[u32], want: &[u32], vocab: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g,
            w,
            "{what}: row {} column {}: got {} ({g:#x}) want {} ({w:#x})",
            i / vocab,
            i % vocab,
            f32::from_bits(*g),
            f32::from_bits(*w)
        );
    }
}

fn check(logits: &[f32], vocab: usize, cases: &[Case], what: &str) {
    let want = definition(logits, vocab, cases);
    let (rows, masks, biases) = pack(cases, vocab.div_ceil(32));
    let mut cpu = logits.to_vec();
    logit_adjust::reference(&mut cpu, vocab, &rows, &masks, &biases);
    let cpu: Vec<u32> = cpu.iter().map(|v| v.to_bits()).collect();
    assert_words(&cpu, &want, vocab, &format!("{what}: CPU reference"));
    let gpu = gpu_adjust(logits, vocab, cases);
    assert_words(&gpu, &want, vocab, &format!("{what}: GPU"));
}

fn random_logits(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 97 {
            3 => f32::NAN,
            5 => f32::INFINITY,
            7 => f32::NEG_INFINITY,
            _ => (rng.next_f64() as f32 - 0.5) * 30.0,
        })
        .collect()
}

/// Bits set with probability `density`, for tokens below `vocab` only when `clean` (else the
/// bits past the vocabulary in the last word are random too: the kernel must ignore them).
fn random_mask(vocab: usize, density: f64, clean: bool, rng: &mut Rng) -> Vec<u32> {
    let words = vocab.div_ceil(32);
    let mut m = vec![0u32; words];
    let end = if clean { vocab } else { words * 32 };
    for v in 0..end {
        if rng.next_f64() < density {
            m[v / 32] |= 1 << (v % 32);
        }
    }
    m
}

#[test]
fn masks_and_biases_match_the_definition_on_awkward_sizes() {
    let mut rng = Rng::new(11);
    for vocab in [1usize, 31, 32, 33, 255, 257, 49152 + 5] {
        let words = vocab.div_ceil(32);
        let last = (vocab - 1) as u32;
        let every_7th: Vec<(u32, f32)> = (0..vocab as u32).step_by(7).map(|t| (t, 1.5)).collect();
        let cases = vec![
            // Mask only.
            Case {
                mask: Some(random_mask(vocab, 0.3, false, &mut rng)),
                biases: vec![],
            },
            // Biases only: first and last token, a duplicate (summed), one past the vocabulary.
            Case {
                mask: None,
                biases: vec![(last, -100.0), (0, 2.5), (vocab as u32 + 3, 9.0), (0, 1.0)],
            },
            // Neither, between adjusted rows.
            Case {
                mask: None,
                biases: vec![],
            },
            // Both: many biases, some on masked tokens (which stay -inf).
            Case {
                mask: Some(random_mask(vocab, 0.7, true, &mut rng)),
                biases: every_7th
                    .iter()
                    .rev()
                    .cloned()
                    .chain([(last, 0.25)])
                    .collect(),
            },
            // Everything masked, a bias on a masked token.
            Case {
                mask: Some(vec![0; words]),
                biases: vec![(0, 100.0)],
            },
            // Everything allowed (bits past the vocabulary set too), biases on NaN, ±inf.
            Case {
                mask: Some(vec![u32::MAX; words]),
                biases: vec![(last, 100.0), (3, 1.0), (5, -1.0), (7, 1.0)],
            },
        ];
        for rows in 1..=5 {
            // Each row count starts at a different case, so every case sits at row 0 once.
            let cs: Vec<Case> = (0..rows)
                .map(|r| cases[(r + rows - 1) % cases.len()].clone())
                .collect();
            let l = random_logits(rows * vocab, &mut rng);
            check(&l, vocab, &cs, &format!("{rows}×{vocab}"));
        }
        let l = random_logits(cases.len() * vocab, &mut rng);
        check(&l, vocab, &cases, &format!("all cases ×{vocab}"));
    }
}

/// A row without adjustments keeps its bits exactly, NaN payloads and -0.0 included, beside
/// adjusted rows; so do the allowed, unbiased columns of an adjusted row.
#[test]
fn unadjusted_rows_keep_their_bits() {
    let vocab = 300usize;
    let words = vocab.div_ceil(32);
    let mut l: Vec<f32> = (0..3 * vocab).map(|i| i as f32 * 0.25 - 40.0).collect();
    for r in 0..3 {
        l[r * vocab + 2] = f32::from_bits(0x7fc0_1234);
        l[r * vocab + 3] = f32::from_bits(0xffa0_0001);
        l[r * vocab + 4] = -0.0;
    }
    let cases = vec![
        Case {
            mask: Some(vec![0x5555_5555; words]),
            biases: vec![(6, 1.0)],
        },
        Case {
            mask: None,
            biases: vec![],
        },
        Case {
            mask: None,
            biases: vec![(299, -3.0)],
        },
    ];
    let got = gpu_adjust(&l, vocab, &cases);
    let bits: Vec<u32> = l.iter().map(|v| v.to_bits()).collect();
    assert_eq!(&got[vocab..2 * vocab], &bits[vocab..2 * vocab], "plain row");
    assert_eq!(
        &got[2 * vocab..3 * vocab - 1],
        &bits[2 * vocab..3 * vocab - 1],
        "biased row"
    );
    assert_eq!(got[2], bits[2], "allowed NaN in the masked row");
    assert_eq!(got[4], bits[4], "allowed -0.0 in the masked row");
    assert_eq!(got[3], f32::NEG_INFINITY.to_bits(), "masked NaN");
    check(&l, vocab, &cases, "unadjusted row");
}

/// More rows than a grid dimension holds (the threads loop over the rest): every third row
/// masked, every fifth biased.
#[test]
fn rows_past_the_grid_limit() {
    let (rows_n, vocab) = (70_000usize, 3usize);
    let logits: Vec<u32> = (0..rows_n * vocab).map(|i| (i as f32).to_bits()).collect();
    let masks = [0b101u32, 0b010];
    let mut rows = vec![RowAdjust::default(); rows_n];
    let mut biases = Vec::new();
    for (r, a) in rows.iter_mut().enumerate() {
        if r % 3 == 0 {
            a.mask_offset = (r / 3 % 2) as u32;
        }
        if r % 5 == 0 {
            a.bias_start = biases.len() as u32;
            a.bias_count = 1;
            biases.push(TokenBias {
                token: (r % vocab) as u32,
                bias: 0.5,
            });
        }
    }
    let got = gpu_run(&logits, vocab, &rows, &masks, &biases);
    let mut want: Vec<f32> = logits.iter().map(|&w| f32::from_bits(w)).collect();
    logit_adjust::reference(&mut want, vocab, &rows, &masks, &biases);
    let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
    assert_words(&got, &want, vocab, "70000 rows");
    assert_ne!(got, logits, "some rows changed");
}

/// A vocabulary past 65535 workgroups of columns (2^24 + 77): a sparse mask with the words near
/// the end set, biases near both ends.
#[test]
fn vocab_past_the_grid_limit() {
    let vocab = (1usize << 24) + 77;
    let words = vocab.div_ceil(32);
    let logits: Vec<u32> = (0..vocab).map(|i| ((i % 1000) as f32).to_bits()).collect();
    let mut masks = vec![0u32; words];
    masks[0] = 0b11;
    masks[words - 3] = u32::MAX;
    masks[words - 1] = u32::MAX;
    let last = (vocab - 1) as u32;
    let mut rows = vec![RowAdjust::default()];
    rows[0].mask_offset = 0;
    rows[0].bias_count = 4;
    let e = |token, bias| TokenBias { token, bias };
    let biases = vec![
        e(1, 2.0),
        e(2, 3.0),
        e((words as u32 - 1) * 32, -1.0),
        e(last, 7.0),
    ];
    let got = gpu_run(&logits, vocab, &rows, &masks, &biases);
    let mut want: Vec<f32> = logits.iter().map(|&w| f32::from_bits(w)).collect();
    logit_adjust::reference(&mut want, vocab, &rows, &masks, &biases);
    let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
    assert_words(&got, &want, vocab, "one row of 2^24 + 77");
    assert_eq!(
        f32::from_bits(got[last as usize]),
        (last % 1000) as f32 + 7.0
    );
    assert_eq!(f32::from_bits(got[2]), f32::NEG_INFINITY);
}
