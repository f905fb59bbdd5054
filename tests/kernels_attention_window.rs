//! Sliding windows and logit soft-caps in paged attention, against the CPU reference.
//!
//! They run through the step of tests/kernels_attention.rs (tests/common/attention.rs) in every
//! form, including the ones `PagedAttention::for_model` builds on both test devices
//! (`common::gpu()` and `common::gpu_other_forms()`): windows smaller than a block, of one
//! block, of several, past the context, on prompts (each token of a chunk its own window),
//! decode and shuffled tables. K/V before every window of a sequence are NaN in the pool, so a
//! kernel that used them shows; a window of at least the context must give the bits of no
//! window, and every token alone the bits of its row in the batch.

#[path = "common/attention.rs"]
mod attention;
mod common;

use attention::*;
use common::plumbing::*;
use wllm::WeightDType::{F16, F32};
use wllm::gpu::kernels::AttentionParams;
use wllm::gpu::kernels::attention::SerialTuning;

/// Every form: the fixed kinds of [`VARIANTS`], the split kind with the model's partition, and
/// what the runner builds on each test device (lavapipe: serial over textures, split over
/// buffers). The serial kind over textures is the runner's (one block per row on lavapipe),
/// not also [`Variant::SerialTexture`]: the same pipelines, built again for another layout
/// (pools of several blocks per row meet windows in
/// `serial_windows_agree_bit_for_bit_across_lane_layouts`).
fn every_form() -> Vec<Variant> {
    let mut forms: Vec<Variant> = VARIANTS
        .into_iter()
        .filter(|v| !matches!(v, Variant::SerialTexture { .. }))
        .collect();
    forms.extend([
        Variant::SplitForModel,
        Variant::ForModel { other_forms: false },
        Variant::ForModel { other_forms: true },
    ]);
    forms
}

/// Runs `masks` on `seqs` in `kind`, each against the reference; the results of masks whose
/// window holds every context of the step (`at_least`) must be the no-window mask's bits.
fn check_masks(
    seqs: &[(usize, usize)],
    c: AttnCase,
    kind: Variant,
    seed: u64,
    masks: &[Mask],
) -> Vec<Vec<f32>> {
    let results = paged_attention_masked(seqs, c, kind, true, seed, masks);
    let longest = seqs.iter().map(|&(len, _)| len).max().unwrap_or(0);
    for (mask, (gpu, want)) in masks.iter().zip(&results) {
        assert_close(&format!("{c:?} {kind:?} {mask:?}"), gpu, want, TOL);
        let unwindowed = Mask {
            window: None,
            ..*mask
        };
        let whole = masks.iter().position(|m| *m == unwindowed);
        if let (Some(w), Some(i)) = (mask.window, whole)
            && w as usize >= longest
        {
            let what = format!("{c:?} {kind:?}: {mask:?} vs no window");
            assert_bits_eq(&what, gpu, &results[i].0);
        }
    }
    results.into_iter().map(|(gpu, _)| gpu).collect()
}

/// Windows against blocks of 4 and the split kinds' partitions of 16 and 70, on [`SEQS`]
/// (contexts up to 130): one key, less than a block, one block, several (across partitions),
/// a partition, past a 64-key tile, and every context or more (the bits of no window).
const WINDOWS: [u32; 9] = [1, 3, 4, 11, 16, 37, 70, 130, 1000];

#[test]
fn sliding_windows_in_every_form() {
    let mut masks = vec![Mask::default()];
    masks.extend(WINDOWS.map(Mask::window));
    for (i, kind) in every_form().into_iter().enumerate() {
        // GQA (3 query heads a KV head) in blocks of 4.
        check_masks(&SEQS, (4, 6, 2, 16, F16), kind, 200 + i as u64, &masks);
    }
    // SmolLM2's heads in blocks of 16, f32: windows inside a block, of one, and of several.
    let masks = [
        Mask::default(),
        Mask::window(5),
        Mask::window(16),
        Mask::window(37),
    ];
    for (i, kind) in every_form().into_iter().enumerate() {
        check_masks(&SEQS, (16, 9, 3, 64, F32), kind, 220 + i as u64, &masks);
    }
}

