//! The architectures wllm runs, and how each is named in Hugging Face configs and GGUF files.

use crate::loader::LoadError;
use crate::loader::hf::HfModelDir;

/// A transformer family. What the families compute differently is data on
/// [`super::ModelConfig`]; this names the family and where its files say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// RMSNorm, RoPE, grouped-query attention, SwiGLU (Llama 1–3, SmolLM2).
    Llama,
    /// Llama with sliding-window attention.
    Mistral,
    /// Llama with q/k/v biases.
    Qwen2,
    /// Llama with per-head RMSNorm on q and k and an explicit head width.
    Qwen3,
    /// Llama with fused qkv and gate|up projections and partial rotary.
    Phi3,
    /// GeGLU, `1 + w` norms around attention and MLP, embedding scale, soft-capping,
    /// sliding window on alternate layers.
    Gemma2,
    /// Gemma 2 without soft-capping, with q/k norm and a RoPE base per layer type.
    Gemma3,
    /// LayerNorm, learned positions, gelu_new MLP, biases everywhere (GPT-2 family).
    Gpt2,
}

/// Where a family is named: `architectures[0]` and `model_type` in config.json, and
/// `general.architecture` in GGUF.
struct Names {
    arch: Architecture,
    hf_classes: &'static [&'static str],
    model_types: &'static [&'static str],
    gguf: &'static str,
}

const NAMES: &[Names] = &[
    Names {
        arch: Architecture::Llama,
        hf_classes: &["LlamaForCausalLM"],
        model_types: &["llama"],
        gguf: "llama",
    },
    Names {
        arch: Architecture::Mistral,
        hf_classes: &["MistralForCausalLM"],
        model_types: &["mistral"],
        // llama.cpp's converter writes Mistral as `llama` (without its window).
        gguf: "llama",
    },
    Names {
        arch: Architecture::Qwen2,
        hf_classes: &["Qwen2ForCausalLM"],
        model_types: &["qwen2"],
        gguf: "qwen2",
    },
    Names {
        arch: Architecture::Qwen3,
        hf_classes: &["Qwen3ForCausalLM"],
        model_types: &["qwen3"],
        gguf: "qwen3",
    },
    Names {
        arch: Architecture::Phi3,
        hf_classes: &["Phi3ForCausalLM"],
        model_types: &["phi3"],
        gguf: "phi3",
    },
    Names {
        arch: Architecture::Gemma2,
        hf_classes: &["Gemma2ForCausalLM"],
        model_types: &["gemma2"],
        gguf: "gemma2",
    },
    Names {
        arch: Architecture::Gemma3,
        hf_classes: &["Gemma3ForCausalLM"],
        model_types: &["gemma3_text"],
        gguf: "gemma3",
    },
    Names {
        arch: Architecture::Gpt2,
        hf_classes: &["GPT2LMHeadModel"],
        model_types: &["gpt2"],
        gguf: "gpt2",
    },
];

impl Architecture {
    fn names(self) -> &'static Names {
        NAMES
            .iter()
            .find(|n| n.arch == self)
            .expect("every architecture has a row in NAMES")
    }

    /// The `general.architecture` of its GGUF files (the prefix of their hyper-parameter keys).
    pub fn gguf_name(self) -> &'static str {
        self.names().gguf
    }

    /// The family of a GGUF `general.architecture` (Mistral files say `llama`).
    pub fn from_gguf(name: &str) -> Option<Architecture> {
        NAMES
            .iter()
            .find(|n| n.gguf == name && n.arch != Architecture::Mistral)
            .map(|n| n.arch)
    }

    /// The family of a Hugging Face directory: its config.json's `architectures[0]`, else
    /// its `model_type`; an error naming them where wllm knows neither.
    pub fn of_hf(dir: &HfModelDir) -> Result<Architecture, LoadError> {
        let (class, model_type) = dir.architecture_names();
        Architecture::from_hf(class, model_type).ok_or_else(|| LoadError::UnknownArchitecture {
            path: dir.path.join("config.json"),
            arch: class
                .or(model_type)
                .unwrap_or("(no architectures or model_type)")
                .to_string(),
        })
    }

    /// The family of a config.json's `architectures[0]`, else its `model_type`.
    pub fn from_hf(class: Option<&str>, model_type: Option<&str>) -> Option<Architecture> {
        match class {
            Some(c) => NAMES.iter().find(|n| n.hf_classes.contains(&c)),
            None => NAMES
                .iter()
                .find(|n| model_type.is_some_and(|m| n.model_types.contains(&m))),
        }
        .map(|n| n.arch)
    }

    /// Positions enter through rotary embeddings (all but GPT-2's learned table).
    pub fn uses_rope(self) -> bool {
        self != Architecture::Gpt2
    }
}
