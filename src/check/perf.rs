//! `wllm check --perf`: each kernel at model-like shapes (decode is memory-bound), its time per
//! call and the bytes it must move at least, as GB/s and as a fraction of what the adapter's
//! `copy_buffer_to_buffer` reaches (the practical ceiling of a memory-bound kernel).
//!
//! A kernel is timed as the median of [`REPEATS`] submits, each holding R back-to-back calls in
//! one compute pass (R grown from 1 until a submit takes [`TARGET_SECONDS`]), divided by R:
//! from GPU timestamps written at the pass's start and end where the adapter has
//! `TIMESTAMP_QUERY`, else by the wall clock around submit and wait (both after a warm-up
//! call). The copy bandwidth is always wall clock (timestamps inside encoders are not asked
//! for), over copies large enough that the submit's own cost does not count.

use std::time::Instant;

use half::f16;
use serde::Serialize;

use super::cases::{floats, forms, normals, run_pass, words};
use crate::gpu::kernels::attention::SplitLimits;
use crate::gpu::kernels::{
    self, Argmax, AttentionParams, Matmul, MatmulParams, MatmulQuant, PagedAttention, QuantFormat,
    RmsNorm, Sample, WeightData, pack_quantized, quant_texture,
};
use crate::gpu::kv_pool::{KvPool, KvStorage};
use crate::gpu::profile::Profiler;
use crate::gpu::tensor::encode_words;
use crate::gpu::{GpuContext, GpuError, GpuTensor, WeightDType};
use crate::loader::TensorDType;
use crate::sampling::{Rng, RowSampling};

/// Timed submits per kernel (the median is reported).
const REPEATS: usize = 5;
/// How long one timed submit should take, so that its fixed costs do not count.
const TARGET_SECONDS: f64 = 0.004;
/// Most calls one submit holds.
const MAX_CALLS: usize = 4096;
/// The copy of the bandwidth figure (capped by the adapter's buffer limits).
const COPY_BYTES: u64 = 256 << 20;

/// The timings of one adapter.
#[derive(Debug, Clone, Serialize)]
pub struct PerfReport {
    /// `copy_buffer_to_buffer` of a large buffer, bytes read + written per second / 1e9.
    pub copy_gb_per_s: f64,
    /// How the kernels were timed: "timestamp queries" or "wall clock".
    pub timer: String,
    pub results: Vec<PerfResult>,
}

/// One kernel, in the adapter's default form, on one model-like shape.
#[derive(Debug, Clone, Serialize)]
pub struct PerfResult {
    pub kernel: String,
    pub form: String,
    pub case: String,
    pub us_per_call: f64,
    /// Bytes the call must move at least: weights read, activations read and written, the KV
    /// cache read for attention.
    pub bytes: u64,
    /// `bytes` per second / 1e9.
    pub gb_per_s: f64,
    /// `gb_per_s / copy_gb_per_s`.
    pub of_copy: f64,
}

/// Times every kernel on `ctx` (its default kernel forms) at model-like shapes.
pub fn perf_adapter(ctx: &GpuContext) -> Result<PerfReport, GpuError> {
    let copy_gb_per_s = copy_bandwidth(ctx)?;
    let mut t = Timer::new(ctx);
    let mut results = Vec::new();
    matmul(ctx, &mut t, &mut results)?;
    matmul_quant(ctx, &mut t, &mut results)?;
    attention(ctx, &mut t, &mut results)?;
    rms_norm(ctx, &mut t, &mut results)?;
    argmax_and_sample(ctx, &mut t, &mut results)?;
    for r in &mut results {
        r.of_copy = r.gb_per_s / copy_gb_per_s;
    }
    Ok(PerfReport {
        copy_gb_per_s,
        timer: t.describe(),
        results,
    })
}

