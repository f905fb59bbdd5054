//! The cases `wllm check` runs: each kernel on awkward shapes against its CPU reference.
//! The NMSE limit of each kernel family is written here beside its cases.

use super::{CaseResult, Status, Target, nmse};
use crate::batch::TokenBias;
use crate::gpu::kernels::{self, Argmax, LogitAdjust, Matmul, MatmulParams, RmsNorm, Sample};
use crate::gpu::tensor::read_words;
use crate::gpu::{GpuContext, GpuError, GpuTensor, WeightDType};
use crate::sampling::{Rng, RowSampling};

/// f32 kernels whose reference sums in f64: only rounding separates them.
const F32_NMSE: f64 = 1e-10;
/// f16 storage (weights rounded to f16; the reference sees the rounded values): f32 sums.
const F16_NMSE: f64 = 1e-7;

/// Every case, in a fixed order.
pub(super) fn run_all(t: &Target) -> Vec<CaseResult> {
    let mut out = Vec::new();
    argmax(t.ctx, &mut out);
    sample(t.ctx, &mut out);
    logit_adjust(t.ctx, &mut out);
    for ctx in [t.ctx, t.other] {
        rms_norm(ctx, &mut out);
        matmul(ctx, &mut out);
    }
    super::cases_layers::run(t, &mut out);
    super::cases_quant::run(t, &mut out);
    super::cases_attention::run(t, &mut out);
    super::properties::run(t, &mut out);
    out
}

pub(super) fn forms(ctx: &GpuContext) -> &'static str {
    match ctx.profile.kernel_forms {
        crate::gpu::KernelForms::Cpu => "cpu forms",
        crate::gpu::KernelForms::Gpu => "gpu forms",
    }
}

/// Records `f`'s dispatches in one pass and submits them.
pub(super) fn run_pass(ctx: &GpuContext, f: impl FnOnce(&mut wgpu::ComputePass<'_>)) {
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("check"),
        });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("check"),
            timestamp_writes: None,
        });
        f(&mut pass);
    }
    ctx.queue.submit([enc.finish()]);
}

pub(super) fn words(ctx: &GpuContext, name: &str, w: &[u32]) -> Result<GpuTensor, GpuError> {
    GpuTensor::from_words(ctx, name, w, &[w.len().max(1)], WeightDType::F32)
}

pub(super) fn floats(ctx: &GpuContext, name: &str, v: &[f32]) -> Result<GpuTensor, GpuError> {
    GpuTensor::from_f32(ctx, name, v, &[v.len()], WeightDType::F32)
}

pub(super) fn normals(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v) = (rng.next_f64().max(1e-300), rng.next_f64());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32 * scale
        })
        .collect()
}

/// A case from its error against `limit` (or the GPU error that kept it from running).
pub(super) fn result(
    kernel: &str,
    form: String,
    case: String,
    limit: f64,
    error: Result<f64, GpuError>,
) -> CaseResult {
    let (status, error, detail) = match error {
        Ok(e) if e <= limit => (Status::Pass, Some(e), None),
        Ok(e) => (
            Status::Fail,
            Some(e),
            Some(format!("error {e:.3e} over {limit:.0e}")),
        ),
        Err(GpuError::MissingFeature(what)) => (Status::Unsupported, None, Some(what)),
        Err(e) => (Status::Fail, None, Some(e.to_string())),
    };
    CaseResult {
        kernel: kernel.into(),
        form,
        case,
        status,
        error,
        limit,
        detail,
        expected_failure: false,
    }
}

/// Mismatching positions, as the error of an exact kernel.
pub(super) fn mismatches<T: PartialEq>(got: &[T], want: &[T]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter().zip(want).filter(|(g, w)| g != w).count() as f64
}

const VOCABS: [usize; 4] = [1, 65, 4099, 49157];

