//! [`ModelConfig`] from a GGUF file's `{arch}.*` metadata, as llama.cpp reads it.
//!
//! llama.cpp's converter permutes Llama's q/k rows, so Llama files rotate interleaved pairs
//! ([`RopeStyle::Interleaved`]); the other families keep Hugging Face's halves. Gemma norms
//! arrive with their `1 +` already added. The LM head is tied when the file has no
//! `output.weight`. Keys wllm does not implement that change the math (an unknown RoPE
//! scaling, experts, a non-zero soft-cap on a family without one) are refused by name.

use super::config::caps::*;
use super::config::{
    Architecture, MlpActivation, ModelConfig, RopeConfig, RopeScaling, RopeStyle, capped,
    resolve_head_dim,
};
use super::rope::{longrope_attention_factor, yarn_mscale};
use crate::loader::gguf::GgufFile;
use crate::loader::{LoadError, MetaError};

impl ModelConfig {
    /// Reads the hyper-parameters of a GGUF file (see the module docs).
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, LoadError> {
        use Architecture as A;
        let meta_err = |source| LoadError::Meta {
            path: file.path.clone(),
            source,
        };
        let err = |msg: String| LoadError::Config {
            path: file.path.clone(),
            msg,
        };
        let arch_name = file.architecture()?;
        let arch =
            Architecture::from_gguf(arch_name).ok_or_else(|| LoadError::UnknownArchitecture {
                path: file.path.clone(),
                arch: arch_name.to_string(),
            })?;
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
        let opt_f64 = |k: &str| m.opt(m.get_f64(&key(k))).map_err(meta_err);

        // Mixtral-style files say `llama` with experts; their FFN tensors are not the ones
        // this loader reads, so refuse them by name rather than as a missing tensor.
        if let Some(n) = m.opt(m.get_u64(&key("expert_count"))).map_err(meta_err)? {
            if n > 0 {
                return Err(err(format!(
                    "`{}` = {n}: mixture-of-experts models are not supported",
                    key("expert_count")
                )));
            }
        }

        let hidden_size = size("embedding_length", MAX_HIDDEN)?;
        let num_heads = size("attention.head_count", MAX_HEADS)?;
        let num_kv_heads = opt_size("attention.head_count_kv", MAX_HEADS)?.unwrap_or(num_heads);
        let head_dim = resolve_head_dim(
            opt_size("attention.key_length", MAX_HEAD_DIM)?,
            hidden_size,
            num_heads,
            &file.path,
        )?;
        if let Some(v) = opt_size("attention.value_length", MAX_HEAD_DIM)? {
            if v != head_dim {
                return Err(err(format!(
                    "value heads of {v} ≠ key heads of {head_dim} are not supported"
                )));
            }
        }
        let num_layers = size("block_count", MAX_LAYERS)?;
        let eps_key = match arch {
            A::Gpt2 => key("attention.layer_norm_epsilon"),
            _ => key("attention.layer_norm_rms_epsilon"),
        };
        let norm_eps = m.get_f64(&eps_key).map_err(meta_err)?;

        let vocab_size = match opt_size("vocab_size", MAX_VOCAB)? {
            Some(v) => v,
            None => match m.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()) {
                Some(tokens) => tokens.len(),
                None => file
                    .tensor_info("token_embd.weight")
                    .and_then(|t| t.shape.first().copied())
                    .ok_or_else(|| {
                        err(format!(
                            "vocabulary size unknown: no {}, no tokenizer.ggml.tokens, \
                             no token_embd.weight",
                            key("vocab_size")
                        ))
                    })?,
            },
        };

        let max_context = size("context_length", MAX_CONTEXT)?;
        let rope = if arch == A::Gpt2 {
            None
        } else {
            let rotary_dim = opt_size("rope.dimension_count", MAX_HEAD_DIM)?.unwrap_or(head_dim);
            let theta = opt_f64("rope.freq_base")?.unwrap_or(10000.0) as f32;
            Some(RopeConfig {
                theta,
                // llama.cpp's Gemma 3: the sliding layers keep base 10000.
                local_theta: (arch == A::Gemma3).then_some(10000.0),
                style: match arch {
                    A::Llama | A::Mistral => RopeStyle::Interleaved,
                    _ => RopeStyle::Half,
                },
                rotary_dim,
                scaling: rope_scaling(file, arch_name, max_context)?,
            })
        };

