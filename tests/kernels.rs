//! Every kernel against its CPU reference, on random inputs of awkward sizes.
//!
//! Sizes are deliberately not multiples of the kernels' tiles (32/64/256 threads, 8 rows,
//! 8 columns per matmul thread, 64 keys per attention tile), sequence lengths straddle block
//! and key-tile boundaries, and the paged-attention KV lives in shuffled, non-contiguous
//! blocks while the reference reads contiguous per-sequence K/V. Outputs start as random
//! garbage (never zeros), so an element a kernel forgets to write fails. Batch invariance
//! (a row's result does not depend on its batch) is checked bit-exactly.

mod common;

use wllm::WeightDType::{self, F16, F32};
use wllm::batch::{LogitRows, StepBatch};
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::{
    AttentionKind, AttentionParams, Embedding, Gelu, KvWrite, LayerNorm, Matmul, MatmulParams,
    PagedAttention, RmsNorm, Rope, RopeParams, SiluMul, activation, attention, embedding, kv_write,
    matmul, norm, rope,
};
use wllm::gpu::tensor::round_to;
use wllm::kv::{BlockId, BlockPool, BlockTable};
use wllm::model::RopeStyle;

// ---------------------------------------------------------------------------------------------
// Test plumbing: a deterministic PRNG, buffers, one-pass submission, comparisons.

/// The library's SplitMix64 with the helpers the tests need.
struct Rng(wllm::sampling::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(wllm::sampling::Rng::new(seed ^ 0xD1B5_4A32_D192_ED03))
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// N(0, 1) by Box–Muller.
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }

    fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }

    fn below(&mut self, n: usize) -> u32 {
        (self.next_u64() % n as u64) as u32
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1) as usize);
        }
    }
}

fn ctx() -> &'static wllm::GpuContext {
    common::gpu()
}

fn tensor(name: &str, data: &[f32], shape: &[usize], dtype: WeightDType) -> GpuTensor {
    GpuTensor::from_f32(ctx(), name, data, shape, dtype).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A linear layer's weight `w` (n, k) in the matmul kernel's layout (also the embedding's).
fn linear_weight(name: &str, w: &[f32], n: usize, k: usize, dtype: WeightDType) -> GpuTensor {
    let words = matmul::pack_weight(w, n, k, dtype);
    GpuTensor::from_words(ctx(), name, &words, &[k, matmul::padded_cols(n)], dtype)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn f32s(name: &str, data: &[f32], shape: &[usize]) -> GpuTensor {
    tensor(name, data, shape, F32)
}

/// A u32 buffer (ids, positions, slots, block tables): the words are stored as they are.
fn u32s(name: &str, data: &[u32]) -> GpuTensor {
    GpuTensor::from_words(ctx(), name, data, &[data.len()], F32)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Records `f`'s dispatches into one compute pass and submits it.
fn run(f: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
    let mut enc = ctx()
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
    ctx().queue.submit([enc.finish()]);
}

fn read(t: &GpuTensor) -> Vec<f32> {
    t.read_f32(ctx()).expect("read back")
}

/// |gpu - cpu| <= tol * (1 + |cpu|): relative for large values, absolute near zero.
#[track_caller]
fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let close = (g - c).abs() <= tol * (1.0 + c.abs());
        assert!(close, "{what}: failed at index {i}: {g} vs {c}");
    }
}

#[track_caller]
fn assert_bits_eq(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.to_bits() == y.to_bits(),
            "{what}: failed at index {i}: {x} vs {y}"
        );
    }
}

const TOL: f32 = 1e-4;

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
    for dim in [50usize, 200, 700] {
        for gather in [false, true] {
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
            let k = RmsNorm::new(ctx(), gather);
            let bg = k.bind(ctx(), &xb.buffer, &wb.buffer, &rb.buffer, &y.buffer);
            run(|pass| k.encode(pass, &bg, r, dim, eps));
            assert_close(
                &format!("rms_norm dim {dim} gather {gather}"),
                &read(&y),
                &want,
                TOL,
            );
        }
    }
}