fn argmax(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let k = Argmax::new(ctx);
    let mut rng = Rng::new(1);
    for vocab in VOCABS {
        let rows = 3;
        let mut logits = normals(&mut rng, rows * vocab, 4.0);
        // Ties and a NaN: the lowest index wins, NaN never does.
        logits[0] = f32::NAN;
        if vocab > 2 {
            logits[vocab + 1] = 100.0;
            logits[vocab + 2] = 100.0;
        }
        let run = || -> Result<f64, GpuError> {
            let l = floats(ctx, "logits", &logits)?;
            let ids = words(ctx, "ids", &vec![0; rows])?;
            let bg = k.bind(ctx, &l.buffer, &ids.buffer);
            run_pass(ctx, |p| k.encode(p, &bg, rows, vocab));
            let got = read_words(ctx, &ids.buffer)?;
            Ok(mismatches(
                &got,
                &kernels::argmax::reference(&logits, vocab),
            ))
        };
        out.push(result(
            "argmax",
            forms(ctx).into(),
            format!("{rows} × {vocab}"),
            0.0,
            run(),
        ));
    }
}

fn sample(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let k = Sample::new(ctx);
    let mut rng = Rng::new(2);
    for vocab in VOCABS {
        let shapes = [
            (0.0, 0, 1.0, 0.0),
            (0.8, 0, 1.0, 0.0),
            (1.0, 40, 0.9, 0.0),
            (1.3, 0, 0.95, 0.05),
        ];
        let rows = shapes.len();
        let logits = normals(&mut rng, rows * vocab, 3.0);
        let params: Vec<RowSampling> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(temperature, top_k, top_p, min_p))| {
                let key = rng.next_u64() ^ i as u64;
                RowSampling {
                    temperature,
                    top_k: top_k as u32,
                    top_p,
                    min_p,
                    key: [key as u32, (key >> 32) as u32],
                    ..Default::default()
                }
            })
            .collect();
        let ids_in = kernels::argmax::reference(&logits, vocab);
        let run = || -> Result<f64, GpuError> {
            let l = floats(ctx, "logits", &logits)?;
            let ids = words(ctx, "ids", &ids_in)?;
            let p = words(ctx, "params", bytemuck::cast_slice(&params))?;
            let bg = k.bind(ctx, &l.buffer, &ids.buffer, &p.buffer);
            run_pass(ctx, |pass| k.encode(pass, &bg, rows, vocab));
            let got = read_words(ctx, &ids.buffer)?;
            let want = kernels::sample::reference(&logits, vocab, &params, &ids_in);
            Ok(mismatches(&got[..rows], &want))
        };
        out.push(result(
            "sample",
            forms(ctx).into(),
            format!("{rows} × {vocab}"),
            0.0,
            run(),
        ));
    }
}

fn logit_adjust(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let k = LogitAdjust::new(ctx);
    let mut rng = Rng::new(3);
    for vocab in VOCABS {
        let words_per_row = vocab.div_ceil(32);
        let rows = 3;
        let logits = normals(&mut rng, rows * vocab, 3.0);
        let mask: Vec<u32> = (0..words_per_row).map(|_| rng.next_u64() as u32).collect();
        let per_row: [&[(u32, f32)]; 3] = [
            &[],
            &[(0, 2.0), ((vocab - 1) as u32, -100.0)],
            &[(vocab as u32 / 2, 5.0)],
        ];
        let (mut adjust, biases) = kernels::logit_adjust::pack_biases(&per_row);
        adjust[0].mask_offset = 0;
        adjust[2].mask_offset = 0;
        let run = || -> Result<f64, GpuError> {
            let l = floats(ctx, "logits", &logits)?;
            let a = words(ctx, "adjust", bytemuck::cast_slice(&adjust))?;
            let m = words(ctx, "masks", &mask)?;
            let mut b = biases.clone();
            b.push(TokenBias::default());
            let bb = words(ctx, "biases", bytemuck::cast_slice(&b))?;
            let bg = k.bind(ctx, &l.buffer, &a.buffer, &m.buffer, &bb.buffer);
            run_pass(ctx, |p| k.encode(p, &bg, rows, vocab));
            let got = read_words(ctx, &l.buffer)?;
            let mut want = logits.clone();
            kernels::logit_adjust::reference(&mut want, vocab, &adjust, &mask, &biases);
            let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            Ok(mismatches(&got[..want.len()], &want))
        };
        let case = format!("{rows} × {vocab}");
        out.push(result("logit_adjust", forms(ctx).into(), case, 0.0, run()));
    }
}

