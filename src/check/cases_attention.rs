//! `wllm check`'s attention cases: paged attention (the serial kind of the CPU forms, over K/V
//! pools in buffers and in textures, and the split kind of the GPU forms) on a mixed step and
//! a lone decode token, against [`attention::reference`]; kv_write and rope_kv_write against
//! theirs. The pools start as large garbage (a wrong slot shows), a sliding window's masked
//! slots as NaN (a kernel reading them shows), and the block tables are scattered over the
//! pool. [`Attn`] and [`SeqData`] also drive the properties (`properties.rs`).

use std::cell::RefCell;
use std::rc::Rc;

use super::cases::{floats, forms, mismatches, normals, result, run_pass, words};
use super::{CaseResult, Target, nmse};
use crate::gpu::kernels::attention::{self, AttentionParams, SerialTuning, SplitLimits};
use crate::gpu::kernels::rope::RopeStyle;
use crate::gpu::kernels::{
    KvWrite, PagedAttention, RopeKvWrite, RopeParams, kv_write, rope, rope_kv_write,
};
use crate::gpu::kv_pool::{KvPool, KvStorage, KvTextureLayout};
use crate::gpu::tensor::{encode_words, round_to};
use crate::gpu::{GpuContext, GpuError, KernelForms, WeightDType};
use crate::sampling::Rng;

/// Paged attention against the f64 reference (which reads the K/V as stored, f16-rounded for
/// f16 pools): f32 dot products and an f32 softmax, so only rounding separates them.
const ATTENTION_NMSE: f64 = 1e-9;
/// rope_kv_write: Q and K rotated in f32 against the f64 rotation; an f16 pool may round the
/// rotated K to the neighbouring f16 (2^-11 relative).
const ROPE_F32_NMSE: f64 = 1e-10;
const ROPE_F16_NMSE: f64 = 1e-7;

/// The step every attention case runs, as (len, from): after the step a sequence holds `len`
/// tokens and its queries are positions `from..len`: a decode token straddling two blocks of
/// 16, a prefill chunk starting and ending mid-block, a chunk crossing the serial kernel's
/// 64-key tile, a one-token prompt.
pub(super) const STEP: [(usize, usize); 4] = [(33, 32), (21, 13), (70, 60), (1, 0)];

/// One attention shape: block size, query heads, KV heads, head width, KV storage type and
/// the mask (sliding window, soft-cap).
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub bs: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    pub kv: WeightDType,
    pub window: Option<u32>,
    pub softcap: Option<f32>,
}

impl Shape {
    fn kv_dim(&self) -> usize {
        self.nkv * self.hd
    }

    fn q_dim(&self) -> usize {
        self.nh * self.hd
    }

    /// Q heads, K, V and a 2-column pad.
    fn row_stride(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim() + 2
    }

    /// Blocks of every pool of this shape: those of [`STEP`] and 4 spare (one layout, so one
    /// texture kernel, serves every step).
    pub fn num_blocks(&self) -> usize {
        STEP.iter()
            .map(|(len, _)| len.div_ceil(self.bs))
            .sum::<usize>()
            + 4
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "bs {}, {}/{} heads × {}",
            self.bs, self.nh, self.nkv, self.hd
        );
        if let Some(w) = self.window {
            s += &format!(", window {w}");
        }
        if let Some(c) = self.softcap {
            s += &format!(", softcap {c}");
        }
        s
    }
}

/// A kernel a shape runs: its name, its kind, and whether the pools are textures.
pub(super) type Kernel = (&'static str, Kind, bool);

/// The shapes, each with the kernels it runs (name, kind, pools in textures): GQA 4 at head
/// 64 in f16 with blocks of 16 and a logit soft-cap, through the serial kind over textures
/// (the runner's choice on CPU adapters: 4 query heads to a thread) and the split kind; GQA 1
/// at head 80 (past one 64-dim part) in f32 with one-token blocks and a sliding window, through
/// the serial kind over buffers and the split kind. The serial kind costs lavapipe 1-2 s to
/// build, so each storage gets one shape (and the properties reuse these kernels).
pub(super) const SHAPES: [(Shape, [Kernel; 2]); 2] = [
    (
        Shape {
            bs: 16,
            nh: 8,
            nkv: 2,
            hd: 64,
            kv: WeightDType::F16,
            window: None,
            softcap: Some(5.0),
        },
        [
            ("serial (cpu forms), texture", Kind::Serial, true),
            ("split/16 (gpu forms), buffer", Kind::Split(16), false),
        ],
    ),
    (
        Shape {
            bs: 1,
            nh: 3,
            nkv: 3,
            hd: 80,
            kv: WeightDType::F32,
            window: Some(5),
            softcap: None,
        },
        [
            ("serial (cpu forms), buffer", Kind::Serial, false),
            ("split/16 (gpu forms), buffer", Kind::Split(16), false),
        ],
    ),
];

/// Which attention kernel: the serial kind (the CPU forms') tuned as the runner tunes it, or
/// the split kind (the GPU forms') with a partition of this many keys (small, so that short
/// contexts span several and the combine runs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Serial,
    Split(usize),
}

