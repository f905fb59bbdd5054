//! The per-layer ops the Qwen3, Gemma 2/3 and Phi-3 families add, against their CPU references
//! on random inputs of awkward sizes: per-head Q/K RMSNorm (qk_norm), partial rotary in
//! rope_kv_write, GeGLU (silu_mul with GateActivation::GeluTanh), soft-capping, scaling, and
//! RMSNorm accumulating into its output.
//!
//! Token counts 1, 7, 33; odd head counts and GQA; head_dim 64/80/96/128/256. Outputs and the
//! parts a kernel must leave alone start as random values (never zeros). Tolerances are in ulps
//! of the reference (f64 math rounded to f32), with the error model of each kernel spelled out
//! where it is more than a few ulps; what is bit-exact is asserted bit for bit.

mod common;

use common::plumbing::*;
use wllm::WeightDType::{F16, F32};
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::{
    GateActivation, QkNorm, QkNormParams, RmsNorm, RopeKvWrite, RopeParams, Scale, SiluMul,
    SoftCap, activation, norm, pointwise, rope, rope_kv_write,
};
use wllm::gpu::kv_pool::{KvPool, KvStorage, KvTextureLayout};
use wllm::gpu::tensor::round_to;
use wllm::model::RopeStyle;

/// Distance in units in the last place between two finite f32 (0 for +0 vs -0).
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let b = x.to_bits() as i32;
        if b < 0 { i32::MIN.wrapping_sub(b) } else { b }
    };
    (i64::from(key(a)) - i64::from(key(b))).unsigned_abs()
}

/// Asserts |gpu - cpu| <= `max_ulps(i)` ulps at every index; returns the largest distance.
#[track_caller]
fn assert_ulps(what: &str, gpu: &[f32], cpu: &[f32], max_ulps: impl Fn(usize) -> u64) -> u64 {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut worst = 0;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(g.is_finite(), "{what}: failed at index {i}: {g} (cpu {c})");
        let d = ulps(g, c);
        assert!(
            d <= max_ulps(i),
            "{what}: failed at index {i}: {g} vs {c} ({d} ulps, at most {})",
            max_ulps(i)
        );
        worst = worst.max(d);
    }
    worst
}

// ---------------------------------------------------------------------------------------------
// Per-head Q/K RMSNorm

/// (tokens, Q heads, KV heads, head_dim): GQA with odd head counts, MHA, a single head.
const QK_SHAPES: [(usize, usize, usize, usize); 6] = [
    (7, 9, 3, 64),
    (33, 5, 1, 80),
    (1, 7, 7, 96),
    (7, 16, 8, 128),
    (33, 3, 1, 256),
    (1, 1, 1, 256),
];

