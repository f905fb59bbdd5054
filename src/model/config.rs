//! Architecture hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

pub use super::arch::Architecture;
pub use crate::gpu::kernels::rope::RopeStyle;

/// Everything the forward pass needs to know about a model: its sizes, and what its family
/// computes differently (read from the files, never assumed from the family alone).
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
    /// Longest sequence the engine runs with (positions beyond it are refused): the files'
    /// context (`max_position_embeddings`, `context_length`), or less under
    /// [`crate::ModelOptions::max_model_len`] (which also picks LongRoPE's factors).
    pub max_context: usize,
    /// RMSNorm / LayerNorm epsilon.
    pub norm_eps: f32,
    /// Rotary positions; `None` for a learned position table (GPT-2).
    pub rope: Option<RopeConfig>,
    /// Biases on the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// The activation of the gated MLP: `act(gate) · up`.
    pub mlp_activation: MlpActivation,
    /// Norms after attention and after the MLP too, before each residual add (Gemma 2/3).
    pub sandwich_norms: bool,
    /// Added to every RMSNorm weight at load: Hugging Face Gemma stores `w` for `x · (1 + w)`
    /// (llama.cpp's converter adds the 1 itself).
    pub norm_weight_offset: f32,
    /// The token embedding is multiplied by this (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f32>,
    /// Attention scores are `q · k · attn_scale` (1 / sqrt(head_dim) unless the file says).
    pub attn_scale: f32,
    /// Attention scores become `cap · tanh(s / cap)` (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Final logits become `cap · tanh(l / cap)` (Gemma 2).
    pub final_softcap: Option<f32>,
    /// A layer with a window attends only to the last `window` positions (itself included).
    pub layer_windows: Vec<Option<usize>>,
    /// LM head shares the token embedding matrix.
    pub tie_word_embeddings: bool,
}

/// How positions rotate q and k.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base θ of the frequencies.
    pub theta: f32,
    /// θ of the sliding-window layers, where it differs (Gemma 3).
    pub local_theta: Option<f32>,
    pub style: RopeStyle,
    /// Leading dimensions of each head that rotate (even; the rest pass through).
    pub rotary_dim: usize,
    pub scaling: RopeScaling,
}

/// How the frequencies are stretched for contexts past the training length.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (HF `linear`).
    Linear {
        factor: f32,
    },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth ramp
    /// between (HF `llama3`).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: usize,
    },
    /// Each frequency divided by its factor from the GGUF's `rope_freqs.weight` (how
    /// llama.cpp's converter stores Llama 3's scaling); the factors come with the weights.
    FreqFactors,
    /// YaRN (HF `yarn`, GGUF `rope.scaling.type = yarn`): the frequencies that turn more than
    /// `beta_fast` times over the original context are kept, those that turn fewer than
    /// `beta_slow` times are divided by `factor`, with a linear ramp over the pairs between
    /// (transformers' `find_correction_range`); cos and sin are multiplied by
    /// `attention_factor`.
    Yarn {
        factor: f32,
        /// Original (pre-YaRN) context: sets where the ramp lies.
        original_context: usize,
        /// Rotations at which the ramp starts (fast) and ends (slow): 32 and 1 by default.
        beta_fast: f64,
        beta_slow: f64,
        /// Ramp bounds rounded outwards to whole pairs (transformers' `truncate`, default
        /// true; llama.cpp always does).
        truncate: bool,
        /// Multiplies cos and sin (transformers' `attention_factor`, by default
        /// 0.1 · ln(factor) + 1).
        attention_factor: f32,
    },
    /// LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini): pair i's frequency divided by a per-pair
    /// factor, the `long` set when the context the engine runs with exceeds
    /// `original_context`, else the `short` set — chosen once at load (as llama.cpp does),
    /// never per request, so a sequence's logits do not depend on its length. Cos and sin are
    /// multiplied by `attention_factor` in both cases (as transformers does).
    LongRope {
        /// The factors from config.json; `None` in a GGUF, where they come with the weights
        /// (`rope_factors_short.weight`, `rope_factors_long.weight`).
        factors: Option<LongRopeFactors>,
        original_context: usize,
        attention_factor: f32,
    },
}

/// LongRoPE's per-pair frequency divisors, `rotary_dim / 2` each.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRopeFactors {
    pub short: Vec<f32>,
    pub long: Vec<f32>,
}

impl RopeScaling {
    /// Multiplies RoPE's cos and sin (YaRN's and LongRoPE's attention factor; 1 otherwise).
    pub fn attention_factor(&self) -> f32 {
        match self {
            RopeScaling::Yarn {
                attention_factor, ..
            }
            | RopeScaling::LongRope {
                attention_factor, ..
            } => *attention_factor,
            _ => 1.0,
        }
    }

    /// Whether LongRoPE uses its long factors when the engine runs with `context` tokens.
    pub fn longrope_uses_long(&self, context: usize) -> bool {
        matches!(self, RopeScaling::LongRope { original_context, .. } if context > *original_context)
    }
}

