//! Paged attention against its CPU reference, over KV in shuffled, non-contiguous blocks.
//!
//! Every attention kind (Workgroup, Serial with one head per thread and with the model's head
//! groups, and Split with small partitions as well as the one the model's context picks) runs
//! kv_write + attention on one step of mixed sequences (whole prompts, chunks starting
//! mid-sequence, decode tokens) whose lengths straddle block, 64-key tile and partition
//! boundaries, and is compared with the reference reading contiguous per-sequence K/V. The pool
//! starts as large random garbage, so a wrong slot shows. Batch invariance (a token alone vs in
//! its batch) and independence of the block placement (shuffled vs consecutive blocks) are
//! checked bit-exactly. Every serial tuning (heads per thread, rows shared across the subgroup
//! or not) must give the same bits: they only move work between lanes, and so must the
//! serial kind reading pools kept in textures (CPU adapters' form), several blocks per row.
//!
//! Sliding windows and logit soft-caps run through the same step in every form, including
//! the ones `PagedAttention::for_model` builds on both test devices (`common::gpu()` and
//! `common::gpu_other_forms()`): windows smaller than a block, of one block, of several, past
//! the context, on prompts (each token of a chunk its own window), decode and shuffled tables.
//! K/V before every window of a sequence are NaN in the pool, so a kernel that used them shows;
//! a window of at least the context must give the bits of no window.

mod common;

use common::plumbing::*;
use wllm::GpuContext;
use wllm::WeightDType::{self, F16, F32};
use wllm::batch::{LogitRows, StepBatch};
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::attention::{MAX_SERIAL_GROUP, SerialLanes, SerialTuning, SplitLimits};
use wllm::gpu::kernels::{AttentionKind, AttentionParams, KvWrite, PagedAttention, attention};
use wllm::gpu::kv_pool::{self, KvPool, KvStorage, KvTextureLayout};
use wllm::gpu::tensor::{encode_words, round_to};
use wllm::kv::{BlockId, BlockPool, BlockTable};

// ---------------------------------------------------------------------------------------------
// Paged attention

/// The sequences of one step as (len, from): the KV holds `len` tokens after the step and the
/// step's queries are positions `from..len` (a whole prompt, a chunk starting mid-sequence,
/// or one decode token).
const SEQS: [(usize, usize); 7] = [
    (33, 32),   // decode, straddles 16 and 32
    (17, 5),    // prefill chunk starting mid-sequence
    (1, 0),     // one-token prompt
    (5, 4),     // decode
    (70, 60),   // chunk crossing the kernel's 64-key tile
    (9, 0),     // whole prompt
    (130, 125), // three key tiles
];

/// (block_size, num_heads, num_kv_heads, head_dim, KV storage).
type AttnCase = (usize, usize, usize, usize, WeightDType);

/// An attention kernel under test: a kind, and for the split kind its partition size, small
/// so that the contexts of [`SEQS`] span several: up to 9 partitions of 16 (block-aligned), or
/// 2 of 70 (starting mid-block, each a full 64-key tile and a partial one).
#[derive(Debug, Clone, Copy)]
enum Variant {
    Workgroup,
    /// Serial as `with_kind` builds it: one query head per thread.
    Serial,
    /// Serial with [`SerialTuning::for_heads`], as the runner builds it.
    SerialForHeads,
    /// Serial with `group` heads per thread, rows shared across the subgroup or not.
    SerialTuned {
        group: usize,
        shared: bool,
    },
    /// Serial with [`SerialTuning::for_heads`] over pools in textures holding
    /// `blocks_per_row` blocks per row (slots must be whole texels).
    SerialTexture {
        blocks_per_row: usize,
    },
    Split(usize),
    /// Split with the partition [`SplitLimits::partition`] picks, as the runner builds it.
    SplitForModel,
    /// What [`PagedAttention::for_model`] builds over the pools [`KvStorage::for_adapter`]
    /// picks, on `common::gpu()` or (`other_forms`) `common::gpu_other_forms()`: on lavapipe
    /// the serial kind over textures, and the split kind over buffers.
    ForModel {
        other_forms: bool,
    },
}

const VARIANTS: [Variant; 6] = [
    Variant::Workgroup,
    Variant::Serial,
    Variant::SerialForHeads,
    Variant::SerialTexture { blocks_per_row: 3 },
    Variant::Split(16),
    Variant::Split(70),
];