/// One sequence's part of a step: its K/V of every position (as stored: f16-rounded for f16
/// pools) and the queries of positions `from..len`.
pub(super) struct SeqData {
    pub len: usize,
    pub from: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    q: Vec<f32>,
}

impl SeqData {
    pub fn new(s: &Shape, (len, from): (usize, usize), seed: u64) -> SeqData {
        let mut rng = Rng::new(seed);
        let n = len * s.kv_dim();
        SeqData {
            len,
            from,
            keys: round_to(&normals(&mut rng, n, 1.0), s.kv),
            values: round_to(&normals(&mut rng, n, 1.0), s.kv),
            q: normals(&mut rng, (len - from) * s.q_dim(), 1.0),
        }
    }
}

/// A paged attention kernel with the kv_write feeding it, over pools of one layout.
pub(super) struct Attn {
    pub shape: Shape,
    pub storage: KvStorage,
    kernel: PagedAttention,
    kvw: KvWrite,
}

/// Most tokens a step of the checks holds (the split kind's scratch).
const MAX_TOKENS: usize = 32;

impl Attn {
    /// The kernel of `kind` over pools in buffers, or (`texture`) in textures of 3 blocks a
    /// row; unsupported where the adapter's textures cannot hold the pool.
    pub fn build(
        ctx: &GpuContext,
        shape: Shape,
        kind: Kind,
        texture: bool,
    ) -> Result<Attn, GpuError> {
        let (nb, kv_dim) = (shape.num_blocks(), shape.kv_dim());
        let storage = if texture {
            let max_dim = ctx.limits.max_texture_dimension_2d;
            let layout =
                KvTextureLayout::with_blocks_per_row(nb, shape.bs, kv_dim, shape.kv, 3, max_dim)
                    .filter(|l| l.bytes() <= ctx.max_binding_bytes())
                    .ok_or_else(|| {
                        GpuError::MissingFeature(format!(
                            "a texture of {nb} blocks of {} slots of {kv_dim} {} within {max_dim} \
                             texels a side and {} bytes",
                            shape.bs,
                            shape.kv.name(),
                            ctx.max_binding_bytes()
                        ))
                    })?;
            KvStorage::Texture(layout)
        } else {
            KvStorage::Buffer
        };
        let kernel = match kind {
            Kind::Serial => {
                let tuning = SerialTuning::for_heads(shape.nh, shape.nkv);
                PagedAttention::serial_with_storage(ctx, shape.hd, shape.kv, tuning, storage)?
            }
            Kind::Split(partition) => {
                let limits = SplitLimits {
                    max_tokens: MAX_TOKENS,
                    num_heads: shape.nh,
                    max_context: nb * shape.bs,
                };
                PagedAttention::split_with_partition(ctx, shape.hd, shape.kv, limits, partition)?
            }
        };
        Ok(Attn {
            shape,
            storage,
            kernel,
            kvw: KvWrite::new(ctx, shape.kv, storage),
        })
    }

