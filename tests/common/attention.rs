//! Paged attention against its CPU reference, shared by tests/kernels_attention.rs and
//! tests/kernels_attention_window.rs (each includes this file as a module).
//!
//! A step of mixed sequences (whole prompts, chunks starting mid-sequence, decode tokens) runs
//! kv_write + attention over KV in shuffled, non-contiguous blocks of a pool that starts as
//! large random garbage (a wrong slot shows), and is compared with the reference reading
//! contiguous per-sequence K/V; every token alone (T = 1) must give its row's bits.
//!
//! Building the serial kind costs lavapipe 1-2 s (its NIR passes), the split kind and kv_write
//! milliseconds, and a whole step with its alone checks 10-25 ms: a serial kernel is built
//! once per process ([`Variant::build`] keeps it) and every case, mask, block layout and step
//! of a test that it can run goes through the same one.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, OnceLock};

use crate::common;
use crate::common::plumbing::*;
use wllm::GpuContext;
use wllm::WeightDType::{self, F32};
use wllm::batch::{LogitRows, StepBatch};
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::attention::{SerialTuning, SplitLimits};
use wllm::gpu::kernels::{AttentionKind, AttentionParams, KvWrite, PagedAttention, attention};
use wllm::gpu::kv_pool::{KvPool, KvStorage, KvTextureLayout};
use wllm::gpu::tensor::{encode_words, round_to};
use wllm::kv::{BlockId, BlockPool, BlockTable};

/// The sequences of one step as (len, from): the KV holds `len` tokens after the step and the
/// step's queries are positions `from..len` (a whole prompt, a chunk starting mid-sequence,
/// or one decode token).
pub const SEQS: [(usize, usize); 7] = [
    (33, 32),   // decode, straddles 16 and 32
    (17, 5),    // prefill chunk starting mid-sequence
    (1, 0),     // one-token prompt
    (5, 4),     // decode
    (70, 60),   // chunk crossing the kernel's 64-key tile
    (9, 0),     // whole prompt
    (130, 125), // three key tiles
];

/// Long contexts for the split kind with its own partition rule: the tables hold 720
/// positions, so partitions of 256 (3 per token at most).
pub const LONG_SEQS: [(usize, usize); 5] = [
    (700, 699), // decode in the third partition
    (257, 256), // decode: the first key of the second partition
    (256, 255), // decode: the last key of the first partition
    (513, 500), // chunk crossing from the second partition into the third
    (40, 0),    // whole prompt, one partition
];

/// A whole prompt and its decode steps, as the runner sends them: a prompt of 8k + 3 tokens
/// (workgroups of 8 tokens of one sequence share rows, the last mixes in the next sequence), a
/// prompt chunk starting mid-block, and lone decode tokens.
pub const PROMPT_SEQS: [(usize, usize); 4] = [(35, 0), (45, 21), (20, 19), (1, 0)];

/// Short decode batches of lone tokens from different sequences: one token (every alone check
/// runs one too), two (the model's items fit in one workgroup, so shared tunings give
/// each token's query heads a workgroup of their own) and three.
pub const DECODE_BATCHES: [&[(usize, usize)]; 3] = [
    &[(70, 69)],
    &[(33, 32), (130, 129)],
    &[(33, 32), (5, 4), (18, 17)],
];

/// (block_size, num_heads, num_kv_heads, head_dim, KV storage).
pub type AttnCase = (usize, usize, usize, usize, WeightDType);

/// An attention kernel under test: a kind, and for the split kind its partition size, small
/// so that the contexts of [`SEQS`] span several: up to 9 partitions of 16 (block-aligned), or
/// 2 of 70 (starting mid-block, each a full 64-key tile and a partial one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Variant {
    /// Serial with one query head per thread (rows shared where the adapter allows it).
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

pub const VARIANTS: [Variant; 5] = [
    Variant::Serial,
    Variant::SerialForHeads,
    Variant::SerialTexture { blocks_per_row: 3 },
    Variant::Split(16),
    Variant::Split(70),
];

