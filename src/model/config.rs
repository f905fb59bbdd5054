//! Architecture hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

/// The transformer families wllm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// RMSNorm, RoPE, grouped-query attention, SwiGLU (Llama, Mistral, SmolLM2).
    Llama,
    /// LayerNorm, learned positions, gelu_new MLP, biases everywhere (GPT-2 family).
    Gpt2,
}

impl Architecture {
    /// The `general.architecture` of its GGUF files (the prefix of their hyper-parameter keys).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Gpt2 => "gpt2",
        }
    }
}

pub use crate::gpu::kernels::rope::RopeStyle;

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Equals `num_heads` without grouped-query attention (always so for GPT-2).
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// MLP inner width (GPT-2: `n_inner`, default 4 × hidden).
    pub intermediate_size: usize,
    /// Longest sequence the model was trained for (positions beyond it are refused).
    pub max_context: usize,
    /// RMSNorm / LayerNorm epsilon.
    pub norm_eps: f32,
    /// RoPE base (llama only; ignored for GPT-2).
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    /// LM head shares the token embedding matrix.
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// Whether positions enter through rotary embeddings (else through a learned table).
    pub fn uses_rope(&self) -> bool {
        self.arch == Architecture::Llama
    }

    /// Width of the K (or V) projection: num_kv_heads × head_dim.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The attention geometry, as the forward graph takes it.
    pub fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// Width of the Q projection: num_heads × head_dim.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
}

/// The largest sizes wllm accepts from a model file. Every size in a file decides allocations
/// (the layer list, KV pool, activations, RoPE table), so each is bounded before anything is
/// allocated: a hostile file fails with an error naming its key, never an abort on a huge
/// allocation or size arithmetic that wraps. Each cap is several times the largest released
/// model's value (in brackets), so no real model meets one; with all of them, every product
/// of sizes the runtime forms (e.g. KV bytes per token: 2 · layers · kv_dim · 4 ≤ 2^33) fits
/// in a u64.
pub mod caps {
    /// Tokens of context (Llama 3.1: 2^17; Qwen2.5-1M: ~2^20).
    pub const MAX_CONTEXT: usize = 1 << 22;
    /// Transformer layers (Llama 3.1 405B: 126).
    pub const MAX_LAYERS: usize = 1024;
    /// Hidden width (Llama 3.1 405B: 16384).
    pub const MAX_HIDDEN: usize = 1 << 16;
    /// Query or KV heads (Llama 3.1 405B: 128).
    pub const MAX_HEADS: usize = 1024;
    /// Width of one head (Gemma 2: 256).
    pub const MAX_HEAD_DIM: usize = 1024;
    /// Vocabulary (Gemma 3: 262144); also keeps ids clear of the fed-token flag bit 2^31.
    pub const MAX_VOCAB: usize = 1 << 21;
    /// MLP inner width (Llama 3.1 405B: 53248).
    pub const MAX_INTERMEDIATE: usize = 1 << 18;
}

// ---------------------------------------------------------------------------------------------
// Parsing from GGUF metadata and Hugging Face config.json.

use caps::*;

use crate::gpu::graph::AttentionShape;
use crate::loader::gguf::GgufFile;
use crate::loader::hf::HfModelDir;
use crate::loader::{LoadError, MetaError};
use std::path::Path;

impl ModelConfig {
    /// Reads the `{arch}.*` hyper-parameters of a GGUF file.
    ///
    /// GGUF llama checkpoints have their Q/K rows permuted by the converter, so they rotate
    /// interleaved pairs ([`RopeStyle::Interleaved`]); the LM head is tied when the file has no
    /// `output.weight`.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, LoadError> {
        let meta_err = |source| LoadError::Meta {
            path: file.path.clone(),
            source,
        };
        let arch_name = file.architecture()?;
        let arch = match arch_name {
            "llama" => Architecture::Llama,
            "gpt2" => Architecture::Gpt2,
            other => {
                return Err(LoadError::UnknownArchitecture {
                    path: file.path.clone(),
                    arch: other.to_string(),
                });
            }
        };
        let m = &file.metadata;
        let key = |k: &str| format!("{arch_name}.{k}");
        let opt_size = |k: &str, cap: usize| -> Result<Option<usize>, LoadError> {
            let k = key(k);
            match m.opt(m.get_u64(&k)).map_err(meta_err)? {
                Some(v) => capped(v, &k, cap, &file.path).map(Some),
                None => Ok(None),
            }
        };
        let size = |k: &str, cap: usize| -> Result<usize, LoadError> {
            opt_size(k, cap)?.ok_or_else(|| meta_err(MetaError::Missing(key(k))))
        };