/// Each head against the f64 reference; V and the row's pad untouched bit for bit; each head
/// bit-identical to rms_norm.wgsl run on that head alone with the same workgroup (so the
/// numerics are the family's and do not depend on the batch); the last token alone gives the
/// batch's bits.
#[test]
fn qk_norm_normalizes_each_q_and_k_head_in_place() {
    let mut worst = 0;
    for (t, heads, kv_heads, hd) in QK_SHAPES {
        for wg in [8usize, 256] {
            let what = format!("qk_norm T={t} {heads}/{kv_heads}×{hd} wg {wg}");
            let mut rng = Rng::new((t * 1000 + heads * 10 + hd) as u64);
            let qk_dim = (heads + kv_heads) * hd;
            let row_stride = qk_dim + kv_heads * hd + 3;
            let qkv: Vec<f32> = rng.normals(t * row_stride, 2.0);
            let q_w: Vec<f32> = rng.normals(hd, 0.5).iter().map(|w| 1.0 + w).collect();
            let k_w: Vec<f32> = rng.normals(hd, 0.5).iter().map(|w| 1.0 + w).collect();
            let p = QkNormParams {
                num_tokens: t,
                row_stride,
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim: hd,
                eps: 1e-6,
            };
            let mut want = qkv.clone();
            norm::qk_norm_reference(&mut want, &q_w, &k_w, &p);

            let qb = f32s("qkv", &qkv, &[t, row_stride]);
            let (qwb, kwb) = (f32s("q_w", &q_w, &[hd]), f32s("k_w", &k_w, &[hd]));
            let k = QkNorm::with_workgroup(ctx(), wg);
            let bg = k.bind(ctx(), &qb.buffer, &qwb.buffer, &kwb.buffer);
            run(|pass| k.encode(pass, &bg, &p));
            let got = read(&qb);
            // f32 sum of squares over ≤ 256 elements, inverseSqrt, two products: a few ulps.
            worst = worst.max(assert_ulps(&what, &got, &want, |_| 8));
            for r in 0..t {
                let tail = r * row_stride + qk_dim..(r + 1) * row_stride;
                assert_bits_eq(&format!("{what} V"), &got[tail.clone()], &qkv[tail]);
            }

            // rms_norm.wgsl on the heads as rows of their own: the same bits.
            let mut q_rows = Vec::new();
            let mut k_rows = Vec::new();
            for r in 0..t {
                let row = &qkv[r * row_stride..];
                q_rows.extend_from_slice(&row[..heads * hd]);
                k_rows.extend_from_slice(&row[heads * hd..qk_dim]);
            }
            let rn = RmsNorm::with_workgroup(ctx(), false, wg);
            let unused = u32s("rows", &[0]);
            let mut by_rms = Vec::new();
            for (rows, w) in [(&q_rows, &qwb), (&k_rows, &kwb)] {
                let n = rows.len() / hd;
                let xb = f32s("x", rows, &[n, hd]);
                let yb = f32s("y", &rng.normals(n * hd, 1.0), &[n, hd]);
                let bg = rn.bind(ctx(), &xb.buffer, &w.buffer, &unused.buffer, &yb.buffer);
                run(|pass| rn.encode(pass, &bg, n, hd, p.eps));
                by_rms.push(read(&yb));
            }
            for r in 0..t {
                let row = &got[r * row_stride..];
                let (q, kk) = (heads * hd, kv_heads * hd);
                let q_want = &by_rms[0][r * q..(r + 1) * q];
                let k_want = &by_rms[1][r * kk..(r + 1) * kk];
                assert_bits_eq(&format!("{what} Q vs rms_norm"), &row[..q], q_want);
                assert_bits_eq(&format!("{what} K vs rms_norm"), &row[q..qk_dim], k_want);
            }

            // The last token alone.
            let last = &qkv[(t - 1) * row_stride..t * row_stride];
            let q1 = f32s("qkv row", last, &[1, row_stride]);
            let bg1 = k.bind(ctx(), &q1.buffer, &qwb.buffer, &kwb.buffer);
            run(|pass| k.encode(pass, &bg1, &QkNormParams { num_tokens: 1, ..p }));
            assert_bits_eq(
                &format!("{what} last token alone"),
                &read(&q1),
                &got[(t - 1) * row_stride..],
            );
        }
    }
    eprintln!("qk_norm: at most {worst} ulps from the f64 reference");
}

/// [`QkNorm::new`] picks rms_norm's workgroup for the adapter, and so the same bits as
/// [`RmsNorm::new`] on a head.
#[test]
fn qk_norm_default_workgroup_matches_rms_norm_default() {
    let (t, heads, kv_heads, hd) = (7usize, 5usize, 1usize, 128usize);
    let mut rng = Rng::new(4242);
    let row_stride = (heads + 2 * kv_heads) * hd;
    let qkv = rng.normals(t * row_stride, 3.0);
    let w: Vec<f32> = rng.normals(hd, 0.3).iter().map(|w| 1.0 + w).collect();
    let p = QkNormParams {
        num_tokens: t,
        row_stride,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hd,
        eps: 1e-5,
    };
    let qb = f32s("qkv", &qkv, &[t, row_stride]);
    let wb = f32s("w", &w, &[hd]);
    let k = QkNorm::new(ctx());
    let bg = k.bind(ctx(), &qb.buffer, &wb.buffer, &wb.buffer);
    run(|pass| k.encode(pass, &bg, &p));
    let got = read(&qb);
    // Every token's Q and K heads are contiguous: rows of hd for rms_norm.
    let rows: Vec<f32> = qkv
        .chunks(row_stride)
        .flat_map(|r| r[..(heads + kv_heads) * hd].to_vec())
        .collect();
    let n = rows.len() / hd;
    let xb = f32s("x", &rows, &[n, hd]);
    let yb = f32s("y", &rng.normals(n * hd, 1.0), &[n, hd]);
    let rn = RmsNorm::new(ctx(), false);
    let unused = u32s("rows", &[0]);
    let rbg = rn.bind(ctx(), &xb.buffer, &wb.buffer, &unused.buffer, &yb.buffer);
    run(|pass| rn.encode(pass, &rbg, n, hd, p.eps));
    let want: Vec<f32> = got
        .chunks(row_stride)
        .flat_map(|r| r[..(heads + kv_heads) * hd].to_vec())
        .collect();
    assert_bits_eq("qk_norm default vs rms_norm default", &want, &read(&yb));
}

