//! A storage-binding limit far below the tiny models' matrices
//! ([`GpuContext::with_max_binding_bytes`]): the embedding, the LM head and the MLP matrices
//! are split by rows into several buffers, the KV pool is capped at what one binding per layer
//! holds, and the logits must equal the unsplit run's bit for bit — f32 and f16 storage, both
//! kernel forms, dense and quantized weights, safetensors and GGUF — except where a split
//! gate|up matrix unfuses the GPU forms' MLP kernels (see `split_unfuses`). A KV pool asked
//! for beyond the cap is refused with an error that says why.
//!
//! The limit cannot go below 64 KiB plus one step's matmul input: every matmul input buffer
//! carries a 64 KiB window for the quantized matmul's uniform reads
//! (`MatmulQuant::X_WINDOW_BYTES`). So the steps here are 2 tokens wide, and the GGUF models
//! are tiny-llama3 (256 wide, 512 inner), rewritten with dense or Q8_0/Q4_0 matrices (the
//! formats the GPU keeps quantized) and an untied LM head.

mod common;
#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::temp_dir::TempDir;
use common::{fixtures, gpu, gpu_other_forms};
use gguf_writer::GgufBuilder;
use wllm::generate::{KvLimit, model_config, plan_kv_pool};
use wllm::gpu::kernels::matmul_quant::MatmulQuant;
use wllm::gpu::weights::GpuMatrix;
use wllm::gpu::{Placement, WeightDType};
use wllm::loader::TensorSource;
use wllm::loader::gguf::GgufFile;
use wllm::model::{ModelFiles, load_weights};
use wllm::{AdapterSelector, Generator, GpuContext, KernelForms, ModelOptions};

/// The lowered binding limit: 72 KiB.
const LIMIT: u64 = 72 << 10;
/// Tokens per step: a matmul input then takes 64 KiB + 2 × 512 × 4 bytes ≤ LIMIT.
const STEP_TOKENS: usize = 2;
/// KV blocks of 16 tokens one layer's f32 K pool of tiny-llama3 holds in LIMIT:
/// 73728 / (16 tokens × 2 heads × 32 × 4 bytes) = 18.
const LLAMA3_F32_CAP: usize = 18;

const GGML_F32: u32 = 0;
const GGML_Q4_0: u32 = 2;
const GGML_Q8_0: u32 = 8;

/// 40 tokens: prefilled over 20 steps, across block boundaries.
fn prompt() -> Vec<u32> {
    (0..40).map(|i| (i * 37 + 11) % 500).collect()
}

/// Q8_0 blocks of `x` (ggml's layout: f16 scale, 32 × i8).
fn q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for b in x.chunks(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// Q4_0 blocks of `x` (ggml's layout: f16 scale, then element j in the low nibble of byte j
/// and element j + 16 in its high nibble; w = d·(q − 8)).
fn q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 18);
    for b in x.chunks(32) {
        let max = b
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
        out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
    }
    out
}

/// tiny-llama3 (from its Q4_K_M GGUF, dequantized) with every matrix stored as f32, or as
/// Q8_0 (embedding, attention, head) and Q4_0 (MLP); plus an untied `output.weight` (the
/// embedding with each row reversed).
fn rewritten(dir: &Path, quantized: bool) -> PathBuf {
    let src = GgufFile::open(fixtures().join("arch/gguf/tiny-llama3.Q4_K_M.gguf")).unwrap();
    let mut b = GgufBuilder::new();
    b.metadata_from(&src.metadata);
    let encode = |name: &str, v: &[f32]| -> (u32, Vec<u8>) {
        match (quantized, name.contains("ffn_")) {
            (false, _) => (GGML_F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            (true, true) => (GGML_Q4_0, q4_0(v)),
            (true, false) => (GGML_Q8_0, q8_0(v)),
        }
    };
    for info in &src.tensors {
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        if info.shape.len() != 2 {
            let bytes = src.tensor_bytes(&info.name).unwrap().to_vec();
            b.tensor(&info.name, &shape, info.ggml_type, bytes);
            continue;
        }
        let v = src.tensor(&info.name).unwrap().to_f32().unwrap();
        let (ty, bytes) = encode(&info.name, &v);
        b.tensor(&info.name, &shape, ty, bytes);
        if info.name == "token_embd.weight" {
            let cols = info.shape[1];
            let head: Vec<f32> = v
                .chunks(cols)
                .flat_map(|row| row.iter().rev().copied())
                .collect();
            let (ty, bytes) = encode("output.weight", &head);
            b.tensor("output.weight", &shape, ty, bytes);
        }
    }
    let name = if quantized { "q8_q4" } else { "f32" };
    let path = dir.join(format!("tiny-llama3.{name}.gguf"));
    std::fs::write(&path, b.build().bytes).unwrap();
    path
}

/// The two rewritten files, written once per test binary.
fn gguf(quantized: bool) -> PathBuf {
    static DIR: OnceLock<(TempDir, PathBuf, PathBuf)> = OnceLock::new();
    let (_, dense, quant) = DIR.get_or_init(|| {
        let dir = TempDir::new("binding-limits");
        let dense = rewritten(&dir.0, false);
        let quant = rewritten(&dir.0, true);
        (dir, dense, quant)
    });
    if quantized { quant } else { dense }.clone()
}

/// The CPU kernel forms with quantized weights in storage buffers (by default they take
/// textures, whose rows split by the texture size limit, not the binding's).
fn cpu_forms_quant_buffers() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let sel = AdapterSelector {
            kernel_forms: Some(KernelForms::Cpu),
            quant_weights: Some(Placement::Buffer),
            ..AdapterSelector::from_env().expect("WLLM_BACKEND / WLLM_ADAPTER")
        };
        GpuContext::new(&sel).unwrap_or_else(|e| panic!("no GPU adapter for the tests ({e})"))
    })
}