        if let Some(kind) = m
            .opt(m.get_str(&key("rope.scaling.type")))
            .map_err(meta_err)?
            .filter(|t| *t != "none")
        {
            return Err(LoadError::Config {
                path: file.path.clone(),
                msg: format!("RoPE scaling `{kind}` is not supported"),
            });
        }
        // Mixtral-style files say `llama` with experts; their FFN tensors are not the ones
        // this loader reads, so refuse them by name rather than as a missing tensor.
        if let Some(n) = m.opt(m.get_u64(&key("expert_count"))).map_err(meta_err)? {
            if n > 0 {
                return Err(LoadError::Config {
                    path: file.path.clone(),
                    msg: format!(
                        "`{}` = {n}: mixture-of-experts models are not supported",
                        key("expert_count")
                    ),
                });
            }
        }

        let hidden_size = size("embedding_length", MAX_HIDDEN)?;
        let num_heads = size("attention.head_count", MAX_HEADS)?;
        let num_kv_heads = opt_size("attention.head_count_kv", MAX_HEADS)?.unwrap_or(num_heads);
        let head_dim = opt_size("attention.key_length", MAX_HEAD_DIM)?;
        let eps_key = match arch {
            Architecture::Llama => key("attention.layer_norm_rms_epsilon"),
            Architecture::Gpt2 => key("attention.layer_norm_epsilon"),
        };
        let norm_eps = m.get_f64(&eps_key).map_err(meta_err)?;
        let rope_theta = m
            .opt(m.get_f64(&key("rope.freq_base")))
            .map_err(meta_err)?
            .unwrap_or(10000.0);

