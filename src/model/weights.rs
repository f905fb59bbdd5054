//! Model files → weights on the GPU, in the layout the forward graph expects.
//!
//! Every linear weight is uploaded as (out_features, in_features): GGUF Q4_0/Q4_1/Q8_0 matrices
//! stay in their quantized blocks ([`GpuMatrix::upload_quantized`], dequantized in registers by the
//! matmul kernel); float matrices, and quantized formats no GPU kernel reads yet (the K-quants,
//! Q5_0/Q5_1, IQ4_NL/IQ4_XS: dequantized on the CPU at load, with a warning), take the chosen
//! storage type. Q/K/V are concatenated into one
//! (q_dim + 2·kv_dim, hidden) matrix and gate/up into one (2·inner, hidden) matrix so each is a
//! single matmul (stacked from quantized blocks when all parts share one quantized type).
//! Norm weights and biases stay f32. A matrix larger than one storage binding allows is split
//! by rows across buffers.

use std::path::{Path, PathBuf};

use crate::gpu::kernels::matmul_quant::QuantFormat;
use crate::gpu::weights::{GpuMatrix, HostRows};
use crate::gpu::{GpuContext, GpuTensor, WeightDType};
use crate::loader::dequant::first_non_finite;
use crate::loader::gguf::GgufFile;
use crate::loader::hf::HfModelDir;
use crate::loader::{LoadError, RawTensor, TensorSource};
use crate::model::{Architecture, ModelConfig};

use super::ModelError;
use super::config::RopeScaling;
use super::tensors::{Naming, Role, check_config};

/// An opened model: a GGUF file or a Hugging Face directory.
pub enum ModelFiles {
    Gguf(GgufFile),
    Hf(HfModelDir),
}

impl ModelFiles {
    /// A `.gguf` file or a directory with `config.json`.
    pub fn open(path: &Path) -> Result<ModelFiles, LoadError> {
        if path.is_dir() {
            Ok(ModelFiles::Hf(HfModelDir::open(path)?))
        } else {
            Ok(ModelFiles::Gguf(GgufFile::open(path)?))
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            ModelFiles::Gguf(g) => &g.path,
            ModelFiles::Hf(h) => &h.path,
        }
    }

    /// The model's hyper-parameters, checked against the tensors the files hold (see
    /// `model/tensors.rs`), so nothing sized from them can exceed what the files back.
    pub fn config(&self) -> Result<ModelConfig, LoadError> {
        let cfg = match self {
            ModelFiles::Gguf(g) => ModelConfig::from_gguf(g),
            ModelFiles::Hf(h) => ModelConfig::from_hf(h),
        }?;
        check_config(self, &cfg)?;
        Ok(cfg)
    }

    pub(crate) fn source(&self) -> &dyn TensorSource {
        match self {
            ModelFiles::Gguf(g) => g,
            ModelFiles::Hf(h) => h,
        }
    }

    pub(crate) fn is_gguf(&self) -> bool {
        matches!(self, ModelFiles::Gguf(_))
    }

    /// About how many bytes the weights take on the GPU with float matrices stored as
    /// `dtype`: quantized matrices in their GPU block layout (the quant table's words per
    /// block, [`QuantFormat::words_for`]), float matrices in `dtype`, vectors (norms, biases)
    /// in f32. For planning (`wllm plan`); the dense layout's row padding and texture rows are
    /// not counted (the engine reports the measured figure at startup).
    pub fn gpu_weight_bytes(&self, dtype: WeightDType) -> u64 {
        let src = self.source();
        let mut total = 0u64;
        for name in src.tensor_names() {
            let (Some(shape), Some(stored)) = (src.tensor_shape(&name), src.tensor_dtype(&name))
            else {
                continue;
            };
            let numel = shape.iter().product::<usize>() as u64;
            total += match (shape, QuantFormat::of(stored)) {
                (&[rows, cols], Some(f)) => (f.words_for(rows, cols) * 4) as u64,
                ([_, _], None) => numel * dtype.bytes_per_elem() as u64,
                _ => numel * 4,
            };
        }
        total
    }
}