        let gemma = matches!(arch, A::Gemma2 | A::Gemma3);
        let window = opt_size("attention.sliding_window", usize::MAX).or_else(|e| match e {
            // Phi-3 files write 0 for "no window".
            LoadError::Config { .. }
                if m.get_u64(&key("attention.sliding_window")).ok() == Some(0) =>
            {
                Ok(None)
            }
            e => Err(e),
        })?;
        let layer_windows = (0..num_layers)
            .map(|i| {
                let sliding = match arch {
                    A::Gemma2 => i % 2 == 0,
                    // llama.cpp's Gemma 3: every sixth layer is global.
                    A::Gemma3 => (i + 1) % 6 != 0,
                    A::Phi3 => true,
                    _ => false,
                };
                window.filter(|_| sliding)
            })
            .collect();
        let softcap = |k: &str| -> Result<Option<f32>, LoadError> {
            match opt_f64(k)? {
                None => Ok(None),
                Some(0.0) => Ok(None),
                Some(v) if gemma => Ok(Some(v as f32)),
                Some(v) => Err(err(format!("`{}` = {v} is not supported", key(k)))),
            }
        };

        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: size("feed_forward_length", MAX_INTERMEDIATE)?,
            max_context,
            norm_eps: norm_eps as f32,
            rope,
            qkv_bias: matches!(arch, A::Gpt2 | A::Qwen2),
            qk_norm: matches!(arch, A::Qwen3 | A::Gemma3),
            mlp_activation: if gemma || arch == A::Gpt2 {
                MlpActivation::GeluTanh
            } else {
                MlpActivation::Silu
            },
            sandwich_norms: gemma,
            norm_weight_offset: 0.0,
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt() as f32),
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_softcap: softcap("attn_logit_softcapping")?,
            final_softcap: softcap("final_logit_softcapping")?,
            layer_windows,
            tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        };
        cfg.validate(&file.path)?;
        Ok(cfg)
    }
}

