//! The dense matmul's k-split form (shaders/gpu/matmul_split.wgsl, the GPU kernel form) against
//! the f64 reference, and its batch invariance, on lavapipe like every kernel test.
//!
//! Sizes are awkward: N not a multiple of the 4-column quad or of 8, K not a multiple of the
//! split (and smaller than it), M ∈ {1, 3, 13} (one row per thread, and 8 rows per thread with
//! a partly used last group). Splits: the GPU default 16, powers of two up to one quad per
//! workgroup (64), and 3 and 7 (workgroups of 63 lanes). Outputs start as random garbage, so
//! a column the call should not touch that changes, or one it forgets, fails.

mod common;

use common::plumbing::{Rng, assert_bits_eq, ctx, f32s, linear_weight, read, run};
use wllm::KernelForms;
use wllm::WeightDType::{self, F16, F32};
use wllm::gpu::kernels::{Matmul, MatmulParams, matmul};
use wllm::gpu::tensor::round_to;

/// The k-split values tested (the GPU default first).
const SPLITS: [usize; 5] = [Matmul::GPU_K_SPLIT, 2, 3, 7, 64];

/// f32 accumulation vs the f64 reference: |gpu − cpu| ≤ 1e-5 · (Σ|x·w| + |bias| + |y₀|).
const TOL: f64 = 1e-5;

fn with(
    m: usize,
    n: usize,
    k: usize,
    y_stride: usize,
    y_col: usize,
    bias: bool,
    accumulate: bool,
) -> MatmulParams {
    MatmulParams {
        m,
        n,
        k,
        y_stride,
        y_col,
        bias,
        accumulate,
    }
}

/// One call's random inputs.
struct Case {
    p: MatmulParams,
    dtype: WeightDType,
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    y0: Vec<f32>,
}

impl Case {
    fn new(dtype: WeightDType, p: MatmulParams, seed: u64) -> Case {
        Matmul::check(&p).expect("valid shape");
        let mut rng = Rng::new(seed);
        Case {
            p,
            dtype,
            x: rng.normals(p.m * p.k, 1.0),
            w: rng.normals(p.n * p.k, 1.0),
            bias: rng.normals(p.n, 1.0),
            y0: rng.normals(p.m * p.y_stride, 1.0),
        }
    }

    /// y after `mm` runs the call.
    fn run(&self, mm: &Matmul) -> Vec<f32> {
        let p = &self.p;
        let xb = f32s("x", &self.x, &[p.m, p.k]);
        let wb = linear_weight("w", &self.w, p.n, p.k, self.dtype);
        let bb = f32s("bias", &self.bias, &[p.n]);
        let y = f32s("y", &self.y0, &[p.m, p.y_stride]);
        let bg = mm.bind(ctx(), &xb.buffer, &wb.buffer, &bb.buffer, &y.buffer);
        run(|pass| mm.encode(pass, &bg, p));
        read(&y)
    }

