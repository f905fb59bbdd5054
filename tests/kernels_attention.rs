//! Paged attention against its CPU reference, over KV in shuffled, non-contiguous blocks.
//!
//! Every attention kind (Serial with one head per thread and with the model's head groups, and
//! Split with small partitions as well as the one the model's context picks) runs
//! kv_write + attention on one step of mixed sequences (whole prompts, chunks starting
//! mid-sequence, decode tokens) whose lengths straddle block, 64-key tile and partition
//! boundaries, and is compared with the reference reading contiguous per-sequence K/V. The pool
//! starts as large random garbage, so a wrong slot shows. Batch invariance (a token alone vs in
//! its batch) and independence of the block placement (shuffled vs consecutive blocks) are
//! checked bit-exactly. Every serial tuning (heads per thread, rows shared across the subgroup
//! or not) must give the same bits: they only move work between lanes, and so must the
//! serial kind reading pools kept in textures (CPU adapters' form), several blocks per row.
//!
//! Sliding windows and logit soft-caps: tests/kernels_attention_window.rs. The step and the
//! variants both files run: tests/common/attention.rs (each kernel is built once per process
//! and runs every case of a test that it can).

#[path = "common/attention.rs"]
mod attention;
mod common;

use attention::*;
use common::plumbing::*;
use wllm::WeightDType::{F16, F32};
use wllm::gpu::kernels::attention::{MAX_SERIAL_GROUP, SerialLanes, SerialTuning, SplitLimits};
use wllm::gpu::kernels::{AttentionKind, PagedAttention};
use wllm::gpu::kv_pool::{self, KvPool, KvStorage, KvTextureLayout};

// ---------------------------------------------------------------------------------------------
// Paged attention

/// Every variant of [`VARIANTS`] on every case (each kernel built once, for all of them), over
/// shuffled blocks against the reference and over consecutive blocks: the same bits.
fn check_paged_attention(cases: &[AttnCase]) {
    for kind in VARIANTS {
        for (i, &c) in cases.iter().enumerate() {
            let seed = i as u64 + 1;
            let (gpu, want) = paged_attention_case(&SEQS, c, kind, true, seed);
            assert_close(&format!("paged attention {c:?} {kind:?}"), &gpu, &want, TOL);
            let (contiguous, _) = paged_attention_case(&SEQS, c, kind, false, seed);
            let what = format!("{c:?} {kind:?}: shuffled vs contiguous blocks");
            assert_bits_eq(&what, &gpu, &contiguous);
        }
    }
}

/// Also the independence of the block placement: same data, scattered vs consecutive blocks,
/// bit-identical outputs (f32 and f16 pools, blocks of 4 and 16, every variant).
#[test]
fn paged_attention_gqa_over_shuffled_blocks() {
    check_paged_attention(&[
        (4, 6, 2, 16, F32),
        (16, 6, 2, 16, F16),
        (16, 6, 2, 64, F32),
        (4, 6, 2, 64, F16),
    ]);
}

#[test]
fn paged_attention_head128_and_one_token_blocks() {
    // head_dim 128 (two dims per thread); block size 1 without grouping: every position is
    // its own table entry.
    check_paged_attention(&[(16, 8, 2, 128, F16), (1, 3, 3, 16, F32)]);
}

#[test]
fn split_attention_over_long_contexts() {
    let c = (16, 4, 2, 64, F16);
    for (i, kind) in [
        Variant::SplitForModel,
        Variant::Split(16),
        Variant::Serial,
        Variant::SerialForHeads,
        Variant::SerialTexture { blocks_per_row: 2 },
    ]
    .into_iter()
    .enumerate()
    {
        let (gpu, want) = paged_attention_case(&LONG_SEQS, c, kind, true, 30 + i as u64);
        assert_close(&format!("paged attention {c:?} {kind:?}"), &gpu, &want, TOL);
    }
}

#[test]
fn split_partition_is_fixed_by_the_model_context() {
    let part = |max_context| {
        SplitLimits {
            max_tokens: 512,
            num_heads: 9,
            max_context,
        }
        .partition()
    };
    // Partitions of 256 keys while the longest context needs at most 16 of them; past that
    // the partition doubles until 16 cover it.
    assert_eq!(part(1), 256);
    assert_eq!(part(2048), 256); // 8 partitions
    assert_eq!(part(4096), 256); // 16
    assert_eq!(part(4097), 512); // 9 of 512
    assert_eq!(part(8192), 512); // SmolLM2: 16 of 512
    assert_eq!(part(8193), 1024); // 9 of 1024
    assert_eq!(part(32768), 2048); // 16 of 2048
    // The tokens per step and the heads size the scratch, never the partition.
    let one = SplitLimits {
        max_tokens: 1,
        num_heads: 1,
        max_context: 8192,
    };
    assert_eq!(one.partition(), 512);
}