fn wait(ctx: &GpuContext) -> Result<(), GpuError> {
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|e| GpuError::Readback(e.to_string()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per call: `submit(calls)` gives the seconds of one submit of that many calls; the
/// calls are grown until a submit takes [`TARGET_SECONDS`], then [`REPEATS`] submits are timed.
fn calibrated(mut submit: impl FnMut(usize) -> Result<f64, GpuError>) -> Result<f64, GpuError> {
    submit(1)?; // warm-up: lazy initialization, caches
    let mut calls = 1;
    let mut secs = submit(calls)?;
    while secs < TARGET_SECONDS && calls < MAX_CALLS {
        let grow = (TARGET_SECONDS / secs.max(1e-9)).ceil() as usize;
        calls = (calls * grow.clamp(2, 16)).min(MAX_CALLS);
        secs = submit(calls)?;
    }
    let mut per_call = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        per_call.push(submit(calls)? / calls as f64);
    }
    Ok(median(per_call))
}

/// The adapter's copy bandwidth in GB/s (read + write).
fn copy_bandwidth(ctx: &GpuContext) -> Result<f64, GpuError> {
    let limit = ctx.limits.max_buffer_size.min(ctx.max_binding_bytes());
    let size = COPY_BYTES.min(limit) & !(wgpu::COPY_BUFFER_ALIGNMENT - 1);
    let buffer = |label| {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let (src, dst) = (buffer("perf copy src"), buffer("perf copy dst"));
    let secs = calibrated(|calls| {
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("perf copy"),
            });
        for _ in 0..calls {
            enc.copy_buffer_to_buffer(&src, 0, &dst, 0, size);
        }
        let cmd = enc.finish();
        let start = Instant::now();
        ctx.queue.submit([cmd]);
        wait(ctx)?;
        Ok(start.elapsed().as_secs_f64())
    })?;
    Ok(2.0 * size as f64 / secs / 1e9)
}

/// Times submits of kernel calls: by timestamps where the adapter writes them, else by the
/// wall clock.
struct Timer {
    profiler: Option<Profiler>,
    submits: usize,
    /// Submits whose timestamps read 0 (or garbage), timed by the wall clock instead.
    fallbacks: usize,
}

impl Timer {
    fn new(ctx: &GpuContext) -> Timer {
        Timer {
            profiler: Profiler::new(ctx).ok(),
            submits: 0,
            fallbacks: 0,
        }
    }

    fn describe(&self) -> String {
        match (&self.profiler, self.fallbacks) {
            (None, _) => "wall clock".into(),
            (Some(_), 0) => "timestamp queries".into(),
            (Some(_), n) => format!(
                "timestamp queries ({n} of {} submits by wall clock: their timestamps read 0)",
                self.submits
            ),
        }
    }

    /// Seconds one submit of `calls` back-to-back `record`s takes.
    fn submit(
        &mut self,
        ctx: &GpuContext,
        calls: usize,
        record: &dyn Fn(&mut wgpu::ComputePass<'_>),
    ) -> Result<f64, GpuError> {
        self.submits += 1;
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("perf"),
            });
        {
            let timestamp_writes = self.profiler.as_mut().and_then(|p| p.next_pass("perf"));
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("perf"),
                timestamp_writes,
            });
            for _ in 0..calls {
                record(&mut pass);
            }
        }
        if let Some(p) = &self.profiler {
            p.resolve(&mut enc);
        }
        let cmd = enc.finish();
        let start = Instant::now();
        ctx.queue.submit([cmd]);
        wait(ctx)?;
        let wall = start.elapsed().as_secs_f64();
        let Some(p) = self.profiler.as_mut() else {
            return Ok(wall);
        };
        let gpu = p.finish(ctx)?.gpu_us() * 1e-6;
        if gpu > 0.0 && gpu.is_finite() {
            Ok(gpu)
        } else {
            self.fallbacks += 1;
            Ok(wall)
        }
    }

    /// One result: `record` (one call moving `bytes`) timed.
    fn time(
        &mut self,
        ctx: &GpuContext,
        (kernel, form, case): (&str, String, String),
        bytes: u64,
        record: &dyn Fn(&mut wgpu::ComputePass<'_>),
    ) -> Result<PerfResult, GpuError> {
        let secs = calibrated(|calls| self.submit(ctx, calls, record))?;
        Ok(PerfResult {
            kernel: kernel.into(),
            form,
            case,
            us_per_call: secs * 1e6,
            bytes,
            gb_per_s: bytes as f64 / secs / 1e9,
            of_copy: 0.0,
        })
    }
}

