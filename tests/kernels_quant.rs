//! The quantized-weight kernels (matmul_quant, embedding_quant) and their packing, against
//! the CPU references on random GGUF blocks.
//!
//! Weights are built as real GGUF Q4_0 / Q4_1 / Q8_0 block bytes (random f16 scales of a
//! realistic size, random nibbles / int8), packed with `pack_quantized`, and compared with
//! `loader::dequant` + f64 accumulation. Sizes are awkward (N not a multiple of the 64-thread
//! workgroup, M not a multiple of the rows per thread), outputs start as random garbage, and
//! batch invariance (ROWS = 1, 4, 8; a row alone vs in a batch of 13) is checked bit-exactly.

mod common;

use common::plumbing::{Rng, assert_bits_eq, ctx, f32s, read, run, u32s};
use half::f16;
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::matmul_quant::{
    self, QuantFormat, QuantTuning, dequantize_packed, row_bytes,
};
use wllm::gpu::kernels::{
    EmbeddingQuant, MatmulParams, MatmulQuant, WeightData, embedding_quant, quant_texture,
};
use wllm::loader::TensorDType::{self, Q4_0, Q4_1, Q8_0};
use wllm::loader::dequant;

const QUANT_TYPES: [TensorDType; 3] = [Q4_0, Q4_1, Q8_0];

// ---------------------------------------------------------------------------------------------
// Test plumbing beyond tests/common/plumbing.rs: GGUF blocks, their upload, comparisons.

/// `n` rows of `k` weights as GGUF `dtype` block bytes: scales d of either sign with
/// |d| in 0.01..0.1, Q4_1 mins around −8·d, random nibbles / int8.
fn random_blocks(rng: &mut Rng, dtype: TensorDType, n: usize, k: usize) -> Vec<u8> {
    let mut raw = Vec::with_capacity(n * row_bytes(dtype, k));
    for _ in 0..n * k / 32 {
        let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
        let d = f16::from_f64(sign * rng.range(0.01, 0.1));
        raw.extend_from_slice(&d.to_le_bytes());
        let qs = match dtype {
            Q4_1 => {
                let m = f16::from_f64(-d.to_f64().abs() * rng.range(4.0, 12.0));
                raw.extend_from_slice(&m.to_le_bytes());
                16
            }
            Q4_0 => 16,
            Q8_0 => 32,
            other => panic!("{other:?} is not quantized"),
        };
        raw.extend((0..qs).map(|_| rng.byte()));
    }
    raw
}

/// GGUF blocks of an (n, k) weight, packed and uploaded: as texture planes when `texture`,
/// else as words in a storage buffer.
fn quant_weight(
    name: &str,
    raw: &[u8],
    dtype: TensorDType,
    n: usize,
    k: usize,
    texture: bool,
) -> WeightData {
    let (w, format) =
        matmul_quant::pack_quantized(raw, dtype, n, k).unwrap_or_else(|e| panic!("{name}: {e}"));
    if texture {
        let view = quant_texture::upload_texture(ctx(), name, &w, format, n, k)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        WeightData::Texture(view)
    } else {
        WeightData::Buffer(u32s(name, &w).buffer)
    }
}

/// Equal values (`==`: a Q4_0 zero, q = 8, may come out as +0 where the loader's d·0 gave −0).
#[track_caller]
fn assert_values_eq(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x == y, "{what}: failed at index {i}: {x} vs {y}");
    }
}

/// f32 accumulation vs the f64 reference: |gpu − cpu| ≤ 1e-4 · (Σ|x·w| + |bias| + |y₀|).
const TOL: f64 = 1e-4;

// ---------------------------------------------------------------------------------------------
// Packing (CPU only)

