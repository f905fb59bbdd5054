//! The per-layer cases of `wllm check`: the dense embedding lookup (f32 and f16 tables, with
//! and without learned positions), the gated activations (SwiGLU, GeGLU's tanh GELU), gelu,
//! the norms (LayerNorm, RMSNorm gathering rows and accumulating into its output, the per-head
//! Q/K norm: in both kernel forms, whose workgroups differ), scale, soft-cap, partial-rotary
//! RoPE (both pair styles; full rotary is among the attention cases), feed_tokens and
//! copy_blocks, each against its reference in the library. Outputs start as garbage, so a
//! value the kernel fails to write shows.

use super::cases::{floats, forms, mismatches, normals, result, run_pass, words};
use super::{CaseResult, Target, nmse};
use crate::batch::FED_TOKEN;
use crate::gpu::kernels::rope::RopeStyle;
use crate::gpu::kernels::{
    CopyBlocks, Embedding, FeedTokens, GateActivation, Gelu, LayerNorm, QkNorm, QkNormParams,
    RmsNorm, RopeKvWrite, RopeParams, Scale, SiluMul, SoftCap, activation, copy_blocks, embedding,
    feed_tokens, matmul, norm, pointwise, rope, rope_kv_write,
};
use crate::gpu::kv_pool::{KvPool, KvStorage};
use crate::gpu::tensor::{read_words, round_to};
use crate::gpu::{GpuContext, GpuError, GpuTensor, WeightDType};
use crate::sampling::Rng;

/// Copies and lookups (embedding rows, f32 additions of the same two values, fed ids, copied
/// words, x·c): bit for bit, so any difference is a mismatch.
const EXACT: f64 = 0.0;
/// exp / tanh in f32 (a few ulps) against f64: per element ~1e-7 relative, NMSE ~1e-14.
const ACTIVATION_NMSE: f64 = 1e-10;
/// Norms: f32 sums and an f32 inverse square root against f64.
const NORM_NMSE: f64 = 1e-10;
/// RoPE with f32 pools: the f32 rotation of the table's values against f64's.
const ROPE_F32_NMSE: f64 = 1e-10;
/// RoPE into f16 pools: the reference's rotated K, rounded to f16, may round to the
/// neighbouring f16 of the kernel's (2^-11 relative, on a few elements of the pool).
const ROPE_F16_NMSE: f64 = 1e-9;

pub(super) fn run(t: &Target, out: &mut Vec<CaseResult>) {
    embedding(t.ctx, out);
    gated(t.ctx, out);
    gelu(t.ctx, out);
    for ctx in [t.ctx, t.other] {
        norms(ctx, out);
    }
    scale_softcap(t.ctx, out);
    rope_partial(t.ctx, out);
    feed_tokens(t.ctx, out);
    copy_blocks(t.ctx, out);
}

/// A Fisher-Yates shuffle of `v`.
fn shuffle<T>(rng: &mut Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
}

fn below(rng: &mut Rng, n: usize) -> u32 {
    (rng.next_u64() % n as u64) as u32
}