    /// One step over `seqs` (their tokens in order): the step's K/V go through kv_write, the
    /// earlier positions straight into the pool, whose blocks are handed out in order, or
    /// (`shuffle`) from a permutation of the pool. Returns (gpu, reference), each
    /// (tokens, q_dim).
    pub fn run(
        &self,
        ctx: &GpuContext,
        seqs: &[&SeqData],
        shuffle: Option<u64>,
    ) -> Result<(Vec<f32>, Vec<f32>), GpuError> {
        let s = &self.shape;
        let (bs, kv_dim, q_dim, stride) = (s.bs, s.kv_dim(), s.q_dim(), s.row_stride());
        let nb = s.num_blocks();
        let shape_err = |msg: String| GpuError::Shape {
            op: "check paged_attention",
            msg,
        };
        let need: Vec<usize> = seqs.iter().map(|d| d.len.div_ceil(bs)).collect();
        if need.iter().sum::<usize>() > nb {
            return Err(shape_err(format!("{need:?} blocks in a pool of {nb}")));
        }
        let mut ids: Vec<u32> = (0..nb as u32).collect();
        let mut rng = Rng::new(shuffle.unwrap_or(0) ^ 0x5eed);
        if shuffle.is_some() {
            for i in (1..ids.len()).rev() {
                ids.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
        }
        let max_blocks = need.iter().max().copied().unwrap_or(0) + 1;
        let mut tables = vec![0u32; seqs.len() * max_blocks];
        let mut next = ids.iter();
        for (i, &n) in need.iter().enumerate() {
            for b in 0..n {
                tables[i * max_blocks + b] = *next.next().expect("counted above");
            }
        }
        let slot = |i: usize, pos: usize| {
            tables[i * max_blocks + pos / bs] * bs as u32 + (pos % bs) as u32
        };

        // The step's rows: Q, then the token's own K and V.
        let (mut token_seq, mut positions, mut slots, mut qkv) = (vec![], vec![], vec![], vec![]);
        for (i, d) in seqs.iter().enumerate() {
            for (j, pos) in (d.from..d.len).enumerate() {
                token_seq.push(i as u32);
                positions.push(pos as u32);
                slots.push(slot(i, pos));
                qkv.extend_from_slice(&d.q[j * q_dim..(j + 1) * q_dim]);
                qkv.extend_from_slice(&d.keys[pos * kv_dim..(pos + 1) * kv_dim]);
                qkv.extend_from_slice(&d.values[pos * kv_dim..(pos + 1) * kv_dim]);
                qkv.extend_from_slice(&[0.0; 2]);
            }
        }
        let t = positions.len();
        if t == 0 || t > MAX_TOKENS {
            return Err(shape_err(format!("{t} tokens in a step")));
        }
        // The pools: garbage, the earlier positions, NaN before the first token's window.
        let num_slots = nb * bs;
        let mut k_pool = normals(&mut rng, num_slots * kv_dim, 10.0);
        let mut v_pool = normals(&mut rng, num_slots * kv_dim, 10.0);
        for (i, d) in seqs.iter().enumerate() {
            let hidden = s
                .window
                .map_or(0, |w| (d.from + 1).saturating_sub(w as usize));
            for pos in 0..d.from {
                let dst = slot(i, pos) as usize * kv_dim..(slot(i, pos) as usize + 1) * kv_dim;
                if pos < hidden {
                    k_pool[dst.clone()].fill(f32::NAN);
                    v_pool[dst].fill(f32::NAN);
                } else {
                    let src = pos * kv_dim..(pos + 1) * kv_dim;
                    k_pool[dst.clone()].copy_from_slice(&d.keys[src.clone()]);
                    v_pool[dst].copy_from_slice(&d.values[src]);
                }
            }
        }
        let upload = |name: &str, data: &[f32]| -> Result<KvPool, GpuError> {
            let pool = KvPool::zeros(ctx, name, self.storage, num_slots, kv_dim, s.kv)?;
            pool.write_words(ctx, self.storage, kv_dim, s.kv, &encode_words(data, s.kv))?;
            Ok(pool)
        };
        let (k_cache, v_cache) = (upload("k_cache", &k_pool)?, upload("v_cache", &v_pool)?);
        let qkv_b = floats(ctx, "qkv", &qkv)?;
        let slots_b = words(ctx, "slot_mapping", &slots)?;
        let tables_b = words(ctx, "block_tables", &tables)?;
        let seq_b = words(ctx, "token_seq", &token_seq)?;
        let pos_b = words(ctx, "positions", &positions)?;
        let out = floats(ctx, "out", &normals(&mut rng, t * q_dim, 1.0))?;
        let p = AttentionParams {
            num_tokens: t,
            num_heads: s.nh,
            num_kv_heads: s.nkv,
            head_dim: s.hd,
            row_stride: stride,
            block_size: bs,
            max_blocks,
            scale: 1.0 / (s.hd as f32).sqrt(),
            max_context_len: seqs.iter().map(|d| d.len).max().unwrap_or(0),
            window: s.window,
            softcap: s.softcap,
        };
        p.check()?;
        let kvw_bg = self
            .kvw
            .bind(ctx, &qkv_b.buffer, &slots_b.buffer, &k_cache, &v_cache);
        let attn_bg = self.kernel.bind(
            ctx,
            &qkv_b.buffer,
            &k_cache,
            &v_cache,
            &tables_b.buffer,
            &seq_b.buffer,
            &pos_b.buffer,
            &out.buffer,
        )?;
        run_pass(ctx, |pass| {
            self.kvw.encode(pass, &kvw_bg, t, stride, q_dim, kv_dim);
            self.kernel.encode(pass, &attn_bg, &p);
        });
        let got = out.read_f32(ctx)?;
        let keys: Vec<Vec<f32>> = seqs.iter().map(|d| d.keys.clone()).collect();
        let values: Vec<Vec<f32>> = seqs.iter().map(|d| d.values.clone()).collect();
        let want = attention::reference(&qkv, &keys, &values, &token_seq, &positions, &p);
        Ok((got, want))
    }
}

/// The context building `forms`' kernels: `t.ctx` or `t.other`.
pub(super) fn with_forms<'a>(t: &Target<'a>, forms: KernelForms) -> &'a GpuContext {
    if t.ctx.profile.kernel_forms == forms {
        t.ctx
    } else {
        t.other
    }
}

