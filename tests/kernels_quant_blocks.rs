//! The quantized kernels on the GGUF formats that stay in their own blocks on the GPU (Q5_0,
//! Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS; decoded by
//! shaders/lib/quant_blocks.wgsl), bit for bit against the loader's CPU decoders, which equal
//! gguf-py's (tests/dequant_formats.rs):
//! - the embedding lookup: a row lookup dequantizes a row, so the rows equal the loader's;
//! - both matmul forms: each output equals, bit for bit, the kernel's fixed order of f32
//!   operations run on the CPU over the loader's weights (`plain_order`, `split_order`), with
//!   WGSL's `fma` evaluated as the adapter does (lavapipe: unfused; GPUs: fused);
//! - on random blocks of awkward shapes and on every quantized tensor of llama.cpp's fixture
//!   files (tests/fixtures/arch/gguf/, made by `llama-quantize`);
//! - the fused SwiGLU and RMSNorm variants against the separate kernels / the f64 reference.

mod common;

use common::fixtures;
use common::plumbing::{Rng, assert_bits_eq, ctx, f32s, read, run, u32s};
use half::f16;
use wllm::gpu::GpuTensor;
use wllm::gpu::kernels::matmul_quant::{
    self, QuantFormat, QuantTuning, dequantize_packed, row_bytes,
};
use wllm::gpu::kernels::{EmbeddingQuant, MatmulParams, MatmulQuant, WeightData};
use wllm::loader::TensorDType::{self, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K};
use wllm::loader::dequant;
use wllm::loader::gguf::GgufFile;

const BLOCK_TYPES: [TensorDType; 9] = [Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS];