/// A norm's weight, and its bias for LayerNorm.
pub struct Norm {
    pub w: GpuTensor,
    pub b: Option<GpuTensor>,
}

/// A projection's weight (out_features, in_features) and optional bias.
pub struct Linear {
    pub w: GpuMatrix,
    pub b: Option<GpuTensor>,
}

/// One transformer block's weights. Which are present, and what the MLP's `up` holds, is
/// the family's (see its forward function).
pub struct LayerWeights {
    pub attn_norm: Norm,
    /// (q_dim + 2·kv_dim, hidden): Q rows, then K rows, then V rows.
    pub qkv: Linear,
    /// Per-head RMSNorm weights of q and k, (head_dim) each.
    pub q_norm: Option<GpuTensor>,
    pub k_norm: Option<GpuTensor>,
    /// (hidden, q_dim)
    pub o: Linear,
    /// The norm on attention's output, before the residual add (sandwich norms).
    pub post_attn_norm: Option<Norm>,
    pub mlp_norm: Norm,
    /// Gated MLPs: (2·inner, hidden), gate rows then up rows; else (inner, hidden).
    pub up: Linear,
    /// (hidden, inner)
    pub down: Linear,
    /// The norm on the MLP's output, before the residual add (sandwich norms).
    pub post_mlp_norm: Option<Norm>,
}

pub struct ModelWeights {
    /// (vocab, hidden)
    pub embed: GpuMatrix,
    /// (max_context, hidden): learned positions (GPT-2)
    pub pos_embed: Option<GpuTensor>,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Norm,
    /// (vocab, hidden); `None` when tied to `embed`
    pub lm_head: Option<GpuMatrix>,
    /// RoPE frequency divisors, one per rotated pair: GGUF `rope_freqs.weight`, or
    /// LongRoPE's short or long factors (chosen at load from the engine's context).
    pub rope_freq_factors: Option<Vec<f32>>,
    pub dtype: WeightDType,
}

/// Reads tensors by role, checking shapes, and uploads them.
struct Uploader<'a> {
    ctx: &'a GpuContext,
    files: &'a ModelFiles,
    dtype: WeightDType,
    arch_name: String,
    /// Bytes of the file's tensors loaded so far, and in all (for `progress`).
    done: usize,
    total: usize,
    progress: &'a mut dyn FnMut(usize, usize),
    /// Every tensor read, so that one left unread is an error (see [`Uploader::check_all_read`]).
    read: std::cell::RefCell<std::collections::BTreeSet<String>>,
    /// Quantized tensors dequantized at load (no kernel keeps their format quantized):
    /// ggml type name → (elements, bytes in the file), for one warning per model.
    dequantized: std::collections::BTreeMap<&'static str, (usize, usize)>,
    /// Keep each matrix's rows on the host too ([`GpuMatrix::host`]).
    keep_host: bool,
}

/// Tensors a checkpoint may carry that change nothing: buffers transformers derives again
/// (RoPE's inverse frequencies, GPT-2's causal-mask buffers).
fn derived_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
}