/// The lookup over a table in two parts (ids [0, split) and [split, vocab)), laid out like a
/// matmul weight, with and without a learned position table.
fn embedding(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let (vocab, dim, tokens, npos, split) = (50usize, 67usize, 37usize, 41usize, 23usize);
    let mut rng = Rng::new(31);
    for dtype in [WeightDType::F32, WeightDType::F16] {
        for with_pos in [false, true] {
            let table = normals(&mut rng, vocab * dim, 1.0);
            let pos_table = normals(&mut rng, npos * dim, 1.0);
            let mut ids: Vec<u32> = (0..tokens).map(|_| below(&mut rng, vocab)).collect();
            ids[..4].copy_from_slice(&[0, split as u32 - 1, split as u32, vocab as u32 - 1]);
            let positions: Vec<u32> = (0..tokens).map(|_| below(&mut rng, npos)).collect();
            let x0 = normals(&mut rng, tokens * dim, 1.0);
            let run = || -> Result<f64, GpuError> {
                let (tr, pr) = (round_to(&table, dtype), round_to(&pos_table, dtype));
                let pos_ref = with_pos.then_some(&pr[..]);
                let want = embedding::reference(&ids, &positions, &tr, pos_ref, dim);
                let part = |name, rows: std::ops::Range<usize>| {
                    let w = matmul::pack_weight(
                        &table[rows.start * dim..rows.end * dim],
                        rows.len(),
                        dim,
                        dtype,
                    );
                    GpuTensor::from_words(
                        ctx,
                        name,
                        &w,
                        &[dim, matmul::padded_cols(rows.len())],
                        dtype,
                    )
                };
                let (a, b) = (part("table a", 0..split)?, part("table b", split..vocab)?);
                let pt = GpuTensor::from_f32(ctx, "pos table", &pos_table, &[npos, dim], dtype)?;
                let (idb, posb) = (
                    words(ctx, "ids", &ids)?,
                    words(ctx, "positions", &positions)?,
                );
                let x = floats(ctx, "x", &x0)?;
                let k = Embedding::new(ctx, dtype, with_pos);
                let bind = |t: &GpuTensor| {
                    k.bind(
                        ctx,
                        &idb.buffer,
                        &posb.buffer,
                        &t.buffer,
                        &pt.buffer,
                        &x.buffer,
                    )
                };
                let (bg_a, bg_b) = (bind(&a), bind(&b));
                run_pass(ctx, |p| {
                    k.encode(p, &bg_a, tokens, dim, 0, split, npos);
                    k.encode(p, &bg_b, tokens, dim, split, vocab - split, npos);
                });
                Ok(mismatches(&x.read_f32(ctx)?, &want))
            };
            let form = format!(
                "{}{}",
                dtype.name(),
                if with_pos { ", positions" } else { "" }
            );
            let case = format!("{tokens} of {vocab} × {dim}");
            out.push(result("embedding", form, case, EXACT, run()));
        }
    }
}

/// Gates with extremes among them (the activations must neither overflow to NaN nor lose
/// their limits).
fn gate_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = normals(rng, n, 3.0);
    for (slot, e) in [30.0f32, -30.0, 100.0, -100.0, 0.0].into_iter().enumerate() {
        if slot * 7 < n {
            v[slot * 7] = e;
        }
    }
    v
}

/// act(gate) · up over rows of [gate | up].
fn gated(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let mut rng = Rng::new(32);
    let k = SiluMul::new(ctx);
    for act in [GateActivation::Silu, GateActivation::GeluTanh] {
        for (tokens, inner) in [(1usize, 1usize), (3, 67)] {
            let mut gate_up = normals(&mut rng, tokens * 2 * inner, 1.0);
            for row in gate_up.chunks_mut(2 * inner) {
                row[..inner].copy_from_slice(&gate_values(&mut rng, inner));
            }
            let run = || -> Result<f64, GpuError> {
                let gu = floats(ctx, "gate_up", &gate_up)?;
                let y = floats(ctx, "y", &normals(&mut Rng::new(33), tokens * inner, 1.0))?;
                let bg = k.bind(ctx, &gu.buffer, &y.buffer);
                run_pass(ctx, |p| k.encode_act(p, &bg, tokens, inner, act));
                let want = activation::gated_reference(&gate_up, inner, act);
                Ok(nmse(&y.read_f32(ctx)?, &want))
            };
            let form = match act {
                GateActivation::Silu => "silu",
                GateActivation::GeluTanh => "gelu tanh",
            };
            let case = format!("{tokens} × {inner}");
            out.push(result(
                "silu_mul",
                form.into(),
                case,
                ACTIVATION_NMSE,
                run(),
            ));
        }
    }
}

/// gelu_new in place.
fn gelu(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let k = Gelu::new(ctx);
    let mut rng = Rng::new(34);
    for len in [1usize, 1027] {
        let x = gate_values(&mut rng, len);
        let run = || -> Result<f64, GpuError> {
            let xb = floats(ctx, "x", &x)?;
            let bg = k.bind(ctx, &xb.buffer);
            run_pass(ctx, |p| k.encode(p, &bg, len));
            Ok(nmse(&xb.read_f32(ctx)?, &activation::gelu_reference(&x)))
        };
        out.push(result(
            "gelu",
            "f32".into(),
            format!("{len}"),
            ACTIVATION_NMSE,
            run(),
        ));
    }
}