#[test]
fn packed_blocks_dequantize_exactly_like_the_loader() {
    let (n, k) = (77usize, 96usize);
    for dtype in QUANT_TYPES {
        let mut rng = Rng::new(1);
        let raw = random_blocks(&mut rng, dtype, n, k);
        let (w, format) = matmul_quant::pack_quantized(&raw, dtype, n, k).expect("packs");
        let expect_format = if dtype == Q8_0 {
            QuantFormat::Q8
        } else {
            QuantFormat::Q4
        };
        assert_eq!(format, expect_format, "{dtype:?}");
        assert_eq!(w.len(), format.words_for(n, k), "{dtype:?}: word count");
        let want = dequant::to_f32(dtype, &raw, n * k).expect("dequantizes");
        let got = dequantize_packed(&w, format, n, k);
        assert_values_eq(&format!("{dtype:?}"), &got, &want);
    }
}

#[test]
fn a_row_range_packs_like_those_rows_of_the_whole() {
    let (n, k, start, rows) = (77usize, 96usize, 20usize, 30usize);
    for dtype in QUANT_TYPES {
        let mut rng = Rng::new(2);
        let raw = random_blocks(&mut rng, dtype, n, k);
        let (whole, format) = matmul_quant::pack_quantized(&raw, dtype, n, k).expect("whole");
        let rb = row_bytes(dtype, k);
        let part_raw = &raw[start * rb..(start + rows) * rb];
        let (part, _) = matmul_quant::pack_quantized(part_raw, dtype, rows, k).expect("part");
        let bw = format.block_words();
        for r in 0..rows {
            for b in 0..k / 32 {
                let got = &part[(b * rows + r) * bw..][..bw];
                let want = &whole[(b * n + start + r) * bw..][..bw];
                assert_eq!(got, want, "{dtype:?}: row {r} block {b}");
            }
        }
    }
}

#[test]
fn q4_0_becomes_d_and_minus_8d() {
    // d = 0.5 (f16 0x3800), m = -4 (f16 0xc400); qs copied as they are.
    let mut block = vec![0x00, 0x38];
    block.extend(0u8..16);
    let (w, format) = matmul_quant::pack_quantized(&block, Q4_0, 1, 32).expect("packs");
    assert_eq!(format, QuantFormat::Q4);
    assert_eq!(
        w,
        vec![
            0xc400_3800,
            0x0302_0100,
            0x0706_0504,
            0x0b0a_0908,
            0x0f0e_0d0c
        ]
    );
    // The largest d whose −8·d fits f16 (8188 · 8 = 65504) packs; 8192 overflows: an error.
    let with_d = |d: f32| {
        let mut b = f16::from_f32(d).to_le_bytes().to_vec();
        b.extend([0x88; 16]);
        matmul_quant::pack_quantized(&b, Q4_0, 1, 32)
    };
    assert!(with_d(8188.0).is_ok());
    assert!(with_d(-8188.0).is_ok());
    let err = with_d(8192.0).expect_err("-8 · 8192 overflows f16");
    assert!(err.to_string().contains("overflows"), "{err}");
}

#[test]
fn packing_rejects_bad_shapes() {
    let raw = vec![0u8; 2 * row_bytes(Q8_0, 64)];
    assert!(matmul_quant::pack_quantized(&raw, Q8_0, 2, 64).is_ok());
    // One byte short, one row too many, k not a multiple of 32, not a quantized type.
    assert!(matmul_quant::pack_quantized(&raw[1..], Q8_0, 2, 64).is_err());
    assert!(matmul_quant::pack_quantized(&raw, Q8_0, 3, 64).is_err());
    assert!(matmul_quant::pack_quantized(&raw, Q8_0, 4, 16).is_err());
    assert!(matmul_quant::pack_quantized(&raw, TensorDType::F16, 1, 68).is_err());
    assert!(MatmulQuant::check(&MatmulParams::plain(1, 8, 48)).is_err());
    assert!(EmbeddingQuant::check(48).is_err());
}

// ---------------------------------------------------------------------------------------------
// Matmul

