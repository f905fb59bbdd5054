//! The quantized cases of `wllm check`: [`MatmulQuant`] on every type the engine keeps
//! quantized on the GPU (the Q4/Q8 repacks and every `Blocks` format of the loader's table), each
//! in both kernel forms (the one-thread-per-column kernel of the CPU forms and the k-split one of
//! the GPU forms decode every format in their own code), with the tuning each form's profile
//! picks and the weights in the profile's placement, and the Q4 layout in the other placement
//! too (texture planes or a storage buffer); the plain variant (bias, residual and an output
//! offset) on every format, and the fused ones that tuning can run (SwiGLU; RMSNorm in front
//! where the k-split kernel runs) on the Q4 layout and a K-quant (see [`plan`]); and
//! [`EmbeddingQuant`] over a table in two parts. The weights are random GGUF blocks (random
//! bytes, finite f16 scales), and the references dequantize them with the loader.

use half::f16;

use super::cases::{floats, forms, mismatches, normals, result, run_pass, words};
use super::{CaseResult, Target, nmse};
use crate::gpu::kernels::activation::{GateActivation, gated_reference};
use crate::gpu::kernels::matmul_quant::{self, QuantTuning, row_bytes};
use crate::gpu::kernels::norm::rms_norm_reference;
use crate::gpu::kernels::{
    EmbeddingQuant, MatmulParams, MatmulQuant, QuantFormat, WeightData, embedding_quant,
    pack_quantized, quant_texture,
};
use crate::gpu::{GpuContext, GpuError, GpuTensor, Placement};
use crate::loader::TensorDType;
use crate::loader::quant_formats::FORMATS;
use crate::sampling::Rng;

/// The weights are the loader's exactly (both kernels dequantize bit for bit, or take
/// d·Σx·q + m·Σx, a reordering); what is left is f32 summation against the f64 reference.
const QUANT_NMSE: f64 = 1e-10;
/// Fused SwiGLU: the sums' rounding, then the f32 SiLU (exp within a few ulps) times up.
const GLU_NMSE: f64 = 1e-10;
/// RMSNorm fused in front: the f32 norm (a few ulps per element) under the f32 sums.
const NORMED_NMSE: f64 = 1e-10;
/// Embedding rows are dequantized weights, the loader's bit for bit (== : ±0 may differ).
const EMBED_MISMATCHES: f64 = 0.0;

/// The RMSNorm epsilon of the normed cases.
const EPS: f32 = 1e-5;

/// Which entry point of the quantized matmul a case runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// `encode`, with bias, residual and an output column offset.
    Plain,
    /// `encode_glu`: silu(x·gateᵀ) · (x·upᵀ) from the stacked gate|up weight.
    Glu,
    /// `encode_normed`: RMSNorm(x)·Wᵀ + bias + y.
    Normed,
    /// `encode_glu_normed`.
    GluNormed,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Glu => "glu",
            Variant::Normed => "normed",
            Variant::GluNormed => "glu normed",
        }
    }

    fn glu(self) -> bool {
        matches!(self, Variant::Glu | Variant::GluNormed)
    }

    fn normed(self) -> bool {
        matches!(self, Variant::Normed | Variant::GluNormed)
    }

    fn limit(self) -> f64 {
        match self {
            Variant::Plain => QUANT_NMSE,
            Variant::Glu => GLU_NMSE,
            Variant::Normed => NORMED_NMSE,
            Variant::GluNormed => GLU_NMSE.max(NORMED_NMSE),
        }
    }
}

/// Every GGUF type the engine keeps quantized on the GPU, in the table's order.
fn quant_types() -> Vec<TensorDType> {
    FORMATS
        .iter()
        .map(|f| f.dtype)
        .filter(|&d| QuantFormat::of(d).is_some())
        .collect()
}

/// (m, n, k) of the plain cases: m on each rows-per-thread edge (1, 3, 9), n no multiple of
/// 8, k several 32-weight blocks (one and three super-blocks for the 256-weight formats); the
/// other variants take the last.
fn shapes(dtype: TensorDType) -> [(usize, usize, usize); 3] {
    if dtype.block_len() == 256 {
        [(1, 13, 256), (3, 45, 512), (9, 70, 768)]
    } else {
        [(1, 13, 96), (3, 45, 160), (9, 70, 576)]
    }
}

/// The widest k of [`shapes`] (the CPU forms' tuning reads x through windows up to it).
const MAX_K: usize = 768;