/// The decode-sized matmuls: n = k = 2048.
const N: usize = 2048;
const K: usize = 2048;

fn matmul(ctx: &GpuContext, t: &mut Timer, out: &mut Vec<PerfResult>) -> Result<(), GpuError> {
    let mut rng = Rng::new(31);
    let w = normals(&mut rng, N * K, 0.02);
    let m_max = 16;
    let x = floats(ctx, "x", &normals(&mut rng, m_max * K, 1.0))?;
    let bias = floats(ctx, "bias", &[0.0])?;
    let y = floats(ctx, "y", &vec![0.0; m_max * N])?;
    for dtype in [WeightDType::F32, WeightDType::F16] {
        if dtype == WeightDType::F16 && !ctx.adapter_info.shader_f16 {
            continue;
        }
        let k = Matmul::new(ctx, dtype);
        let packed = kernels::matmul::pack_weight(&w, N, K, dtype);
        let shape = [K, kernels::matmul::padded_cols(N)];
        let wt = GpuTensor::from_words(ctx, "w", &packed, &shape, dtype)?;
        let bg = k.bind(ctx, &x.buffer, &wt.buffer, &bias.buffer, &y.buffer);
        for m in [1, m_max] {
            let p = MatmulParams::plain(m, N, K);
            let bytes = (N * K * dtype.bytes_per_elem() + m * K * 4 + m * N * 4) as u64;
            let what = (
                "matmul",
                format!("{}, {}", forms(ctx), dtype.name()),
                format!("{m} × {N} × {K}"),
            );
            out.push(t.time(ctx, what, bytes, &|pass| k.encode(pass, &bg, &p))?);
        }
    }
    Ok(())
}