#[test]
fn layer_norm_with_and_without_gather() {
    for dim in [50usize, 200, 700] {
        for gather in [false, true] {
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
            let k = LayerNorm::new(ctx(), gather);
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
                &format!("layer_norm dim {dim} gather {gather}"),
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

#[test]
fn rope_interleaved_and_half() {
    let t = 37;
    for style in [RopeStyle::Interleaved, RopeStyle::Half] {
        for (heads, kv_heads, head_dim) in [(6usize, 2usize, 16usize), (9, 3, 64)] {
            let mut rng = Rng::new(head_dim as u64);
            let max_positions = 300;
            // V columns and a pad follow Q and K; RoPE must leave them alone.
            let row_stride = (heads + 2 * kv_heads) * head_dim + 3;
            let mut positions: Vec<u32> = (0..t).map(|_| rng.below(max_positions)).collect();
            (positions[0], positions[1]) = (0, max_positions as u32 - 1);
            let cos_sin = rope::cos_sin_table(max_positions, head_dim, 10000.0);
            let qkv = rng.normals(t * row_stride, 1.0);
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

            let qb = f32s("qkv", &qkv, &[t, row_stride]);
            let pb = u32s("positions", &positions);
            let cb = f32s("cos_sin", &cos_sin, &[max_positions, head_dim / 2, 2]);
            let k = Rope::new(ctx());
            let bg = k.bind(ctx(), &qb.buffer, &pb.buffer, &cb.buffer);
            run(|pass| k.encode(pass, &bg, &p));
            let what = format!("rope {style:?} heads {heads}/{kv_heads} dim {head_dim}");
            assert_close(&what, &read(&qb), &want, TOL);
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
        let k = KvWrite::new(ctx(), dtype);
        let bg = k.bind(ctx(), &qb.buffer, &sb.buffer, &kc.buffer, &vc.buffer);
        run(|pass| k.encode(pass, &bg, t, row_stride, q_dim, kv_dim));
        assert_close(&format!("kv_write {dtype:?} K"), &read(&kc), &want_k, 0.0);
        assert_close(&format!("kv_write {dtype:?} V"), &read(&vc), &want_v, 0.0);
    }
}

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

/// Block tables for [`SEQS`] in a pool with spare blocks; returns (pool blocks, tables).
/// Shuffled: the free list is permuted first and the sequences grow one block each in turn,
/// so every table is scattered; otherwise each sequence gets consecutive blocks.
fn block_tables(bs: usize, shuffled: bool, rng: &mut Rng) -> (usize, Vec<BlockTable>) {
    let blocks = SEQS.map(|(len, _)| len.div_ceil(bs));
    let mut pool = BlockPool::new(blocks.iter().sum::<usize>() + 5, bs).expect("pool");
    if shuffled {
        let n = pool.num_blocks();
        let mut all: Vec<BlockId> = (0..n).map(|_| pool.allocate().expect("block")).collect();
        rng.shuffle(&mut all);
        all.into_iter()
            .for_each(|b| pool.release(b).expect("release"));
    }
    let mut tables = vec![BlockTable::new(); SEQS.len()];
    for round in 1..=blocks.iter().copied().max().unwrap_or(0) {
        for (table, (len, _)) in tables.iter_mut().zip(SEQS) {
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

/// Builds the step (K/V of earlier positions written straight into the pool, the step's own
/// K/V through kv_write), runs kv_write + paged attention in one pass, checks every listed
/// token alone (T = 1) against its row in the batch bit for bit; returns (gpu, reference).
fn paged_attention_case(
    c: AttnCase,
    kind: AttentionKind,
    shuffled: bool,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let (bs, nh, nkv, hd, kv) = c;
    let kv_dim = nkv * hd;
    let q_dim = nh * hd;
    let row_stride = q_dim + 2 * kv_dim + 2;
    let mut rng = Rng::new(seed);
    // Contiguous per-sequence K/V (len, kv_dim), as stored (f16-rounded when the pool is f16).
    let mut per_seq = || SEQS.map(|(len, _)| round_to(&rng.normals(len * kv_dim, 1.0), kv));
    let (keys, values) = (per_seq(), per_seq());

    let mut layout_rng = Rng::new(seed ^ 0xB10C);
    let (num_blocks, tables) = block_tables(bs, shuffled, &mut layout_rng);
    let max_blocks = tables.iter().map(|t| t.blocks().len()).max().unwrap_or(0) + 1;
    let mut batch = StepBatch::new(max_blocks);
    for (&(len, from), table) in SEQS.iter().zip(&tables) {
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
    for ((&(_, from), table), (k, v)) in SEQS.iter().zip(&tables).zip(keys.iter().zip(&values)) {
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

    let p = AttentionParams {
        num_tokens: t,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        row_stride,
        block_size: bs,
        max_blocks,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let want = attention::reference(&qkv, &keys, &values, &batch.token_seq, &batch.positions, &p);

    let qkv_b = f32s("qkv", &qkv, &[t, row_stride]);
    let k_cache = tensor("k_cache", &k_pool, &[num_slots, kv_dim], kv);
    let v_cache = tensor("v_cache", &v_pool, &[num_slots, kv_dim], kv);
    let slots_b = u32s("slot_mapping", &batch.slot_mapping);
    let tables_b = u32s("block_tables", &batch.block_tables);
    let seq_b = u32s("token_seq", &batch.token_seq);
    let pos_b = u32s("positions", &batch.positions);
    let out = f32s("out", &rng.normals(t * q_dim, 1.0), &[t, q_dim]);
    let kvw = KvWrite::new(ctx(), kv);
    let attn = PagedAttention::with_kind(ctx(), hd, kv, kind).expect("head_dim");
    let kvw_bg = kvw.bind(
        ctx(),
        &qkv_b.buffer,
        &slots_b.buffer,
        &k_cache.buffer,
        &v_cache.buffer,
    );
    let bind =
        |q: &GpuTensor, tables: &GpuTensor, seq: &GpuTensor, pos: &GpuTensor, out: &GpuTensor| {
            let (k, v) = (&k_cache.buffer, &v_cache.buffer);
            attn.bind(
                ctx(),
                &q.buffer,
                k,
                v,
                &tables.buffer,
                &seq.buffer,
                &pos.buffer,
                &out.buffer,
            )
        };
    let attn_bg = bind(&qkv_b, &tables_b, &seq_b, &pos_b, &out);
    run(|pass| {
        kvw.encode(pass, &kvw_bg, t, row_stride, q_dim, kv_dim);
        attn.encode(pass, &attn_bg, &p);
    });
    let gpu = read(&out);

    // Batch invariance: each decode token, and the first and last token of every chunk,
    // alone in a T = 1 step over the same (now fully written) pool.
    let mut alone = Vec::new();
    for s in 0..SEQS.len() {
        let (a, b) = (batch.query_start[s], batch.query_start[s + 1]);
        alone.extend([a as usize, b as usize - 1]);
    }
    alone.dedup();
    for tok in alone {
        let s = batch.token_seq[tok] as usize;
        let row = tok * row_stride..(tok + 1) * row_stride;
        let q1 = f32s("qkv row", &qkv[row], &[1, row_stride]);
        let table1 = &batch.block_tables[s * max_blocks..(s + 1) * max_blocks];
        let table1 = u32s("table row", table1);
        let seq1 = u32s("token_seq", &[0]);
        let pos1 = u32s("positions", &[batch.positions[tok]]);
        let out1 = f32s("out row", &rng.normals(q_dim, 1.0), &[1, q_dim]);
        let bg1 = bind(&q1, &table1, &seq1, &pos1, &out1);
        run(|pass| attn.encode(pass, &bg1, &AttentionParams { num_tokens: 1, ..p }));
        assert_bits_eq(
            &format!(
                "{c:?} {kind:?}: token {tok} (seq {s}, position {}) alone vs in a batch of {t}",
                batch.positions[tok]
            ),
            &read(&out1),
            &gpu[tok * q_dim..(tok + 1) * q_dim],
        );
    }
    (gpu, want)
}

fn check_paged_attention(cases: &[AttnCase]) {
    for kind in [AttentionKind::Workgroup, AttentionKind::Serial] {
        for (i, &c) in cases.iter().enumerate() {
            let (gpu, want) = paged_attention_case(c, kind, true, i as u64 + 1);
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
        .flat_map(|kv| [AttentionKind::Workgroup, AttentionKind::Serial].map(|k| (kv, k)))
    {
        let c = (4, 6, 2, 16, kv);
        let (scattered, want) = paged_attention_case(c, kind, true, 9);
        let (contiguous, _) = paged_attention_case(c, kind, false, 9);
        let what = format!("{c:?} {kind:?}: shuffled vs contiguous blocks");
        assert_bits_eq(&what, &scattered, &contiguous);
        assert_close(&format!("paged attention {c:?}"), &scattered, &want, TOL);
    }
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