impl Uploader<'_> {
    /// A tensor the loader did not read would change the model's math if it were used (a
    /// RoPE scaling table, a bias, a norm): refuse the file naming it, never run without it.
    fn check_all_read(&self) -> Result<(), LoadError> {
        let read = self.read.borrow();
        let names = self.files.source().tensor_names();
        let unread: Vec<&String> = names
            .iter()
            .filter(|n| !read.contains(*n) && !derived_buffer(n))
            .collect();
        match unread.first() {
            None => Ok(()),
            Some(first) => Err(LoadError::Config {
                path: self.path(),
                msg: format!(
                    "tensor `{first}` is not used by wllm's {} model{} (refusing rather than \
                     running without it)",
                    self.arch_name,
                    match unread.len() {
                        1 => String::new(),
                        n => format!("; {} more unused tensors", n - 1),
                    }
                ),
            }),
        }
    }

    /// One warning naming the quantized formats that were dequantized at load (a stack mixing
    /// quantized and float tensors, a GPT-2 Conv1D weight) and the weight memory that costs
    /// over keeping them quantized.
    fn warn_dequantized(&self) {
        if self.dequantized.is_empty() {
            return;
        }
        let (numel, file): (usize, usize) = self
            .dequantized
            .values()
            .fold((0, 0), |(n, f), &(a, b)| (n + a, f + b));
        let dense = numel * self.dtype.bytes_per_elem();
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        log::warn!(
            "{}: some {} weights could not stay quantized (stacked with float tensors, or a \
             layer without a quantized kernel): {} weights dequantized to {:?} at load, {:.1} \
             MiB instead of {:.1} MiB (+{:.1} MiB)",
            self.files.path().display(),
            self.dequantized
                .keys()
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
            numel,
            self.dtype,
            mib(dense),
            mib(file),
            mib(dense.saturating_sub(file)),
        );
    }

    fn path(&self) -> PathBuf {
        self.files.path().to_path_buf()
    }

    fn raw(&self, name: &str) -> Result<RawTensor, LoadError> {
        self.read.borrow_mut().insert(name.to_string());
        self.files.source().tensor(name)
    }

    /// The tensor as f32 with exactly `shape`.
    fn f32(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let t = self.checked(name, shape)?;
        self.widened(t)
    }

    /// Counts `bytes` of the file as loaded and reports progress.
    fn loaded(&mut self, bytes: usize) {
        self.done += bytes;
        (self.progress)(self.done, self.total);
    }

    /// `t` dequantized to f32, counted as loaded.
    fn widened(&mut self, t: RawTensor) -> Result<Vec<f32>, ModelError> {
        let v = t.to_f32()?;
        if t.dtype.block_len() != 1 {
            let e = self.dequantized.entry(t.dtype.format().name).or_default();
            e.0 += v.len();
            e.1 += t.data.len();
        }
        self.loaded(t.data.len());
        Ok(v)
    }

    /// The tensor as stored, after checking it has exactly `shape` and only finite values.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<RawTensor, ModelError> {
        let t = self.raw(name)?;
        // GGUF stores 1-D tensors and HF may store [1, n]-style shapes: compare element counts
        // for vectors, exact shapes for matrices. (A product that overflows matches nothing.)
        let ok = if shape.len() == 1 {
            Some(t.numel()) == shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
        } else {
            t.shape == shape
        };
        if !ok {
            return Err(LoadError::Config {
                path: self.path(),
                msg: format!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    t.shape, shape
                ),
            }
            .into());
        }
        // A NaN or infinity in a weight poisons every logit downstream; refuse it by name.
        if let Some(at) = first_non_finite(t.dtype, &t.data) {
            return Err(LoadError::NonFinite {
                path: self.path(),
                tensor: name.to_string(),
                at,
            }
            .into());
        }
        Ok(t)
    }

    /// A norm weight or bias, uploaded as f32.
    fn vector(&mut self, name: &str, len: usize) -> Result<GpuTensor, ModelError> {
        let v = self.floats(name, len)?;
        Ok(GpuTensor::from_f32(
            self.ctx,
            name,
            &v,
            &[len],
            WeightDType::F32,
        )?)
    }

    /// A norm weight with `offset` added to each element (Hugging Face Gemma's `1 + w`).
    fn norm(&mut self, name: &str, len: usize, offset: f32) -> Result<GpuTensor, ModelError> {
        let mut v = self.floats(name, len)?;
        if offset != 0.0 {
            v.iter_mut().for_each(|w| *w += offset);
        }
        Ok(GpuTensor::from_f32(
            self.ctx,
            name,
            &v,
            &[len],
            WeightDType::F32,
        )?)
    }

    /// Several vectors end to end in one (the q, k and v biases of a fused projection).
    fn vectors(&mut self, label: &str, parts: &[(&str, usize)]) -> Result<GpuTensor, ModelError> {
        let mut v = Vec::new();
        for (name, len) in parts {
            v.extend(self.floats(name, *len)?);
        }
        Ok(GpuTensor::from_f32(
            self.ctx,
            label,
            &v,
            &[v.len()],
            WeightDType::F32,
        )?)
    }

    /// A norm weight or bias as f32: stored as floats (llama.cpp writes them as F32; a
    /// quantized one is a broken file, not a format to support).
    fn floats(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.checked(name, &[len])?;
        if t.dtype.block_len() != 1 {
            return Err(LoadError::UnexpectedTensorType {
                path: self.path(),
                tensor: name.to_string(),
                found: t.dtype,
                expected: "a norm weight or bias must be F32, F16 or BF16",
            }
            .into());
        }
        self.widened(t)
    }

    /// Rows of several (rows_i, cols) tensors stacked into one matrix; kept quantized when
    /// they all share one quantized GGUF type.
    fn stacked(
        &mut self,
        label: &str,
        names: &[(&str, usize)],
        cols: usize,
    ) -> Result<GpuMatrix, ModelError> {
        let raws = names
            .iter()
            .map(|(name, r)| self.checked(name, &[*r, cols]))
            .collect::<Result<Vec<_>, _>>()?;
        let dtype = raws[0].dtype;
        if QuantFormat::of(dtype).is_some() && raws.iter().all(|t| t.dtype == dtype) {
            let rows = names.iter().map(|(_, r)| r).sum();
            let mut bytes = Vec::with_capacity(raws.iter().map(|t| t.data.len()).sum());
            for t in &raws {
                bytes.extend_from_slice(&t.data);
            }
            drop(raws);
            let mut m = GpuMatrix::upload_quantized(self.ctx, label, &bytes, dtype, rows, cols)?;
            self.loaded(bytes.len());
            if self.keep_host {
                m.host = vec![HostRows {
                    dtype,
                    rows,
                    cols,
                    data: bytes,
                }];
            }
            return Ok(m);
        }
        // Quantized in several types (Q4_K_M: Q and K in Q4_K, V in Q6_K): each tensor keeps
        // its own, as parts of one matrix.
        if raws.iter().all(|t| QuantFormat::of(t.dtype).is_some()) {
            let mut parts = Vec::with_capacity(raws.len());
            for (t, (name, rows)) in raws.iter().zip(names) {
                let mut m =
                    GpuMatrix::upload_quantized(self.ctx, name, &t.data, t.dtype, *rows, cols)?;
                self.loaded(t.data.len());
                if self.keep_host {
                    m.host = vec![HostRows {
                        dtype: t.dtype,
                        rows: *rows,
                        cols,
                        data: t.data.to_vec(),
                    }];
                }
                parts.push(m);
            }
            return Ok(GpuMatrix::stack(label, parts)?);
        }
        drop(raws);
        self.stacked_dense(label, names, cols)
    }

    /// [`Uploader::stacked`], always dequantized to the dense storage type.
    fn stacked_dense(
        &mut self,
        label: &str,
        names: &[(&str, usize)],
        cols: usize,
    ) -> Result<GpuMatrix, ModelError> {
        let mut data = Vec::new();
        let mut rows = 0;
        for (name, r) in names {
            data.extend(self.f32(name, &[*r, cols])?);
            rows += r;
        }
        self.dense(label, &data, rows, cols)
    }

    /// Dense rows uploaded in the storage type (and kept on the host when asked).
    fn dense(
        &self,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<GpuMatrix, ModelError> {
        let mut m = GpuMatrix::upload(self.ctx, label, data, rows, cols, self.dtype)?;
        if self.keep_host {
            m.host = vec![HostRows::dense(data, rows, cols, self.dtype)];
        }
        Ok(m)
    }

    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<GpuMatrix, ModelError> {
        self.stacked(name, &[(name, rows)], cols)
    }

    /// A GPT-2 Conv1D weight stored (in, out): transposed to (out, in).
    fn conv1d(&mut self, name: &str, inp: usize, out: usize) -> Result<GpuMatrix, ModelError> {
        let v = self.f32(name, &[inp, out])?;
        let mut t = vec![0f32; v.len()];
        for i in 0..inp {
            for o in 0..out {
                t[o * inp + i] = v[i * out + o];
            }
        }
        self.dense(name, &t, out, inp)
    }
}