#[test]
fn split_attention_needs_its_sizes() {
    let limits = SplitLimits {
        max_tokens: 3,
        num_heads: 2,
        max_context: 50,
    };
    let r = PagedAttention::split_with_partition(ctx(), 64, F16, limits, 0);
    assert!(r.is_err(), "a partition of 0 keys was accepted");
    let attn = PagedAttention::split(ctx(), 64, F16, limits).expect("split");
    assert_eq!(attn.partition(), Some(256));
    // The runner's constructor: Serial on a CPU adapter such as lavapipe (both query heads of
    // the one KV head in a thread), Split on GPUs.
    let attn =
        PagedAttention::for_model(ctx(), 64, F16, 1, limits, KvStorage::Buffer).expect("for_model");
    assert_eq!(attn.kind(), ctx().profile.attention);
    let on_cpu = ctx().adapter_info.device_type == format!("{:?}", wgpu::DeviceType::Cpu);
    let want = if on_cpu {
        AttentionKind::Serial
    } else {
        AttentionKind::Split
    };
    assert_eq!(attn.kind(), want);
    assert_eq!(attn.partition().is_some(), !on_cpu);
    let serial = on_cpu.then_some(SerialTuning {
        group: 2,
        shared: can_share(),
    });
    assert_eq!(attn.serial_tuning(), serial);
}

// ---------------------------------------------------------------------------------------------
// The serial kind's tunings

#[test]
fn serial_groups_are_the_largest_divisor_up_to_eight() {
    let group = |nh, nkv| SerialTuning::for_heads(nh, nkv).group;
    assert_eq!(group(9, 3), 3); // SmolLM2-135M
    assert_eq!(group(8, 2), 4);
    assert_eq!(group(14, 2), 7); // Qwen2.5-0.5B
    assert_eq!(group(32, 4), 8);
    assert_eq!(group(64, 4), 8); // 16 per KV head: two threads of 8
    assert_eq!(group(12, 1), 6);
    assert_eq!(group(9, 1), 3);
    assert_eq!(group(71, 1), 1);
    assert_eq!(group(12, 12), 1); // no grouping (GPT-2)
    assert!(SerialTuning::for_heads(9, 3).shared);
    // Out-of-range groups are refused.
    for group in [0, MAX_SERIAL_GROUP + 1] {
        let tuning = SerialTuning {
            group,
            shared: false,
        };
        let r = PagedAttention::serial(ctx(), 64, F16, tuning);
        assert!(r.is_err(), "a serial group of {group} was accepted");
    }
}

/// (block_size, num_heads, num_kv_heads, head_dim, KV storage) for the serial tunings: groups
/// of 1, 2, 3, 4 and 7 heads per KV head; heads of 2, 6 (rows read word by word), 64, 80 and
/// 256 dims (rows read as vec4s).
const SERIAL_CASES: [AttnCase; 7] = [
    (16, 9, 3, 64, F16),  // SmolLM2-135M
    (16, 7, 1, 64, F16),  // group 7
    (4, 8, 2, 80, F32),   // group 4, a head past one 64-dim part
    (16, 8, 4, 6, F16),   // group 2, rows not 16-byte aligned (3 texels a slot)
    (1, 3, 1, 2, F32),    // group 3, one-token blocks, the smallest head
    (16, 2, 2, 256, F16), // no grouping, the largest head
    (8, 4, 1, 256, F32),  // group 4 of the largest head
];

#[test]
fn serial_tunings_agree_bit_for_bit() {
    for (i, &c) in SERIAL_CASES.iter().enumerate() {
        let (_, nh, nkv, _, _) = c;
        let seed = 50 + i as u64;
        let model = SerialTuning::for_heads(nh, nkv);
        let (want_bits, want) = paged_attention_case(&SEQS, c, Variant::Serial, true, seed);
        assert_close(&format!("serial {c:?}"), &want_bits, &want, TOL);
        // The model's group with rows read privately (and, below, shared where the adapter
        // allows): the same bits as one head per thread.
        let kind = Variant::SerialTuned {
            group: model.group,
            shared: false,
        };
        let (gpu, _) = paged_attention_case(&SEQS, c, kind, true, seed);
        assert_bits_eq(
            &format!("{c:?} {kind:?} vs one head per thread"),
            &gpu,
            &want_bits,
        );
        let (gpu, _) = paged_attention_case(&SEQS, c, Variant::SerialForHeads, true, seed);
        assert_bits_eq(
            &format!("{c:?} {model:?} vs one head per thread"),
            &gpu,
            &want_bits,
        );
        // Rows from textures, where slots are whole texels (all but the 2-dim head; the 6-dim
        // heads' rows start inside texels): one block per row (the runner's layout) in every
        // other case, two in the others (a texture build costs as much as the model's tuning).
        let (_, _, nkv, hd, kv) = c;
        if (nkv * hd) % kv_pool::texel_elements(kv) == 0 {
            let kind = Variant::SerialTexture {
                blocks_per_row: 1 + i % 2,
            };
            let (gpu, _) = paged_attention_case(&SEQS, c, kind, true, seed);
            let what = format!("{c:?} {kind:?} vs buffers, one head per thread");
            assert_bits_eq(&what, &gpu, &want_bits);
        }
    }
}