    /// Columns outside the call keep their garbage bit for bit; written ones are within TOL
    /// of the reference, relative to the magnitude of what was summed.
    #[track_caller]
    fn check(&self, what: &str, got: &[f32]) {
        let p = &self.p;
        let w = round_to(&self.w, self.dtype);
        let mut want = self.y0.clone();
        matmul::reference(&self.x, &w, p.bias.then_some(&self.bias), &mut want, p);
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for m in 0..p.m {
            for col in 0..p.y_stride {
                let i = m * p.y_stride + col;
                if col < p.y_col || col >= p.y_col + p.n {
                    assert_eq!(
                        got[i].to_bits(),
                        self.y0[i].to_bits(),
                        "{what}: clobbered index {i}"
                    );
                    continue;
                }
                let n = col - p.y_col;
                let mut scale: f64 = (0..p.k)
                    .map(|k| (self.x[m * p.k + k] as f64 * w[n * p.k + k] as f64).abs())
                    .sum();
                if p.bias {
                    scale += (self.bias[n] as f64).abs();
                }
                if p.accumulate {
                    scale += (self.y0[i] as f64).abs();
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
}

#[test]
fn split_matmul_matches_reference_f32_and_f16() {
    let cases = [
        MatmulParams::plain(1, 67, 70),
        MatmulParams::plain(3, 67, 70),
        MatmulParams::plain(13, 67, 70),
        with(13, 67, 70, 67, 0, true, false),
        with(13, 67, 70, 67, 0, false, true),
        // A column slice of a wider output (a weight split across buffers), bias + residual.
        with(13, 67, 70, 80, 5, true, true),
        with(3, 130, 198, 133, 3, true, true),
        // K smaller than the split: most segments have no terms.
        with(13, 5, 1, 9, 4, true, true),
        with(1, 9, 2, 9, 0, true, false),
        // Several workgroups of columns (16 per group at k_split 16, 4 at 64), N one past a
        // multiple of 4 and of 8, K the SmolLM2 width.
        with(1, 301, 576, 303, 2, true, true),
        with(4, 33, 40, 33, 0, false, false),
    ];
    for k_split in SPLITS {
        for dtype in [F32, F16] {
            let mm = Matmul::with_k_split(ctx(), dtype, k_split);
            assert_eq!(mm.k_split(), k_split);
            for (i, p) in cases.iter().enumerate() {
                let case = Case::new(dtype, *p, 10 + i as u64);
                let got = case.run(&mm);
                case.check(&format!("matmul k_split {k_split} {dtype:?} {p:?}"), &got);
            }
        }
    }
}

/// A row's bits depend on k_split alone: the same with M = 1, 3 or 13 (1 and 8 rows per thread,
/// rows past the batch in the last group), with bias and the residual add.
#[test]
fn split_matmul_rows_are_batch_invariant() {
    let (m, n, k) = (13usize, 67usize, 70usize);
    for k_split in SPLITS {
        for dtype in [F32, F16] {
            let p = with(m, n, k, n + 3, 2, true, true);
            let batch = Case::new(dtype, p, 77);
            let mm = Matmul::with_k_split(ctx(), dtype, k_split);
            let batched = batch.run(&mm);
            let rows_of = |at: usize, rows: usize| {
                let r = at * p.y_stride..(at + rows) * p.y_stride;
                Case {
                    p: MatmulParams { m: rows, ..p },
                    dtype,
                    x: batch.x[at * k..(at + rows) * k].to_vec(),
                    w: batch.w.clone(),
                    bias: batch.bias.clone(),
                    y0: batch.y0[r].to_vec(),
                }
            };
            for row in [0usize, 3, 7, 8, 12] {
                let got = rows_of(row, 1).run(&mm);
                assert_bits_eq(
                    &format!("matmul k_split {k_split} {dtype:?} row {row}: M=1 vs M={m}"),
                    &got,
                    &batched[row * p.y_stride..(row + 1) * p.y_stride],
                );
            }
            let got = rows_of(9, 3).run(&mm);
            assert_bits_eq(
                &format!("matmul k_split {k_split} {dtype:?} rows 9..12: M=3 vs M={m}"),
                &got,
                &batched[9 * p.y_stride..12 * p.y_stride],
            );
        }
    }
}

/// `Matmul::new` builds the k-split form for the GPU kernel forms and matmul.wgsl for the CPU
/// ones, whichever the adapter is; the grid at M = 1 is what the header comment promises.
#[test]
fn kernel_forms_pick_the_form() {
    let gpu_forms = ctx().clone().with_kernel_forms(KernelForms::Gpu);
    let cpu_forms = ctx().clone().with_kernel_forms(KernelForms::Cpu);
    for dtype in [F32, F16] {
        let split = Matmul::new(&gpu_forms, dtype);
        assert_eq!(split.k_split(), Matmul::GPU_K_SPLIT);
        assert_eq!(split.workgroup_size(), 64);
        // SmolLM2's 576 × 576 projections: 144 quads of 4 columns, 4 quads × 16 lanes a
        // workgroup; its 49152-column lm_head; past 65,535 groups the grid continues along z.
        let decode = |n| MatmulParams::plain(1, n, 576);
        assert_eq!(split.workgroups(&decode(576)), [36, 1, 1]);
        assert_eq!(split.workgroups(&decode(49152)), [3072, 1, 1]);
        assert_eq!(split.workgroups(&decode(16 * 65535 + 1)), [32768, 1, 2]);
        assert_eq!(
            split.workgroups(&MatmulParams::plain(13, 576, 576)),
            [36, 2, 1]
        );
        assert_eq!(
            split.workgroups(&MatmulParams::plain(5, 576, 576)),
            [36, 2, 1]
        );

        let plain = Matmul::new(&cpu_forms, dtype);
        assert_eq!(plain.k_split(), 1);
        assert_eq!(plain.workgroup_size(), 32);
        assert_eq!(plain.workgroups(&decode(576)), [3, 1, 1]);

        // The form built on the shared device computes the same function.
        let case = Case::new(dtype, with(3, 45, 100, 50, 5, true, true), 5);
        for mm in [&split, &plain] {
            let got = case.run(mm);
            case.check(
                &format!("Matmul::new {dtype:?} k_split {}", mm.k_split()),
                &got,
            );
        }
    }
}

/// More than 65,535 groups of columns: the grid continues along z and every column is
/// written once (k_split 64: one 4-column quad a workgroup, so 262,149 columns make 65,538
/// groups; K = 3 keeps it quick).
#[test]
fn columns_past_65535_workgroups_continue_along_z() {
    let p = with(1, 65535 * 4 + 9, 3, 65535 * 4 + 12, 1, true, true);
    let mm = Matmul::with_k_split(ctx(), F16, 64);
    assert_eq!(mm.workgroups(&p), [32769, 1, 2]);
    let case = Case::new(F16, p, 3);
    let got = case.run(&mm);
    case.check("matmul k_split 64 past 65,535 groups", &got);
}

/// Decode-step (M = 1) and small-batch timings of both forms on SmolLM2's shapes, for a GPU
/// (`cargo test --release --test kernels_matmul_split -- --ignored --nocapture`).
#[test]
#[ignore = "a timing printout for kernel work, asserts nothing; BENCHMARKS.md figures come from `wllm bench`"]
fn timing_split_vs_plain() {
    let k = 576usize;
    for (n, ms) in [(576usize, [1usize, 8]), (49152, [1, 8])] {
        let mmax = ms[ms.len() - 1];
        let mut rng = Rng::new(3);
        let x = f32s("x", &rng.normals(mmax * k, 1.0), &[mmax, k]);
        let y = f32s("y", &rng.normals(mmax * n, 1.0), &[mmax, n]);
        let w = linear_weight("w", &rng.normals(n * k, 0.05), n, k, F16);
        for k_split in [1, 8, Matmul::GPU_K_SPLIT, 32] {
            let mm = Matmul::with_k_split(ctx(), F16, k_split);
            let bg = mm.bind(ctx(), &x.buffer, &w.buffer, &x.buffer, &y.buffer);
            for m in ms {
                let p = MatmulParams::plain(m, n, k);
                run(|pass| mm.encode(pass, &bg, &p)); // first use of the pipeline
                read(&y);
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t0 = std::time::Instant::now();
                    run(|pass| (0..8).for_each(|_| mm.encode(pass, &bg, &p)));
                    read(&y);
                    best = best.min(t0.elapsed().as_secs_f64() * 1e6 / 8.0);
                }
                println!(
                    "f16 N={n:5} K={k} M={m:2} k_split {k_split:2} {:?}: {best:9.1} µs",
                    mm.workgroups(&p)
                );
            }
        }
    }
}