        let vocab_size = match opt_size("vocab_size", MAX_VOCAB)? {
            Some(v) => v,
            None => match m.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()) {
                Some(tokens) => tokens.len(),
                None => file
                    .tensor_info("token_embd.weight")
                    .and_then(|t| t.shape.first().copied())
                    .ok_or_else(|| LoadError::Config {
                        path: file.path.clone(),
                        msg: format!(
                            "vocabulary size unknown: no {}, no tokenizer.ggml.tokens, \
                             no token_embd.weight",
                            key("vocab_size")
                        ),
                    })?,
            },
        };

        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            num_layers: size("block_count", MAX_LAYERS)?,
            num_heads,
            num_kv_heads,
            head_dim: resolve_head_dim(head_dim, hidden_size, num_heads, &file.path)?,
            intermediate_size: size("feed_forward_length", MAX_INTERMEDIATE)?,
            max_context: size("context_length", MAX_CONTEXT)?,
            norm_eps: norm_eps as f32,
            rope_theta: rope_theta as f32,
            rope_style: RopeStyle::Interleaved,
            tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        };
        cfg.validate(&file.path)?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` (Llama/Mistral or GPT-2).
    ///
    /// Hugging Face llama weights rotate halves ([`RopeStyle::Half`]). Options that would change
    /// the math and that wllm does not implement (RoPE scaling, attention/MLP biases in llama,
    /// other activations) are refused rather than ignored.
    pub fn from_hf(dir: &HfModelDir) -> Result<ModelConfig, LoadError> {
        let path = dir.path.join("config.json");
        let c = Json {
            v: &dir.config,
            path: &path,
        };
        let cfg = match dir.architecture()? {
            Architecture::Llama => {
                let hidden_size = c.size("hidden_size", MAX_HIDDEN)?;
                let num_heads = c.size("num_attention_heads", MAX_HEADS)?;
                let mut max_context = c
                    .opt_size("max_position_embeddings", MAX_CONTEXT)?
                    .unwrap_or(2048);
                // Mistral's sliding window: within the window it equals full attention, so
                // capping the context at the window keeps the math exact (a window past the
                // cap is harmless: the context is the smaller of the two).
                if let Some(w) = c.opt_size("sliding_window", usize::MAX)? {
                    max_context = max_context.min(w);
                }
                c.expect_str("hidden_act", &["silu"])?;
                c.expect_false("attention_bias")?;
                c.expect_false("mlp_bias")?;
                if c.v.get("rope_scaling").is_some_and(|r| !r.is_null()) {
                    return Err(c.err("`rope_scaling` is not supported".into()));
                }
                let rope_params = c.v.get("rope_parameters");
                if let Some(t) = rope_params
                    .and_then(|p| p.get("rope_type"))
                    .and_then(|t| t.as_str())
                    .filter(|t| *t != "default")
                {
                    return Err(c.err(format!("RoPE type `{t}` is not supported")));
                }
                let rope_theta = match c.opt_f64("rope_theta")? {
                    Some(t) => t,
                    None => match rope_params.and_then(|p| p.get("rope_theta")) {
                        None => 10000.0,
                        Some(v) => v.as_f64().ok_or_else(|| {
                            c.err("`rope_parameters.rope_theta` is not a number".into())
                        })?,
                    },
                };
                ModelConfig {
                    arch: Architecture::Llama,
                    vocab_size: c.size("vocab_size", MAX_VOCAB)?,
                    hidden_size,
                    num_layers: c.size("num_hidden_layers", MAX_LAYERS)?,
                    num_heads,
                    num_kv_heads: c
                        .opt_size("num_key_value_heads", MAX_HEADS)?
                        .unwrap_or(num_heads),
                    head_dim: resolve_head_dim(
                        c.opt_size("head_dim", MAX_HEAD_DIM)?,
                        hidden_size,
                        num_heads,
                        &path,
                    )?,
                    intermediate_size: c.size("intermediate_size", MAX_INTERMEDIATE)?,
                    max_context,
                    norm_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
                    rope_theta: rope_theta as f32,
                    rope_style: RopeStyle::Half,
                    tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(false),
                }
            }
            Architecture::Gpt2 => {
                let hidden_size = c.size("n_embd", MAX_HIDDEN)?;
                let num_heads = c.size("n_head", MAX_HEADS)?;
                c.expect_str("activation_function", &["gelu_new", "gelu_pytorch_tanh"])?;
                c.expect_false("scale_attn_by_inverse_layer_idx")?;
                ModelConfig {
                    arch: Architecture::Gpt2,
                    vocab_size: c.size("vocab_size", MAX_VOCAB)?,
                    hidden_size,
                    num_layers: c.size("n_layer", MAX_LAYERS)?,
                    num_heads,
                    num_kv_heads: num_heads,
                    head_dim: resolve_head_dim(None, hidden_size, num_heads, &path)?,
                    intermediate_size: match c.opt_size("n_inner", MAX_INTERMEDIATE)? {
                        Some(n) => n,
                        None => hidden_size
                            .checked_mul(4)
                            .ok_or_else(|| c.err("n_embd is too large".into()))?,
                    },
                    max_context: c.size("n_positions", MAX_CONTEXT)?,
                    norm_eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32,
                    rope_theta: 10000.0,
                    rope_style: RopeStyle::Half,
                    // GPT2LMHeadModel always ties its LM head to wte.
                    tie_word_embeddings: true,
                }
            }
        };
        cfg.validate(&path)?;
        Ok(cfg)
    }

    /// Refuses sizes no forward pass can run with, and any past wllm's [`caps`] (the keys
    /// were checked as they were read; this also covers derived sizes such as a head width
    /// of hidden / heads).
    fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let err = |msg: String| LoadError::Config {
            path: path.to_path_buf(),
            msg,
        };
        for (name, v, cap) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("num_layers", self.num_layers, MAX_LAYERS),
            ("num_heads", self.num_heads, MAX_HEADS),
            ("num_kv_heads", self.num_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            (
                "intermediate_size",
                self.intermediate_size,
                MAX_INTERMEDIATE,
            ),
            ("max_context", self.max_context, MAX_CONTEXT),
        ] {
            if v == 0 {
                return Err(err(format!("{name} is 0")));
            }
            if v > cap {
                return Err(err(format!(
                    "{name} is {v}, more than wllm accepts ({cap})"
                )));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(err(format!(
                "{} attention heads is not a multiple of {} KV heads",
                self.num_heads, self.num_kv_heads
            )));
        }
        // RoPE rotates pairs of a head's dimensions: an odd width would leave one unrotated.
        if self.arch == Architecture::Llama && self.head_dim % 2 != 0 {
            return Err(err(format!(
                "head_dim {} is odd; RoPE needs pairs",
                self.head_dim
            )));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(err(format!(
                "norm epsilon {} is not a positive number",
                self.norm_eps
            )));
        }
        if self.arch == Architecture::Llama
            && !(self.rope_theta.is_finite() && self.rope_theta > 0.0)
        {
            return Err(err(format!(
                "RoPE theta {} is not a positive number",
                self.rope_theta
            )));
        }
        Ok(())
    }
}

/// A size read from `key`: 1..=`cap`, else an error naming the key.
fn capped(v: u64, key: &str, cap: usize, path: &Path) -> Result<usize, LoadError> {
    let err = |msg: String| LoadError::Config {
        path: path.to_path_buf(),
        msg,
    };
    match usize::try_from(v) {
        Ok(0) => Err(err(format!("`{key}` is 0"))),
        Ok(n) if n <= cap => Ok(n),
        _ => Err(err(format!(
            "`{key}` = {v} is more than wllm accepts (at most {cap})"
        ))),
    }
}

/// `head_dim` when given, else `hidden / heads`, which must then divide evenly.
fn resolve_head_dim(
    head_dim: Option<usize>,
    hidden: usize,
    heads: usize,
    path: &Path,
) -> Result<usize, LoadError> {
    if let Some(d) = head_dim {
        return Ok(d);
    }
    if heads == 0 || hidden % heads != 0 {
        return Err(LoadError::Config {
            path: path.to_path_buf(),
            msg: format!("hidden size {hidden} is not divisible by {heads} attention heads"),
        });
    }
    Ok(hidden / heads)
}

/// Typed reads of a `config.json` object; a `null` counts as absent.
struct Json<'a> {
    v: &'a serde_json::Value,
    path: &'a Path,
}

impl Json<'_> {
    fn err(&self, msg: String) -> LoadError {
        LoadError::Config {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    fn get(&self, k: &str) -> Option<&serde_json::Value> {
        self.v.get(k).filter(|v| !v.is_null())
    }

    /// A size in 1..=`cap`, or `None` when absent.
    fn opt_size(&self, k: &str, cap: usize) -> Result<Option<usize>, LoadError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => capped(n, k, cap, self.path).map(Some),
                None => Err(self.err(format!("`{k}` is {v}, expected a non-negative integer"))),
            },
        }
    }

    fn size(&self, k: &str, cap: usize) -> Result<usize, LoadError> {
        self.opt_size(k, cap)?
            .ok_or_else(|| self.err(format!("`{k}` is missing")))
    }

    fn opt_f64(&self, k: &str) -> Result<Option<f64>, LoadError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{k}` is {v}, expected a number"))),
        }
    }

    fn opt_bool(&self, k: &str) -> Result<Option<bool>, LoadError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{k}` is {v}, expected true or false"))),
        }
    }

    /// Absent is fine; present must be `false`.
    fn expect_false(&self, k: &str) -> Result<(), LoadError> {
        match self.opt_bool(k)? {
            Some(true) => Err(self.err(format!("`{k}: true` is not supported"))),
            _ => Ok(()),
        }
    }

    /// Absent is fine; present must be one of `allowed`.
    fn expect_str(&self, k: &str, allowed: &[&str]) -> Result<(), LoadError> {
        match self.get(k) {
            None => Ok(()),
            Some(v) => match v.as_str() {
                Some(s) if allowed.contains(&s) => Ok(()),
                _ => Err(self.err(format!(
                    "`{k}` = {v} is not supported (supported: {allowed:?})"
                ))),
            },
        }
    }
}
