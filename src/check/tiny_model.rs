//! The random models `wllm check` runs its model-level check on when no `--model` is given:
//! small Hugging Face checkpoints written to a temporary directory, so the check needs no
//! download. Awkward sizes (no width a multiple of 32, a vocabulary of 515) and, between them,
//! most ops the graph has: grouped-query attention, q/k norms, sandwich norms, a sliding
//! window, two RoPE tables, GELU-tanh, the embedding scale.

use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use crate::sampling::Rng;

/// One built-in model: its name and how to write it.
pub(super) struct TinyModel {
    pub name: &'static str,
    config: serde_json::Value,
    tensors: Vec<(String, Vec<usize>, Init)>,
}

/// How a tensor's values are drawn.
#[derive(Clone, Copy)]
enum Init {
    /// Normal, mean 0, this standard deviation.
    Normal(f32),
    /// A norm weight: this center ± 0.1 (Llama's weight multiplies, Gemma's adds to 1).
    Norm(f32),
}
use Init::{Norm, Normal};

const VOCAB: usize = 515;

/// Llama with GQA (6 query heads over 2 KV heads of 16), two layers.
fn llama() -> TinyModel {
    let (d, f, heads, kv_heads, hd, layers) = (96, 200, 6, 2, 16, 2);
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": f,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hd,
        "hidden_act": "silu",
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "vocab_size": VOCAB,
        "torch_dtype": "float32",
    });
    let shape = Shape {
        d,
        f,
        heads,
        kv_heads,
        hd,
        layers,
    };
    let tensors = decoder_tensors(&shape, 1.0, 1.0, 0.07, &[]);
    TinyModel {
        name: "built-in tiny llama (random, GQA)",
        config,
        tensors,
    }
}

/// Gemma 3: q/k norms, sandwich norms, a sliding-window layer with its own RoPE table,
/// GELU-tanh, the √d embedding scale.
fn gemma3() -> TinyModel {
    let (d, f, heads, kv_heads, hd, layers) = (80, 136, 4, 1, 32, 2);
    let config = json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": d,
        "intermediate_size": f,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hd,
        "hidden_activation": "gelu_pytorch_tanh",
        "layer_types": ["sliding_attention", "full_attention"],
        "sliding_window": 12,
        "query_pre_attn_scalar": hd,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}
        },
        "attn_logit_softcapping": null,
        "final_logit_softcapping": null,
        "tie_word_embeddings": false,
        "vocab_size": VOCAB,
        "torch_dtype": "float32",
    });
    let shape = Shape {
        d,
        f,
        heads,
        kv_heads,
        hd,
        layers,
    };
    // Sandwich norms and per-head q/k norms on top of the usual ones.
    let extra = [
        ("pre_feedforward_layernorm.weight", d),
        ("post_feedforward_layernorm.weight", d),
        ("self_attn.q_norm.weight", hd),
        ("self_attn.k_norm.weight", hd),
    ];
    let tensors = decoder_tensors(&shape, 0.1, 0.0, 0.08, &extra);
    TinyModel {
        name: "built-in tiny gemma3 (random, q/k norms, window)",
        config,
        tensors,
    }
}

/// A decoder's sizes.
struct Shape {
    d: usize,
    f: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    layers: usize,
}

/// The tensors of a Hugging Face Llama-layout decoder: the embedding (`embed_std`), an
/// untied LM head, norms around `norm_center`, the attention and MLP projections
/// (`down_std` for the MLP's output), and per layer the `extra` norm weights (name, length).
fn decoder_tensors(
    s: &Shape,
    embed_std: f32,
    norm_center: f32,
    down_std: f32,
    extra: &[(&str, usize)],
) -> Vec<(String, Vec<usize>, Init)> {
    let (d, f, q, kv) = (s.d, s.f, s.heads * s.hd, s.kv_heads * s.hd);
    let mut tensors = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![VOCAB, d],
            Normal(embed_std),
        ),
        ("lm_head.weight".into(), vec![VOCAB, d], Normal(0.1)),
        ("model.norm.weight".into(), vec![d], Norm(norm_center)),
    ];
    for l in 0..s.layers {
        let p = |name: &str| format!("model.layers.{l}.{name}");
        tensors.extend([
            (p("input_layernorm.weight"), vec![d], Norm(norm_center)),
            (
                p("post_attention_layernorm.weight"),
                vec![d],
                Norm(norm_center),
            ),
            (p("self_attn.q_proj.weight"), vec![q, d], Normal(0.1)),
            (p("self_attn.k_proj.weight"), vec![kv, d], Normal(0.1)),
            (p("self_attn.v_proj.weight"), vec![kv, d], Normal(0.1)),
            (p("self_attn.o_proj.weight"), vec![d, q], Normal(0.1)),
            (p("mlp.gate_proj.weight"), vec![f, d], Normal(0.1)),
            (p("mlp.up_proj.weight"), vec![f, d], Normal(0.1)),
            (p("mlp.down_proj.weight"), vec![d, f], Normal(down_std)),
        ]);
        tensors.extend(
            extra
                .iter()
                .map(|(name, n)| (p(name), vec![*n], Norm(norm_center))),
        );
    }
    tensors
}

pub(super) fn all() -> Vec<TinyModel> {
    vec![llama(), gemma3()]
}

/// A directory removed when dropped.
pub(super) struct TempModel {
    pub dir: PathBuf,
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl TinyModel {
    /// Writes config.json and model.safetensors (weights from a fixed seed) under a new
    /// directory of the system's temporary directory.
    pub fn write(&self, seed: u64) -> std::io::Result<TempModel> {
        let dir = std::env::temp_dir().join(format!(
            "wllm-check-{}-{}-{seed}",
            std::process::id(),
            self.name.split_whitespace().nth(2).unwrap_or("model")
        ));
        std::fs::create_dir_all(&dir)?;
        let model = TempModel { dir };
        std::fs::write(
            model.dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config)?,
        )?;
        write_weights(&model.dir.join("model.safetensors"), &self.tensors, seed)?;
        Ok(model)
    }
}

fn write_weights(
    path: &Path,
    tensors: &[(String, Vec<usize>, Init)],
    seed: u64,
) -> std::io::Result<()> {
    let mut rng = Rng::new(seed);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, init)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let (u, v) = (rng.next_f64().max(1e-300), rng.next_f64());
                    let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                    match *init {
                        Normal(std) => (z * std as f64) as f32,
                        Norm(center) => center + (0.1 * z) as f32,
                    }
                })
                .collect();
            (
                name.clone(),
                shape.clone(),
                bytemuck::cast_slice(&values).to_vec(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok((name.clone(), view))
        })
        .collect::<std::io::Result<_>>()?;
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| std::io::Error::other(e.to_string()))
}