/// Loads every weight of `files` onto the GPU. `progress(done, total)` is called after each
/// tensor with the bytes of the file's tensors loaded so far and in all.
/// `cfg` must agree with the files' tensors (it does when it came from
/// [`ModelFiles::config`]; it is checked again, cheaply, so no caller's config can size the
/// layer list or any upload beyond what the files hold).
pub fn load_weights(
    ctx: &GpuContext,
    files: &ModelFiles,
    cfg: &ModelConfig,
    dtype: WeightDType,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ModelWeights, ModelError> {
    load_weights_with(ctx, files, cfg, dtype, false, progress)
}

/// [`load_weights`], keeping each matrix's rows on the host too when `keep_host`
/// ([`GpuMatrix::host`]: what a CPU forward of the same model reads).
pub(crate) fn load_weights_with(
    ctx: &GpuContext,
    files: &ModelFiles,
    cfg: &ModelConfig,
    dtype: WeightDType,
    keep_host: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ModelWeights, ModelError> {
    check_config(files, cfg)?;
    let source = files.source();
    let total = source
        .tensor_names()
        .iter()
        .filter_map(|n| source.tensor_byte_len(n))
        .sum();
    let mut up = Uploader {
        ctx,
        files,
        dtype,
        arch_name: format!("{:?}", cfg.arch),
        done: 0,
        total,
        progress,
        read: Default::default(),
        dequantized: Default::default(),
        keep_host,
    };
    let (d, v) = (cfg.hidden_size, cfg.vocab_size);
    let weights = match cfg.arch {
        Architecture::Gpt2 => load_gpt2(&mut up, cfg, d, v),
        _ => load_decoder(&mut up, cfg, d, v),
    }?;
    up.check_all_read()?;
    up.warn_dequantized();
    // Tensors that change nothing (see IGNORED) were never read: the weights are all there.
    let total = up.total;
    (up.progress)(total, total);
    Ok(weights)
}

/// The RoPE decoders (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3): which tensors a layer
/// has follows from the config.
fn load_decoder(
    up: &mut Uploader,
    cfg: &ModelConfig,
    d: usize,
    v: usize,
) -> Result<ModelWeights, ModelError> {
    let (q, kv, f) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    let names = Naming::new(up.files, cfg.arch);
    let fused = cfg.arch == Architecture::Phi3;
    let embed = up.matrix(&names.embed(), v, d)?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let n = |role| names.role(i, role);
        let norm = |up: &mut Uploader, role| -> Result<Norm, ModelError> {
            Ok(Norm {
                w: up.norm(&n(role), d, cfg.norm_weight_offset)?,
                b: None,
            })
        };
        let attn_norm = norm(up, Role::AttnNorm)?;
        let qkv = if fused {
            up.matrix(&n(Role::Qkv), q + 2 * kv, d)?
        } else {
            up.stacked(
                &format!("layer{i}.wqkv"),
                &[(&n(Role::Q), q), (&n(Role::K), kv), (&n(Role::V), kv)],
                d,
            )?
        };
        let qkv_bias = if cfg.qkv_bias {
            Some(up.vectors(
                &format!("layer{i}.qkv bias"),
                &[
                    (&n(Role::QBias), q),
                    (&n(Role::KBias), kv),
                    (&n(Role::VBias), kv),
                ],
            )?)
        } else {
            None
        };
        let (q_norm, k_norm) = if cfg.qk_norm {
            let hd = cfg.head_dim;
            (
                Some(up.norm(&n(Role::QNorm), hd, cfg.norm_weight_offset)?),
                Some(up.norm(&n(Role::KNorm), hd, cfg.norm_weight_offset)?),
            )
        } else {
            (None, None)
        };
        let o = up.matrix(&n(Role::O), d, q)?;
        let post_attn_norm = cfg
            .sandwich_norms
            .then(|| norm(up, Role::PostAttnNorm))
            .transpose()?;
        let mlp_norm = norm(up, Role::MlpNorm)?;
        let gate_up = if fused {
            up.matrix(&n(Role::GateUp), 2 * f, d)?
        } else {
            up.stacked(
                &format!("layer{i}.w_gate_up"),
                &[(&n(Role::Gate), f), (&n(Role::Up), f)],
                d,
            )?
        };
        let down = up.matrix(&n(Role::Down), d, f)?;
        let post_mlp_norm = cfg
            .sandwich_norms
            .then(|| norm(up, Role::PostMlpNorm))
            .transpose()?;
        layers.push(LayerWeights {
            attn_norm,
            qkv: Linear {
                w: qkv,
                b: qkv_bias,
            },
            q_norm,
            k_norm,
            o: Linear { w: o, b: None },
            post_attn_norm,
            mlp_norm,
            up: Linear {
                w: gate_up,
                b: None,
            },
            down: Linear { w: down, b: None },
            post_mlp_norm,
        });
    }
    let final_norm = Norm {
        w: up.norm(
            &names.global("output_norm.weight", "model.norm.weight"),
            d,
            cfg.norm_weight_offset,
        )?,
        b: None,
    };
    let head_name = names.global("output.weight", "lm_head.weight");
    let lm_head = if cfg.tie_word_embeddings || !up.files.source().has_tensor(&head_name) {
        None
    } else {
        Some(up.matrix(&head_name, v, d)?)
    };
    let rope_freq_factors = rope_factors(up, cfg)?;
    Ok(ModelWeights {
        embed,
        pos_embed: None,
        layers,
        final_norm,
        lm_head,
        rope_freq_factors,
        dtype: up.dtype,
    })
}

/// The per-pair RoPE divisors that come with the weights: Llama 3's scaling in GGUF
/// (`rope_freqs.weight`), or LongRoPE's short or long set (config.json's, or the GGUF's
/// `rope_factors_short.weight` / `rope_factors_long.weight`, both read and checked), long
/// iff the engine's context `cfg.max_context` exceeds the original one.
fn rope_factors(up: &mut Uploader, cfg: &ModelConfig) -> Result<Option<Vec<f32>>, ModelError> {
    let Some(rope) = cfg.rope.as_ref() else {
        return Ok(None);
    };
    let pairs = rope.rotary_dim / 2;
    let long = rope.scaling.longrope_uses_long(cfg.max_context);
    match &rope.scaling {
        RopeScaling::FreqFactors => Ok(Some(up.f32("rope_freqs.weight", &[pairs])?)),
        RopeScaling::LongRope {
            factors: Some(f), ..
        } => Ok(Some(if long {
            f.long.clone()
        } else {
            f.short.clone()
        })),
        RopeScaling::LongRope { factors: None, .. } => {
            let mut sets = Vec::with_capacity(2);
            for name in ["rope_factors_short.weight", "rope_factors_long.weight"] {
                let set = up.f32(name, &[pairs])?;
                // A zero divisor is an infinite frequency (`up.f32` refused NaN and inf).
                if let Some(x) = set.iter().find(|x| **x <= 0.0) {
                    return Err(LoadError::Config {
                        path: up.path(),
                        msg: format!(
                            "tensor `{name}` holds {x}; LongRoPE factors must be positive"
                        ),
                    }
                    .into());
                }
                sets.push(set);
            }
            Ok(sets.into_iter().nth(usize::from(long)))
        }
        _ => Ok(None),
    }
}

fn load_gpt2(
    up: &mut Uploader,
    cfg: &ModelConfig,
    d: usize,
    v: usize,
) -> Result<ModelWeights, ModelError> {
    let f = cfg.intermediate_size;
    let names = Naming::new(up.files, cfg.arch);
    let gguf = names.is_gguf();
    // The quantized embedding gather has no position table: GPT-2 keeps its table dense.
    let embed_name = names.embed();
    let embed = up.stacked_dense(&embed_name, &[(&embed_name, v)], d)?;
    // The table may have more rows than the engine's context (`--max-model-len`): the first
    // `max_context` are the ones its positions reach.
    let pos_name = names.pos_embed();
    let rows = up
        .files
        .source()
        .tensor_shape(&pos_name)
        .and_then(|s| s.first().copied())
        .unwrap_or(0);
    let pos = up.f32(&pos_name, &[rows.max(cfg.max_context), d])?;
    let pos_embed = Some(GpuTensor::from_f32(
        up.ctx,
        "wpe",
        &pos[..cfg.max_context * d],
        &[cfg.max_context, d],
        up.dtype,
    )?);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let n = |gguf: &str, hf: &str| names.layer(i, gguf, hf);
        let ln1_w = up.vector(&n("attn_norm.weight", "ln_1.weight"), d)?;
        let ln1_b = up.vector(&n("attn_norm.bias", "ln_1.bias"), d)?;
        let (w_qkv, w_o, w_fc, w_proj);
        if gguf {
            w_qkv = up.matrix(&n("attn_qkv.weight", ""), 3 * d, d)?;
            w_o = up.matrix(&n("attn_output.weight", ""), d, d)?;
            w_fc = up.matrix(&n("ffn_up.weight", ""), f, d)?;
            w_proj = up.matrix(&n("ffn_down.weight", ""), d, f)?;
        } else {
            w_qkv = up.conv1d(&n("", "attn.c_attn.weight"), d, 3 * d)?;
            w_o = up.conv1d(&n("", "attn.c_proj.weight"), d, d)?;
            w_fc = up.conv1d(&n("", "mlp.c_fc.weight"), d, f)?;
            w_proj = up.conv1d(&n("", "mlp.c_proj.weight"), f, d)?;
        }
        let b_qkv = up.vector(&n("attn_qkv.bias", "attn.c_attn.bias"), 3 * d)?;
        let b_o = up.vector(&n("attn_output.bias", "attn.c_proj.bias"), d)?;
        let ln2_w = up.vector(&n("ffn_norm.weight", "ln_2.weight"), d)?;
        let ln2_b = up.vector(&n("ffn_norm.bias", "ln_2.bias"), d)?;
        let b_fc = up.vector(&n("ffn_up.bias", "mlp.c_fc.bias"), f)?;
        let b_proj = up.vector(&n("ffn_down.bias", "mlp.c_proj.bias"), d)?;
        layers.push(LayerWeights {
            attn_norm: Norm {
                w: ln1_w,
                b: Some(ln1_b),
            },
            qkv: Linear {
                w: w_qkv,
                b: Some(b_qkv),
            },
            o: Linear {
                w: w_o,
                b: Some(b_o),
            },
            mlp_norm: Norm {
                w: ln2_w,
                b: Some(ln2_b),
            },
            up: Linear {
                w: w_fc,
                b: Some(b_fc),
            },
            down: Linear {
                w: w_proj,
                b: Some(b_proj),
            },
            q_norm: None,
            k_norm: None,
            post_attn_norm: None,
            post_mlp_norm: None,
        });
    }
    let final_norm_w = up.vector(&names.global("output_norm.weight", "ln_f.weight"), d)?;
    let final_norm_b = Some(up.vector(&names.global("output_norm.bias", "ln_f.bias"), d)?);
    let lm_head = if gguf && up.files.source().has_tensor("output.weight") {
        Some(up.matrix("output.weight", v, d)?)
    } else {
        None
    };
    Ok(ModelWeights {
        embed,
        pos_embed,
        layers,
        final_norm: Norm {
            w: final_norm_w,
            b: final_norm_b,
        },
        lm_head,
        rope_freq_factors: None,
        dtype: up.dtype,
    })
}