/// Whether the serial kind can share rows here (the subgroup is exactly its 8-lane workgroup).
fn can_share() -> bool {
    can_share_on(ctx())
}

fn can_share_on(on: &GpuContext) -> bool {
    let info = &on.adapter_info;
    on.features.contains(wgpu::Features::SUBGROUP)
        && info.subgroup_min_size == 8
        && info.subgroup_max_size == 8
}

impl Variant {
    /// The device this variant runs on.
    fn device(self) -> &'static GpuContext {
        match self {
            Variant::ForModel { other_forms: true } => common::gpu_other_forms(),
            _ => ctx(),
        }
    }

    /// Where this variant's pools live, for `num_blocks` blocks of `bs` slots of `kv_dim`.
    fn storage(self, num_blocks: usize, bs: usize, kv_dim: usize, kv: WeightDType) -> KvStorage {
        match self {
            Variant::ForModel { .. } => {
                KvStorage::for_adapter(self.device(), num_blocks, bs, kv_dim, kv)
                    .unwrap_or_else(|e| panic!("{self:?}: {e}"))
            }
            Variant::SerialTexture { blocks_per_row } => {
                let layout = KvTextureLayout::with_blocks_per_row(
                    num_blocks,
                    bs,
                    kv_dim,
                    kv,
                    blocks_per_row,
                    ctx().limits.max_texture_dimension_2d,
                );
                KvStorage::Texture(layout.expect("slots of whole texels"))
            }
            _ => KvStorage::Buffer,
        }
    }

    /// The wrapper for `nh` query heads over `nkv` KV heads reading pools in `storage`; a
    /// split one's scratch is sized for `limits`.
    fn build(
        self,
        hd: usize,
        kv: WeightDType,
        (nh, nkv): (usize, usize),
        limits: SplitLimits,
        storage: KvStorage,
    ) -> PagedAttention {
        let tuning = match self {
            Variant::Serial => Some(SerialTuning {
                group: 1,
                shared: true,
            }),
            Variant::SerialForHeads | Variant::SerialTexture { .. } => {
                Some(SerialTuning::for_heads(nh, nkv))
            }
            Variant::SerialTuned { group, shared } => Some(SerialTuning { group, shared }),
            _ => None,
        };
        let on = self.device();
        let attn = match self {
            Variant::ForModel { .. } => PagedAttention::for_model(on, hd, kv, nkv, limits, storage),
            Variant::Workgroup => {
                PagedAttention::with_kind(ctx(), hd, kv, AttentionKind::Workgroup)
            }
            Variant::Serial => PagedAttention::with_kind(ctx(), hd, kv, AttentionKind::Serial),
            Variant::SerialForHeads | Variant::SerialTuned { .. } => {
                PagedAttention::serial(ctx(), hd, kv, tuning.expect("serial"))
            }
            Variant::SerialTexture { .. } => {
                PagedAttention::serial_with_storage(ctx(), hd, kv, tuning.expect("serial"), storage)
            }
            Variant::Split(part) => {
                PagedAttention::split_with_partition(ctx(), hd, kv, limits, part)
            }
            Variant::SplitForModel => PagedAttention::split(ctx(), hd, kv, limits),
        };
        let attn = attn.unwrap_or_else(|e| panic!("{self:?}: {e}"));
        if let Variant::ForModel { .. } = self {
            // The runner's choice for the adapter, tuned as the runner tunes it.
            let kind = AttentionKind::for_adapter(on);
            assert_eq!(attn.kind(), kind, "{self:?}");
            let partition = (kind == AttentionKind::Split).then(|| limits.partition());
            assert_eq!(attn.partition(), partition, "{self:?}");
            let tuning = (kind == AttentionKind::Serial).then(|| SerialTuning {
                shared: can_share_on(on),
                ..SerialTuning::for_heads(nh, nkv)
            });
            assert_eq!(attn.serial_tuning(), tuning, "{self:?}");
            assert_eq!(attn.kv_storage(), storage, "{self:?}");
            return attn;
        }
        let kind = match self {
            Variant::Workgroup => AttentionKind::Workgroup,
            Variant::Serial
            | Variant::SerialForHeads
            | Variant::SerialTuned { .. }
            | Variant::SerialTexture { .. } => AttentionKind::Serial,
            Variant::Split(_) | Variant::SplitForModel => AttentionKind::Split,
            Variant::ForModel { .. } => unreachable!("checked above"),
        };
        assert_eq!(attn.kind(), kind);
        let partition = match self {
            Variant::Split(part) => Some(part),
            Variant::SplitForModel => Some(limits.partition()),
            _ => None,
        };
        assert_eq!(attn.partition(), partition);
        // Shared rows only where the adapter's subgroup is the workgroup.
        let built = tuning.map(|t| SerialTuning {
            shared: t.shared && can_share(),
            ..t
        });
        assert_eq!(attn.serial_tuning(), built, "{self:?}");
        assert_eq!(attn.kv_storage(), storage, "{self:?}");
        attn
    }
}