/// LayerNorm (all rows, gathered rows), RMSNorm gathering and accumulating, QkNorm.
fn norms(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let mut rng = Rng::new(35);
    let eps = 1e-5;
    let gather: [u32; 4] = [5, 0, 6, 5];
    for (rows, dim) in [(7usize, 1usize), (7, 300)] {
        let x = normals(&mut rng, rows * dim, 2.0);
        let w = normals(&mut rng, dim, 1.0);
        let b = normals(&mut rng, dim, 1.0);
        let y0 = normals(&mut rng, rows * dim, 1.0);
        for gathered in [false, true] {
            let picked = gathered.then_some(&gather[..]);
            let n_out = if gathered { gather.len() } else { rows };
            let y0 = &y0[..n_out * dim];
            let case = if gathered {
                format!("rows {gather:?} of {rows} × {dim}")
            } else {
                format!("{rows} × {dim}")
            };
            let form = |what: &str| format!("{}, {what}", forms(ctx));
            let run = || -> Result<f64, GpuError> {
                let (xb, wb, bb) = (
                    floats(ctx, "x", &x)?,
                    floats(ctx, "w", &w)?,
                    floats(ctx, "b", &b)?,
                );
                let rb = words(ctx, "rows", &gather)?;
                let y = floats(ctx, "y", y0)?;
                let k = LayerNorm::new(ctx, gathered);
                let bg = k.bind(
                    ctx, &xb.buffer, &wb.buffer, &bb.buffer, &rb.buffer, &y.buffer,
                );
                run_pass(ctx, |p| k.encode(p, &bg, n_out, dim, eps));
                let want = norm::layer_norm_reference(&x, &w, &b, picked, dim, eps);
                Ok(nmse(&y.read_f32(ctx)?, &want))
            };
            let f = form(if gathered { "gather" } else { "all rows" });
            out.push(result("layer_norm", f, case.clone(), NORM_NMSE, run()));
            for accumulate in [false, true] {
                if !gathered && !accumulate {
                    continue; // rms_norm's plain case is in cases.rs
                }
                let run = || -> Result<f64, GpuError> {
                    let (xb, wb) = (floats(ctx, "x", &x)?, floats(ctx, "w", &w)?);
                    let rb = words(ctx, "rows", &gather)?;
                    let y = floats(ctx, "y", y0)?;
                    let k = RmsNorm::new(ctx, gathered);
                    let bg = k.bind(ctx, &xb.buffer, &wb.buffer, &rb.buffer, &y.buffer);
                    run_pass(ctx, |p| match accumulate {
                        true => k.encode_accumulate(p, &bg, n_out, dim, eps),
                        false => k.encode(p, &bg, n_out, dim, eps),
                    });
                    let mut want = y0.to_vec();
                    if accumulate {
                        norm::rms_norm_accumulate_reference(&mut want, &x, &w, picked, dim, eps);
                    } else {
                        want = norm::rms_norm_reference(&x, &w, picked, dim, eps);
                    }
                    Ok(nmse(&y.read_f32(ctx)?, &want))
                };
                let what = match (gathered, accumulate) {
                    (true, true) => "gather, accumulate",
                    (true, false) => "gather",
                    _ => "accumulate",
                };
                out.push(result(
                    "rms_norm",
                    form(what),
                    case.clone(),
                    NORM_NMSE,
                    run(),
                ));
            }
        }
    }
    // Q and K heads normalized in place; V and the row's tail untouched.
    for (tokens, heads, kv_heads, hd) in [(1usize, 1usize, 1usize, 2usize), (5, 4, 2, 72)] {
        let row_stride = (heads + 2 * kv_heads) * hd + 3;
        let p = QkNormParams {
            num_tokens: tokens,
            row_stride,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hd,
            eps: 1e-6,
        };
        let qkv = normals(&mut rng, tokens * row_stride, 2.0);
        let (qw, kw) = (normals(&mut rng, hd, 1.0), normals(&mut rng, hd, 1.0));
        let run = || -> Result<f64, GpuError> {
            let b = floats(ctx, "qkv", &qkv)?;
            let (qb, kb) = (floats(ctx, "q_w", &qw)?, floats(ctx, "k_w", &kw)?);
            let k = QkNorm::new(ctx);
            let bg = k.bind(ctx, &b.buffer, &qb.buffer, &kb.buffer);
            run_pass(ctx, |pass| k.encode(pass, &bg, &p));
            let mut want = qkv.clone();
            norm::qk_norm_reference(&mut want, &qw, &kw, &p);
            Ok(nmse(&b.read_f32(ctx)?, &want))
        };
        let case = format!("{tokens} × {heads}/{kv_heads} heads × {hd}");
        out.push(result("qk_norm", forms(ctx).into(), case, NORM_NMSE, run()));
    }
}