/// The gated MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpActivation {
    /// SwiGLU: silu(gate) · up.
    Silu,
    /// GeGLU with the tanh approximation: gelu_tanh(gate) · up (Gemma).
    GeluTanh,
}

impl ModelConfig {
    /// Whether positions enter through rotary embeddings (else through a learned table).
    pub fn uses_rope(&self) -> bool {
        self.rope.is_some()
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
use crate::loader::LoadError;
use std::path::Path;

impl ModelConfig {
    /// Refuses sizes no forward pass can run with, and any past wllm's [`caps`] (the keys
    /// were checked as they were read; this also covers derived sizes such as a head width
    /// of hidden / heads).
    pub(super) fn validate(&self, path: &Path) -> Result<(), LoadError> {
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
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(err(format!(
                "{} attention heads is not a multiple of {} KV heads",
                self.num_heads, self.num_kv_heads
            )));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(err(format!(
                "norm epsilon {} is not a positive number",
                self.norm_eps
            )));
        }
        if let Some(r) = &self.rope {
            // RoPE rotates pairs of a head's dimensions.
            if r.rotary_dim % 2 != 0 || r.rotary_dim == 0 || r.rotary_dim > self.head_dim {
                return Err(err(format!(
                    "RoPE rotates {} of {} head dimensions; it needs an even count, at most the head width",
                    r.rotary_dim, self.head_dim
                )));
            }
            for theta in std::iter::once(r.theta).chain(r.local_theta) {
                if !(theta.is_finite() && theta > 0.0) {
                    return Err(err(format!("RoPE theta {theta} is not a positive number")));
                }
            }
            r.scaling.validate(r, &err)?;
        }
        let positive = |name: &str, v: Option<f32>| match v {
            Some(x) if !(x.is_finite() && x > 0.0) => {
                Err(err(format!("{name} {x} is not a positive number")))
            }
            _ => Ok(()),
        };
        positive("attention scale", Some(self.attn_scale))?;
        positive("embedding scale", self.embed_scale)?;
        positive("attention soft-cap", self.attn_softcap)?;
        positive("final soft-cap", self.final_softcap)?;
        if self.layer_windows.len() != self.num_layers {
            return Err(err(format!(
                "{} layer window entries for {} layers",
                self.layer_windows.len(),
                self.num_layers
            )));
        }
        if self.layer_windows.iter().flatten().any(|w| *w == 0) {
            return Err(err("a sliding window of 0 tokens".into()));
        }
        Ok(())
    }
}

/// A size read from `key`: 1..=`cap`, else an error naming the key.
pub(super) fn capped(v: u64, key: &str, cap: usize, path: &Path) -> Result<usize, LoadError> {
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
pub(super) fn resolve_head_dim(
    head_dim: Option<usize>,
    hidden: usize,
    heads: usize,
    path: &Path,
) -> Result<usize, LoadError> {
    if let Some(d) = head_dim {
        return Ok(d);
    }
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(LoadError::Config {
            path: path.to_path_buf(),
            msg: format!("hidden size {hidden} is not divisible by {heads} attention heads"),
        });
    }
    Ok(hidden / heads)
}

impl RopeScaling {
    /// YaRN's and LongRoPE's numbers must be usable: positive finite factors, one LongRoPE
    /// factor per rotated pair, a base above 1 for YaRN's ramp (it divides by ln θ).
    fn validate(
        &self,
        rope: &RopeConfig,
        err: &dyn Fn(String) -> LoadError,
    ) -> Result<(), LoadError> {
        let positive = |name: &str, x: f64| {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                Err(err(format!(
                    "RoPE scaling: {name} {x} is not a positive number"
                )))
            }
        };
        match self {
            RopeScaling::Yarn {
                factor,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => {
                positive("YaRN factor", f64::from(*factor))?;
                positive("YaRN beta_fast", *beta_fast)?;
                positive("YaRN beta_slow", *beta_slow)?;
                positive("YaRN attention factor", f64::from(*attention_factor))?;
                if rope.theta <= 1.0 {
                    return Err(err(format!(
                        "RoPE scaling: YaRN needs a RoPE theta above 1, not {}",
                        rope.theta
                    )));
                }
            }
            RopeScaling::LongRope {
                factors,
                attention_factor,
                ..
            } => {
                positive("LongRoPE attention factor", f64::from(*attention_factor))?;
                let pairs = rope.rotary_dim / 2;
                for (name, set) in factors
                    .iter()
                    .flat_map(|f| [("short", &f.short), ("long", &f.long)])
                {
                    if set.len() != pairs {
                        return Err(err(format!(
                            "RoPE scaling: {} LongRoPE {name} factors for {pairs} rotated pairs \
                             (rotary dimension {})",
                            set.len(),
                            rope.rotary_dim
                        )));
                    }
                    for x in set {
                        positive(&format!("LongRoPE {name} factor"), f64::from(*x))?;
                    }
                }
            }
            RopeScaling::None
            | RopeScaling::Linear { .. }
            | RopeScaling::Llama3 { .. }
            | RopeScaling::FreqFactors => {}
        }
        Ok(())
    }
}