// ---------------------------------------------------------------------------------------------
// Partial rotary

/// (tokens, Q heads, KV heads, head_dim, rotary_dim): Phi-3.5/Phi-4-mini's 96 of 128, halves,
/// a rotary half that is odd (rotary_dim 6, 2·3), nothing rotated, and full rotary through the
/// partial entry point.
const PARTIAL_SHAPES: [(usize, usize, usize, usize, usize); 7] = [
    (7, 9, 3, 128, 96),
    (33, 5, 1, 64, 32),
    (1, 3, 3, 80, 40),
    (7, 7, 1, 96, 64),
    (33, 3, 1, 256, 6),
    (7, 5, 5, 64, 0),
    (7, 9, 3, 64, 64),
];

fn rope_params(
    t: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    row_stride: usize,
    max_positions: usize,
    style: RopeStyle,
) -> RopeParams {
    RopeParams {
        num_tokens: t,
        row_stride,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hd,
        max_positions,
        style,
    }
}

/// `v`, or one (cos, sin) pair when `v` is empty.
fn pad_nonempty(v: &[f32]) -> Vec<f32> {
    if v.is_empty() {
        vec![1.0, 0.0]
    } else {
        v.to_vec()
    }
}

/// Every Q and K head's dimensions from rotary_dim on, and everything after the K heads, hold
/// the bits of `before`.
#[track_caller]
fn assert_pass_through(what: &str, got: &[f32], before: &[f32], p: &RopeParams, rd: usize) {
    let qk_dim = (p.num_heads + p.num_kv_heads) * p.head_dim;
    for t in 0..p.num_tokens {
        let row = t * p.row_stride;
        for h in 0..p.num_heads + p.num_kv_heads {
            let pass = row + h * p.head_dim + rd..row + (h + 1) * p.head_dim;
            assert_bits_eq(
                &format!("{what} token {t} head {h} pass-through"),
                &got[pass.clone()],
                &before[pass],
            );
        }
        let tail = row + qk_dim..row + p.row_stride;
        assert_bits_eq(&format!("{what} V"), &got[tail.clone()], &before[tail]);
    }
}