/// x·c (bit for bit) and cap·tanh(x / cap), in place over the first rows · cols of a longer
/// buffer (the rest must stay).
fn scale_softcap(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let mut rng = Rng::new(36);
    let (rows, cols) = (3usize, 333usize);
    let mut x = normals(&mut rng, rows * cols + 5, 20.0);
    x[1] = 1e30;
    x[2] = -1e30;
    x[3] = 1e-30;
    let run = |softcap: bool| -> Result<f64, GpuError> {
        let xb = floats(ctx, "x", &x)?;
        let mut want = x.clone();
        let n = rows * cols;
        if softcap {
            let k = SoftCap::new(ctx);
            let bg = k.bind(ctx, &xb.buffer);
            run_pass(ctx, |p| k.encode(p, &bg, rows, cols, 30.0));
            pointwise::softcap_reference(&mut want[..n], 30.0);
            Ok(nmse(&xb.read_f32(ctx)?, &want))
        } else {
            let k = Scale::new(ctx);
            let bg = k.bind(ctx, &xb.buffer);
            let c = 24.0f32.sqrt();
            run_pass(ctx, |p| k.encode(p, &bg, rows, cols, c));
            pointwise::scale_reference(&mut want[..n], c);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            Ok(mismatches(&bits(&xb.read_f32(ctx)?), &bits(&want)))
        }
    };
    let case = format!("{rows} × {cols}");
    out.push(result(
        "scale",
        "f32".into(),
        case.clone(),
        EXACT,
        run(false),
    ));
    out.push(result(
        "softcap",
        "cap 30".into(),
        case,
        ACTIVATION_NMSE,
        run(true),
    ));
}

/// RoPE over the first `rotary_dim` dimensions of each Q and K head, fused with the KV write
/// (the runner's only RoPE): Q in qkv, rotated K and plain V in buffer pools, against
/// [`rope_kv_write::reference_partial`].
fn rope_partial(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let mut rng = Rng::new(37);
    let (block_size, max_pos) = (4usize, 200usize);
    let shapes = [
        (
            RopeStyle::Interleaved,
            7usize,
            3usize,
            1usize,
            80usize,
            40usize,
            WeightDType::F32,
        ),
        (RopeStyle::Half, 5, 4, 2, 64, 32, WeightDType::F16),
        (RopeStyle::Half, 3, 2, 2, 96, 6, WeightDType::F32),
    ];
    for (style, tokens, heads, kv_heads, hd, rd, kv) in shapes {
        let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
        let row_stride = q_dim + 2 * kv_dim + 3;
        let slots = (tokens.div_ceil(block_size) + 3) * block_size;
        let mut positions: Vec<u32> = (0..tokens).map(|_| below(&mut rng, max_pos)).collect();
        positions[0] = max_pos as u32 - 1;
        let mut all: Vec<u32> = (0..slots as u32).collect();
        shuffle(&mut rng, &mut all);
        let mapping = &all[..tokens];
        let cos_sin = rope::cos_sin_table(max_pos, rd, 10000.0);
        let qkv = normals(&mut rng, tokens * row_stride, 1.0);
        let (k0, v0) = (
            normals(&mut rng, slots * kv_dim, 1.0),
            normals(&mut rng, slots * kv_dim, 1.0),
        );
        let p = RopeParams {
            num_tokens: tokens,
            row_stride,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hd,
            max_positions: max_pos,
            style,
        };
        let run = || -> Result<f64, GpuError> {
            let qb = floats(ctx, "qkv", &qkv)?;
            let kc = GpuTensor::from_f32(ctx, "k pool", &k0, &[slots, kv_dim], kv)?;
            let vc = GpuTensor::from_f32(ctx, "v pool", &v0, &[slots, kv_dim], kv)?;
            let (kp, vp) = (
                KvPool::Buffer(kc.buffer.clone()),
                KvPool::Buffer(vc.buffer.clone()),
            );
            let (pb, sb) = (
                words(ctx, "positions", &positions)?,
                words(ctx, "slots", mapping)?,
            );
            let cb = floats(ctx, "cos_sin", &cos_sin)?;
            let k = RopeKvWrite::new(ctx, kv, hd, KvStorage::Buffer);
            let bg = k.bind(
                ctx, &qb.buffer, &pb.buffer, &cb.buffer, &sb.buffer, &kp, &vp,
            );
            run_pass(ctx, |pass| k.encode_partial(pass, &bg, &p, rd));
            let (mut wq, mut wk, mut wv) = (qkv.clone(), round_to(&k0, kv), round_to(&v0, kv));
            rope_kv_write::reference_partial(
                &mut wq, &positions, &cos_sin, mapping, &p, rd, &mut wk, &mut wv,
            );
            let want = [wq, round_to(&wk, kv), round_to(&wv, kv)].concat();
            let got = [qb.read_f32(ctx)?, kc.read_f32(ctx)?, vc.read_f32(ctx)?].concat();
            Ok(nmse(&got, &want))
        };
        let style_name = match style {
            RopeStyle::Interleaved => "interleaved",
            RopeStyle::Half => "half (neox)",
        };
        let form = format!("{style_name}, {} pool", kv.name());
        let case = format!("{tokens} × {heads}/{kv_heads} heads × {hd}, rotary {rd}");
        let limit = match kv {
            WeightDType::F32 => ROPE_F32_NMSE,
            WeightDType::F16 => ROPE_F16_NMSE,
        };
        out.push(result("rope_kv_write", form, case, limit, run()));
    }
}