/// `n` rows of `k` weights as `dtype` blocks: random bytes, with every f16 scale field
/// (the table's `f16_scales`) set to a finite value of either sign, |v| in 0.001..0.05.
fn random_blocks(rng: &mut Rng, dtype: TensorDType, n: usize, k: usize) -> Vec<u8> {
    let f = dtype.format();
    let mut raw = Vec::with_capacity(n * row_bytes(dtype, k));
    for _ in 0..n * k / f.block_weights {
        let start = raw.len();
        raw.extend((0..f.block_bytes).map(|_| rng.byte()));
        for &at in f.f16_scales {
            let sign = if rng.below(2) == 0 { 1.0 } else { -1.0 };
            let v = f16::from_f64(sign * rng.range(0.001, 0.05));
            raw[start + at..start + at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    raw
}

fn upload(raw: &[u8], dtype: TensorDType, n: usize, k: usize) -> WeightData {
    let (words, format) =
        matmul_quant::pack_quantized(raw, dtype, n, k).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format, QuantFormat::Blocks(dtype));
    WeightData::Buffer(u32s("w", &words).buffer)
}

fn loader_weights(raw: &[u8], dtype: TensorDType, n: usize, k: usize) -> Vec<f32> {
    dequant::to_f32(dtype, raw, n * k).expect("dequantizes")
}

/// k sizes per format: one unit, and several (so the k-split lanes sum several sub-blocks).
fn ks(dtype: TensorDType) -> [usize; 2] {
    if dtype.block_len() == 256 {
        [256, 768]
    } else {
        [96, 576]
    }
}

// ---------------------------------------------------------------------------------------------
// The kernels' order of operations, on the CPU

fn reduce(a: [f32; 4]) -> f32 {
    (a[0] + a[1]) + (a[2] + a[3])
}

/// How the adapter evaluates WGSL's `fma`: lavapipe rounds the product and the sum apart
/// (measured: every output of these tests matches that order bit for bit), GPUs fuse them.
#[derive(Clone, Copy, Debug)]
enum Fma {
    Unfused,
    Fused,
}

impl Fma {
    fn eval(self, a: f32, b: f32, c: f32) -> f32 {
        match self {
            Fma::Unfused => a * b + c,
            Fma::Fused => a.mul_add(b, c),
        }
    }
}

/// `acc` plus the 32 products of one sub-block, lane l taking the k ≡ l (mod 4) terms in
/// increasing k with one fma each; with `first_product` the first step is a plain product
/// (the one-thread-per-column kernel starts each block's chain from x·w).
fn block_chain(x: &[f32], w: &[f32], mut acc: [f32; 4], first_product: bool, fma: Fma) -> [f32; 4] {
    for j in 0..8 {
        for l in 0..4 {
            let (a, b) = (x[4 * j + l], w[4 * j + l]);
            acc[l] = if j == 0 && first_product {
                a * b
            } else {
                fma.eval(a, b, acc[l])
            };
        }
    }
    acc
}

/// bias and residual as the kernels add them: v + bias, then y0 + v.
fn finish(v: f32, p: &MatmulParams, bias: &[f32], y0: f32, col: usize) -> f32 {
    let v = if p.bias { v + bias[col] } else { v };
    if p.accumulate { y0 + v } else { v }
}

/// The one-thread-per-column kernel (`shaders/cpu/matmul_quant.wgsl`, FORMAT != 0): acc +
/// reduce(block chain) per sub-block in increasing k.
fn plain_order(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y0: &[f32],
    p: &MatmulParams,
    fma: Fma,
) -> Vec<f32> {
    let mut y = y0.to_vec();
    for m in 0..p.m {
        for n in 0..p.n {
            let mut acc = 0f32;
            for b in 0..p.k / 32 {
                let xs = &x[m * p.k + 32 * b..][..32];
                let ws = &w[n * p.k + 32 * b..][..32];
                acc += reduce(block_chain(xs, ws, [0.0; 4], true, fma));
            }
            let o = m * p.y_stride + p.y_col + n;
            y[o] = finish(acc, p, bias, y0[o], n);
        }
    }
    y
}

/// The k-split kernel (`shaders/gpu/matmul_quant_split.wgsl`): lane s chains the sub-blocks
/// s, s + split, ... into one vec4, reduced; the lanes' sums added in lane order.
fn split_order(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    y0: &[f32],
    p: &MatmulParams,
    split: usize,
    fma: Fma,
) -> Vec<f32> {
    let mut y = y0.to_vec();
    let blocks = p.k / 32;
    for m in 0..p.m {
        for n in 0..p.n {
            let partial = |s: usize| {
                let mut acc = [0f32; 4];
                for b in (s..blocks).step_by(split) {
                    let xs = &x[m * p.k + 32 * b..][..32];
                    let ws = &w[n * p.k + 32 * b..][..32];
                    acc = block_chain(xs, ws, acc, false, fma);
                }
                reduce(acc)
            };
            let mut v = partial(0);
            for s in 1..split.min(blocks) {
                v += partial(s);
            }
            let o = m * p.y_stride + p.y_col + n;
            y[o] = finish(v, p, bias, y0[o], n);
        }
    }
    y
}

/// Asserts `got` is the kernel's order of operations over `w`, with the adapter's `fma`
/// unfused (lavapipe) or fused (GPUs): bit for bit either way.
#[track_caller]
fn assert_kernel_order(
    what: &str,
    tuning: QuantTuning,
    got: &[f32],
    (x, w, bias, y0): (&[f32], &[f32], &[f32], &[f32]),
    p: &MatmulParams,
) {
    let order = |fma| match tuning.k_split {
        1 => plain_order(x, w, bias, y0, p, fma),
        split => split_order(x, w, bias, y0, p, split, fma),
    };
    let unfused = order(Fma::Unfused);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    if bits(got) != bits(&unfused) && bits(got) == bits(&order(Fma::Fused)) {
        return;
    }
    assert_bits_eq(what, got, &unfused);
}

/// Tunings: both adapters' defaults, and awkward ones of each form (x through uniform windows
/// and shared over the subgroup, several rows and columns per thread, textures asked for —
/// these formats have none, so the kernel reads storage —, few lanes per column).
fn tunings(k: usize) -> Vec<QuantTuning> {
    let plain = |workgroup, cols, fixed_rows, x_window, w_texture| QuantTuning {
        workgroup,
        k_split: 1,
        cols,
        fixed_rows,
        x_window,
        x_shared: workgroup == 8,
        w_texture,
    };
    let split = |workgroup, k_split, fixed_rows| QuantTuning {
        k_split,
        fixed_rows,
        ..plain(workgroup, 1, None, false, false)
    };
    vec![
        ctx().profile.quant_tuning(k),
        plain(64, 1, Some(4), false, true),
        plain(16, 16, Some(8), true, false),
        split(64, 16, None),
        split(32, 4, Some(8)),
    ]
}

/// Runs `tuning`'s matmul of x (m, k) by the blocks in `w` into a copy of y0.
fn gpu_matmul(
    mm: &MatmulQuant,
    x: &[f32],
    w: &WeightData,
    bias: &[f32],
    y0: &[f32],
    p: &MatmulParams,
) -> Vec<f32> {
    assert!(
        !mm.tuning().w_texture,
        "these formats have no texture layout"
    );
    let xb = GpuTensor::matmul_input(ctx(), "x", x, p.m, p.k).expect("x");
    let bias = if bias.is_empty() { &[0.0][..] } else { bias };
    let bb = f32s("bias", bias, &[bias.len()]);
    let y = f32s("y", y0, &[p.m, p.y_stride]);
    let bg = mm
        .bind(ctx(), &xb.buffer, w, &bb.buffer, &y.buffer)
        .expect("bind");
    run(|pass| mm.encode(pass, &bg, p));
    read(&y)
}

// ---------------------------------------------------------------------------------------------
// Packing

#[test]
fn packing_keeps_the_gguf_blocks() {
    for dtype in BLOCK_TYPES {
        let (n, k) = (7usize, ks(dtype)[1]);
        let raw = random_blocks(&mut Rng::new(1), dtype, n, k);
        let (words, format) = matmul_quant::pack_quantized(&raw, dtype, n, k).expect("packs");
        assert_eq!(format, QuantFormat::Blocks(dtype));
        assert_eq!(words.len(), format.words_for(n, k), "{dtype:?}");
        // At most 3 bytes of padding per block: the GGUF size, nearly.
        let gguf_words = raw.len().div_ceil(4);
        assert!(
            words.len() <= gguf_words + n * k / dtype.block_len(),
            "{dtype:?}"
        );
        let want = loader_weights(&raw, dtype, n, k);
        assert_bits_eq(
            &format!("{dtype:?}"),
            &dequantize_packed(&words, format, n, k),
            &want,
        );
        // A row that is not whole blocks is refused by name.
        if dtype.block_len() == 256 {
            let err = matmul_quant::pack_quantized(&raw[..row_bytes(dtype, 256)], dtype, 1, 288)
                .unwrap_err();
            assert!(err.to_string().contains("256-weight block"), "{err}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Embedding

#[test]
fn embedding_rows_equal_the_loader_bit_for_bit() {
    for dtype in BLOCK_TYPES {
        let (vocab, dim, t, split) = (37usize, ks(dtype)[1], 23usize, 15usize);
        let mut rng = Rng::new(2);
        let raw = random_blocks(&mut rng, dtype, vocab, dim);
        let want_table = loader_weights(&raw, dtype, vocab, dim);
        let mut ids: Vec<u32> = (0..t).map(|_| rng.below(vocab)).collect();
        ids[..4].copy_from_slice(&[0, split as u32 - 1, split as u32, vocab as u32 - 1]);
        let rb = row_bytes(dtype, dim);
        // The table in two parts packed on their own, as the loader splits a big one.
        let part_a = upload(&raw[..split * rb], dtype, split, dim);
        let part_b = upload(&raw[split * rb..], dtype, vocab - split, dim);
        let emb = EmbeddingQuant::new(ctx(), QuantFormat::Blocks(dtype), true);
        let id_buf = u32s("ids", &ids);
        let x = f32s("x", &rng.normals(t * dim, 1.0), &[t, dim]);
        let bg_a = emb
            .bind(ctx(), &id_buf.buffer, &part_a, &x.buffer)
            .expect("a format without texture planes binds a buffer");
        let bg_b = emb
            .bind(ctx(), &id_buf.buffer, &part_b, &x.buffer)
            .expect("bind");
        run(|pass| {
            emb.encode(pass, &bg_a, t, dim, 0, split);
            emb.encode(pass, &bg_b, t, dim, split, vocab - split);
        });
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&id| want_table[id as usize * dim..][..dim].to_vec())
            .collect();
        assert_bits_eq(&format!("embedding {dtype:?}"), &read(&x), &want);
    }
}

// ---------------------------------------------------------------------------------------------
// Matmuls

#[test]
fn matmuls_follow_their_order_bit_for_bit() {
    for (d, dtype) in BLOCK_TYPES.into_iter().enumerate() {
        let [k1, k2] = ks(dtype);
        let cases = [
            MatmulParams::plain(1, 77, k1),
            MatmulParams {
                y_stride: 40,
                y_col: 2,
                bias: true,
                accumulate: true,
                ..MatmulParams::plain(9, 33, k2)
            },
            MatmulParams {
                y_stride: 70,
                y_col: 5,
                bias: true,
                accumulate: false,
                ..MatmulParams::plain(13, 65, k2)
            },
        ];
        let data: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(c, p)| {
                let mut rng = Rng::new(10 + 3 * d as u64 + c as u64);
                let x = rng.normals(p.m * p.k, 1.0);
                let raw = random_blocks(&mut rng, dtype, p.n, p.k);
                let bias = rng.normals(p.n, 1.0);
                let y0 = rng.normals(p.m * p.y_stride, 1.0);
                let w = loader_weights(&raw, dtype, p.n, p.k);
                (x, upload(&raw, dtype, p.n, p.k), w, bias, y0)
            })
            .collect();
        for tuning in tunings(k2) {
            let mm = MatmulQuant::new(ctx(), QuantFormat::Blocks(dtype), tuning);
            for (p, (x, wb, w, bias, y0)) in cases.iter().zip(&data) {
                let got = gpu_matmul(&mm, x, wb, bias, y0, p);
                let what = format!("{dtype:?} {tuning:?} {p:?}");
                assert_kernel_order(&what, tuning, &got, (x, w, bias, y0), p);
            }
        }
    }
}

/// Every quantized tensor type in llama.cpp's fixture files (the first tensor of each type
/// and shape per file): a few embedding rows and a three-row matmul in each kernel form.
#[test]
fn real_tensors_from_llama_quantize() {
    let dir = fixtures().join("arch/gguf");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    files.sort();
    let files: Vec<GgufFile> = files
        .iter()
        .map(|p| GgufFile::open(p).expect("opens"))
        .collect();
    // (file, tensor) per format: the first tensor of each shape per format.
    let mut seen = std::collections::BTreeSet::new();
    let mut picked: Vec<(TensorDType, &GgufFile, &str, usize, usize)> = Vec::new();
    for file in &files {
        for info in &file.tensors {
            let dtype = info.dtype;
            if BLOCK_TYPES.contains(&dtype)
                && info.shape.len() == 2
                && seen.insert((dtype.format().name, info.shape.clone()))
            {
                picked.push((dtype, file, &info.name, info.shape[0], info.shape[1]));
            }
        }
    }
    for dtype in BLOCK_TYPES {
        let format = QuantFormat::Blocks(dtype);
        let emb = EmbeddingQuant::new(ctx(), format, false);
        let max_k = picked.iter().map(|t| t.4).max().unwrap_or(256);
        let all = tunings(max_k);
        let mms = [all[0], all[3]].map(|t| MatmulQuant::new(ctx(), format, t));
        for &(_, file, name, n, k) in picked.iter().filter(|t| t.0 == dtype) {
            let what = format!("{} {name} {dtype:?}", file.path.display());
            let raw = file.tensor_bytes(name).expect("bytes");
            let w = loader_weights(raw, dtype, n, k);
            let wb = upload(raw, dtype, n, k);

            let ids = [0u32, (n / 2) as u32, n as u32 - 1];
            let id_buf = u32s("ids", &ids);
            let x = f32s("x", &vec![0.0; 3 * k], &[3, k]);
            let bg = emb
                .bind(ctx(), &id_buf.buffer, &wb, &x.buffer)
                .expect("bind");
            run(|pass| emb.encode(pass, &bg, 3, k, 0, n));
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&id| w[id as usize * k..][..k].to_vec())
                .collect();
            assert_bits_eq(&format!("{what} embedding"), &read(&x), &want);

            let mut rng = Rng::new(n as u64 + k as u64);
            let p = MatmulParams::plain(3, n, k);
            let x = rng.normals(3 * k, 1.0);
            let y0 = vec![0f32; 3 * n];
            for mm in &mms {
                let got = gpu_matmul(mm, &x, &wb, &[], &y0, &p);
                let what = format!("{what} {:?}", mm.tuning());
                assert_kernel_order(&what, mm.tuning(), &got, (&x, &w, &[], &y0), &p);
            }
        }
    }
    let types: std::collections::BTreeSet<_> = seen.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        types.len(),
        BLOCK_TYPES.len(),
        "the fixtures hold every format: {types:?}"
    );
}

/// The fused SwiGLU equals the plain matmul then silu_mul bit for bit, and the RMSNorm-fused
/// k-split matmul stays within the f64 reference's tolerance, for a 32-weight and two K-quant
/// formats.
#[test]
fn fused_variants_on_block_formats() {
    use wllm::gpu::kernels::SiluMul;
    use wllm::gpu::kernels::norm::rms_norm_reference;
    for dtype in [Q5_0, Q4_K, Q6_K] {
        let (m, n, k, eps) = (5usize, 45usize, ks(dtype)[1], 1e-5f32);
        let mut rng = Rng::new(40);
        let x = rng.normals(m * k, 1.0);
        let raw = random_blocks(&mut rng, dtype, 2 * n, k);
        let wb = upload(&raw, dtype, 2 * n, k);
        let w = loader_weights(&raw, dtype, 2 * n, k);
        let xb = GpuTensor::matmul_input(ctx(), "x", &x, m, k).expect("x");
        let dummy = f32s("bias", &[0.0], &[1]);
        // The first n rows, packed on their own, for the plain normed call.
        let wb_n = upload(&raw[..n * row_bytes(dtype, k)], dtype, n, k);
        for tuning in [tunings(k)[0], tunings(k)[3]] {
            let what = format!("{dtype:?} {tuning:?}");
            let format = QuantFormat::Blocks(dtype);
            let mm = MatmulQuant::with_variants(ctx(), format, tuning, true, tuning.k_split > 1);
            let gate_up = f32s("gate_up", &vec![0.0; m * 2 * n], &[m, 2 * n]);
            let act = f32s("act", &vec![0.0; m * n], &[m, n]);
            let fused = f32s("fused", &vec![0.0; m * n], &[m, n]);
            let silu = SiluMul::new(ctx());
            let bg = mm
                .bind(ctx(), &xb.buffer, &wb, &dummy.buffer, &gate_up.buffer)
                .expect("bind");
            let bg_fused = mm
                .bind(ctx(), &xb.buffer, &wb, &dummy.buffer, &fused.buffer)
                .expect("bind");
            let sbg = silu.bind(ctx(), &gate_up.buffer, &act.buffer);
            run(|pass| {
                mm.encode(pass, &bg, &MatmulParams::plain(m, 2 * n, k));
                silu.encode(pass, &sbg, m, n);
                mm.encode_glu(pass, &bg_fused, &MatmulParams::plain(m, n, k));
            });
            assert_bits_eq(&format!("{what} glu"), &read(&fused), &read(&act));
            if tuning.k_split == 1 {
                continue;
            }
            let g = rng.normals(k, 1.0);
            let gb = f32s("g", &g, &[k]);
            let y = f32s("y", &vec![0.0; m * n], &[m, n]);
            let bg = mm
                .bind_normed(
                    ctx(),
                    &xb.buffer,
                    &wb_n,
                    &gb.buffer,
                    &dummy.buffer,
                    &y.buffer,
                )
                .expect("bind");
            run(|pass| mm.encode_normed(pass, &bg, &MatmulParams::plain(m, n, k), eps));
            let got = read(&y);
            let h = rms_norm_reference(&x, &g, None, k, eps);
            for r in 0..m {
                for c in 0..n {
                    let terms = (0..k).map(|i| h[r * k + i] as f64 * w[c * k + i] as f64);
                    let (want, scale) = terms.fold((0.0, 0.0), |(s, a), v| (s + v, a + v.abs()));
                    let err = (got[r * n + c] as f64 - want).abs();
                    assert!(err <= 1e-4 * scale, "{what} normed ({r}, {c}): {err}");
                }
            }
        }
    }
}