/// The fused kernel with partial rotary (the runner's only RoPE), both styles: against the
/// reference (HF Phi-3's: rotate_half within q[..., :rotary_dim]), in buffer and texture pools
/// (the same words), f32 and f16; dimensions past rotary_dim of every Q head and of every K
/// head in the pool keep their bits, and so do qkv's K and V columns; rotary_dim = head_dim
/// gives the bits of the full-rotary entry point.
#[test]
fn rope_kv_write_partial_rotary() {
    let (block_size, max_positions) = (4usize, 200usize);
    for style in [RopeStyle::Interleaved, RopeStyle::Half] {
        for (t, heads, kv_heads, hd, rd) in PARTIAL_SHAPES {
            for dtype in [F32, F16] {
                let what = format!(
                    "rope_kv_write {style:?} T={t} {heads}/{kv_heads}×{hd} rotary {rd} {dtype:?}"
                );
                let mut rng = Rng::new((t * 3 + heads + hd * 17 + rd) as u64);
                let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
                let row_stride = q_dim + 2 * kv_dim + 3;
                let num_blocks = t.div_ceil(block_size) + 3;
                let slots = num_blocks * block_size;
                let mut positions: Vec<u32> = (0..t).map(|_| rng.below(max_positions)).collect();
                positions[0] = max_positions as u32 - 1;
                let mut all_slots: Vec<u32> = (0..slots as u32).collect();
                rng.shuffle(&mut all_slots);
                let slot_mapping = &all_slots[..t];
                let cos_sin = rope::cos_sin_table(max_positions, rd, 10000.0);
                let qkv = rng.normals(t * row_stride, 1.0);
                let (k0, v0) = (
                    rng.normals(slots * kv_dim, 1.0),
                    rng.normals(slots * kv_dim, 1.0),
                );
                let p = rope_params(t, heads, kv_heads, hd, row_stride, max_positions, style);
                let pb = u32s("positions", &positions);
                let sb = u32s("slots", slot_mapping);
                let cb = f32s("cos_sin", &pad_nonempty(&cos_sin), &[cos_sin.len().max(2)]);

                // Fused, buffer pools.
                let qb = f32s("qkv", &qkv, &[t, row_stride]);
                let kc = tensor("k_cache", &k0, &[slots, kv_dim], dtype);
                let vc = tensor("v_cache", &v0, &[slots, kv_dim], dtype);
                let (kp, vp) = (pool(&kc), pool(&vc));
                let k = RopeKvWrite::new(ctx(), dtype, hd, KvStorage::Buffer);
                let bind = |q: &GpuTensor, kp: &KvPool, vp: &KvPool| {
                    k.bind(ctx(), &q.buffer, &pb.buffer, &cb.buffer, &sb.buffer, kp, vp)
                };
                let bg = bind(&qb, &kp, &vp);
                run(|pass| k.encode_partial(pass, &bg, &p, rd));
                let (fq, fk, fv) = (read(&qb), read(&kc), read(&vc));

                // Reference.
                let (mut want_q, mut want_k, mut want_v) =
                    (qkv.clone(), round_to(&k0, dtype), round_to(&v0, dtype));
                rope_kv_write::reference_partial(
                    &mut want_q,
                    &positions,
                    &cos_sin,
                    slot_mapping,
                    &p,
                    rd,
                    &mut want_k,
                    &mut want_v,
                );
                let (want_k, want_v) = (round_to(&want_k, dtype), round_to(&want_v, dtype));
                let cache_tol = if dtype == F16 { 2e-3 } else { TOL };
                assert_close(&format!("{what} qkv"), &fq, &want_q, TOL);
                assert_close(&format!("{what} K"), &fk, &want_k, cache_tol);
                assert_close(&format!("{what} V"), &fv, &want_v, 0.0);
                // Q's pass-through dimensions, and qkv's K and V columns, are untouched.
                let q_only = RopeParams {
                    num_kv_heads: 0,
                    ..p
                };
                assert_pass_through(&what, &fq, &qkv, &q_only, rd);
                // K's pass-through dimensions reach the pool as they were (in f16: rounded).
                for (tok, &s) in slot_mapping.iter().enumerate() {
                    for h in 0..kv_heads {
                        let src = tok * row_stride + q_dim + h * hd;
                        let dst = s as usize * kv_dim + h * hd;
                        let plain = round_to(&qkv[src + rd..src + hd], dtype);
                        assert_bits_eq(
                            &format!("{what} K pass-through token {tok} head {h}"),
                            &fk[dst + rd..dst + hd],
                            &plain,
                        );
                    }
                }

                // Full rotary through the partial entry point: encode's bits.
                if rd == hd {
                    let qb3 = f32s("qkv", &qkv, &[t, row_stride]);
                    let kc3 = tensor("k_cache", &k0, &[slots, kv_dim], dtype);
                    let vc3 = tensor("v_cache", &v0, &[slots, kv_dim], dtype);
                    let bg3 = bind(&qb3, &pool(&kc3), &pool(&vc3));
                    run(|pass| k.encode(pass, &bg3, &p));
                    assert_bits_eq(&format!("{what} Q vs encode"), &fq, &read(&qb3));
                    assert_bits_eq(&format!("{what} K vs encode"), &fk, &read(&kc3));
                }

                // Texture pools: the same words (the K rotation is the same function there).
                let layout = KvTextureLayout::new(num_blocks, block_size, kv_dim, dtype, 16384)
                    .expect("a texture layout");
                let storage = KvStorage::Texture(layout);
                let kt = KvPool::zeros(ctx(), "k tex", storage, slots, kv_dim, dtype)
                    .expect("texture pool");
                let vt = KvPool::zeros(ctx(), "v tex", storage, slots, kv_dim, dtype)
                    .expect("texture pool");
                let qb4 = f32s("qkv", &qkv, &[t, row_stride]);
                let ktex = RopeKvWrite::new(ctx(), dtype, hd, storage);
                let bg4 = ktex.bind(
                    ctx(),
                    &qb4.buffer,
                    &pb.buffer,
                    &cb.buffer,
                    &sb.buffer,
                    &kt,
                    &vt,
                );
                run(|pass| ktex.encode_partial(pass, &bg4, &p, rd));
                assert_bits_eq(&format!("{what} texture qkv"), &read(&qb4), &fq);
                let words = |pool: &KvPool, s| {
                    pool.read_words(ctx(), s, slots, kv_dim, dtype)
                        .expect("read")
                };
                let (tk, tv) = (words(&kt, storage), words(&vt, storage));
                let (bk, bv) = (words(&kp, KvStorage::Buffer), words(&vp, KvStorage::Buffer));
                let wpe = bk.len() / slots; // words a slot
                for &s in slot_mapping {
                    let w = s as usize * wpe..(s as usize + 1) * wpe;
                    assert_eq!(tk[w.clone()], bk[w.clone()], "{what} texture K slot {s}");
                    assert_eq!(tv[w.clone()], bv[w], "{what} texture V slot {s}");
                }
            }
        }
    }
}