/// Runs one quantized matmul on random data and checks it against the reference.
fn check_matmul(dtype: TensorDType, tuning: QuantTuning, p: MatmulParams, seed: u64) {
    MatmulQuant::check(&p).expect("valid shape");
    let what = format!("matmul_quant {dtype:?} {tuning:?} {p:?}");
    let mut rng = Rng::new(seed);
    let x = rng.normals(p.m * p.k, 1.0);
    let raw = random_blocks(&mut rng, dtype, p.n, p.k);
    let bias = rng.normals(p.n, 1.0);
    let y0 = rng.normals(p.m * p.y_stride, 1.0);
    let mut want = y0.clone();
    let bias_ref = p.bias.then_some(&bias[..]);
    matmul_quant::reference(&x, &raw, dtype, bias_ref, &mut want, &p).expect("reference");

    let xb = x_input(&x, p.m, p.k);
    let wb = quant_weight("w", &raw, dtype, p.n, p.k, tuning.w_texture);
    let bb = f32s("bias", &bias, &[p.n]);
    let y = f32s("y", &y0, &[p.m, p.y_stride]);
    let format = QuantFormat::of(dtype).expect("quantized");
    let mm = MatmulQuant::new(ctx(), format, tuning);
    let bg = mm
        .bind(ctx(), &xb.buffer, &wb, &bb.buffer, &y.buffer)
        .expect("bind");
    run(|pass| mm.encode(pass, &bg, &p));
    let got = read(&y);

    // Untouched columns keep their garbage; written ones are within TOL of their magnitude.
    let w = dequant::to_f32(dtype, &raw, p.n * p.k).expect("dequantizes");
    for m in 0..p.m {
        for col in 0..p.y_stride {
            let i = m * p.y_stride + col;
            if col < p.y_col || col >= p.y_col + p.n {
                assert_eq!(
                    got[i].to_bits(),
                    y0[i].to_bits(),
                    "{what}: clobbered index {i}"
                );
                continue;
            }
            let n = col - p.y_col;
            let mut scale: f64 = (0..p.k)
                .map(|k| (x[m * p.k + k] as f64 * w[n * p.k + k] as f64).abs())
                .sum();
            if p.bias {
                scale += (bias[n] as f64).abs();
            }
            if p.accumulate {
                scale += (y0[i] as f64).abs();
            }
            let err = (got[i] as f64 - want[i] as f64).abs();
            assert!(
                err <= TOL * scale,
                "{what}: failed at index {i} (row {m}, col {n}): {} vs {} (scale {scale})",
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn matmul_quant_matches_reference_for_q4_0_q4_1_q8_0() {
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
        MatmulParams::plain(1, 77, 32),
        with(3, 300, 96, 300, 0, true, false),
        // 5 k-blocks: one whole scale texel and one partly used.
        with(9, 33, 160, 40, 2, false, false),
        with(13, 77, 576, 90, 7, true, true),
        with(40, 64, 96, 64, 0, false, true),
        // Five workgroups of columns at an offset, M one past a multiple of 4 and 8, the
        // SmolLM2 MLP's in-features.
        with(41, 300, 1536, 310, 5, true, true),
    ];
    for dtype in QUANT_TYPES {
        for tuning in tunings() {
            for (i, p) in cases.iter().enumerate() {
                check_matmul(dtype, tuning, *p, 100 + i as u64);
            }
        }
    }
}

/// Fixed rows with x windows: a k too wide for a window of that many rows per thread falls to
/// a smaller row choice (rows 8 → 4 at k = 2080, 8 or 4 → 1 at k = 4128), whose pipelines
/// [`MatmulQuant`] compiles with the fixed one (and no others).
#[test]
fn fixed_rows_with_windows_fall_back_for_a_wide_k() {
    for rows in [4, 8] {
        for w_texture in [false, true] {
            let tuning = QuantTuning {
                workgroup: 8,
                k_split: 1,
                cols: 8,
                fixed_rows: Some(rows),
                x_window: true,
                x_shared: true,
                w_texture,
            };
            for (i, k) in [2080, 4128].into_iter().enumerate() {
                check_matmul(Q4_0, tuning, MatmulParams::plain(9, 13, k), 300 + i as u64);
            }
        }
    }
}

/// Work splits to test: the GPU and CPU-adapter defaults with each rows-per-thread choice
/// forced, an awkward split, and the automatic row choice; x from storage and through
/// uniform windows; weights from buffers and from textures. The k-split tunings (the GPU
/// default and awkward ones: fewer lanes per column than rows per thread, one column per
/// workgroup) come last, from index [`FIRST_K_SPLIT`].
fn tunings() -> Vec<QuantTuning> {
    // x_shared only takes effect with x windows where a subgroup is the 8-lane workgroup
    // (lavapipe); elsewhere those tunings run unshared.
    let t = |workgroup, cols, fixed_rows, x_window, w_texture| QuantTuning {
        workgroup,
        k_split: 1,
        cols,
        fixed_rows,
        x_window,
        x_shared: workgroup == 8,
        w_texture,
    };
    let mut v = vec![
        t(8, 3, None, false, false),
        t(64, 1, None, false, false),
        t(8, 8, None, true, true),
    ];
    for rows in MatmulQuant::ROW_CHOICES {
        v.push(t(64, 1, Some(rows), false, false));
        v.push(t(16, 16, Some(rows), true, false));
        v.push(t(8, 8, Some(rows), true, true));
    }
    v.push(t(16, 16, Some(8), false, true));
    v.push(t(8, 5, Some(4), true, false));
    v.push(t(64, 1, None, false, true));
    v.push(QuantTuning {
        x_shared: false,
        ..t(8, 8, None, true, true)
    });
    assert_eq!(v.len(), FIRST_K_SPLIT);
    let split = |workgroup, k_split, fixed_rows| QuantTuning {
        k_split,
        fixed_rows,
        ..t(workgroup, 1, None, false, false)
    };
    v.push(split(64, 16, None));
    v.push(split(64, 16, Some(8)));
    v.push(split(32, 4, Some(8)));
    v.push(split(16, 16, Some(4)));
    v.push(split(128, 2, None));
    v
}

/// Where the k-split tunings start in [`tunings`].
const FIRST_K_SPLIT: usize = 16;

/// x (rows, k) in a buffer every tuning can bind (uniform windows included).
fn x_input(x: &[f32], rows: usize, k: usize) -> GpuTensor {
    GpuTensor::matmul_input(ctx(), "x", x, rows, k).expect("x buffer")
}

/// The shared-x form is built exactly where a subgroup is the 8-lane workgroup (lavapipe on
/// 256-bit CPUs), so the tests above run it there.
#[test]
fn x_sharing_is_on_where_subgroups_are_the_workgroup() {
    let info = &ctx().adapter_info;
    let can = info.subgroup && info.subgroup_min_size == 8 && info.subgroup_max_size == 8;
    let cpu = tunings()[2];
    assert!(cpu.x_window && cpu.x_shared);
    let built = MatmulQuant::new(ctx(), QuantFormat::Q4, cpu).tuning();
    assert_eq!(built.x_shared, can, "{info:?}");
    // Never without windows.
    let storage_x = QuantTuning {
        x_window: false,
        ..cpu
    };
    assert!(
        !MatmulQuant::new(ctx(), QuantFormat::Q4, storage_x)
            .tuning()
            .x_shared
    );
}

#[test]
fn matmul_quant_rows_are_batch_invariant() {
    let (m, n, k) = (13usize, 77usize, 576usize);
    for dtype in QUANT_TYPES {
        let mut rng = Rng::new(7);
        let x = rng.normals(m * k, 1.0);
        let raw = random_blocks(&mut rng, dtype, n, k);
        let bias = rng.normals(n, 1.0);
        let y0 = rng.normals(m * n, 1.0);
        let p = MatmulParams {
            bias: true,
            accumulate: true,
            ..MatmulParams::plain(m, n, k)
        };
        let format = QuantFormat::of(dtype).expect("quantized");
        let weights = [false, true].map(|tex| quant_weight("w", &raw, dtype, n, k, tex));
        let wb = |tuning: QuantTuning| &weights[usize::from(tuning.w_texture)];
        let bb = f32s("bias", &bias, &[n]);
        let xb = x_input(&x, m, k);
        // One result per k_split (the order of each sum), with the tuning that made it first.
        let mut batched: Vec<(QuantTuning, Vec<f32>)> = Vec::new();
        for tuning in tunings() {
            let mm = MatmulQuant::new(ctx(), format, tuning);
            let y = f32s("y", &y0, &[m, n]);
            let bg = mm
                .bind(ctx(), &xb.buffer, wb(tuning), &bb.buffer, &y.buffer)
                .expect("bind");
            run(|pass| mm.encode(pass, &bg, &p));
            let got = read(&y);
            match batched.iter().find(|(t, _)| t.k_split == tuning.k_split) {
                None => batched.push((tuning, got)),
                Some((first, want)) => assert_bits_eq(
                    &format!("matmul_quant {dtype:?} M={m}: {first:?} vs {tuning:?}"),
                    &got,
                    want,
                ),
            }
        }
        for tuning in tunings() {
            let batched = &batched
                .iter()
                .find(|(t, _)| t.k_split == tuning.k_split)
                .expect("ran")
                .1;
            let mm = MatmulQuant::new(ctx(), format, tuning);
            for row in [0usize, 3, 4, 7, 8, 12] {
                let x1 = x_input(&x[row * k..(row + 1) * k], 1, k);
                let y1 = f32s("y row", &y0[row * n..(row + 1) * n], &[1, n]);
                let bg1 = mm
                    .bind(ctx(), &x1.buffer, wb(tuning), &bb.buffer, &y1.buffer)
                    .expect("bind");
                run(|pass| mm.encode(pass, &bg1, &MatmulParams { m: 1, ..p }));
                assert_bits_eq(
                    &format!("matmul_quant {dtype:?} {tuning:?} row {row}: M=1 vs M={m}"),
                    &read(&y1),
                    &batched[row * n..(row + 1) * n],
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Embedding

#[test]
fn embedding_quant_over_a_table_split_in_two() {
    let (vocab, dim, t, split) = (300usize, 96usize, 37usize, 123usize);
    for dtype in QUANT_TYPES {
        let what = format!("embedding_quant {dtype:?}");
        let mut rng = Rng::new(11);
        let raw = random_blocks(&mut rng, dtype, vocab, dim);
        let mut ids: Vec<u32> = (0..t).map(|_| rng.below(vocab)).collect();
        ids[..4].copy_from_slice(&[0, split as u32 - 1, split as u32, vocab as u32 - 1]);
        let x0 = rng.normals(t * dim, 1.0);
        let want = embedding_quant::reference(&ids, &raw, dtype, vocab, dim).expect("reference");
        EmbeddingQuant::check(dim).expect("valid dim");

        for texture in [false, true] {
            let what = format!("{what} texture={texture}");
            // The table in two parts, packed on their own: ids [0, split) and [split, vocab).
            let rb = row_bytes(dtype, dim);
            let part_a = quant_weight("table a", &raw[..split * rb], dtype, split, dim, texture);
            let part_b = quant_weight(
                "table b",
                &raw[split * rb..],
                dtype,
                vocab - split,
                dim,
                texture,
            );
            let id_buf = u32s("ids", &ids);
            let x = f32s("x", &x0, &[t, dim]);
            let format = QuantFormat::of(dtype).expect("quantized");
            let emb = EmbeddingQuant::new(ctx(), format, texture);
            let bg_a = emb
                .bind(ctx(), &id_buf.buffer, &part_a, &x.buffer)
                .expect("bind");
            let bg_b = emb
                .bind(ctx(), &id_buf.buffer, &part_b, &x.buffer)
                .expect("bind");
            // The other storage is refused, not misread.
            let other = quant_weight("other", &raw[..split * rb], dtype, split, dim, !texture);
            assert!(emb.bind(ctx(), &id_buf.buffer, &other, &x.buffer).is_err());

            // After the first part only, rows of the other part's ids are untouched.
            run(|pass| emb.encode(pass, &bg_a, t, dim, 0, split));
            let got = read(&x);
            for (tok, &id) in ids.iter().enumerate() {
                let r = tok * dim..(tok + 1) * dim;
                let expect = if (id as usize) < split {
                    &want[r.clone()]
                } else {
                    &x0[r.clone()]
                };
                assert_values_eq(&format!("{what} part a, token {tok}"), &got[r], expect);
            }
            run(|pass| emb.encode(pass, &bg_b, t, dim, split, vocab - split));
            // Exact: the kernel's d·q + m is the loader's (see matmul_quant's module docs).
            assert_values_eq(&what, &read(&x), &want);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timing, not correctness: `cargo test --release --test kernels_quant -- --ignored --nocapture`
// prints SmolLM2's gate+up shape (N = 2·1536, K = 576) for the f16 Matmul and every
// MatmulQuant format and rows per thread, best of 5 submits of 4 dispatches each.

#[test]
#[ignore = "a timing printout for kernel work, asserts nothing; BENCHMARKS.md figures come from `wllm bench`"]
fn timing_matmul_quant_vs_f16() {
    use wllm::WeightDType::F16;
    use wllm::gpu::kernels::{Matmul, matmul};
    let (n, k, ms) = (1536 * 2, 576usize, [1usize, 8, 32]);
    let mmax = ms[ms.len() - 1];
    let mut rng = Rng::new(3);
    let x = x_input(&rng.normals(mmax * k, 1.0), mmax, k);
    let y = f32s("y", &rng.normals(mmax * n, 1.0), &[mmax, n]);
    let bias = f32s("bias", &rng.normals(n, 1.0), &[n]);
    let time = |f: &dyn Fn(&mut wgpu::ComputePass<'_>)| {
        run(f); // first use of the pipeline
        read(&y);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t0 = std::time::Instant::now();
            run(|pass| (0..4).for_each(|_| f(pass)));
            read(&y);
            best = best.min(t0.elapsed().as_secs_f64() * 1e6 / 4.0);
        }
        best
    };

    let w = rng.normals(n * k, 0.05);
    let wf = matmul::pack_weight(&w, n, k, F16);
    let wf = GpuTensor::from_words(ctx(), "w f16", &wf, &[k, n], F16).expect("upload");
    let mm = Matmul::new(ctx(), F16);
    let bg = mm.bind(ctx(), &x.buffer, &wf.buffer, &bias.buffer, &y.buffer);
    for m in ms {
        let us = time(&|pass| mm.encode(pass, &bg, &MatmulParams::plain(m, n, k)));
        println!("f16 Matmul      N={n} K={k} M={m:2}: {us:9.1} µs");
    }
    for dtype in QUANT_TYPES {
        let raw = random_blocks(&mut rng, dtype, n, k);
        let weights = [false, true].map(|tex| quant_weight("w q", &raw, dtype, n, k, tex));
        for tuning in tunings() {
            let mq = MatmulQuant::new(ctx(), QuantFormat::of(dtype).expect("quantized"), tuning);
            let wq = &weights[usize::from(tuning.w_texture)];
            let bg = mq
                .bind(ctx(), &x.buffer, wq, &bias.buffer, &y.buffer)
                .expect("bind");
            for m in ms {
                let us = time(&|pass| mq.encode(pass, &bg, &MatmulParams::plain(m, n, k)));
                println!("MatmulQuant {dtype:?} {tuning:?} M={m:2}: {us:9.1} µs");
            }
        }
    }
}

/// SwiGLU's gate, up and SiLU·mul in one matmul pass: bit-identical to the quantized matmul
/// into the stacked gate|up buffer followed by the silu_mul kernel, for every format, work
/// split and a batch size per rows-per-thread choice; columns outside the call untouched.
#[test]
fn glu_matmul_equals_matmul_then_silu_mul() {
    use wllm::gpu::kernels::SiluMul;
    let (n, k, y_col, y_stride) = (45usize, 96usize, 3usize, 50usize);
    for (d, dtype) in QUANT_TYPES.into_iter().enumerate() {
        let all = tunings();
        let picked = [
            0,
            1,
            2,
            12,
            FIRST_K_SPLIT,
            FIRST_K_SPLIT + 2,
            FIRST_K_SPLIT + 3,
        ];
        for tuning in picked.map(|i| all[i]) {
            let format = QuantFormat::of(dtype).expect("quantized");
            let mm = MatmulQuant::with_glu(ctx(), format, tuning);
            for m in [1usize, 5, 13] {
                let what = format!("glu {dtype:?} {tuning:?} m={m}");
                let mut rng = Rng::new(100 + d as u64 * 7 + m as u64);
                let x = rng.normals(m * k, 1.0);
                let raw = random_blocks(&mut rng, dtype, 2 * n, k);
                let y0 = rng.normals(m * y_stride, 1.0);
                let xb = x_input(&x, m, k);
                let wb = quant_weight("w", &raw, dtype, 2 * n, k, tuning.w_texture);
                let dummy = f32s("bias", &[0.0], &[1]);

                // Separate: gate|up (m, 2n), then silu_mul into (m, n).
                let gate_up = f32s("gate_up", &rng.normals(m * 2 * n, 1.0), &[m, 2 * n]);
                let act = f32s("act", &rng.normals(m * n, 1.0), &[m, n]);
                let bg = mm
                    .bind(ctx(), &xb.buffer, &wb, &dummy.buffer, &gate_up.buffer)
                    .expect("bind");
                let silu = SiluMul::new(ctx());
                let sbg = silu.bind(ctx(), &gate_up.buffer, &act.buffer);
                run(|pass| {
                    mm.encode(pass, &bg, &MatmulParams::plain(m, 2 * n, k));
                    silu.encode(pass, &sbg, m, n);
                });
                let want = read(&act);

                // Fused, into columns y_col.. of a wider y.
                let y = f32s("y", &y0, &[m, y_stride]);
                let bg = mm
                    .bind(ctx(), &xb.buffer, &wb, &dummy.buffer, &y.buffer)
                    .expect("bind");
                let p = MatmulParams {
                    y_stride,
                    y_col,
                    ..MatmulParams::plain(m, n, k)
                };
                run(|pass| mm.encode_glu(pass, &bg, &p));
                let got = read(&y);
                for r in 0..m {
                    let row = &got[r * y_stride..(r + 1) * y_stride];
                    let row0 = &y0[r * y_stride..(r + 1) * y_stride];
                    assert_bits_eq(
                        &format!("{what} row {r}"),
                        &row[y_col..y_col + n],
                        &want[r * n..(r + 1) * n],
                    );
                    assert_bits_eq(
                        &format!("{what} row {r} before"),
                        &row[..y_col],
                        &row0[..y_col],
                    );
                    assert_bits_eq(
                        &format!("{what} row {r} after"),
                        &row[y_col + n..],
                        &row0[y_col + n..],
                    );
                }
                assert!(want.iter().any(|v| *v != 0.0), "{what}: all zero");
            }
        }
    }
}

/// RMSNorm fused in front of the k-split matmul (plain with bias and residual, and GLU)
/// against the f64 references of RMSNorm then the matmul, for every format, the k-split
/// tunings and a batch size per rows-per-thread choice; and each row of an M = 13 call equals
/// the same row run alone, bit for bit.
#[test]
fn normed_matmul_matches_rms_norm_then_matmul() {
    use wllm::gpu::kernels::norm::rms_norm_reference;
    // 18 k-blocks: the split lanes sum several blocks each (1-2 with 16 lanes, 4-5 with 4).
    let (n, k, eps) = (45usize, 576usize, 1e-5f32);
    let silu = |g: f64| g / (1.0 + (-g).exp());
    let all = tunings();
    for (d, dtype) in QUANT_TYPES.into_iter().enumerate() {
        let format = QuantFormat::of(dtype).expect("quantized");
        for tuning in [FIRST_K_SPLIT, FIRST_K_SPLIT + 2, FIRST_K_SPLIT + 3].map(|i| all[i]) {
            let mm = MatmulQuant::with_variants(ctx(), format, tuning, true, true);
            for glu in [false, true] {
                let what = format!("normed glu={glu} {dtype:?} {tuning:?}");
                let mut rng = Rng::new(300 + d as u64);
                let m = 13;
                let x = rng.normals(m * k, 2.0);
                let g = rng.normals(k, 1.0);
                let wn = if glu { 2 * n } else { n };
                let raw = random_blocks(&mut rng, dtype, wn, k);
                let bias = rng.normals(n, 1.0);
                let y0 = rng.normals(m * n, 1.0);
                let w = dequant::to_f32(dtype, &raw, wn * k).expect("dequantizes");
                let h = rms_norm_reference(&x, &g, None, k, eps);
                let dot = |r: usize, row: usize| -> (f64, f64) {
                    let hw = (0..k).map(|i| h[r * k + i] as f64 * w[row * k + i] as f64);
                    hw.fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()))
                };
                let wb = quant_weight("w", &raw, dtype, wn, k, false);
                let gb = f32s("g", &g, &[k]);
                let bb = f32s("bias", &bias, &[n]);
                let p = MatmulParams {
                    bias: !glu,
                    accumulate: !glu,
                    ..MatmulParams::plain(m, n, k)
                };
                let call = |rows: std::ops::Range<usize>| -> Vec<f32> {
                    let xb = x_input(&x[rows.start * k..rows.end * k], rows.len(), k);
                    let y = f32s("y", &y0[rows.start * n..rows.end * n], &[rows.len(), n]);
                    let bg = mm
                        .bind_normed(ctx(), &xb.buffer, &wb, &gb.buffer, &bb.buffer, &y.buffer)
                        .expect("bind");
                    let p = MatmulParams { m: rows.len(), ..p };
                    run(|pass| match glu {
                        true => mm.encode_glu_normed(pass, &bg, &p, eps),
                        false => mm.encode_normed(pass, &bg, &p, eps),
                    });
                    read(&y)
                };
                let got = call(0..m);
                for r in 0..m {
                    for (c, &b) in bias.iter().enumerate() {
                        let i = r * n + c;
                        let (want, bound) = if glu {
                            let ((gs, ga), (us, ua)) = (dot(r, c), dot(r, n + c));
                            (silu(gs) * us, 3.0 * TOL * (ga + 1.0) * (ua + 1.0))
                        } else {
                            let (s, a) = dot(r, c);
                            let want = s + b as f64 + y0[i] as f64;
                            (want, TOL * (a + (b as f64).abs() + (y0[i] as f64).abs()))
                        };
                        let err = (got[i] as f64 - want).abs();
                        assert!(err <= bound, "{what} row {r} col {c}: {} vs {want}", got[i]);
                    }
                }
                for r in [0usize, 3, 4, 7, 8, 12] {
                    assert_bits_eq(
                        &format!("{what} row {r}: M=1 vs M={m}"),
                        &call(r..r + 1),
                        &got[r * n..(r + 1) * n],
                    );
                }
            }
        }
    }
}
