//! [`ModelConfig`] from a Hugging Face `config.json`.
//!
//! Each family's keys as transformers reads them (same defaults). A value wllm does not
//! implement and that would change what is computed (an unknown RoPE type, a bias, another
//! activation) is refused by name, never ignored; keys that change nothing are ignored.

use std::path::Path;

use super::config::caps::*;
use super::config::{
    Architecture, LongRopeFactors, MlpActivation, ModelConfig, RopeConfig, RopeScaling, RopeStyle,
    capped, resolve_head_dim,
};
use super::rope::{longrope_attention_factor, yarn_mscale};
use crate::loader::LoadError;
use crate::loader::hf::HfModelDir;

impl ModelConfig {
    /// Reads a Hugging Face `config.json` (see the module docs). Hugging Face checkpoints
    /// rotate halves ([`RopeStyle::Half`]).
    pub fn from_hf(dir: &HfModelDir) -> Result<ModelConfig, LoadError> {
        let path = dir.path.join("config.json");
        let c = Json {
            v: &dir.config,
            path: &path,
        };
        let cfg = match Architecture::of_hf(dir)? {
            Architecture::Gpt2 => gpt2(&c)?,
            arch => decoder(&c, arch)?,
        };
        cfg.validate(&path)?;
        Ok(cfg)
    }
}

fn gpt2(c: &Json) -> Result<ModelConfig, LoadError> {
    let hidden_size = c.size("n_embd", MAX_HIDDEN)?;
    let num_heads = c.size("n_head", MAX_HEADS)?;
    c.expect_str("activation_function", &["gelu_new", "gelu_pytorch_tanh"])?;
    c.expect_false("scale_attn_by_inverse_layer_idx")?;
    let head_dim = resolve_head_dim(None, hidden_size, num_heads, c.path)?;
    let num_layers = c.size("n_layer", MAX_LAYERS)?;
    Ok(ModelConfig {
        arch: Architecture::Gpt2,
        vocab_size: c.size("vocab_size", MAX_VOCAB)?,
        hidden_size,
        num_layers,
        num_heads,
        num_kv_heads: num_heads,
        head_dim,
        intermediate_size: match c.opt_size("n_inner", MAX_INTERMEDIATE)? {
            Some(n) => n,
            None => hidden_size
                .checked_mul(4)
                .ok_or_else(|| c.err("n_embd is too large".into()))?,
        },
        max_context: c.size("n_positions", MAX_CONTEXT)?,
        norm_eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-5) as f32,
        rope: None,
        qkv_bias: true,
        qk_norm: false,
        mlp_activation: MlpActivation::GeluTanh,
        sandwich_norms: false,
        norm_weight_offset: 0.0,
        embed_scale: None,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        attn_softcap: None,
        final_softcap: None,
        layer_windows: vec![None; num_layers],
        // GPT2LMHeadModel always ties its LM head to wte.
        tie_word_embeddings: true,
    })
}