/// Block tables for `seqs` (as in [`SEQS`]) in a pool with spare blocks; returns (pool
/// blocks, tables).
/// Shuffled: the free list is permuted first and the sequences grow one block each in turn,
/// so every table is scattered; otherwise each sequence gets consecutive blocks.
fn block_tables(
    seqs: &[(usize, usize)],
    bs: usize,
    shuffled: bool,
    rng: &mut Rng,
) -> (usize, Vec<BlockTable>) {
    let blocks: Vec<usize> = seqs.iter().map(|(len, _)| len.div_ceil(bs)).collect();
    let mut pool = BlockPool::new(blocks.iter().sum::<usize>() + 5, bs).expect("pool");
    if shuffled {
        let n = pool.num_blocks();
        let mut all: Vec<BlockId> = (0..n).map(|_| pool.allocate().expect("block")).collect();
        rng.shuffle(&mut all);
        all.into_iter()
            .for_each(|b| pool.release(b).expect("release"));
    }
    let mut tables = vec![BlockTable::new(); seqs.len()];
    for round in 1..=blocks.iter().copied().max().unwrap_or(0) {
        for (table, &(len, _)) in tables.iter_mut().zip(seqs) {
            let tokens = if shuffled { len.min(round * bs) } else { len };
            table.grow_to(&mut pool, tokens).expect("grow");
        }
    }
    let scattered = tables
        .iter()
        .any(|t| t.blocks().windows(2).any(|w| w[1].0 != w[0].0 + 1));
    assert_eq!(scattered, shuffled, "block layout");
    (pool.num_blocks(), tables)
}

/// What a step's attention computes beyond softmax(q . k / sqrt(head_dim)) over every key up
/// to the query's own: a sliding window, a logit soft-cap, another scale (none by default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Mask {
    window: Option<u32>,
    softcap: Option<f32>,
    scale: Option<f32>,
}

impl Mask {
    fn window(window: u32) -> Mask {
        Mask {
            window: Some(window),
            ..Mask::default()
        }
    }
}