/// `n` rows of `k` weights as GGUF `dtype` blocks: random bytes, with every f16 scale field
/// set to a finite value of either sign, |v| in 0.001..0.05.
fn random_blocks(rng: &mut Rng, dtype: TensorDType, n: usize, k: usize) -> Vec<u8> {
    let f = dtype.format();
    let mut raw = Vec::with_capacity(n * row_bytes(dtype, k));
    for _ in 0..n * k / f.block_weights {
        let start = raw.len();
        raw.extend((0..f.block_bytes).map(|_| rng.next_u64() as u8));
        for &at in f.f16_scales {
            let sign = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
            let v = f16::from_f64(sign * (0.001 + 0.049 * rng.next_f64()));
            raw[start + at..start + at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    raw
}

/// GGUF blocks of an (n, k) weight packed and uploaded: texture planes or a storage buffer.
fn upload(
    ctx: &GpuContext,
    raw: &[u8],
    dtype: TensorDType,
    (n, k): (usize, usize),
    texture: bool,
) -> Result<WeightData, GpuError> {
    let (w, format) = pack_quantized(raw, dtype, n, k)?;
    Ok(if texture {
        WeightData::Texture(quant_texture::upload_texture(ctx, "w", &w, format, n, k)?)
    } else {
        WeightData::Buffer(words(ctx, "w", &w)?.buffer)
    })
}

fn placement_name(texture: bool) -> &'static str {
    if texture { "texture" } else { "buffer" }
}

pub(super) fn run(t: &Target, out: &mut Vec<CaseResult>) {
    for ctx in [t.ctx, t.other] {
        matmul_quant(ctx, out);
    }
    embedding(t.ctx, out);
}

/// The tuning `ctx`'s profile picks with quantized weights placed as `placement`.
fn tuning_for(ctx: &GpuContext, placement: Placement) -> QuantTuning {
    let mut profile = ctx.profile;
    profile.quant_weights = placement;
    profile.quant_tuning(MAX_K)
}

/// One [`MatmulQuant`] build of a plan: its format, the weights' placement (the profile's, or
/// the other one), and whether it runs the fused variants too.
struct Build {
    format: QuantFormat,
    other_placement: bool,
    variants: bool,
}

/// What each form builds, the same for both: every format the engine keeps quantized on the
/// GPU (the Q4 and Q8 layouts and each `Blocks` type, whose decoding differs per format in
/// each kernel) in the profile's placement, the Q4 layout in the other placement too, and the
/// fused variants (SwiGLU, and RMSNorm in front where the tuning is k-split) on the Q4 layout
/// and a K-quant. A build compiles one pipeline per variant and rows-per-thread choice the
/// tuning can dispatch (all three for the profiles' tunings, which pick by batch size), 42 in
/// the CPU forms: llvmpipe takes ~0.2 s a pipeline of their kernel (~0.03 s of the GPU forms'
/// k-split one), on parallel threads within a build (building several at once was slower on
/// lavapipe), and compiling dominates these cases' time.
fn plan() -> Vec<Build> {
    let build = |format, other_placement, variants| Build {
        format,
        other_placement,
        variants,
    };
    let k_quant = QuantFormat::Blocks(TensorDType::Q4_K);
    let mut formats: Vec<QuantFormat> = Vec::new();
    for f in quant_types().into_iter().filter_map(QuantFormat::of) {
        if !formats.contains(&f) {
            formats.push(f);
        }
    }
    let mut plan: Vec<Build> = formats
        .into_iter()
        .map(|f| build(f, false, f == QuantFormat::Q4 || f == k_quant))
        .collect();
    plan.push(build(QuantFormat::Q4, true, false));
    plan
}

fn matmul_quant(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let mut rng = Rng::new(21);
    for b in plan() {
        let placement = match (ctx.profile.quant_weights, b.other_placement) {
            (p, false) => p,
            (Placement::Buffer, true) => Placement::Texture,
            (Placement::Texture, true) => Placement::Buffer,
        };
        let tuning = tuning_for(ctx, placement);
        let normed = b.variants && MatmulQuant::fuses_norm(tuning);
        let mm = MatmulQuant::with_variants(ctx, b.format, tuning, b.variants, normed);
        let texture = mm.tuning().w_texture;
        let mut variants = vec![Variant::Plain];
        if b.variants {
            variants.push(Variant::Glu);
        }
        if normed {
            variants.extend([Variant::Normed, Variant::GluNormed]);
        }
        // Q4_0 and Q4_1 share the Q4 layout and its pipelines.
        let dtypes = quant_types()
            .into_iter()
            .filter(|&d| QuantFormat::of(d) == Some(b.format));
        for dtype in dtypes {
            let shapes = shapes(dtype);
            for &variant in &variants {
                let cases = match variant {
                    Variant::Plain => &shapes[..],
                    _ => &shapes[2..],
                };
                for &shape in cases {
                    let error = matmul_case(ctx, &mm, dtype, variant, shape, &mut rng);
                    let form = format!(
                        "{}, {}, {}, {}",
                        forms(ctx),
                        dtype.format().name,
                        placement_name(texture),
                        variant.name()
                    );
                    let (m, n, k) = shape;
                    let case = format!("{m} × {n} × {k}");
                    out.push(result("matmul_quant", form, case, variant.limit(), error));
                }
            }
        }
    }
}

/// One quantized matmul of random data against the f64 reference over the loader's weights:
/// the NMSE over all of y (columns outside the call must keep their values).
fn matmul_case(
    ctx: &GpuContext,
    mm: &MatmulQuant,
    dtype: TensorDType,
    variant: Variant,
    (m, n, k): (usize, usize, usize),
    rng: &mut Rng,
) -> Result<f64, GpuError> {
    let glu = variant.glu();
    let wn = if glu { 2 * n } else { n };
    let x = normals(rng, m * k, 1.0);
    let g = normals(rng, k, 1.0);
    let raw = random_blocks(rng, dtype, wn, k);
    let bias = normals(rng, n, 1.0);
    let (y_stride, y_col) = (n + 5, 2);
    let y0 = normals(rng, m * y_stride, 1.0);
    let p = MatmulParams {
        y_stride,
        y_col,
        bias: !glu,
        accumulate: !glu,
        ..MatmulParams::plain(m, n, k)
    };

    let h = if variant.normed() {
        rms_norm_reference(&x, &g, None, k, EPS)
    } else {
        x.clone()
    };
    let mut want = y0.clone();
    if glu {
        let mut gate_up = vec![0.0; m * wn];
        let pg = MatmulParams::plain(m, wn, k);
        matmul_quant::reference(&h, &raw, dtype, None, &mut gate_up, &pg)?;
        let act = gated_reference(&gate_up, n, GateActivation::Silu);
        for (r, row) in act.chunks_exact(n).enumerate() {
            want[r * y_stride + y_col..][..n].copy_from_slice(row);
        }
    } else {
        matmul_quant::reference(&h, &raw, dtype, Some(&bias), &mut want, &p)?;
    }

    let w = upload(ctx, &raw, dtype, (wn, k), mm.tuning().w_texture)?;
    let xb = GpuTensor::matmul_input(ctx, "x", &x, m, k)?;
    let gb = floats(ctx, "norm weight", &g)?;
    let bb = floats(ctx, "bias", &bias)?;
    let y = floats(ctx, "y", &y0)?;
    let bg = if variant.normed() {
        mm.bind_normed(ctx, &xb.buffer, &w, &gb.buffer, &bb.buffer, &y.buffer)?
    } else {
        mm.bind(ctx, &xb.buffer, &w, &bb.buffer, &y.buffer)?
    };
    run_pass(ctx, |pass| match variant {
        Variant::Plain => mm.encode(pass, &bg, &p),
        Variant::Glu => mm.encode_glu(pass, &bg, &p),
        Variant::Normed => mm.encode_normed(pass, &bg, &p, EPS),
        Variant::GluNormed => mm.encode_glu_normed(pass, &bg, &p, EPS),
    });
    Ok(nmse(&y.read_f32(ctx)?, &want))
}

/// The quantized embedding lookup, every format, buffer and (where the format has planes)
/// texture tables, the table in two parts as the loader splits a big one; a token of each
/// part's edges.
fn embedding(ctx: &GpuContext, out: &mut Vec<CaseResult>) {
    let mut rng = Rng::new(22);
    let (vocab, tokens, split) = (37usize, 11usize, 15usize);
    for dtype in quant_types() {
        let format = QuantFormat::of(dtype).expect("quantized types only");
        let dim = shapes(dtype)[1].2;
        let raw = random_blocks(&mut rng, dtype, vocab, dim);
        let mut ids: Vec<u32> = (0..tokens)
            .map(|_| (rng.next_u64() % vocab as u64) as u32)
            .collect();
        ids[..4].copy_from_slice(&[0, split as u32 - 1, split as u32, vocab as u32 - 1]);
        let textures: &[bool] = if format.texture_layout() {
            &[false, true]
        } else {
            &[false]
        };
        for &texture in textures {
            let run = || -> Result<f64, GpuError> {
                let want = embedding_quant::reference(&ids, &raw, dtype, vocab, dim)?;
                let rb = row_bytes(dtype, dim);
                let part_a = upload(ctx, &raw[..split * rb], dtype, (split, dim), texture)?;
                let rest = (vocab - split, dim);
                let part_b = upload(ctx, &raw[split * rb..], dtype, rest, texture)?;
                let emb = EmbeddingQuant::new(ctx, format, texture);
                let idb = words(ctx, "ids", &ids)?;
                let x = floats(ctx, "x", &normals(&mut Rng::new(23), tokens * dim, 1.0))?;
                let bg_a = emb.bind(ctx, &idb.buffer, &part_a, &x.buffer)?;
                let bg_b = emb.bind(ctx, &idb.buffer, &part_b, &x.buffer)?;
                run_pass(ctx, |pass| {
                    emb.encode(pass, &bg_a, tokens, dim, 0, split);
                    emb.encode(pass, &bg_b, tokens, dim, split, vocab - split);
                });
                Ok(mismatches(&x.read_f32(ctx)?, &want))
            };
            let form = format!("{}, {}", dtype.format().name, placement_name(texture));
            let case = format!("{tokens} of {vocab} × {dim}");
            out.push(result(
                "embedding_quant",
                form,
                case,
                EMBED_MISMATCHES,
                run(),
            ));
        }
    }
}