/// An entry of [`BUILT`]: the device, the shape's index, the kind, textures.
type Built = (wgpu::Device, usize, Kind, bool, Rc<Attn>);

thread_local! {
    /// The kernels built for the cases, kept for the properties (which [`forget`] them).
    static BUILT: RefCell<Vec<Built>> = const { RefCell::new(Vec::new()) };
}

/// The kernel `kind` for `SHAPES[si]` on the context of its forms, built once per device.
pub(super) fn kernel(
    t: &Target,
    si: usize,
    kind: Kind,
    texture: bool,
) -> Result<Rc<Attn>, GpuError> {
    let ctx = with_forms(t, kind_forms(kind));
    let key = |e: &Built| e.0 == ctx.device && e.1 == si && e.2 == kind && e.3 == texture;
    if let Some(a) = BUILT.with_borrow(|b| b.iter().find(|e| key(e)).map(|e| e.4.clone())) {
        return Ok(a);
    }
    let a = Rc::new(Attn::build(ctx, SHAPES[si].0, kind, texture)?);
    BUILT.with_borrow_mut(|b| b.push((ctx.device.clone(), si, kind, texture, a.clone())));
    Ok(a)
}

/// Drops the kernels kept for `t`'s device.
pub(super) fn forget(t: &Target) {
    BUILT.with_borrow_mut(|b| b.retain(|e| e.0 != t.ctx.device && e.0 != t.other.device));
}

pub(super) fn run(t: &Target, out: &mut Vec<CaseResult>) {
    paged_attention(t, out);
    // The KV writes have one form (shaders/kv_write.wgsl, shaders/rope_kv_write.wgsl).
    kv_write_cases(t.ctx, out);
    rope_kv_write_cases(t.ctx, out);
}

fn paged_attention(t: &Target, out: &mut Vec<CaseResult>) {
    for (si, (shape, kinds)) in SHAPES.iter().enumerate() {
        let mixed: Vec<SeqData> = STEP
            .iter()
            .enumerate()
            .map(|(i, &sq)| SeqData::new(shape, sq, 100 * si as u64 + i as u64))
            .collect();
        let mixed: Vec<&SeqData> = mixed.iter().collect();
        let decode = SeqData::new(shape, (70, 69), 100 * si as u64 + 50);
        for &(name, kind, texture) in kinds {
            let form = format!("{name}, {} KV", shape.kv.name());
            let attn = kernel(t, si, kind, texture);
            let ctx = with_forms(t, kind_forms(kind));
            let steps: [(&str, &[&SeqData]); 2] = [
                ("4 seqs, 20 tokens (decode, chunks, prompt)", &mixed),
                ("1 decode token, context 70", &[&decode]),
            ];
            for (what, seqs) in steps {
                let case = format!("{}; {what}", shape.describe());
                let err = match &attn {
                    Ok(a) => a.run(ctx, seqs, Some(si as u64)).map(|(g, w)| nmse(&g, &w)),
                    Err(e) => Err(clone_err(e)),
                };
                out.push(result(
                    "paged_attention",
                    form.clone(),
                    case,
                    ATTENTION_NMSE,
                    err,
                ));
            }
        }
    }
}

pub(super) fn kind_forms(kind: Kind) -> KernelForms {
    match kind {
        Kind::Serial => KernelForms::Cpu,
        Kind::Split(_) => KernelForms::Gpu,
    }
}