#[test]
fn serial_shared_rows_match_private_rows_over_prompts() {
    for (i, c) in [
        (16, 9, 3, 64, F16),
        (4, 4, 2, 64, F32),
        (16, 8, 1, 128, F16),
    ]
    .into_iter()
    .enumerate()
    {
        let (_, nh, nkv, _, _) = c;
        let group = SerialTuning::for_heads(nh, nkv).group;
        let seed = 70 + i as u64;
        let private = Variant::SerialTuned {
            group,
            shared: false,
        };
        let shared = Variant::SerialTuned {
            group,
            shared: true,
        };
        let (a, want) = paged_attention_case(&PROMPT_SEQS, c, private, true, seed);
        let (b, _) = paged_attention_case(&PROMPT_SEQS, c, shared, true, seed);
        assert_close(&format!("serial {c:?} {private:?}"), &a, &want, TOL);
        assert_bits_eq(&format!("{c:?}: shared vs private rows"), &b, &a);
        // The runner's form on CPU adapters: shared rows from textures.
        let texture = Variant::SerialTexture { blocks_per_row: 2 };
        let (b, _) = paged_attention_case(&PROMPT_SEQS, c, texture, true, seed);
        assert_bits_eq(&format!("{c:?}: texture vs buffer rows"), &b, &a);
    }
}

#[test]
fn attention_refuses_pools_stored_elsewhere() {
    // 8 slots of 16 f16 elements (2 texels), a block of 4 a row.
    let layout = KvTextureLayout::with_blocks_per_row(2, 4, 16, F16, 1, 64).expect("fits");
    let texture = KvStorage::Texture(layout);
    let buffers = [KvStorage::Buffer, KvStorage::Buffer];
    let pools = |storage: [KvStorage; 2]| {
        storage.map(|s| KvPool::zeros(ctx(), "pool", s, 8, 16, F16).expect("pool"))
    };
    let u = u32s("unused", &[0; 64]);
    // One pipeline each (where pools live is no part of the tuning).
    let tuning = SerialTuning {
        group: 1,
        shared: false,
    };
    let in_textures =
        PagedAttention::serial_with_storage(ctx(), 8, F16, tuning, texture).expect("serial");
    let in_buffers = PagedAttention::serial(ctx(), 8, F16, tuning).expect("serial");
    let bind = |attn: &PagedAttention, [k, v]: &[KvPool; 2]| {
        attn.bind(
            ctx(),
            &u.buffer,
            k,
            v,
            &u.buffer,
            &u.buffer,
            &u.buffer,
            &u.buffer,
        )
    };
    assert!(bind(&in_textures, &pools([texture, texture])).is_ok());
    assert!(bind(&in_buffers, &pools(buffers)).is_ok());
    assert!(bind(&in_textures, &pools(buffers)).is_err());
    assert!(bind(&in_buffers, &pools([texture, texture])).is_err());
    assert!(bind(&in_textures, &pools([texture, KvStorage::Buffer])).is_err());
}

#[test]
fn serial_lane_layout_follows_the_batch_shape() {
    // SmolLM2's 9 query heads over 3 KV heads, as the runner builds the serial kind: decode
    // batches of one or two tokens take lanes over a token's heads, longer ones items, and a
    // prompt chunk of 8 tokens or more lanes over tokens (where rows can be shared at all).
    let limits = SplitLimits {
        max_tokens: 64,
        num_heads: 9,
        max_context: 256,
    };
    let attn = Variant::SerialForHeads.build(64, F16, (9, 3), limits, KvStorage::Buffer);
    for t in [1, 2, 3, 5, 7, 8, 9, 64] {
        let want = if !can_share() {
            SerialLanes::Items
        } else if t >= 8 {
            SerialLanes::Tokens
        } else if t <= 2 {
            SerialLanes::Heads
        } else {
            SerialLanes::Items
        };
        assert_eq!(attn.serial_lanes(t, 9), Some(want), "{t} tokens");
    }
    // The split kind has no lanes to lay out.
    let split = Variant::Split(16).build(64, F16, (9, 3), limits, KvStorage::Buffer);
    assert_eq!(split.serial_lanes(1, 9), None);
}

#[test]
fn serial_short_decode_batches_match_one_head_per_thread() {
    // SmolLM2, a head past one 64-dim part in f32, rows read word by word, and 16 query heads
    // per KV head (two workgroups of heads per token).
    let cases = [
        SERIAL_CASES[0],
        SERIAL_CASES[2],
        SERIAL_CASES[3],
        (16, 16, 1, 64, F16),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        for (j, seqs) in DECODE_BATCHES.iter().enumerate() {
            let seed = 90 + 10 * i as u64 + j as u64;
            let private = Variant::SerialTuned {
                group: 1,
                shared: false,
            };
            let (want_bits, want) = paged_attention_case(seqs, c, private, true, seed);
            assert_close(&format!("serial {c:?} {seqs:?}"), &want_bits, &want, TOL);
            // Shared where the adapter allows: the model's tuning, as the runner builds it.
            let kind = Variant::SerialForHeads;
            let (gpu, _) = paged_attention_case(seqs, c, kind, true, seed);
            assert_bits_eq(&format!("{c:?} {seqs:?} {kind:?}"), &gpu, &want_bits);
        }
    }
}