/// Whether the serial kind can share rows here (the subgroup is exactly its 8-lane workgroup).
pub fn can_share() -> bool {
    can_share_on(ctx())
}

pub fn can_share_on(on: &GpuContext) -> bool {
    let info = &on.adapter_info;
    on.features.contains(wgpu::Features::SUBGROUP)
        && info.subgroup_min_size == 8
        && info.subgroup_max_size == 8
}

impl Variant {
    /// The device this variant runs on.
    pub fn device(self) -> &'static GpuContext {
        match self {
            Variant::ForModel { other_forms: true } => common::gpu_other_forms(),
            _ => ctx(),
        }
    }

    /// Where this variant's pools live, for `num_blocks` blocks of `bs` slots of `kv_dim`.
    pub fn storage(
        self,
        num_blocks: usize,
        bs: usize,
        kv_dim: usize,
        kv: WeightDType,
    ) -> KvStorage {
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

    /// The serial tuning this variant asks for (None: not a fixed serial form).
    fn tuning(self, (nh, nkv): (usize, usize)) -> Option<SerialTuning> {
        match self {
            Variant::Serial => Some(SerialTuning {
                group: 1,
                shared: true,
            }),
            Variant::SerialForHeads | Variant::SerialTexture { .. } => {
                Some(SerialTuning::for_heads(nh, nkv))
            }
            Variant::SerialTuned { group, shared } => Some(SerialTuning { group, shared }),
            _ => None,
        }
    }

    /// Whether this variant builds the split kind (whose scratch `limits` size).
    fn is_split(self) -> bool {
        match self {
            Variant::Split(_) | Variant::SplitForModel => true,
            Variant::ForModel { .. } => self.device().profile.attention == AttentionKind::Split,
            _ => false,
        }
    }

    /// The wrapper for `nh` query heads over `nkv` KV heads reading pools in `storage`; a
    /// split one's scratch is sized for `limits`. Checked at every call, and but for the split
    /// kind (which builds in milliseconds, and whose wrapper owns the scratch its bind groups
    /// share) built once per process for what its pipelines and state depend on: the serial
    /// forms asking for the same tuning and storage share one, whichever constructor built it.
    pub fn build(
        self,
        hd: usize,
        kv: WeightDType,
        heads: (usize, usize),
        limits: SplitLimits,
        storage: KvStorage,
    ) -> Arc<PagedAttention> {
        if self.is_split() {
            let attn = Arc::new(self.construct(hd, kv, heads, limits, storage));
            self.check(&attn, heads, limits, storage);
            return attn;
        }
        let key = BuildKey {
            variant: match self.tuning(heads) {
                Some(SerialTuning { group, shared }) => Variant::SerialTuned { group, shared },
                None => self,
            },
            heads: matches!(self, Variant::ForModel { .. }).then_some(heads),
            hd,
            kv,
            storage,
        };
        let slot = {
            let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
            match built.iter().find(|(k, _)| *k == key) {
                Some((_, slot)) => slot.clone(),
                None => {
                    let slot = Arc::new(OnceLock::new());
                    built.push((key, slot.clone()));
                    slot
                }
            }
        };
        let attn = slot
            .get_or_init(|| Arc::new(self.construct(hd, kv, heads, limits, storage)))
            .clone();
        self.check(&attn, heads, limits, storage);
        attn
    }

    fn construct(
        self,
        hd: usize,
        kv: WeightDType,
        (nh, nkv): (usize, usize),
        limits: SplitLimits,
        storage: KvStorage,
    ) -> PagedAttention {
        let tuning = self.tuning((nh, nkv));
        let attn = match self {
            Variant::ForModel { .. } => {
                PagedAttention::for_model(self.device(), hd, kv, nkv, limits, storage)
            }
            Variant::Serial | Variant::SerialForHeads | Variant::SerialTuned { .. }
                if !storage.is_texture() =>
            {
                PagedAttention::serial(ctx(), hd, kv, tuning.expect("serial"))
            }
            Variant::Serial
            | Variant::SerialForHeads
            | Variant::SerialTuned { .. }
            | Variant::SerialTexture { .. } => {
                PagedAttention::serial_with_storage(ctx(), hd, kv, tuning.expect("serial"), storage)
            }
            Variant::Split(part) => {
                PagedAttention::split_with_partition(ctx(), hd, kv, limits, part)
            }
            Variant::SplitForModel => PagedAttention::split(ctx(), hd, kv, limits),
        };
        attn.unwrap_or_else(|e| panic!("{self:?}: {e}"))
    }

    /// Panics unless `attn` is what this variant builds.
    fn check(
        self,
        attn: &PagedAttention,
        (nh, nkv): (usize, usize),
        limits: SplitLimits,
        storage: KvStorage,
    ) {
        let on = self.device();
        if let Variant::ForModel { .. } = self {
            // The runner's choice for the adapter, tuned as the runner tunes it.
            let kind = on.profile.attention;
            assert_eq!(attn.kind(), kind, "{self:?}");
            let partition = (kind == AttentionKind::Split).then(|| limits.partition());
            assert_eq!(attn.partition(), partition, "{self:?}");
            let tuning = (kind == AttentionKind::Serial).then(|| SerialTuning {
                shared: can_share_on(on),
                ..SerialTuning::for_heads(nh, nkv)
            });
            assert_eq!(attn.serial_tuning(), tuning, "{self:?}");
            assert_eq!(attn.kv_storage(), storage, "{self:?}");
            return;
        }
        let kind = match self {
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
        let built = self.tuning((nh, nkv)).map(|t| SerialTuning {
            shared: t.shared && can_share(),
            ..t
        });
        assert_eq!(attn.serial_tuning(), built, "{self:?}");
        assert_eq!(attn.kv_storage(), storage, "{self:?}");
    }
}

/// What a kept kernel depends on: the variant (the serial forms by the tuning they ask for),
/// the heads only where the runner's constructor tunes by them, and the pools' storage (a
/// texture layout is part of the serial kind's state).
#[derive(Debug, Clone, Copy, PartialEq)]
struct BuildKey {
    variant: Variant,
    heads: Option<(usize, usize)>,
    hd: usize,
    kv: WeightDType,
    storage: KvStorage,
}

/// Every kernel this process kept. A test in its own process (nextest) reuses what it built;
/// tests sharing one (cargo test) also reuse each other's.
#[allow(clippy::type_complexity)]
static BUILT: Mutex<Vec<(BuildKey, Arc<OnceLock<Arc<PagedAttention>>>)>> = Mutex::new(Vec::new());

/// Slots every pool has at least: the steps of a test then share one pool layout for each
/// block size, and with it the kernels built for pools in textures.
pub const MIN_POOL_SLOTS: usize = 512;

/// Block tables for `seqs` (as in [`SEQS`]) in a pool with spare blocks (5 or more, at least
/// [`MIN_POOL_SLOTS`] slots in all); returns (pool blocks, tables).
/// Shuffled: the free list is permuted first and the sequences grow one block each in turn,
/// so every table is scattered; otherwise each sequence gets consecutive blocks.
pub fn block_tables(
    seqs: &[(usize, usize)],
    bs: usize,
    shuffled: bool,
    rng: &mut Rng,
) -> (usize, Vec<BlockTable>) {
    let blocks: Vec<usize> = seqs.iter().map(|(len, _)| len.div_ceil(bs)).collect();
    let num_blocks = (blocks.iter().sum::<usize>() + 5).max(MIN_POOL_SLOTS.div_ceil(bs));
    let mut pool = BlockPool::new(num_blocks, bs).expect("pool");
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
pub struct Mask {
    pub window: Option<u32>,
    pub softcap: Option<f32>,
    pub scale: Option<f32>,
}

impl Mask {
    pub fn window(window: u32) -> Mask {
        Mask {
            window: Some(window),
            ..Mask::default()
        }
    }
}

/// Buffers and submission on one device (the plumbing's helpers use `common::gpu()` only).
#[derive(Clone, Copy)]
pub struct On(&'static GpuContext);

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
pub fn paged_attention_case(
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
pub fn paged_attention_masked(
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