/// A build error reported again for each case it kept from running.
pub(super) fn clone_err(e: &GpuError) -> GpuError {
    match e {
        GpuError::MissingFeature(what) => GpuError::MissingFeature(what.clone()),
        e => GpuError::Shape {
            op: "check",
            msg: e.to_string(),
        },
    }
}

/// Pool storage for a kv-writing case: buffers, or textures of 3 blocks a row (unsupported
/// where the adapter's textures cannot hold them).
fn kv_storage(
    ctx: &GpuContext,
    texture: bool,
    nb: usize,
    bs: usize,
    kv_dim: usize,
    kv: WeightDType,
) -> Result<KvStorage, GpuError> {
    if !texture {
        return Ok(KvStorage::Buffer);
    }
    let max_dim = ctx.limits.max_texture_dimension_2d;
    KvTextureLayout::with_blocks_per_row(nb, bs, kv_dim, kv, 3, max_dim)
        .filter(|l| l.bytes() <= ctx.max_binding_bytes())
        .map(KvStorage::Texture)
        .ok_or_else(|| {
            GpuError::MissingFeature(format!(
                "a texture of {nb} blocks of {bs} slots of {kv_dim} {} within {max_dim} texels",
                kv.name()
            ))
        })
}

/// Pools of random (finite) values in `storage`, and their words in slot order.
fn random_pool(
    ctx: &GpuContext,
    rng: &mut Rng,
    storage: KvStorage,
    slots: usize,
    kv_dim: usize,
    kv: WeightDType,
) -> Result<(KvPool, Vec<u32>), GpuError> {
    let init = encode_words(&normals(rng, slots * kv_dim, 1.0), kv);
    let pool = KvPool::zeros(ctx, "pool", storage, slots, kv_dim, kv)?;
    pool.write_words(ctx, storage, kv_dim, kv, &init)?;
    Ok((pool, init))
}

/// kv_write: every word of both pools (written slots and untouched ones) exactly.
fn kv_write_cases(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    // (KV type, kv_dim, block size, blocks, tokens): 6 f16 texels a slot over a thread
    // workgroup boundary; 3 f32 texels a slot in one-slot blocks.
    for (kv, kv_dim, bs, nb, t) in [
        (WeightDType::F16, 48usize, 16usize, 9usize, 101usize),
        (WeightDType::F32, 12, 1, 70, 53),
    ] {
        for texture in [false, true] {
            let run = || -> Result<f64, GpuError> {
                let storage = kv_storage(ctx, texture, nb, bs, kv_dim, kv)?;
                let slots = nb * bs;
                let mut rng = Rng::new(kv_dim as u64 + 40);
                let q_dim = 2 * kv_dim + 1;
                let stride = q_dim + 2 * kv_dim + 3;
                let qkv = normals(&mut rng, t * stride, 1.0);
                let mut all: Vec<u32> = (0..slots as u32).collect();
                for i in (1..all.len()).rev() {
                    all.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
                }
                let mapping = &all[..t];
                let (k_pool, k0) = random_pool(ctx, &mut rng, storage, slots, kv_dim, kv)?;
                let (v_pool, v0) = random_pool(ctx, &mut rng, storage, slots, kv_dim, kv)?;
                let qb = floats(ctx, "qkv", &qkv)?;
                let sb = words(ctx, "slots", mapping)?;
                let k = KvWrite::new(ctx, kv, storage);
                let bg = k.bind(ctx, &qb.buffer, &sb.buffer, &k_pool, &v_pool);
                run_pass(ctx, |pass| k.encode(pass, &bg, t, stride, q_dim, kv_dim));
                let read = |p: &KvPool| p.read_words(ctx, storage, slots, kv_dim, kv);
                let mut got = read(&k_pool)?;
                got.extend(read(&v_pool)?);
                let (mut wk, mut wv) = (decode(&k0, kv), decode(&v0, kv));
                kv_write::reference(&qkv, mapping, stride, q_dim, kv_dim, &mut wk, &mut wv);
                let mut want = encode_words(&wk, kv);
                want.extend(encode_words(&wv, kv));
                Ok(mismatches(&got, &want))
            };
            let form = format!("{}, {}, {}", forms(ctx), pool_name(texture), kv.name());
            let case = format!("{t} tokens × kv_dim {kv_dim} into {nb} blocks of {bs}");
            out.push(result("kv_write", form, case, 0.0, run()));
        }
    }
}