/// A buffer pool sharing `t`'s buffer.
fn pool(t: &GpuTensor) -> KvPool {
    KvPool::Buffer(t.buffer.clone())
}

// ---------------------------------------------------------------------------------------------
// GeGLU

/// Extreme gates: no NaN, no inf, and the right limits (g for g ≫ 0, -0 or a tiny negative for
/// g ≪ 0) whatever the driver's exp does with overflow.
const EXTREME_GATES: [f32; 16] = [
    0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 100.0, -100.0, 1e4, -1e4, 1e20, -1e20, 3e38, -3e38,
    -9.0, 9.0,
];

/// gelu_tanh(gate) * up against the f64 reference, within 8 + 4|z| ulps (z = 2u, the exp's
/// argument), or 1e-37 absolute where the result is subnormal. The |z| term is the function's
/// conditioning in f32, not slack: z is computed in f32 (a relative error of a couple of ulps,
/// which exp turns into |z| times that in the result), and Vulkan lets exp itself err by
/// 3 + 2|z| ulps (lavapipe computes exp2(z·log2 e), about one more ulp of z). That matters
/// only for g ≪ 0, where the result is tiny (g ≈ -6: about 50 ulps of a result near -1e-8);
/// for g >= 0 the result is within a few ulps. silu through encode_act is encode's bits.
#[test]
fn geglu_matches_reference_and_silu_is_unchanged() {
    let mut worst = 0;
    for (t, inner) in [(1usize, 67usize), (7, 300), (33, 129)] {
        let mut rng = Rng::new((t * 100 + inner) as u64);
        let mut gate_up = rng.normals(t * 2 * inner, 2.5);
        // Extreme gates in the first row, with ups of ±1 so the product shows the gate.
        for (i, g) in EXTREME_GATES.iter().enumerate().take(inner) {
            gate_up[i] = *g;
            gate_up[inner + i] = if i % 2 == 0 { 1.0 } else { -1.0 };
        }
        let gb = f32s("gate_up", &gate_up, &[t, 2 * inner]);
        let y_init = rng.normals(t * inner, 1.0);
        let k = SiluMul::new(ctx());

        // GeGLU.
        let yb = f32s("y", &y_init, &[t, inner]);
        let bg = k.bind(ctx(), &gb.buffer, &yb.buffer);
        run(|pass| k.encode_act(pass, &bg, t, inner, GateActivation::GeluTanh));
        let got = read(&yb);
        let want = activation::gated_reference(&gate_up, inner, GateActivation::GeluTanh);
        let allowed = |i: usize| {
            let g = gate_up[(i / inner) * 2 * inner + i % inner] as f64;
            let z = 2.0 * (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
            8 + (4.0 * z.abs()).min(1e9) as u64
        };
        for (i, (&g, &c)) in got.iter().zip(&want).enumerate() {
            let what = format!("geglu T={t} F={inner} index {i}");
            assert!(g.is_finite(), "{what}: {g}");
            if c.abs() < 1e-37 {
                assert!(g.abs() <= 1e-37, "{what}: {g} vs {c}");
            } else {
                let d = ulps(g, c);
                assert!(d <= allowed(i), "{what}: {g} vs {c} ({d} ulps)");
                let g_in = gate_up[(i / inner) * 2 * inner + i % inner];
                if g_in.abs() <= 6.0 {
                    worst = worst.max(d);
                }
            }
        }
        // Large positive gates give the gate itself (times ±1).
        for (i, &g) in EXTREME_GATES.iter().enumerate().take(inner) {
            if g >= 9.0 {
                assert_eq!(got[i].abs(), g, "geglu of {g}");
            }
        }

        // SiLU through the activation parameter: the bits of encode.
        let (y1, y2) = (
            f32s("y", &y_init, &[t, inner]),
            f32s("y", &y_init, &[t, inner]),
        );
        let (bg1, bg2) = (
            k.bind(ctx(), &gb.buffer, &y1.buffer),
            k.bind(ctx(), &gb.buffer, &y2.buffer),
        );
        run(|pass| {
            k.encode(pass, &bg1, t, inner);
            k.encode_act(pass, &bg2, t, inner, GateActivation::Silu);
        });
        let silu = read(&y1);
        assert_bits_eq("silu encode vs encode_act", &silu, &read(&y2));
        let want = activation::gated_reference(&gate_up, inner, GateActivation::Silu);
        assert_eq!(
            want,
            activation::silu_mul_reference(&gate_up, inner),
            "the two silu references"
        );
        for (i, (&g, &c)) in silu.iter().zip(&want).enumerate() {
            assert!(g.is_finite(), "silu index {i}: {g}");
            assert!(
                (g - c).abs() <= TOL * (1.0 + c.abs()),
                "silu index {i}: {g} vs {c}"
            );
        }
    }
    eprintln!("geglu: at most {worst} ulps from the f64 reference for gates in [-6, 6]");
}

/// The f64 reference is PyTorch's formula: at moderate gates 0.5·g·(1 + tanh(u)) agrees with
/// the sigmoid form the reference and the kernel use.
#[test]
fn gelu_tanh_reference_is_pytorchs_formula() {
    for g in [-3.0f64, -1.0, -0.1, 0.0, 0.5, 1.0, 2.0, 4.0] {
        let u = (2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g * g * g);
        let torch = 0.5 * g * (1.0 + u.tanh());
        let ours = activation::gelu_tanh_f64(g);
        assert!(
            (torch - ours).abs() <= 1e-15 * (1.0 + g.abs()),
            "{g}: {torch} vs {ours}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Soft-cap and scale

/// Values spanning what logits hold, and extremes: no NaN, ±cap in the limit.
const EXTREME_LOGITS: [f32; 14] = [
    0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 1e4, -1e4, 1e30, -1e30, 3.4e38, -3.4e38, 0.625, -0.625,
];

/// cap·tanh(x/cap) against the f64 reference within 8 ulps: x/cap (Vulkan allows a division
/// 2.5 ulps), the polynomial (≤ 1 ulp) or (1 - e)/(1 + e), which passes on about 0.6 of exp's
/// relative error (Vulkan allows exp 3 + 2|2y| ulps; lavapipe's largest here, just past the
/// 0.625 switch, gives 4 ulps), and the product. The limits are exactly ±cap.
#[test]
fn softcap_matches_reference() {
    let mut worst = 0;
    for (rows, cols) in [(1usize, 1usize), (7, 33), (33, 1001)] {
        for cap in [30.0f32, 50.0, 0.5] {
            let what = format!("softcap {rows}×{cols} cap {cap}");
            let mut rng = Rng::new((rows * cols) as u64 + cap as u64);
            let mut x = rng.normals(rows * cols, 2.0 * cap);
            for (v, e) in x.iter_mut().zip(EXTREME_LOGITS) {
                *v = e;
            }
            // A tail past the rows × cols that must stay as it was.
            let tail = rng.normals(5, 1.0);
            let all: Vec<f32> = x.iter().chain(&tail).copied().collect();
            let xb = f32s("x", &all, &[all.len()]);
            let k = SoftCap::new(ctx());
            let bg = k.bind(ctx(), &xb.buffer);
            run(|pass| k.encode(pass, &bg, rows, cols, cap));
            let got = read(&xb);
            let mut want = x.clone();
            pointwise::softcap_reference(&mut want, cap);
            worst = worst.max(assert_ulps(&what, &got[..x.len()], &want, |_| 8));
            assert_bits_eq(&format!("{what} tail"), &got[x.len()..], &tail);
            for (i, &v) in x.iter().enumerate() {
                if v.abs() >= 1e4 {
                    assert_eq!(got[i], cap.copysign(v), "{what}: softcap of {v}");
                }
            }
        }
    }
    eprintln!("softcap: at most {worst} ulps from the f64 reference");
}

/// x·c bit for bit as the CPU computes it; c = 1 leaves x as it was.
#[test]
fn scale_is_bit_exact() {
    for (rows, cols) in [(1usize, 1usize), (7, 576), (33, 1000)] {
        for c in [1.0f32, 24.0f32.sqrt(), 2304.0f32.sqrt(), -0.37] {
            let mut rng = Rng::new((rows + cols) as u64);
            let x = rng.normals(rows * cols, 3.0);
            let tail = rng.normals(3, 1.0);
            let all: Vec<f32> = x.iter().chain(&tail).copied().collect();
            let xb = f32s("x", &all, &[all.len()]);
            let k = Scale::new(ctx());
            let bg = k.bind(ctx(), &xb.buffer);
            run(|pass| k.encode(pass, &bg, rows, cols, c));
            let mut want = x.clone();
            pointwise::scale_reference(&mut want, c);
            want.extend_from_slice(&tail);
            assert_bits_eq(&format!("scale {rows}×{cols} by {c}"), &read(&xb), &want);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm accumulating into its output

/// y += norm(x)·w: against the reference (the f64 norm rounded to f32, added in f32), and the
/// added term is the write mode's (y0 + write-mode output, in f32, within one rounding of
/// |y0| + |norm|). Write mode is unchanged, which the rms_norm test in tests/kernels.rs pins.
#[test]
fn rms_norm_accumulates_into_its_output() {
    const ROWS: usize = 13;
    const GATHER: [u32; 7] = [12, 0, 5, 5, 7, 12, 1];
    let mut exact = true;
    for dim in [50usize, 576, 700] {
        for gather in [false, true] {
            for wg in [8usize, 256] {
                let what = format!("rms_norm accumulate dim {dim} gather {gather} wg {wg}");
                let mut rng = Rng::new(dim as u64 + 9);
                let x = rng.normals(ROWS * dim, 2.0);
                let w: Vec<f32> = rng.normals(dim, 0.5).iter().map(|v| 1.0 + v).collect();
                let rows = gather.then_some(&GATHER[..]);
                let r = rows.map_or(ROWS, |r| r.len());
                let y0 = rng.normals(r * dim, 3.0);
                let eps = 1e-6;
                let mut want = y0.clone();
                norm::rms_norm_accumulate_reference(&mut want, &x, &w, rows, dim, eps);

                let xb = f32s("x", &x, &[ROWS, dim]);
                let wb = f32s("w", &w, &[dim]);
                let rb = u32s("rows", &GATHER);
                let k = RmsNorm::with_workgroup(ctx(), gather, wg);
                let ya = f32s("y", &y0, &[r, dim]);
                let yw = f32s("y", &y0, &[r, dim]);
                let bga = k.bind(ctx(), &xb.buffer, &wb.buffer, &rb.buffer, &ya.buffer);
                let bgw = k.bind(ctx(), &xb.buffer, &wb.buffer, &rb.buffer, &yw.buffer);
                run(|pass| {
                    k.encode_accumulate(pass, &bga, r, dim, eps);
                    k.encode(pass, &bgw, r, dim, eps);
                });
                let (acc, written) = (read(&ya), read(&yw));
                assert_close(&what, &acc, &want, TOL);
                for i in 0..acc.len() {
                    let sum = y0[i] + written[i];
                    let bound = (y0[i].abs() + written[i].abs()) * f32::EPSILON;
                    assert!(
                        (acc[i] - sum).abs() <= bound,
                        "{what}: failed at index {i}: {} vs {sum}",
                        acc[i]
                    );
                    exact &= acc[i].to_bits() == sum.to_bits();
                }
                // Accumulating twice adds twice.
                run(|pass| k.encode_accumulate(pass, &bga, r, dim, eps));
                let twice = read(&ya);
                for i in 0..twice.len() {
                    let sum = acc[i] + written[i];
                    let bound = (acc[i].abs() + written[i].abs()) * f32::EPSILON;
                    assert!((twice[i] - sum).abs() <= bound, "{what} twice: index {i}");
                }
            }
        }
    }
    eprintln!("rms_norm accumulate: y0 + write-mode output bit for bit: {exact}");
}