#[test]
fn softcaps_alone_and_with_windows_in_every_form() {
    let softcap = |cap: f32, scale: f32, window: Option<u32>| Mask {
        window,
        softcap: Some(cap),
        scale: Some(scale),
    };
    let masks = [
        // Scores of about N(0, 4^2) capped at 1.5: most are deep in tanh's saturation.
        softcap(1.5, 1.0, None),
        // Gemma 2's cap of 50 with query_pre_attn_scalar 256's scale, 1 / 16.
        softcap(50.0, 1.0 / 16.0, None),
        softcap(3.0, 0.5, Some(5)),
        softcap(3.0, 0.5, Some(37)),
        // The same cap without and with a window past every context: the same bits.
        softcap(2.0, 0.7, None),
        softcap(2.0, 0.7, Some(200)),
        // A scale alone (no cap, no window).
        Mask {
            scale: Some(0.9),
            ..Mask::default()
        },
    ];
    for (i, kind) in every_form().into_iter().enumerate() {
        check_masks(&SEQS, (4, 6, 2, 16, F16), kind, 240 + i as u64, &masks);
    }
}

#[test]
fn attention_masks_are_checked() {
    let p = AttentionParams {
        num_tokens: 1,
        num_heads: 1,
        num_kv_heads: 1,
        head_dim: 2,
        row_stride: 6,
        block_size: 1,
        max_blocks: 1,
        scale: 1.0,
        max_context_len: 1,
        window: None,
        softcap: None,
    };
    assert!(p.check().is_ok());
    let with = |window, softcap| AttentionParams {
        window,
        softcap,
        ..p
    };
    assert!(with(Some(1), Some(50.0)).check().is_ok());
    assert!(with(Some(0), None).check().is_err(), "a window of 0 keys");
    for cap in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(with(None, Some(cap)).check().is_err(), "soft-cap {cap}");
    }
}

/// Windows over [`LONG_SEQS`] (contexts up to 700, partitions of 256 for the model's split
/// kind, of 16 for the small one): one key; windows ending inside one partition (100), one
/// partition exactly (256) and one past it (257), several (300, 600); every context (700).
/// Partitions wholly before a token's window are not dispatched, and those that are hold keys.
#[test]
fn split_windows_skip_whole_partitions() {
    let c = (16, 4, 2, 64, F16);
    let mut masks = vec![Mask::default()];
    masks.extend([1, 100, 256, 257, 300, 600, 700].map(Mask::window));
    masks.push(Mask {
        window: Some(300),
        softcap: Some(5.0),
        scale: None,
    });
    for (i, kind) in [
        Variant::SplitForModel,
        Variant::Split(16),
        Variant::ForModel { other_forms: false },
        Variant::ForModel { other_forms: true },
    ]
    .into_iter()
    .enumerate()
    {
        check_masks(&LONG_SEQS, c, kind, 260 + i as u64, &masks);
    }
}

/// The serial kind's lane layouts with windows: prompts (workgroups of 8 tokens of one
/// sequence share rows from the earliest of their windows, each token folding its own) and
/// short decode batches (a token's heads share rows). Every tuning and the texture pools must
/// give the bits of one head per thread reading privately.
#[test]
fn serial_windows_agree_bit_for_bit_across_lane_layouts() {
    let masks = [
        Mask::window(1),
        Mask::window(3),
        Mask::window(16),
        Mask::window(19),
        Mask {
            window: Some(7),
            softcap: Some(2.0),
            scale: Some(0.8),
        },
    ];
    let seq_sets: [&[(usize, usize)]; 3] = [&PROMPT_SEQS, DECODE_BATCHES[0], DECODE_BATCHES[1]];
    for (i, c) in [(16, 9, 3, 64, F16), (4, 8, 2, 80, F32)]
        .into_iter()
        .enumerate()
    {
        let (_, nh, nkv, _, _) = c;
        let group = SerialTuning::for_heads(nh, nkv).group;
        for (j, seqs) in seq_sets.into_iter().enumerate() {
            let seed = 280 + 10 * i as u64 + j as u64;
            let private = Variant::SerialTuned {
                group: 1,
                shared: false,
            };
            let want = check_masks(seqs, c, private, seed, &masks);
            for kind in [
                Variant::SerialTuned {
                    group,
                    shared: true,
                },
                Variant::SerialTexture { blocks_per_row: 2 },
            ] {
                let got = paged_attention_masked(seqs, c, kind, true, seed, &masks);
                for ((mask, (gpu, _)), want) in masks.iter().zip(&got).zip(&want) {
                    let what = format!("{c:?} {seqs:?} {kind:?} {mask:?} vs private rows");
                    assert_bits_eq(&what, gpu, want);
                }
            }
        }
    }
}