/// rope_kv_write: Q rotated in place, rotated K and plain V in the pools (every slot, the
/// untouched ones too), by NMSE against the reference (V and untouched slots must be exact to
/// stay under it).
fn rope_kv_write_cases(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let (t, bs, nb, max_pos) = (23usize, 4usize, 9usize, 200usize);
    // rotate_half at head 64 (GQA 4, f16); interleaved at head 6 (a pool word spans two
    // rotation pairs, an f32 slot 3 texels).
    for (style, nh, nkv, hd, kv) in [
        (RopeStyle::Half, 8usize, 2usize, 64usize, WeightDType::F16),
        (RopeStyle::Interleaved, 6, 2, 6, WeightDType::F32),
    ] {
        for texture in [false, true] {
            let kv_dim = nkv * hd;
            let run = || -> Result<f64, GpuError> {
                let storage = kv_storage(ctx, texture, nb, bs, kv_dim, kv)?;
                let slots = nb * bs;
                let mut rng = Rng::new(hd as u64 + 7);
                let q_dim = nh * hd;
                let stride = q_dim + 2 * kv_dim + 3;
                let mut positions: Vec<u32> = (0..t)
                    .map(|_| (rng.next_u64() % max_pos as u64) as u32)
                    .collect();
                (positions[0], positions[1]) = (0, max_pos as u32 - 1);
                let mut all: Vec<u32> = (0..slots as u32).collect();
                for i in (1..all.len()).rev() {
                    all.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
                }
                let mapping = &all[..t];
                let cos_sin = rope::cos_sin_table(max_pos, hd, 10000.0);
                let qkv = normals(&mut rng, t * stride, 1.0);
                let (k_pool, k0) = random_pool(ctx, &mut rng, storage, slots, kv_dim, kv)?;
                let (v_pool, v0) = random_pool(ctx, &mut rng, storage, slots, kv_dim, kv)?;
                let p = RopeParams {
                    num_tokens: t,
                    row_stride: stride,
                    num_heads: nh,
                    num_kv_heads: nkv,
                    head_dim: hd,
                    max_positions: max_pos,
                    style,
                };
                let qb = floats(ctx, "qkv", &qkv)?;
                let pb = words(ctx, "positions", &positions)?;
                let cb = floats(ctx, "cos_sin", &cos_sin)?;
                let sb = words(ctx, "slots", mapping)?;
                let k = RopeKvWrite::new(ctx, kv, hd, storage);
                let bg = k.bind(
                    ctx, &qb.buffer, &pb.buffer, &cb.buffer, &sb.buffer, &k_pool, &v_pool,
                );
                run_pass(ctx, |pass| k.encode(pass, &bg, &p));
                let read = |p: &KvPool| p.read_words(ctx, storage, slots, kv_dim, kv);
                let mut got = qb.read_f32(ctx)?;
                got.extend(decode(&read(&k_pool)?, kv));
                got.extend(decode(&read(&v_pool)?, kv));
                let (mut want, mut wk, mut wv) = (qkv.clone(), decode(&k0, kv), decode(&v0, kv));
                let pos = &positions;
                rope_kv_write::reference(&mut want, pos, &cos_sin, mapping, &p, &mut wk, &mut wv);
                want.extend(round_to(&wk, kv));
                want.extend(round_to(&wv, kv));
                Ok(nmse(&got, &want))
            };
            let limit = match kv {
                WeightDType::F32 => ROPE_F32_NMSE,
                _ => ROPE_F16_NMSE,
            };
            let form = format!("{}, {}, {}", forms(ctx), pool_name(texture), kv.name());
            let case = format!("{style:?}, {t} tokens, {nh}/{nkv} heads × {hd}");
            out.push(result("rope_kv_write", form, case, limit, run()));
        }
    }
}

fn pool_name(texture: bool) -> &'static str {
    if texture { "texture" } else { "buffer" }
}

/// Pool words in slot order as values: f32 bits, or f16 pairs (low half first).
fn decode(w: &[u32], kv: WeightDType) -> Vec<f32> {
    let h = |bits: u32| half::f16::from_bits(bits as u16).to_f32();
    match kv {
        WeightDType::F32 => w.iter().map(|&x| f32::from_bits(x)).collect(),
        _ => w
            .iter()
            .flat_map(|&x| [h(x & 0xffff), h(x >> 16)])
            .collect(),
    }
}