fn rms_norm(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let k = RmsNorm::new(ctx, false);
    let mut rng = Rng::new(4);
    for (rows, dim) in [(1usize, 1usize), (3, 63), (5, 576), (2, 4099)] {
        let x = normals(&mut rng, rows * dim, 2.0);
        let w = normals(&mut rng, dim, 1.0);
        let eps = 1e-5;
        let run = || -> Result<f64, GpuError> {
            let xt = floats(ctx, "x", &x)?;
            let wt = floats(ctx, "w", &w)?;
            let y = floats(ctx, "y", &vec![0.0; rows * dim])?;
            let bg = k.bind(ctx, &xt.buffer, &wt.buffer, &xt.buffer, &y.buffer);
            run_pass(ctx, |p| k.encode(p, &bg, rows, dim, eps));
            let got = y.read_f32(ctx)?;
            let want = kernels::norm::rms_norm_reference(&x, &w, None, dim, eps);
            Ok(nmse(&got, &want))
        };
        let case = format!("{rows} × {dim}");
        out.push(result("rms_norm", forms(ctx).into(), case, F32_NMSE, run()));
    }
}

fn matmul(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let mut rng = Rng::new(5);
    for dtype in [WeightDType::F32, WeightDType::F16] {
        if dtype == WeightDType::F16 && !ctx.adapter_info.shader_f16 {
            out.push(result(
                "matmul",
                format!("{}, f16", forms(ctx)),
                "all shapes".into(),
                F16_NMSE,
                Err(GpuError::MissingFeature("shader-f16".into())),
            ));
            continue;
        }
        let k = Matmul::new(ctx, dtype);
        let limit = match dtype {
            WeightDType::F32 => F32_NMSE,
            _ => F16_NMSE,
        };
        for (m, n, kk) in [
            (1usize, 1usize, 1usize),
            (3, 17, 33),
            (8, 64, 576),
            (9, 130, 257),
        ] {
            let x = normals(&mut rng, m * kk, 1.0);
            // The reference sees the weights as stored (f16 rounding is the format's, not an
            // error of the kernel).
            let w: Vec<f32> = normals(&mut rng, n * kk, 0.2)
                .into_iter()
                .map(|v| match dtype {
                    WeightDType::F32 => v,
                    _ => half::f16::from_f32(v).to_f32(),
                })
                .collect();
            let run = || -> Result<f64, GpuError> {
                let xt = floats(ctx, "x", &x)?;
                let packed = kernels::matmul::pack_weight(&w, n, kk, dtype);
                let wt = GpuTensor::from_words(
                    ctx,
                    "w",
                    &packed,
                    &[kk, kernels::matmul::padded_cols(n)],
                    dtype,
                )?;
                let bias = floats(ctx, "bias", &[0.0])?;
                let y = floats(ctx, "y", &vec![0.0; m * n])?;
                let bg = k.bind(ctx, &xt.buffer, &wt.buffer, &bias.buffer, &y.buffer);
                let p = MatmulParams::plain(m, n, kk);
                run_pass(ctx, |pass| k.encode(pass, &bg, &p));
                let got = y.read_f32(ctx)?;
                let mut want = vec![0.0; m * n];
                kernels::matmul::reference(&x, &w, None, &mut want, &p);
                Ok(nmse(&got, &want))
            };
            let form = format!(
                "{}, {}",
                forms(ctx),
                if dtype == WeightDType::F32 {
                    "f32"
                } else {
                    "f16"
                }
            );
            out.push(result(
                "matmul",
                form,
                format!("{m} × {n} × {kk}"),
                limit,
                run(),
            ));
        }
    }
}