/// Buffers and submission on one device (the plumbing's helpers use `common::gpu()` only).
#[derive(Clone, Copy)]
struct On(&'static GpuContext);

impl On {
    fn f32s(self, name: &str, data: &[f32], shape: &[usize]) -> GpuTensor {
        GpuTensor::from_f32(self.0, name, data, shape, F32)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn u32s(self, name: &str, data: &[u32]) -> GpuTensor {
        GpuTensor::from_words(self.0, name, data, &[data.len()], F32)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn run(self, f: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
        let mut enc = self
            .0
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("test"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("test"),
                timestamp_writes: None,
            });
            f(&mut pass);
        }
        self.0.queue.submit([enc.finish()]);
    }

    fn read(self, t: &GpuTensor) -> Vec<f32> {
        t.read_f32(self.0).expect("read back")
    }
}

/// [`paged_attention_masked`] with no window, no soft-cap and the scale 1 / sqrt(head_dim).
fn paged_attention_case(
    seqs: &[(usize, usize)],
    c: AttnCase,
    kind: Variant,
    shuffled: bool,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let mut results = paged_attention_masked(seqs, c, kind, shuffled, seed, &[Mask::default()]);
    results.pop().expect("one mask, one result")
}

/// Builds the step (K/V of earlier positions written straight into the pool, the step's own
/// K/V through kv_write) and, with one kernel built once, for each of `masks`: runs kv_write +
/// paged attention in one pass, checks every listed token alone (T = 1) against its row in the
/// batch bit for bit; returns (gpu, reference) per mask. With a window, the pool's K/V of each
/// sequence's positions before the earliest window of its tokens are NaN (a kernel reading them
/// into its result shows).
fn paged_attention_masked(
    seqs: &[(usize, usize)],
    c: AttnCase,
    kind: Variant,
    shuffled: bool,
    seed: u64,
    masks: &[Mask],
) -> Vec<(Vec<f32>, Vec<f32>)> {
    let (bs, nh, nkv, hd, kv) = c;
    let on = On(kind.device());
    let kv_dim = nkv * hd;
    let q_dim = nh * hd;
    let row_stride = q_dim + 2 * kv_dim + 2;
    let mut rng = Rng::new(seed);
    // Contiguous per-sequence K/V (len, kv_dim), as stored (f16-rounded when the pool is f16).
    let mut per_seq = || -> Vec<Vec<f32>> {
        seqs.iter()
            .map(|(len, _)| round_to(&rng.normals(len * kv_dim, 1.0), kv))
            .collect()
    };
    let (keys, values) = (per_seq(), per_seq());

    let mut layout_rng = Rng::new(seed ^ 0xB10C);
    let (num_blocks, tables) = block_tables(seqs, bs, shuffled, &mut layout_rng);
    let max_blocks = tables.iter().map(|t| t.blocks().len()).max().unwrap_or(0) + 1;
    let mut batch = StepBatch::new(max_blocks);
    for (&(len, from), table) in seqs.iter().zip(&tables) {
        let tokens: Vec<u32> = (from..len).map(|p| p as u32).collect();
        batch
            .push_sequence(&tokens, from, table, bs, LogitRows::Last)
            .expect("table covers the step");
    }
    let t = batch.num_tokens();

    // qkv rows: Q random; K and V are the token's own entries of keys/values.
    let mut qkv = rng.normals(t * row_stride, 1.0);
    for tok in 0..t {
        let (s, pos) = (batch.token_seq[tok] as usize, batch.positions[tok] as usize);
        let row = &mut qkv[tok * row_stride..(tok + 1) * row_stride];
        row[q_dim..q_dim + kv_dim].copy_from_slice(&keys[s][pos * kv_dim..(pos + 1) * kv_dim]);
        row[q_dim + kv_dim..q_dim + 2 * kv_dim]
            .copy_from_slice(&values[s][pos * kv_dim..(pos + 1) * kv_dim]);
    }
    // The pool: large garbage everywhere (a wrong slot shows), then the earlier positions.
    let num_slots = num_blocks * bs;
    let mut k_pool = rng.normals(num_slots * kv_dim, 10.0);
    let mut v_pool = rng.normals(num_slots * kv_dim, 10.0);
    for ((&(_, from), table), (k, v)) in seqs.iter().zip(&tables).zip(keys.iter().zip(&values)) {
        for pos in 0..from {
            let slot = table.slot(pos, bs).expect("slot") as usize;
            let (dst, src) = (
                slot * kv_dim..(slot + 1) * kv_dim,
                pos * kv_dim..(pos + 1) * kv_dim,
            );
            k_pool[dst.clone()].copy_from_slice(&k[src.clone()]);
            v_pool[dst].copy_from_slice(&v[src]);
        }
    }

    let qkv_b = on.f32s("qkv", &qkv, &[t, row_stride]);
    let storage = kind.storage(num_blocks, bs, kv_dim, kv);
    let slots_b = on.u32s("slot_mapping", &batch.slot_mapping);
    let tables_b = on.u32s("block_tables", &batch.block_tables);
    let seq_b = on.u32s("token_seq", &batch.token_seq);
    let pos_b = on.u32s("positions", &batch.positions);
    let kvw = KvWrite::new(on.0, kv, storage);
    // The scratch fits this batch and any position the tables can hold.
    let limits = SplitLimits {
        max_tokens: t,
        num_heads: nh,
        max_context: max_blocks * bs,
    };
    let attn = kind.build(hd, kv, (nh, nkv), limits, storage);
    let longest = seqs.iter().map(|&(len, _)| len).max();

    let mut results = Vec::new();
    for mask in masks {
        let p = AttentionParams {
            num_tokens: t,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            row_stride,
            block_size: bs,
            max_blocks,
            scale: mask.scale.unwrap_or(1.0 / (hd as f32).sqrt()),
            max_context_len: batch.context_lens.iter().max().map_or(0, |&c| c as usize),
            window: mask.window,
            softcap: mask.softcap,
        };
        p.check().expect("a valid mask");
        assert_eq!(Some(p.max_context_len), longest, "the longest sequence");
        let want =
            attention::reference(&qkv, &keys, &values, &batch.token_seq, &batch.positions, &p);

        // NaN in every slot before the earliest window of the sequence's tokens (the first
        // one's: the step's positions are from..len).
        let (mut k_pool, mut v_pool) = (k_pool.clone(), v_pool.clone());
        if let Some(w) = mask.window {
            for (&(_, from), table) in seqs.iter().zip(&tables) {
                for pos in 0..(from + 1).saturating_sub(w as usize) {
                    let slot = table.slot(pos, bs).expect("slot") as usize;
                    k_pool[slot * kv_dim..(slot + 1) * kv_dim].fill(f32::NAN);
                    v_pool[slot * kv_dim..(slot + 1) * kv_dim].fill(f32::NAN);
                }
            }
        }
        let upload = |name: &str, data: &[f32]| {
            let pool = KvPool::zeros(on.0, name, storage, num_slots, kv_dim, kv).expect(name);
            pool.write_words(on.0, storage, kv_dim, kv, &encode_words(data, kv))
                .expect(name);
            pool
        };
        let (k_cache, v_cache) = (upload("k_cache", &k_pool), upload("v_cache", &v_pool));
        let out = on.f32s("out", &rng.normals(t * q_dim, 1.0), &[t, q_dim]);
        let kvw_bg = kvw.bind(on.0, &qkv_b.buffer, &slots_b.buffer, &k_cache, &v_cache);
        let bind = |q: &GpuTensor,
                    tables: &GpuTensor,
                    seq: &GpuTensor,
                    pos: &GpuTensor,
                    out: &GpuTensor| {
            attn.bind(
                on.0,
                &q.buffer,
                &k_cache,
                &v_cache,
                &tables.buffer,
                &seq.buffer,
                &pos.buffer,
                &out.buffer,
            )
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"))
        };
        let attn_bg = bind(&qkv_b, &tables_b, &seq_b, &pos_b, &out);
        on.run(|pass| {
            kvw.encode(pass, &kvw_bg, t, row_stride, q_dim, kv_dim);
            attn.encode(pass, &attn_bg, &p);
        });
        let gpu = on.read(&out);

        // Batch invariance: each decode token, and the first and last token of every chunk,
        // alone in a T = 1 step over the same (now fully written) pool.
        let mut alone = Vec::new();
        for s in 0..seqs.len() {
            let (a, b) = (batch.query_start[s], batch.query_start[s + 1]);
            alone.extend([a as usize, b as usize - 1]);
        }
        alone.dedup();
        for tok in alone {
            let s = batch.token_seq[tok] as usize;
            let row = tok * row_stride..(tok + 1) * row_stride;
            let q1 = on.f32s("qkv row", &qkv[row], &[1, row_stride]);
            let table1 = &batch.block_tables[s * max_blocks..(s + 1) * max_blocks];
            let table1 = on.u32s("table row", table1);
            let seq1 = on.u32s("token_seq", &[0]);
            let pos1 = on.u32s("positions", &[batch.positions[tok]]);
            let out1 = on.f32s("out row", &rng.normals(q_dim, 1.0), &[1, q_dim]);
            let bg1 = bind(&q1, &table1, &seq1, &pos1, &out1);
            // Its own context sizes the grid: fewer partitions than the batch's.
            let p1 = AttentionParams {
                num_tokens: 1,
                max_context_len: batch.positions[tok] as usize + 1,
                ..p
            };
            on.run(|pass| attn.encode(pass, &bg1, &p1));
            assert_bits_eq(
                &format!(
                    "{c:?} {kind:?} {mask:?}: token {tok} (seq {s}, position {}) alone vs in a \
                     batch of {t}",
                    batch.positions[tok]
                ),
                &on.read(&out1),
                &gpu[tok * q_dim..(tok + 1) * q_dim],
            );
        }
        results.push((gpu, want));
    }
    results
}

fn check_paged_attention(cases: &[AttnCase]) {
    for kind in VARIANTS {
        for (i, &c) in cases.iter().enumerate() {
            let (gpu, want) = paged_attention_case(&SEQS, c, kind, true, i as u64 + 1);
            assert_close(&format!("paged attention {c:?} {kind:?}"), &gpu, &want, TOL);
        }
    }
}

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
fn paged_attention_does_not_depend_on_block_placement() {
    // Same data, scattered vs consecutive blocks: bit-identical outputs.
    for (kv, kind) in [F32, F16]
        .into_iter()
        .flat_map(|kv| VARIANTS.map(|k| (kv, k)))
    {
        let c = (4, 6, 2, 16, kv);
        let (scattered, want) = paged_attention_case(&SEQS, c, kind, true, 9);
        let (contiguous, _) = paged_attention_case(&SEQS, c, kind, false, 9);
        let what = format!("{c:?} {kind:?}: shuffled vs contiguous blocks");
        assert_bits_eq(&what, &scattered, &contiguous);
        assert_close(
            &format!("paged attention {c:?} {kind:?}"),
            &scattered,
            &want,
            TOL,
        );
    }
}

/// Long contexts for the split kind with its own partition rule: the tables hold 720
/// positions, so partitions of 256 (3 per token at most).
const LONG_SEQS: [(usize, usize); 5] = [
    (700, 699), // decode in the third partition
    (257, 256), // decode: the first key of the second partition
    (256, 255), // decode: the last key of the first partition
    (513, 500), // chunk crossing from the second partition into the third
    (40, 0),    // whole prompt, one partition
];

#[test]
fn split_attention_over_long_contexts() {
    let c = (16, 4, 2, 64, F16);
    for (i, kind) in [
        Variant::SplitForModel,
        Variant::Split(16),
        Variant::Workgroup,
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
    // with_kind has no sizes for the scratch: the split kind is refused, not half built.
    let r = PagedAttention::with_kind(ctx(), 64, F16, AttentionKind::Split);
    assert!(
        r.is_err(),
        "with_kind built a split attention without its limits"
    );
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
    assert_eq!(attn.kind(), AttentionKind::for_adapter(ctx()));
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
        // heads' rows start inside texels): one block per row, and two.
        let (_, _, nkv, hd, kv) = c;
        if (nkv * hd) % kv_pool::texel_elements(kv) == 0 {
            for blocks_per_row in [1, 2] {
                let kind = Variant::SerialTexture { blocks_per_row };
                let (gpu, _) = paged_attention_case(&SEQS, c, kind, true, seed);
                let what = format!("{c:?} {kind:?} vs buffers, one head per thread");
                assert_bits_eq(&what, &gpu, &want_bits);
            }
        }
    }
}

/// A whole prompt and its decode steps, as the runner sends them: a prompt of 8k + 3 tokens
/// (workgroups of 8 tokens of one sequence share rows, the last mixes in the next sequence), a
/// prompt chunk starting mid-block, and lone decode tokens.
const PROMPT_SEQS: [(usize, usize); 4] = [(35, 0), (45, 21), (20, 19), (1, 0)];

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
    let tuning = SerialTuning::for_heads(2, 1);
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

/// Short decode batches of lone tokens from different sequences: one token (every alone check
/// above runs one too), two (the model's items fit in one workgroup, so shared tunings give
/// each token's query heads a workgroup of their own) and three.
const DECODE_BATCHES: [&[(usize, usize)]; 3] = [
    &[(70, 69)],
    &[(33, 32), (130, 129)],
    &[(33, 32), (5, 4), (18, 17)],
];

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
    let workgroup = Variant::Workgroup.build(64, F16, (9, 3), limits, KvStorage::Buffer);
    assert_eq!(workgroup.serial_lanes(1, 9), None);
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

// ---------------------------------------------------------------------------------------------
// Sliding windows and logit soft-caps

/// Every form: the fixed kinds of [`VARIANTS`], the split kind with the model's partition, and
/// what the runner builds on each test device (lavapipe: serial over textures, split over
/// buffers).
fn every_form() -> Vec<Variant> {
    let mut forms = VARIANTS.to_vec();
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
        Variant::Workgroup,
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