/// The RoPE scaling of a GGUF file, with llama.cpp's semantics (`llama-model.cpp`'s hparams,
/// `llama-context.cpp`'s YaRN attention factor, ggml's `rope_yarn`):
/// - `rope_freqs.weight`: Llama 3's per-pair divisors.
/// - `rope_factors_long.weight` + `rope_factors_short.weight` (Phi-3's LongRoPE, type absent
///   or `longrope`): cos and sin times `rope.scaling.attn_factor` (llama.cpp's converter
///   always writes it; when absent, the converter's sqrt(1 + ln(s) / ln(original)) with
///   s = context_length / original_context_length — where llama.cpp itself would use 1).
/// - `yarn`: `rope.scaling.factor`, `original_context_length` (default context_length),
///   ramp betas 32 / 1, cos and sin times 0.1 · ln(factor) + 1 times
///   `rope.scaling.attn_factor` (default 1): what llama.cpp computes, and transformers too
///   for the same config.json. Refused where the two disagree: `yarn_attn_factor` (llama.cpp
///   replaces it with the formula, transformers uses it) and `yarn_beta_fast` / `_slow` other
///   than 32 / 1 (llama.cpp reads them for a few other architectures only, transformers
///   uses them); `yarn_ext_factor` ≠ 1 and `yarn_log_multiplier` ≠ 0 (DeepSeek's knobs).
fn rope_scaling(
    file: &GgufFile,
    arch_name: &str,
    context_length: usize,
) -> Result<RopeScaling, LoadError> {
    let m = &file.metadata;
    let key = |k: &str| format!("{arch_name}.{k}");
    let meta_err = |source| LoadError::Meta {
        path: file.path.clone(),
        source,
    };
    let err = |msg: String| LoadError::Config {
        path: file.path.clone(),
        msg,
    };
    let opt_f64 = |k: &str| m.opt(m.get_f64(&key(k))).map_err(meta_err);
    let positive = |k: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(err(format!("`{}` = {v} is not a positive number", key(k))))
        }
    };
    let original = || -> Result<usize, LoadError> {
        let k = key("rope.scaling.original_context_length");
        match m.opt(m.get_u64(&k)).map_err(meta_err)? {
            Some(v) => capped(v, &k, MAX_CONTEXT, &file.path),
            None => Ok(context_length),
        }
    };
    let kind = m
        .opt(m.get_str(&key("rope.scaling.type")))
        .map_err(meta_err)?
        .filter(|t| *t != "none");
    let freqs = file.tensor_info("rope_freqs.weight").is_some();
    let long = file.tensor_info("rope_factors_long.weight").is_some();
    let short = file.tensor_info("rope_factors_short.weight").is_some();
    if freqs && (long || short || kind.is_some()) {
        return Err(err(
            "both `rope_freqs.weight` and another RoPE scaling are given".into(),
        ));
    }
    if long || short || kind == Some("longrope") {
        if kind.is_some_and(|k| k != "longrope") {
            return Err(err(format!(
                "LongRoPE factor tensors with `{}` = {kind:?}",
                key("rope.scaling.type")
            )));
        }
        for (present, t) in [
            (long, "rope_factors_long.weight"),
            (short, "rope_factors_short.weight"),
        ] {
            if !present {
                return Err(err(format!("LongRoPE scaling without the `{t}` tensor")));
            }
        }
        // llama.cpp would stretch positions by 1 / factor on top of the LongRoPE factors.
        if let Some(f) = opt_f64("rope.scaling.factor")?.filter(|f| *f != 1.0) {
            return Err(err(format!(
                "`{}` = {f} with LongRoPE is not supported",
                key("rope.scaling.factor")
            )));
        }
        let original_context = original()?;
        let attention_factor = match opt_f64("rope.scaling.attn_factor")? {
            Some(a) => positive("rope.scaling.attn_factor", a)?,
            None => longrope_attention_factor(
                context_length as f64 / original_context as f64,
                original_context,
            ),
        };
        return Ok(RopeScaling::LongRope {
            factors: None,
            original_context,
            attention_factor: attention_factor as f32,
        });
    }
    match kind {
        None if freqs => Ok(RopeScaling::FreqFactors),
        None => Ok(RopeScaling::None),
        Some("linear") => {
            let factor = opt_f64("rope.scaling.factor")?.unwrap_or(1.0);
            Ok(RopeScaling::Linear {
                factor: positive("rope.scaling.factor", factor)? as f32,
            })
        }
        Some("yarn") => {
            let factor_key = "rope.scaling.factor";
            let factor = opt_f64(factor_key)?
                .ok_or_else(|| meta_err(MetaError::Missing(key(factor_key))))?;
            let factor = positive(factor_key, factor)?;
            let mscale = yarn_mscale(factor, 1.0);
            if let Some(a) = opt_f64("rope.scaling.yarn_attn_factor")? {
                if (a - mscale).abs() > 1e-6 * mscale {
                    return Err(err(format!(
                        "`{}` = {a} is not supported (llama.cpp replaces it with                          0.1·ln(factor) + 1 = {mscale}; transformers would use it)",
                        key("rope.scaling.yarn_attn_factor")
                    )));
                }
            }
            for (k, neutral) in [
                ("rope.scaling.yarn_ext_factor", 1.0),
                ("rope.scaling.yarn_log_multiplier", 0.0),
                ("rope.scaling.yarn_beta_fast", 32.0),
                ("rope.scaling.yarn_beta_slow", 1.0),
            ] {
                if let Some(v) = opt_f64(k)?.filter(|v| *v != neutral) {
                    return Err(err(format!("`{}` = {v} is not supported", key(k))));
                }
            }
            let attn = match opt_f64("rope.scaling.attn_factor")? {
                Some(a) => positive("rope.scaling.attn_factor", a)?,
                None => 1.0,
            };
            Ok(RopeScaling::Yarn {
                factor: factor as f32,
                original_context: original()?,
                beta_fast: 32.0,
                beta_slow: 1.0,
                truncate: true,
                attention_factor: (mscale * attn) as f32,
            })
        }
        Some(kind) => Err(err(format!(
            "`{}` = `{kind}` is not supported",
            key("rope.scaling.type")
        ))),
    }
}