/// The pre-norm RoPE decoders: Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3.
fn decoder(c: &Json, arch: Architecture) -> Result<ModelConfig, LoadError> {
    use Architecture as A;
    let gemma = matches!(arch, A::Gemma2 | A::Gemma3);
    let hidden_size = c.size("hidden_size", MAX_HIDDEN)?;
    let num_heads = c.size("num_attention_heads", MAX_HEADS)?;
    let num_layers = c.size("num_hidden_layers", MAX_LAYERS)?;
    let head_dim = resolve_head_dim(
        c.opt_size("head_dim", MAX_HEAD_DIM)?,
        hidden_size,
        num_heads,
        c.path,
    )?;
    let max_context = c
        .opt_size("max_position_embeddings", MAX_CONTEXT)?
        .unwrap_or(2048);

    // The MLP activation: Gemma's configs say `hidden_activation` (older ones `hidden_act`).
    let mlp_activation = if gemma {
        for k in ["hidden_activation", "hidden_act"] {
            c.expect_str(k, &["gelu_pytorch_tanh", "gelu_tanh"])?;
        }
        MlpActivation::GeluTanh
    } else {
        c.expect_str("hidden_act", &["silu"])?;
        MlpActivation::Silu
    };
    // Biases: Qwen2 has q/k/v biases by construction; elsewhere a bias is refused.
    let qkv_bias = arch == A::Qwen2;
    if arch != A::Qwen2 {
        c.expect_false("attention_bias")?;
    }
    c.expect_false("mlp_bias")?;

    let rope = rope(c, arch, head_dim, max_context)?;

    // Sliding windows: per layer from `layer_types`, else each family's own rule.
    let window = c.opt_size("sliding_window", usize::MAX)?;
    let layer_windows = match (c.get("layer_types"), window) {
        (Some(types), _) => {
            let types = types
                .as_array()
                .filter(|t| t.len() == num_layers)
                .ok_or_else(|| {
                    c.err(format!(
                        "`layer_types` is not a list of {num_layers} layer types"
                    ))
                })?;
            types
                .iter()
                .map(|t| match (t.as_str(), window) {
                    (Some("full_attention"), _) => Ok(None),
                    (Some("sliding_attention"), Some(w)) => Ok(Some(w)),
                    (Some("sliding_attention"), None) => {
                        Err(c.err("a `sliding_attention` layer without `sliding_window`".into()))
                    }
                    _ => Err(c.err(format!("layer type {t} is not supported"))),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        (None, None) => vec![None; num_layers],
        (None, Some(w)) => (0..num_layers)
            .map(|i| {
                let sliding = match arch {
                    A::Mistral | A::Phi3 => true,
                    A::Qwen2 | A::Qwen3 => {
                        c.opt_bool("use_sliding_window")?.unwrap_or(false)
                            && i >= c.opt_size("max_window_layers", usize::MAX)?.unwrap_or(0)
                    }
                    // Even layers slide (transformers' Gemma2Config).
                    A::Gemma2 => i % 2 == 0,
                    A::Gemma3 => {
                        let pattern = c
                            .opt_size("sliding_window_pattern", MAX_LAYERS)?
                            .or(c.opt_size("_sliding_window_pattern", MAX_LAYERS)?)
                            .unwrap_or(6);
                        (i + 1) % pattern != 0
                    }
                    A::Llama | A::Gpt2 => false,
                };
                Ok(sliding.then_some(w))
            })
            .collect::<Result<Vec<_>, LoadError>>()?,
    };

    let attn_scale = match (gemma, c.opt_f64("query_pre_attn_scalar")?) {
        (true, Some(s)) => (1.0 / s.sqrt()) as f32,
        (false, Some(_)) => {
            return Err(c.err(format!(
                "`query_pre_attn_scalar` is not used by {arch:?} models"
            )));
        }
        _ => 1.0 / (head_dim as f32).sqrt(),
    };
    let softcap = |k: &str| -> Result<Option<f32>, LoadError> {
        match (gemma, c.opt_f64(k)?) {
            (_, None) => Ok(None),
            (true, Some(v)) => Ok(Some(v as f32)),
            (false, Some(_)) => Err(c.err(format!("`{k}` is not supported for {arch:?} models"))),
        }
    };
    Ok(ModelConfig {
        arch,
        vocab_size: c.size("vocab_size", MAX_VOCAB)?,
        hidden_size,
        num_layers,
        num_heads,
        num_kv_heads: c
            .opt_size("num_key_value_heads", MAX_HEADS)?
            .unwrap_or(num_heads),
        head_dim,
        intermediate_size: c.size("intermediate_size", MAX_INTERMEDIATE)?,
        max_context,
        norm_eps: c
            .opt_f64("rms_norm_eps")?
            .unwrap_or(if arch == A::Phi3 { 1e-5 } else { 1e-6 }) as f32,
        rope: Some(rope),
        qkv_bias,
        qk_norm: matches!(arch, A::Qwen3 | A::Gemma3),
        mlp_activation,
        sandwich_norms: gemma,
        norm_weight_offset: if gemma { 1.0 } else { 0.0 },
        // transformers rounds sqrt(hidden) to the activations' type: f32 here.
        embed_scale: gemma.then(|| (hidden_size as f64).sqrt() as f32),
        attn_scale,
        attn_softcap: softcap("attn_logit_softcapping")?,
        final_softcap: softcap("final_logit_softcapping")?,
        layer_windows,
        tie_word_embeddings: c.opt_bool("tie_word_embeddings")?.unwrap_or(gemma),
    })
}

/// The RoPE parameters as transformers sees them: the legacy `rope_scaling` object, when
/// present, replaces `rope_parameters` (its `rope_scaling or rope_parameters`), except that
/// Gemma 3 merges it into its full-attention parameters (`first` wins over `second`).
#[derive(Clone, Copy)]
struct Params<'a> {
    first: Option<&'a serde_json::Value>,
    second: Option<&'a serde_json::Value>,
}

impl<'a> Params<'a> {
    fn get(&self, k: &str) -> Option<&'a serde_json::Value> {
        let of =
            |p: Option<&'a serde_json::Value>| p.and_then(|p| p.get(k)).filter(|v| !v.is_null());
        of(self.first).or_else(|| of(self.second))
    }

    /// `rope_type`, or `type` in older configs; "default" when neither is given.
    fn kind(&self) -> &'a str {
        self.get("rope_type")
            .or_else(|| self.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default")
    }
}

/// What a RoPE scaling's defaults depend on, besides its own keys.
struct RopeContext {
    arch: Architecture,
    rotary_dim: usize,
    /// `max_position_embeddings`.
    max_position: usize,
}

/// RoPE from `rope_parameters` (transformers 5) or `rope_theta` / `rope_scaling` (older
/// configs); Gemma 3 keys its parameters by layer type.
fn rope(
    c: &Json,
    arch: Architecture,
    head_dim: usize,
    max_position: usize,
) -> Result<RopeConfig, LoadError> {
    let gemma3 = arch == Architecture::Gemma3;
    let legacy = c
        .get("rope_scaling")
        .filter(|s| s.as_object().is_some_and(|o| !o.is_empty()));
    let params = match (gemma3, legacy) {
        (false, Some(s)) => Some(s),
        _ => c.get("rope_parameters"),
    };
    let per_type = params.and_then(|p| p.get("full_attention")).is_some();
    let (global, local) = if per_type {
        let p = params.unwrap_or(&serde_json::Value::Null);
        (p.get("full_attention"), p.get("sliding_attention"))
    } else {
        (params, None)
    };
    let global = if gemma3 {
        Params {
            first: legacy,
            second: global,
        }
    } else {
        Params {
            first: global,
            second: None,
        }
    };
    let theta_of = |p: Params, top: &str, default: f64| -> Result<f64, LoadError> {
        match (p.get("rope_theta"), c.opt_f64(top)?) {
            (Some(v), _) => v
                .as_f64()
                .ok_or_else(|| c.err(format!("`rope_theta` is {v}, expected a number"))),
            (None, Some(t)) => Ok(t),
            (None, None) => Ok(default),
        }
    };
    let theta = theta_of(global, "rope_theta", 10000.0)?;
    let local_params = Params {
        first: local,
        second: None,
    };
    let local_theta = match (per_type, arch) {
        (true, _) => Some(theta_of(local_params, "rope_local_base_freq", 10000.0)?),
        (false, Architecture::Gemma3) => {
            Some(c.opt_f64("rope_local_base_freq")?.unwrap_or(10000.0))
        }
        _ => None,
    };
    if local.is_some() && local_params.kind() != "default" {
        return Err(c.err("RoPE scaling on the sliding-window layers is not supported".into()));
    }
    let factor = match global.get("partial_rotary_factor") {
        Some(v) => Some(
            v.as_f64()
                .ok_or_else(|| c.err("`partial_rotary_factor` is not a number".into()))?,
        ),
        None => c.opt_f64("partial_rotary_factor")?,
    };
    let rotary_dim = match factor {
        None => head_dim,
        Some(f) if f > 0.0 && f <= 1.0 && arch == Architecture::Phi3 => {
            (head_dim as f64 * f) as usize
        }
        Some(1.0) => head_dim,
        Some(f) => {
            return Err(c.err(format!(
                "`partial_rotary_factor` {f} is not supported for {arch:?} models"
            )));
        }
    };
    let context = RopeContext {
        arch,
        rotary_dim,
        max_position,
    };
    Ok(RopeConfig {
        theta: theta as f32,
        local_theta: local_theta.map(|t| t as f32),
        style: RopeStyle::Half,
        rotary_dim,
        scaling: scaling_of(c, global, &context)?,
    })
}

/// A RoPE scaling, with transformers' defaults (`_compute_*_parameters`).
fn scaling_of(c: &Json, p: Params, x: &RopeContext) -> Result<RopeScaling, LoadError> {
    let mut kind = p.kind();
    // Phi3Config reads the old names `su` and `yarn` as LongRoPE.
    if x.arch == Architecture::Phi3 && matches!(kind, "su" | "yarn") {
        kind = "longrope";
    }
    let opt_num = |k: &str| -> Result<Option<f64>, LoadError> {
        match p.get(k) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(n) if n.is_finite() => Ok(Some(n)),
                _ => Err(c.err(format!(
                    "RoPE scaling `{kind}`: `{k}` is {v}, expected a number"
                ))),
            },
        }
    };
    let positive = |k: &str, v: f64| -> Result<f64, LoadError> {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(c.err(format!(
                "RoPE scaling `{kind}`: `{k}` = {v} is not a positive number"
            )))
        }
    };
    let num = |k: &str| -> Result<f32, LoadError> {
        let v = opt_num(k)?
            .ok_or_else(|| c.err(format!("RoPE scaling `{kind}` needs a number `{k}`")))?;
        Ok(positive(k, v)? as f32)
    };
    // transformers' standardize_rope_params: the top-level `original_max_position_embeddings`
    // when the config has one (Phi3Config always does: 4096 by default), else the
    // parameters', else `max_position_embeddings`.
    let original = || -> Result<usize, LoadError> {
        let key = "original_max_position_embeddings";
        match (c.opt_size(key, MAX_CONTEXT)?, x.arch, p.get(key)) {
            (Some(n), _, _) => Ok(n),
            (None, Architecture::Phi3, _) => Ok(4096),
            (None, _, Some(v)) => match v.as_u64() {
                Some(n) => capped(n, key, MAX_CONTEXT, c.path),
                None => Err(c.err(format!("`{key}` is {v}, expected a positive integer"))),
            },
            (None, _, None) => Ok(x.max_position),
        }
    };
    // `factor`, or (absent) the ratio of the model's context to the original one.
    let factor_or_ratio = |original: usize| -> Result<f64, LoadError> {
        match opt_num("factor")? {
            Some(f) => positive("factor", f),
            None => Ok(x.max_position as f64 / original as f64),
        }
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => {
            let (low_freq_factor, high_freq_factor) =
                (num("low_freq_factor")?, num("high_freq_factor")?);
            if high_freq_factor <= low_freq_factor {
                return Err(c.err(
                    "RoPE scaling `llama3`: high_freq_factor must exceed low_freq_factor".into(),
                ));
            }
            Ok(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor,
                high_freq_factor,
                original_context: original()?,
            })
        }
        "yarn" => {
            let original_context = original()?;
            let factor = factor_or_ratio(original_context)?;
            let attention_factor = match opt_num("attention_factor")? {
                Some(a) => positive("attention_factor", a)?,
                None => match (opt_num("mscale")?, opt_num("mscale_all_dim")?) {
                    (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                        yarn_mscale(factor, m) / yarn_mscale(factor, all)
                    }
                    _ => yarn_mscale(factor, 1.0),
                },
            };
            // `beta_fast or 32`, `beta_slow or 1`: 0 means the default too.
            let beta = |k: &str, default: f64| -> Result<f64, LoadError> {
                match opt_num(k)? {
                    None => Ok(default),
                    Some(0.0) => Ok(default),
                    Some(b) => positive(k, b),
                }
            };
            let truncate = match p.get("truncate") {
                None => true,
                Some(v) => v.as_bool().ok_or_else(|| {
                    c.err(format!(
                        "RoPE scaling `yarn`: `truncate` is {v}, expected true or false"
                    ))
                })?,
            };
            Ok(RopeScaling::Yarn {
                factor: factor as f32,
                original_context,
                beta_fast: beta("beta_fast", 32.0)?,
                beta_slow: beta("beta_slow", 1.0)?,
                truncate,
                attention_factor: attention_factor as f32,
            })
        }
        "longrope" => {
            let pairs = x.rotary_dim / 2;
            let list = |k: &str| -> Result<Vec<f32>, LoadError> {
                let v = p.get(k).ok_or_else(|| {
                    c.err(format!(
                        "RoPE scaling `longrope` needs `{k}` (a list of {pairs} numbers)"
                    ))
                })?;
                let items = v.as_array().ok_or_else(|| {
                    c.err(format!(
                        "RoPE scaling `longrope`: `{k}` is not a list of numbers"
                    ))
                })?;
                if items.len() != pairs {
                    return Err(c.err(format!(
                        "RoPE scaling `longrope`: `{k}` has {} entries; {} rotated dimensions \
                         need {pairs}",
                        items.len(),
                        x.rotary_dim
                    )));
                }
                items
                    .iter()
                    .map(|f| match f.as_f64() {
                        Some(f) => Ok(positive(k, f)? as f32),
                        None => Err(c.err(format!(
                            "RoPE scaling `longrope`: `{k}` holds {f}, not a number"
                        ))),
                    })
                    .collect()
            };
            let factors = LongRopeFactors {
                short: list("short_factor")?,
                long: list("long_factor")?,
            };
            let original_context = original()?;
            let attention_factor = match opt_num("attention_factor")? {
                Some(a) => positive("attention_factor", a)?,
                None => {
                    longrope_attention_factor(factor_or_ratio(original_context)?, original_context)
                }
            };
            Ok(RopeScaling::LongRope {
                factors: Some(factors),
                original_context,
                attention_factor: attention_factor as f32,
            })
        }
        other => Err(c.err(format!("RoPE scaling `{other}` is not supported"))),
    }
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
