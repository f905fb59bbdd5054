//! Every kernel against its CPU reference, on random inputs of awkward sizes.
//!
//! Sizes are deliberately not multiples of the kernels' tiles (32/64/256 threads, 8 rows,
//! 8 columns per matmul thread). Outputs start as random garbage (never zeros), so an element
//! a kernel forgets to write fails. Batch invariance (a row's result does not depend on its
//! batch) is checked bit-exactly. Paged attention has its own file, tests/kernels_attention.rs,
//! and so do the KV writes into texture pools, tests/kernels_kv_texture.rs; the plumbing shared
//! with them is tests/common/plumbing.rs.

mod common;

use common::plumbing::*;
use wllm::WeightDType::{self, F16, F32};
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::{
    Embedding, Gelu, KvWrite, LayerNorm, Matmul, MatmulParams, RmsNorm, RopeParams, SiluMul,
    activation, embedding, kv_write, matmul, norm, rope,
};
use wllm::gpu::kv_pool::{KvPool, KvStorage};
use wllm::gpu::tensor::round_to;
use wllm::model::RopeStyle;

// ---------------------------------------------------------------------------------------------
// Embedding

#[test]
fn embedding_with_and_without_positions_over_a_split_table() {
    let (vocab, dim, t, npos, split) = (50usize, 67usize, 37usize, 41usize, 23usize);
    for dtype in [F32, F16] {
        for has_pos in [false, true] {
            let what = format!("embedding {dtype:?} pos={has_pos}");
            let mut rng = Rng::new(1 + has_pos as u64);
            let table = rng.normals(vocab * dim, 1.0);
            let pos_table = rng.normals(npos * dim, 1.0);
            let mut ids: Vec<u32> = (0..t).map(|_| rng.below(vocab)).collect();
            (ids[0], ids[1], ids[2]) = (0, split as u32 - 1, vocab as u32 - 1);
            let positions: Vec<u32> = (0..t).map(|_| rng.below(npos)).collect();
            let x0 = rng.normals(t * dim, 1.0);
            let (table_r, pos_r) = (round_to(&table, dtype), round_to(&pos_table, dtype));
            let want = embedding::reference(
                &ids,
                &positions,
                &table_r,
                has_pos.then_some(&pos_r[..]),
                dim,
            );

            // The table in two buffers: ids [0, split) and [split, vocab).
            let part_a = linear_weight("table a", &table[..split * dim], split, dim, dtype);
            let part_b = linear_weight("table b", &table[split * dim..], vocab - split, dim, dtype);
            let pt = tensor("pos table", &pos_table, &[npos, dim], dtype);
            let (id_buf, pos_buf) = (u32s("ids", &ids), u32s("positions", &positions));
            let x = f32s("x", &x0, &[t, dim]);
            let emb = Embedding::new(ctx(), dtype, has_pos);
            let bind = |table: &GpuTensor| {
                emb.bind(
                    ctx(),
                    &id_buf.buffer,
                    &pos_buf.buffer,
                    &table.buffer,
                    &pt.buffer,
                    &x.buffer,
                )
            };
            let (bg_a, bg_b) = (bind(&part_a), bind(&part_b));

            // After the first part only, rows of the other part's ids are untouched.
            run(|pass| emb.encode(pass, &bg_a, t, dim, 0, split, npos));
            let got = read(&x);
            for (tok, &id) in ids.iter().enumerate() {
                let r = tok * dim..(tok + 1) * dim;
                let expect = if (id as usize) < split {
                    &want[r.clone()]
                } else {
                    &x0[r.clone()]
                };
                assert_close(&format!("{what} part a, token {tok}"), &got[r], expect, 0.0);
            }
            run(|pass| emb.encode(pass, &bg_b, t, dim, split, vocab - split, npos));
            assert_close(&what, &read(&x), &want, 0.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm and LayerNorm

/// Input rows, and the gathered rows (repeats and any order allowed).
const NORM_ROWS: usize = 13;
const GATHER_ROWS: [u32; 7] = [12, 0, 5, 5, 7, 12, 1];

#[test]
fn rms_norm_with_and_without_gather() {
    for (dim, gather, wg) in [50usize, 200, 700]
        .into_iter()
        .flat_map(|d| [(d, false), (d, true)])
        .flat_map(|(d, g)| [(d, g, 8), (d, g, 256)])
    {
        {
            let mut rng = Rng::new(dim as u64);
            let x = rng.normals(NORM_ROWS * dim, 2.0);
            let weight: Vec<f32> = rng.normals(dim, 0.5).iter().map(|w| 1.0 + w).collect();
            let rows = gather.then_some(&GATHER_ROWS[..]);
            let r = rows.map_or(NORM_ROWS, |r| r.len());
            let eps = 1e-5;
            let want = norm::rms_norm_reference(&x, &weight, rows, dim, eps);

            let xb = f32s("x", &x, &[NORM_ROWS, dim]);
            let wb = f32s("weight", &weight, &[dim]);
            let rb = u32s("rows", &GATHER_ROWS);
            let y = f32s("y", &rng.normals(r * dim, 1.0), &[r, dim]);
            let k = RmsNorm::with_workgroup(ctx(), gather, wg);
            let bg = k.bind(ctx(), &xb.buffer, &wb.buffer, &rb.buffer, &y.buffer);
            run(|pass| k.encode(pass, &bg, r, dim, eps));
            let got = read(&y);
            let what = format!("rms_norm dim {dim} gather {gather} workgroup {wg}");
            assert_close(&what, &got, &want, TOL);
            // The last row alone gives the same bits as in the batch.
            let last = r - 1;
            let src = rows.map_or(last, |rows| rows[last] as usize);
            let x1 = f32s("x row", &x[src * dim..(src + 1) * dim], &[1, dim]);
            let y1 = f32s("y row", &vec![0.0; dim], &[1, dim]);
            let k1 = RmsNorm::with_workgroup(ctx(), false, wg);
            let bg1 = k1.bind(ctx(), &x1.buffer, &wb.buffer, &rb.buffer, &y1.buffer);
            run(|pass| k1.encode(pass, &bg1, 1, dim, eps));
            assert_bits_eq(&what, &read(&y1), &got[last * dim..]);
        }
    }
}

#[test]
fn layer_norm_with_and_without_gather() {
    for dim in [50usize, 200, 700] {
        for (gather, wg) in [(false, 8), (false, 256), (true, 8), (true, 256)] {
            let mut rng = Rng::new(100 + dim as u64);
            // A mean far from zero, so the centering matters.
            let x: Vec<f32> = rng
                .normals(NORM_ROWS * dim, 2.0)
                .iter()
                .map(|v| v + 3.0)
                .collect();
            let weight: Vec<f32> = rng.normals(dim, 0.5).iter().map(|w| 1.0 + w).collect();
            let bias = rng.normals(dim, 1.0);
            let rows = gather.then_some(&GATHER_ROWS[..]);
            let r = rows.map_or(NORM_ROWS, |r| r.len());
            let eps = 1e-5;
            let want = norm::layer_norm_reference(&x, &weight, &bias, rows, dim, eps);

            let xb = f32s("x", &x, &[NORM_ROWS, dim]);
            let wb = f32s("weight", &weight, &[dim]);
            let bb = f32s("bias", &bias, &[dim]);
            let rb = u32s("rows", &GATHER_ROWS);
            let y = f32s("y", &rng.normals(r * dim, 1.0), &[r, dim]);
            let k = LayerNorm::with_workgroup(ctx(), gather, wg);
            let bg = k.bind(
                ctx(),
                &xb.buffer,
                &wb.buffer,
                &bb.buffer,
                &rb.buffer,
                &y.buffer,
            );
            run(|pass| k.encode(pass, &bg, r, dim, eps));
            assert_close(
                &format!("layer_norm dim {dim} gather {gather} workgroup {wg}"),
                &read(&y),
                &want,
                TOL,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Matmul

/// Runs one matmul on random data; returns (gpu y, reference y).
fn matmul_case(dtype: WeightDType, p: MatmulParams, seed: u64) -> (Vec<f32>, Vec<f32>) {
    Matmul::check(&p).expect("valid shape");
    let mut rng = Rng::new(seed);
    let x = rng.normals(p.m * p.k, 1.0);
    let w = rng.normals(p.n * p.k, 1.0);
    let bias = rng.normals(p.n, 1.0);
    let y0 = rng.normals(p.m * p.y_stride, 1.0);
    let mut want = y0.clone();
    matmul::reference(
        &x,
        &round_to(&w, dtype),
        p.bias.then_some(&bias[..]),
        &mut want,
        &p,
    );

    let xb = f32s("x", &x, &[p.m, p.k]);
    let wb = linear_weight("w", &w, p.n, p.k, dtype);
    let bb = f32s("bias", &bias, &[p.n]);
    let y = f32s("y", &y0, &[p.m, p.y_stride]);
    let mm = Matmul::new(ctx(), dtype);
    let bg = mm.bind(ctx(), &xb.buffer, &wb.buffer, &bb.buffer, &y.buffer);
    run(|pass| mm.encode(pass, &bg, &p));
    (read(&y), want)
}

#[test]
fn matmul_f32_and_f16_weights_with_bias_accumulate_and_column_offset() {
    let with = |m, n, k, y_stride, y_col, bias, accumulate| MatmulParams {
        m,
        n,
        k,
        y_stride,
        y_col,
        bias,
        accumulate,
    };
    let cases = [
        MatmulParams::plain(13, 67, 70),
        MatmulParams::plain(1, 67, 70),
        with(13, 67, 70, 67, 0, true, false),
        with(13, 67, 70, 67, 0, false, true),
        // A column slice of a wider output (a weight split across buffers), bias + residual.
        with(13, 67, 70, 80, 5, true, true),
        with(37, 130, 198, 133, 3, true, true),
        with(8, 64, 64, 64, 0, true, false),
        with(9, 65, 2, 70, 5, false, true),
        with(13, 67, 71, 67, 0, true, false),
        with(3, 5, 1, 9, 4, true, true),
        // More than one workgroup of columns (256 per group).
        with(10, 300, 40, 301, 1, true, false),
    ];
    for dtype in [F32, F16] {
        for (i, p) in cases.iter().enumerate() {
            let (got, want) = matmul_case(dtype, *p, 10 + i as u64);
            assert_close(&format!("matmul {dtype:?} {p:?}"), &got, &want, TOL);
        }
    }
}

#[test]
fn matmul_rows_are_batch_invariant() {
    let (m, n, k) = (37usize, 67usize, 70usize);
    for dtype in [F32, F16] {
        let mut rng = Rng::new(77);
        let x = rng.normals(m * k, 1.0);
        let w = rng.normals(n * k, 1.0);
        let bias = rng.normals(n, 1.0);
        let p = MatmulParams {
            bias: true,
            ..MatmulParams::plain(m, n, k)
        };
        let mm = Matmul::new(ctx(), dtype);
        let wb = linear_weight("w", &w, n, k, dtype);
        let bb = f32s("bias", &bias, &[n]);
        let xb = f32s("x", &x, &[m, k]);
        let y = f32s("y", &rng.normals(m * n, 1.0), &[m, n]);
        let bg = mm.bind(ctx(), &xb.buffer, &wb.buffer, &bb.buffer, &y.buffer);
        run(|pass| mm.encode(pass, &bg, &p));
        let batched = read(&y);
        for row in [0usize, 7, 8, 20, 36] {
            let x1 = f32s("x row", &x[row * k..(row + 1) * k], &[1, k]);
            let y1 = f32s("y row", &rng.normals(n, 1.0), &[1, n]);
            let bg1 = mm.bind(ctx(), &x1.buffer, &wb.buffer, &bb.buffer, &y1.buffer);
            run(|pass| mm.encode(pass, &bg1, &MatmulParams { m: 1, ..p }));
            assert_bits_eq(
                &format!("matmul {dtype:?} row {row}: M=1 vs M={m}"),
                &read(&y1),
                &batched[row * n..(row + 1) * n],
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE

/// RoPE as the runner applies it, fused with the KV write, against the plain rotation's
/// reference ([`rope::reference`]): the Q heads rotated in qkv, the K heads rotated into each
/// token's slot and V copied, qkv's K, V and pad columns untouched; positions 0 and the table's
/// last. Each K head holds a copy of the first Q head it serves, so the K the kernel rotates
/// on its way into the pool must have the bits of that Q rotated in place.
#[test]
fn rope_interleaved_and_half() {
    use wllm::gpu::kernels::RopeKvWrite;
    let t = 37;
    for style in [RopeStyle::Interleaved, RopeStyle::Half] {
        for (heads, kv_heads, head_dim) in [(6usize, 2usize, 16usize), (9, 3, 64)] {
            let what = format!("rope {style:?} heads {heads}/{kv_heads} dim {head_dim}");
            let mut rng = Rng::new(head_dim as u64);
            let max_positions = 300;
            // V columns and a pad follow Q and K.
            let (q_dim, kv_dim) = (heads * head_dim, kv_heads * head_dim);
            let row_stride = q_dim + 2 * kv_dim + 3;
            let mut positions: Vec<u32> = (0..t).map(|_| rng.below(max_positions)).collect();
            (positions[0], positions[1]) = (0, max_positions as u32 - 1);
            let cos_sin = rope::cos_sin_table(max_positions, head_dim, 10000.0);
            let mut qkv = rng.normals(t * row_stride, 1.0);
            let group = heads / kv_heads;
            let q_head = |row: usize, h: usize| row + h * group * head_dim;
            for r in 0..t {
                let row = r * row_stride;
                for h in 0..kv_heads {
                    let q = q_head(row, h);
                    qkv.copy_within(q..q + head_dim, row + q_dim + h * head_dim);
                }
            }
            let p = RopeParams {
                num_tokens: t,
                row_stride,
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim,
                max_positions,
                style,
            };
            let mut want = qkv.clone();
            rope::reference(&mut want, &positions, &cos_sin, &p);

            // Token r writes slot r.
            let slot_mapping: Vec<u32> = (0..t as u32).collect();
            let qb = f32s("qkv", &qkv, &[t, row_stride]);
            let pb = u32s("positions", &positions);
            let cb = f32s("cos_sin", &cos_sin, &[max_positions, head_dim / 2, 2]);
            let sb = u32s("slots", &slot_mapping);
            let kc = tensor("k_cache", &rng.normals(t * kv_dim, 1.0), &[t, kv_dim], F32);
            let vc = tensor("v_cache", &rng.normals(t * kv_dim, 1.0), &[t, kv_dim], F32);
            let k = RopeKvWrite::new(ctx(), F32, head_dim, KvStorage::Buffer);
            let (kp, vp) = (pool(&kc), pool(&vc));
            let bg = k.bind(
                ctx(),
                &qb.buffer,
                &pb.buffer,
                &cb.buffer,
                &sb.buffer,
                &kp,
                &vp,
            );
            run(|pass| k.encode(pass, &bg, &p));
            let (got, got_k, got_v) = (read(&qb), read(&kc), read(&vc));
            for r in 0..t {
                let row = r * row_stride;
                let (q, kv) = (row..row + q_dim, row + q_dim..row + q_dim + kv_dim);
                let (v, tail) = (kv.end..kv.end + kv_dim, row + q_dim..row + row_stride);
                let slot = r * kv_dim..(r + 1) * kv_dim;
                let at = |part: &str| format!("{what} token {r} {part}");
                assert_close(&at("Q"), &got[q.clone()], &want[q], TOL);
                assert_close(&at("K"), &got_k[slot.clone()], &want[kv], TOL);
                assert_bits_eq(&at("V"), &got_v[slot.clone()], &qkv[v]);
                assert_bits_eq(&at("qkv after Q"), &got[tail.clone()], &qkv[tail]);
                for h in 0..kv_heads {
                    let (kh, qh) = (slot.start + h * head_dim, q_head(row, h));
                    assert_bits_eq(
                        &at(&format!("K head {h} vs the Q head it copies")),
                        &got_k[kh..kh + head_dim],
                        &got[qh..qh + head_dim],
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KV write

#[test]
fn kv_write_f32_and_f16() {
    // 3 KV heads of 10: kv_dim 30 (even, as the kernel needs); odd row stride.
    let (t, kv_dim, q_dim, block_size, num_blocks) = (37usize, 30usize, 60usize, 4usize, 12usize);
    let row_stride = q_dim + 2 * kv_dim + 3;
    let slots = num_blocks * block_size;
    for dtype in [F32, F16] {
        let mut rng = Rng::new(5);
        let qkv = rng.normals(t * row_stride, 1.0);
        let mut all_slots: Vec<u32> = (0..slots as u32).collect();
        rng.shuffle(&mut all_slots);
        let slot_mapping = &all_slots[..t];
        let (k0, v0) = (
            rng.normals(slots * kv_dim, 1.0),
            rng.normals(slots * kv_dim, 1.0),
        );
        let (mut want_k, mut want_v) = (round_to(&k0, dtype), round_to(&v0, dtype));
        let qkv_r = round_to(&qkv, dtype);
        kv_write::reference(
            &qkv_r,
            slot_mapping,
            row_stride,
            q_dim,
            kv_dim,
            &mut want_k,
            &mut want_v,
        );

        let qb = f32s("qkv", &qkv, &[t, row_stride]);
        let sb = u32s("slots", slot_mapping);
        let kc = tensor("k_cache", &k0, &[slots, kv_dim], dtype);
        let vc = tensor("v_cache", &v0, &[slots, kv_dim], dtype);
        let k = KvWrite::new(ctx(), dtype, KvStorage::Buffer);
        let bg = k.bind(ctx(), &qb.buffer, &sb.buffer, &pool(&kc), &pool(&vc));
        run(|pass| k.encode(pass, &bg, t, row_stride, q_dim, kv_dim));
        assert_close(&format!("kv_write {dtype:?} K"), &read(&kc), &want_k, 0.0);
        assert_close(&format!("kv_write {dtype:?} V"), &read(&vc), &want_v, 0.0);
    }
}

/// RoPE + KV write fused, against the reference (RoPE, then kv_write's copy), in f32 and f16
/// pools over shuffled slots. head_dim 6 with rotate_half has an odd half (a K cache word holds
/// elements of two different rotation pairs).
#[test]
fn rope_kv_write_matches_reference() {
    use wllm::gpu::kernels::{RopeKvWrite, rope_kv_write};
    let (t, block_size, num_blocks, max_positions) = (23usize, 4usize, 9usize, 200usize);
    let slots = block_size * num_blocks;
    for style in [RopeStyle::Interleaved, RopeStyle::Half] {
        for (heads, kv_heads, head_dim) in [(6usize, 2usize, 16usize), (9, 3, 64), (4, 4, 6)] {
            for dtype in [F32, F16] {
                let what =
                    format!("rope_kv_write {style:?} {heads}/{kv_heads}×{head_dim} {dtype:?}");
                let mut rng = Rng::new(head_dim as u64 + 7);
                let (q_dim, kv_dim) = (heads * head_dim, kv_heads * head_dim);
                let row_stride = q_dim + 2 * kv_dim + 3;
                let mut positions: Vec<u32> = (0..t).map(|_| rng.below(max_positions)).collect();
                (positions[0], positions[1]) = (0, max_positions as u32 - 1);
                let mut all_slots: Vec<u32> = (0..slots as u32).collect();
                rng.shuffle(&mut all_slots);
                let slot_mapping = &all_slots[..t];
                let cos_sin = rope::cos_sin_table(max_positions, head_dim, 10000.0);
                let qkv = rng.normals(t * row_stride, 1.0);
                let (k0, v0) = (
                    rng.normals(slots * kv_dim, 1.0),
                    rng.normals(slots * kv_dim, 1.0),
                );
                let p = RopeParams {
                    num_tokens: t,
                    row_stride,
                    num_heads: heads,
                    num_kv_heads: kv_heads,
                    head_dim,
                    max_positions,
                    style,
                };
                let pb = u32s("positions", &positions);
                let sb = u32s("slots", slot_mapping);
                let cb = f32s("cos_sin", &cos_sin, &[max_positions, head_dim / 2, 2]);

                // The kernel.
                let qb = f32s("qkv", &qkv, &[t, row_stride]);
                let kc = tensor("k_cache", &k0, &[slots, kv_dim], dtype);
                let vc = tensor("v_cache", &v0, &[slots, kv_dim], dtype);
                let k = RopeKvWrite::new(ctx(), dtype, head_dim, KvStorage::Buffer);
                let bg = k.bind(
                    ctx(),
                    &qb.buffer,
                    &pb.buffer,
                    &cb.buffer,
                    &sb.buffer,
                    &pool(&kc),
                    &pool(&vc),
                );
                run(|pass| k.encode(pass, &bg, &p));
                let (fq, fk, fv) = (read(&qb), read(&kc), read(&vc));

                // Reference.
                let (mut want_q, mut want_k, mut want_v) =
                    (qkv.clone(), round_to(&k0, dtype), round_to(&v0, dtype));
                rope_kv_write::reference(
                    &mut want_q,
                    &positions,
                    &cos_sin,
                    slot_mapping,
                    &p,
                    &mut want_k,
                    &mut want_v,
                );
                // The pools store the written values in their own type.
                let (want_k, want_v) = (round_to(&want_k, dtype), round_to(&want_v, dtype));
                let cache_tol = if dtype == F16 { 2e-3 } else { TOL };
                assert_close(&format!("{what} qkv"), &fq, &want_q, TOL);
                // K and V columns and the pad are untouched.
                for r in 0..t {
                    let tail = r * row_stride + q_dim..(r + 1) * row_stride;
                    assert_bits_eq(&format!("{what} qkv tail"), &fq[tail.clone()], &qkv[tail]);
                }
                assert_close(&format!("{what} K"), &fk, &want_k, cache_tol);
                assert_close(&format!("{what} V"), &fv, &want_v, 0.0);
            }
        }
    }
}

/// A buffer pool sharing `t`'s buffer.
fn pool(t: &GpuTensor) -> KvPool {
    KvPool::Buffer(t.buffer.clone())
}

// ---------------------------------------------------------------------------------------------
// Activations

#[test]
fn silu_mul_matches_reference() {
    let (t, inner) = (37usize, 67usize);
    let mut rng = Rng::new(21);
    let gate_up = rng.normals(t * 2 * inner, 3.0);
    let want = activation::silu_mul_reference(&gate_up, inner);
    let gb = f32s("gate_up", &gate_up, &[t, 2 * inner]);
    let y = f32s("y", &rng.normals(t * inner, 1.0), &[t, inner]);
    let k = SiluMul::new(ctx());
    let bg = k.bind(ctx(), &gb.buffer, &y.buffer);
    run(|pass| k.encode(pass, &bg, t, inner));
    assert_close("silu_mul", &read(&y), &want, TOL);
}

fn gelu_case(n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut x = rng.normals(n, 3.0);
    // Far into both tails, where tanh saturates (and the shader clamps its argument).
    for (i, v) in [7.0f32, -7.0, 20.0, -20.0, 100.0, -100.0, 0.0]
        .into_iter()
        .enumerate()
    {
        x[i] = v;
    }
    let want = activation::gelu_reference(&x);
    let xb = f32s("x", &x, &[n]);
    let k = Gelu::new(ctx());
    let bg = k.bind(ctx(), &xb.buffer);
    run(|pass| k.encode(pass, &bg, n));
    assert_close(&format!("gelu n={n}"), &read(&xb), &want, TOL);
}

#[test]
fn gelu_matches_reference() {
    gelu_case(37 * 67, 22);
}

#[test]
fn gelu_over_a_two_dimensional_grid() {
    // More than 65535 workgroups of 256: the grid wraps into y.
    gelu_case(65535 * 256 + 300, 23);
}