/// `n` rows of `k` weights as random GGUF `dtype` blocks, every f16 scale finite (as
/// `cases_quant.rs` makes them).
fn random_blocks(rng: &mut Rng, dtype: TensorDType, n: usize, k: usize) -> Vec<u8> {
    let f = dtype.format();
    let blocks = n * k / f.block_weights;
    let mut raw: Vec<u8> = (0..(blocks * f.block_bytes).div_ceil(8))
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .collect();
    raw.truncate(blocks * f.block_bytes);
    for block in raw.chunks_exact_mut(f.block_bytes) {
        for &at in f.f16_scales {
            let v = f16::from_f64(0.001 + 0.049 * rng.next_f64());
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    raw
}

fn matmul_quant(
    ctx: &GpuContext,
    t: &mut Timer,
    out: &mut Vec<PerfResult>,
) -> Result<(), GpuError> {
    let mut rng = Rng::new(32);
    let m = 1;
    let x = GpuTensor::matmul_input(ctx, "x", &normals(&mut rng, m * K, 1.0), m, K)?;
    let bias = floats(ctx, "bias", &[0.0])?;
    let y = floats(ctx, "y", &vec![0.0; m * N])?;
    let tuning = ctx.profile.quant_tuning(K);
    for dtype in [
        TensorDType::Q4_0,
        TensorDType::Q8_0,
        TensorDType::Q4_K,
        TensorDType::Q6_K,
    ] {
        let Some(format) = QuantFormat::of(dtype) else {
            continue;
        };
        let mm = MatmulQuant::new(ctx, format, tuning);
        let raw = random_blocks(&mut rng, dtype, N, K);
        let (packed, _) = pack_quantized(&raw, dtype, N, K)?;
        let texture = mm.tuning().w_texture;
        let w = if texture {
            WeightData::Texture(quant_texture::upload_texture(
                ctx, "w", &packed, format, N, K,
            )?)
        } else {
            WeightData::Buffer(words(ctx, "w", &packed)?.buffer)
        };
        let bg = mm.bind(ctx, &x.buffer, &w, &bias.buffer, &y.buffer)?;
        let p = MatmulParams::plain(m, N, K);
        let bytes = (raw.len() + m * K * 4 + m * N * 4) as u64;
        let placement = if texture { "texture" } else { "buffer" };
        let what = (
            "matmul_quant",
            format!("{}, {}, {placement}", forms(ctx), dtype.format().name),
            format!("{m} × {N} × {K}"),
        );
        out.push(t.time(ctx, what, bytes, &|pass| mm.encode(pass, &bg, &p))?);
    }
    Ok(())
}

/// Decode over a long context: 8 sequences of 1024 positions, Llama-3.2-1B's heads (32 query
/// heads over 8 KV heads of 64), f16 KV in blocks of 16 scattered over the pool.
fn attention(ctx: &GpuContext, t: &mut Timer, out: &mut Vec<PerfResult>) -> Result<(), GpuError> {
    let (seqs, context, bs) = (8usize, 1024usize, 16usize);
    let (nh, nkv, hd, kv) = (32usize, 8usize, 64usize, WeightDType::F16);
    let (q_dim, kv_dim) = (nh * hd, nkv * hd);
    let stride = q_dim + 2 * kv_dim;
    let max_blocks = context / bs;
    let num_blocks = seqs * max_blocks;
    let num_slots = num_blocks * bs;
    let storage = KvStorage::for_adapter(ctx, num_blocks, bs, kv_dim, kv)?;
    let limits = SplitLimits {
        max_tokens: seqs,
        num_heads: nh,
        max_context: context,
    };
    let kernel = PagedAttention::for_model(ctx, hd, kv, nkv, limits, storage)?;

    let mut rng = Rng::new(33);
    let pool_words = encode_words(&normals(&mut rng, num_slots * kv_dim, 1.0), kv);
    let pool = |name: &str| -> Result<KvPool, GpuError> {
        let p = KvPool::zeros(ctx, name, storage, num_slots, kv_dim, kv)?;
        p.write_words(ctx, storage, kv_dim, kv, &pool_words)?;
        Ok(p)
    };
    let (k_cache, v_cache) = (pool("k_cache")?, pool("v_cache")?);
    // Sequence i's block b is block b * seqs + i: no sequence's blocks are contiguous.
    let tables: Vec<u32> = (0..seqs)
        .flat_map(|i| (0..max_blocks).map(move |b| (b * seqs + i) as u32))
        .collect();
    let qkv = floats(ctx, "qkv", &normals(&mut rng, seqs * stride, 1.0))?;
    let tables_b = words(ctx, "block_tables", &tables)?;
    let seq_b = words(ctx, "token_seq", &(0..seqs as u32).collect::<Vec<_>>())?;
    let pos_b = words(ctx, "positions", &vec![context as u32 - 1; seqs])?;
    let attn_out = floats(ctx, "out", &vec![0.0; seqs * q_dim])?;
    let bg = kernel.bind(
        ctx,
        &qkv.buffer,
        &k_cache,
        &v_cache,
        &tables_b.buffer,
        &seq_b.buffer,
        &pos_b.buffer,
        &attn_out.buffer,
    )?;
    let p = AttentionParams {
        num_tokens: seqs,
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        row_stride: stride,
        block_size: bs,
        max_blocks,
        scale: 1.0 / (hd as f32).sqrt(),
        max_context_len: context,
        window: None,
        softcap: None,
    };
    p.check()?;
    let kv_bytes = 2 * seqs * context * kv_dim * kv.bytes_per_elem();
    let bytes = (kv_bytes + 2 * seqs * q_dim * 4 + tables.len() * 4) as u64;
    let kind = match kernel.kind() {
        kernels::AttentionKind::Serial => "serial",
        kernels::AttentionKind::Split => "split",
    };
    let placement = if storage.is_texture() {
        "texture"
    } else {
        "buffer"
    };
    let what = (
        "attention",
        format!("{}, {kind}, {} KV, {placement}", forms(ctx), kv.name()),
        format!("{seqs} seqs × {context} positions, {nh}/{nkv} heads × {hd}, bs {bs}"),
    );
    out.push(t.time(ctx, what, bytes, &|pass| kernel.encode(pass, &bg, &p))?);
    Ok(())
}

fn rms_norm(ctx: &GpuContext, t: &mut Timer, out: &mut Vec<PerfResult>) -> Result<(), GpuError> {
    let (rows, dim) = (16usize, 2048usize);
    let mut rng = Rng::new(34);
    let k = RmsNorm::new(ctx, false);
    let x = floats(ctx, "x", &normals(&mut rng, rows * dim, 2.0))?;
    let w = floats(ctx, "w", &normals(&mut rng, dim, 1.0))?;
    let y = floats(ctx, "y", &vec![0.0; rows * dim])?;
    let bg = k.bind(ctx, &x.buffer, &w.buffer, &x.buffer, &y.buffer);
    let bytes = ((2 * rows * dim + dim) * 4) as u64;
    let what = ("rms_norm", forms(ctx).into(), format!("{rows} × {dim}"));
    out.push(t.time(ctx, what, bytes, &|pass| {
        k.encode(pass, &bg, rows, dim, 1e-5)
    })?);
    Ok(())
}

/// Llama 3's vocabulary.
const VOCAB: usize = 128256;

fn argmax_and_sample(
    ctx: &GpuContext,
    t: &mut Timer,
    out: &mut Vec<PerfResult>,
) -> Result<(), GpuError> {
    let rows = 4;
    let mut rng = Rng::new(35);
    let logits = floats(ctx, "logits", &normals(&mut rng, rows * VOCAB, 3.0))?;
    let ids = words(ctx, "ids", &vec![0; rows])?;
    let logit_bytes = (rows * VOCAB * 4) as u64;

    let am = Argmax::new(ctx);
    let bg = am.bind(ctx, &logits.buffer, &ids.buffer);
    let case = format!("{rows} × {VOCAB}");
    let what = ("argmax", forms(ctx).into(), case.clone());
    let bytes = logit_bytes + rows as u64 * 4;
    out.push(t.time(ctx, what, bytes, &|pass| am.encode(pass, &bg, rows, VOCAB))?);
    // The sampler reads the argmax ids (a greedy row keeps its own).
    run_pass(ctx, |pass| am.encode(pass, &bg, rows, VOCAB));

    let params: Vec<RowSampling> = (0..rows)
        .map(|_| {
            let key = rng.next_u64();
            RowSampling {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.95,
                min_p: 0.05,
                key: [key as u32, (key >> 32) as u32],
                ..Default::default()
            }
        })
        .collect();
    let pb = words(ctx, "params", bytemuck::cast_slice(&params))?;
    let s = Sample::new(ctx);
    let bg = s.bind(ctx, &logits.buffer, &ids.buffer, &pb.buffer);
    let what = (
        "sample",
        forms(ctx).into(),
        format!("{case}, T 0.8, top-k 40, top-p 0.95, min-p 0.05"),
    );
    let bytes = logit_bytes + rows as u64 * 8 + std::mem::size_of_val(&params[..]) as u64;
    out.push(t.time(ctx, what, bytes, &|pass| s.encode(pass, &bg, rows, VOCAB))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0, 9.0, 0.5]), 2.0);
    }

    #[test]
    fn calibration_grows_the_calls_until_a_submit_is_long_enough() {
        // A call of 10 µs: submits grow to at least TARGET_SECONDS worth of calls.
        let mut seen = Vec::new();
        let per_call = calibrated(|calls| {
            seen.push(calls);
            Ok(calls as f64 * 1e-5)
        })
        .unwrap();
        assert!((per_call - 1e-5).abs() < 1e-12, "{per_call}");
        let last = *seen.last().unwrap();
        assert!(last as f64 * 1e-5 >= TARGET_SECONDS, "{seen:?}");
        assert_eq!(seen.iter().filter(|&&c| c == last).count(), REPEATS + 1);
        // A slow call: one per submit.
        let mut calls_seen = Vec::new();
        calibrated(|calls| {
            calls_seen.push(calls);
            Ok(calls as f64)
        })
        .unwrap();
        assert!(calls_seen.iter().all(|&c| c == 1), "{calls_seen:?}");
    }
}