/// Marked ids replaced by the previous step's picks (0 past them), 70 tokens (two
/// workgroups).
fn feed_tokens(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let mut rng = Rng::new(38);
    let num_ids = 5;
    let picks: Vec<u32> = (0..num_ids).map(|_| below(&mut rng, 49157)).collect();
    let tokens: Vec<u32> = (0..70u32)
        .map(|i| match i % 3 {
            0 => below(&mut rng, 49157),
            1 => FED_TOKEN | (i % num_ids as u32),
            _ => FED_TOKEN | (num_ids as u32 + i),
        })
        .collect();
    let run = || -> Result<f64, GpuError> {
        let tb = words(ctx, "token_ids", &tokens)?;
        let ib = words(ctx, "ids", &picks)?;
        let k = FeedTokens::new(ctx);
        let bg = k.bind(ctx, &tb.buffer, &ib.buffer);
        run_pass(ctx, |p| k.encode(p, &bg, tokens.len(), num_ids));
        let got = read_words(ctx, &tb.buffer)?;
        Ok(mismatches(&got, &feed_tokens::reference(&tokens, &picks)))
    };
    let case = format!("{} tokens, {num_ids} picks", tokens.len());
    out.push(result("feed_tokens", "u32".into(), case, EXACT, run()));
}

/// Copy-on-write of whole blocks in a K and a V pool (a source copied twice, pairs in no
/// order), f16 and f32 blocks.
fn copy_blocks(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let mut rng = Rng::new(39);
    let num_blocks = 9;
    let pairs: Vec<[u32; 2]> = vec![[1, 5], [7, 2], [1, 8], [0, 3]];
    for (bs, kv_dim, dtype) in [
        (4usize, 6usize, WeightDType::F16),
        (3, 10, WeightDType::F32),
    ] {
        let wpb = copy_blocks::words_per_block(bs, kv_dim, dtype);
        let k0: Vec<u32> = (0..num_blocks * wpb)
            .map(|_| rng.next_u64() as u32)
            .collect();
        let v0: Vec<u32> = (0..num_blocks * wpb)
            .map(|_| rng.next_u64() as u32)
            .collect();
        let run = || -> Result<f64, GpuError> {
            copy_blocks::check_pairs(&pairs, num_blocks)?;
            let flat: Vec<u32> = pairs.iter().flatten().copied().collect();
            let (pb, kb, vb) = (
                words(ctx, "pairs", &flat)?,
                words(ctx, "k", &k0)?,
                words(ctx, "v", &v0)?,
            );
            let k = CopyBlocks::new(ctx);
            let bg = k.bind(ctx, &pb.buffer, &kb.buffer, &vb.buffer);
            run_pass(ctx, |p| k.encode(p, &bg, pairs.len(), wpb));
            let (mut wk, mut wv) = (k0.clone(), v0.clone());
            copy_blocks::reference(&pairs, wpb, &mut wk, &mut wv);
            let got = [read_words(ctx, &kb.buffer)?, read_words(ctx, &vb.buffer)?].concat();
            Ok(mismatches(&got, &[wk, wv].concat()))
        };
        let case = format!(
            "{} pairs of {num_blocks} blocks × {bs} × {kv_dim}",
            pairs.len()
        );
        out.push(result(
            "copy_blocks",
            dtype.name().into(),
            case,
            EXACT,
            run(),
        ));
    }
}