fn options(model: &Path, dtype: WeightDType, num_blocks: usize) -> ModelOptions {
    let mut opts = ModelOptions::new(model);
    opts.dtype = dtype;
    opts.max_batch_tokens = STEP_TOKENS;
    opts.max_seqs = STEP_TOKENS;
    // The same pool on both sides, so only the weights' splits differ.
    opts.num_blocks = Some(num_blocks);
    opts
}

/// Row parts of the embedding, the LM head (the embedding when tied), the MLP's gate/up and
/// down matrices of layer 0, loaded on `ctx`.
fn parts(ctx: &GpuContext, opts: &ModelOptions) -> [usize; 4] {
    let files = ModelFiles::open(&opts.path).unwrap();
    let cfg = model_config(&files, opts).unwrap();
    let w = load_weights(ctx, &files, &cfg, opts.dtype, &mut |_, _| {}).unwrap();
    let n = |m: &GpuMatrix| m.parts.len();
    [
        n(&w.embed),
        w.lm_head.as_ref().map_or(n(&w.embed), n),
        n(&w.layers[0].up.w),
        n(&w.layers[0].down.w),
    ]
}

/// Logits after each prefix of the prompt with the device's binding limit and with LIMIT:
/// equal bit for bit, or within `tol` where the split changes which kernels are fused (see
/// [`split_unfuses`]). Returns the matrices' parts under LIMIT.
fn compare(
    ctx: &GpuContext,
    model: &Path,
    dtype: WeightDType,
    num_blocks: usize,
    tol: Option<f32>,
) -> [usize; 4] {
    let opts = options(model, dtype, num_blocks);
    let small = ctx.clone().with_max_binding_bytes(LIMIT);
    let run = |c: &GpuContext| {
        let mut g = Generator::load(c, &opts, &mut |_, _| {}).unwrap();
        g.logits(&prompt()).unwrap()
    };
    let (whole, split) = (run(ctx), run(&small));
    let what = format!(
        "{} {dtype:?} {:?} forms",
        model.display(),
        ctx.profile.kernel_forms
    );
    assert_eq!(whole.len(), prompt().len());
    assert_eq!(whole.len(), split.len());
    let mut worst = 0f32;
    for (pos, (a, b)) in whole.iter().zip(&split).enumerate() {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            match tol {
                None => assert_eq!(
                    x.to_bits(),
                    y.to_bits(),
                    "{what}: position {pos}, logit {i}: {x} unsplit vs {y} split"
                ),
                Some(tol) => assert!(
                    (x - y).abs() <= tol,
                    "{what}: position {pos}, logit {i}: {x} unsplit vs {y} split (tolerance {tol})"
                ),
            }
            worst = worst.max((x - y).abs());
        }
    }
    assert_eq!(parts(ctx, &opts), [1; 4], "{what}: unsplit");
    let p = parts(&small, &opts);
    eprintln!("{what}: parts under {LIMIT} bytes {p:?}, largest logit difference {worst:e}");
    p
}

/// Whether splitting the quantized gate|up matrix changes the plan on `ctx`: the GPU forms
/// fuse the MLP's RMSNorm, the gate|up matmul and SiLU·mul into one kernel that needs gate|up
/// in one binding (src/gpu/runner/plan.rs). Split, they run apart and the norm sums its
/// squares in another order (about 1e-6 of these logits in f32).
fn split_unfuses(ctx: &GpuContext) -> bool {
    MatmulQuant::fuses_norm(ctx.profile.quant_tuning(512))
}

fn contexts() -> [&'static GpuContext; 2] {
    [gpu(), gpu_other_forms()]
}

/// Every matrix in buffers splits: f32 rows of 1 KiB (embedding, head, gate/up) and 2 KiB
/// (down) → 72 and 36 rows a part; f16 twice that.
#[test]
fn dense_gguf_splits_match_unsplit() {
    let model = gguf(false);
    for ctx in contexts() {
        for (dtype, want) in [
            (WeightDType::F32, [8, 8, 15, 8]),
            (WeightDType::F16, [4, 4, 8, 4]),
        ] {
            assert_eq!(compare(ctx, &model, dtype, LLAMA3_F32_CAP, None), want);
        }
    }
}

/// Q8_0 rows of 256 weights pack into 288 bytes, Q4_0 rows into 160 (gate/up) and 320
/// (down): 256, 460 and 230 rows a part. Quantized weights in textures (the CPU forms'
/// default) split by the texture size instead, so those runs only check that the lower
/// limit changes nothing else. Bit for bit but where the split gate|up unfuses the MLP
/// ([`split_unfuses`]): there within 1e-4 (measured: 2.1e-6 in f32, 3.3e-5 in f16).
#[test]
fn quantized_gguf_splits_match_unsplit() {
    let model = gguf(true);
    for ctx in [gpu(), gpu_other_forms(), cpu_forms_quant_buffers()] {
        for dtype in [WeightDType::F32, WeightDType::F16] {
            let in_buffers = ctx.profile.quant_weights == Placement::Buffer;
            let tol = (in_buffers && split_unfuses(ctx)).then_some(1e-4);
            let p = compare(ctx, &model, dtype, LLAMA3_F32_CAP, tol);
            if in_buffers {
                assert_eq!(p, [2, 2, 3, 2], "{dtype:?} {:?}", ctx.profile.kernel_forms);
            }
        }
    }
}

/// tiny-llama-gqa (safetensors, 64 wide): in f32 the embedding and the untied head (128 KiB
/// each) and gate/up (80 KiB) split in two; down (40 KiB) and everything in f16 fit.
#[test]
fn safetensors_splits_match_unsplit() {
    let model = fixtures().join("tiny-llama-gqa-public");
    for ctx in contexts() {
        assert_eq!(
            compare(ctx, &model, WeightDType::F32, 8, None),
            [2, 2, 2, 1]
        );
        assert_eq!(
            compare(ctx, &model, WeightDType::F16, 8, None),
            [1, 1, 1, 1]
        );
    }
}

/// A pool sized from memory stops at one binding per layer; a count beyond it is refused,
/// before the weights load, with the reason and the most that fits.
#[test]
fn kv_pool_is_capped_at_one_binding_per_layer() {
    let model = gguf(false);
    let small = gpu().clone().with_max_binding_bytes(LIMIT);
    let mut opts = options(&model, WeightDType::F32, 1);
    opts.num_blocks = None;
    let files = ModelFiles::open(&model).unwrap();
    let cfg = model_config(&files, &opts).unwrap();
    let plan = plan_kv_pool(&small, &cfg, &opts, 0).unwrap();
    assert_eq!(plan.num_blocks, LLAMA3_F32_CAP);
    assert_eq!(plan.limit, Some(KvLimit::Binding));
    opts.num_blocks = Some(LLAMA3_F32_CAP);
    let g = Generator::load(&small, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(g.kv_plan().num_blocks, LLAMA3_F32_CAP);
    drop(g);
    opts.num_blocks = Some(LLAMA3_F32_CAP + 1);
    let mut loaded = 0;
    let err = Generator::load(&small, &opts, &mut |done, _| loaded = done)
        .err()
        .expect("a pool beyond the binding must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("19 blocks does not fit this adapter")
            && msg.contains("one storage binding of 73728 bytes")
            && msg.contains("at most 18 blocks"),
        "{msg}"
    );
    assert_eq!(loaded, 0, "refused only after loading weights");
}
