//! Where each weight lives in a model's files, and the check that a config read from the
//! files' metadata agrees with the tensors actually there.
//!
//! The check runs in [`ModelFiles::config`], before anything is sized from the config: the
//! layer count must be the number of layers with tensors (indices 0..N-1, each present), and
//! every width must be a dimension of the tensor that has it (hidden and vocabulary from the
//! token embedding, the Q/K/MLP widths from layer 0's projections, GPT-2's context at most its
//! position table's rows: a context lowered by `--max-model-len` uses the first rows). A
//! file's sizes are then bounded by its own bytes as well as by [`super::config::caps`].
//! Cost: one pass over the tensor names, a few shape lookups.

use std::collections::BTreeSet;

use crate::loader::LoadError;
use crate::model::{Architecture, ModelConfig, ModelFiles};

/// How one model's tensors are named: llama.cpp's GGUF names, or the Hugging Face
/// checkpoint's. The loader and the check share it, so they read the same tensors.
pub(crate) struct Naming {
    gguf: bool,
    arch: Architecture,
    /// HF GPT-2 checkpoints name tensors with or without `transformer.`.
    hf_prefix: &'static str,
}

impl Naming {
    pub(crate) fn new(files: &ModelFiles, arch: Architecture) -> Naming {
        let gguf = files.is_gguf();
        let prefixed = arch == Architecture::Gpt2
            && !gguf
            && files.source().has_tensor("transformer.wte.weight");
        Naming {
            gguf,
            arch,
            hf_prefix: if prefixed { "transformer." } else { "" },
        }
    }

    pub(crate) fn is_gguf(&self) -> bool {
        self.gguf
    }

    /// A tensor outside the layers: `gguf` in a GGUF file, else `hf`.
    pub(crate) fn global(&self, gguf: &str, hf: &str) -> String {
        if self.gguf {
            gguf.to_string()
        } else {
            format!("{}{hf}", self.hf_prefix)
        }
    }

    /// Tensor `gguf` / `hf` of layer `i` (e.g. `blk.3.attn_q.weight`).
    pub(crate) fn layer(&self, i: usize, gguf: &str, hf: &str) -> String {
        let role = if self.gguf { gguf } else { hf };
        format!("{}{i}.{role}", self.layer_prefix())
    }

    /// The token embedding table, (vocab, hidden).
    pub(crate) fn embed(&self) -> String {
        match self.arch {
            Architecture::Gpt2 => self.global("token_embd.weight", "wte.weight"),
            _ => self.global("token_embd.weight", "model.embed_tokens.weight"),
        }
    }

    /// Tensor `role` of layer `i` in this model's files.
    pub(crate) fn role(&self, i: usize, role: Role) -> String {
        let (gguf, hf) = role.names(self.arch);
        self.layer(i, gguf, hf)
    }

    /// GPT-2's learned position table, (context, hidden).
    pub(crate) fn pos_embed(&self) -> String {
        self.global("position_embd.weight", "wpe.weight")
    }

    fn layer_prefix(&self) -> String {
        match (self.gguf, self.arch) {
            (true, _) => "blk.".into(),
            (false, Architecture::Gpt2) => format!("{}h.", self.hf_prefix),
            (false, _) => "model.layers.".into(),
        }
    }

    /// The key a size was read from, for error messages.
    fn key(&self, size: Size) -> String {
        let a = self.arch.gguf_name();
        let hf_llama = self.arch != Architecture::Gpt2;
        match (self.gguf, size) {
            (true, Size::Layers) => format!("`{a}.block_count`"),
            (true, Size::Hidden) => format!("`{a}.embedding_length`"),
            (true, Size::Vocab) => {
                format!(
                    "the vocabulary size (`{a}.vocab_size`, else the tokenizer.ggml.tokens count)"
                )
            }
            (true, Size::QDim) => format!("`{a}.attention.head_count` × the head width"),
            (true, Size::KvDim) => format!("`{a}.attention.head_count_kv` × the head width"),
            (true, Size::Inner) => format!("`{a}.feed_forward_length`"),
            (true, Size::Context) => format!("`{a}.context_length`"),
            (false, Size::Vocab) => "`vocab_size`".into(),
            (false, Size::QDim) => "`num_attention_heads` × `head_dim`".into(),
            (false, Size::KvDim) => "`num_key_value_heads` × `head_dim`".into(),
            (false, Size::Layers) if hf_llama => "`num_hidden_layers`".into(),
            (false, Size::Hidden) if hf_llama => "`hidden_size`".into(),
            (false, Size::Inner) if hf_llama => "`intermediate_size`".into(),
            (false, Size::Context) if hf_llama => "`max_position_embeddings`".into(),
            (false, Size::Layers) => "`n_layer`".into(),
            (false, Size::Hidden) => "`n_embd`".into(),
            (false, Size::Inner) => "`n_inner`".into(),
            (false, Size::Context) => "`n_positions`".into(),
        }
    }
}

/// A size of the config that some tensor's shape must show.
#[derive(Debug, Clone, Copy)]
enum Size {
    Layers,
    Hidden,
    Vocab,
    QDim,
    KvDim,
    Inner,
    Context,
}

/// Dimension `dim` of `tensor` must be `value` (the config's `size`).
struct DimCheck {
    tensor: String,
    dim: usize,
    size: Size,
    value: usize,
}

/// See the module docs.
pub(crate) fn check_config(files: &ModelFiles, cfg: &ModelConfig) -> Result<(), LoadError> {
    let names = Naming::new(files, cfg.arch);
    check_layers(files, cfg, &names)?;
    for c in dim_checks(cfg, &names) {
        let shape =
            files
                .source()
                .tensor_shape(&c.tensor)
                .ok_or_else(|| LoadError::MissingTensor {
                    path: files.path().to_path_buf(),
                    name: c.tensor.clone(),
                })?;
        // GPT-2's position table may hold more positions than the engine runs with.
        let agrees = match c.size {
            Size::Context => shape.get(c.dim).is_some_and(|&n| n >= c.value),
            _ => shape.get(c.dim) == Some(&c.value),
        };
        if !agrees {
            return Err(LoadError::Config {
                path: files.path().to_path_buf(),
                msg: format!(
                    "{} = {} disagrees with tensor `{}` of shape {shape:?}",
                    names.key(c.size),
                    c.value,
                    c.tensor
                ),
            });
        }
    }
    Ok(())
}

/// The layer count must be the number of distinct layer indices among the tensor names, and
/// those must be 0..N-1.
fn check_layers(files: &ModelFiles, cfg: &ModelConfig, names: &Naming) -> Result<(), LoadError> {
    let prefix = names.layer_prefix();
    let found: BTreeSet<usize> = files
        .source()
        .tensor_names()
        .iter()
        .filter_map(|n| layer_index(n, &prefix))
        .collect();
    let n = cfg.num_layers;
    if found.len() == n && found.last() == n.checked_sub(1).as_ref() {
        return Ok(());
    }
    let listed: Vec<String> = found.iter().take(8).map(usize::to_string).collect();
    let more = if found.len() > 8 { ", …" } else { "" };
    Err(LoadError::Config {
        path: files.path().to_path_buf(),
        msg: format!(
            "{} = {n}, but the file has `{prefix}N.*` tensors for {} layers (N in {{{}{more}}})",
            names.key(Size::Layers),
            found.len(),
            listed.join(", ")
        ),
    })
}

/// `N` of `{prefix}N.rest`; an index too large for usize counts as usize::MAX (never a layer).
fn layer_index(name: &str, prefix: &str) -> Option<usize> {
    let (n, _) = name.strip_prefix(prefix)?.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(n.parse().unwrap_or(usize::MAX))
}

/// Which tensor dimensions show which config sizes, per architecture and format.
fn dim_checks(cfg: &ModelConfig, names: &Naming) -> Vec<DimCheck> {
    let check = |tensor: String, dim, size, value| DimCheck {
        tensor,
        dim,
        size,
        value,
    };
    let d = cfg.hidden_size;
    let embed = names.embed();
    let mut checks = vec![
        check(embed.clone(), 0, Size::Vocab, cfg.vocab_size),
        check(embed, 1, Size::Hidden, d),
    ];
    match cfg.arch {
        // Fused projections: q|k|v rows, then gate|up rows.
        Architecture::Phi3 => {
            let qkv = names.role(0, Role::Qkv);
            let gate_up = names.role(0, Role::GateUp);
            checks.extend([
                check(qkv.clone(), 0, Size::QDim, cfg.q_dim() + 2 * cfg.kv_dim()),
                check(qkv, 1, Size::Hidden, d),
                check(gate_up, 0, Size::Inner, 2 * cfg.intermediate_size),
            ]);
        }
        Architecture::Gpt2 => {
            checks.push(check(names.pos_embed(), 0, Size::Context, cfg.max_context));
            // GGUF stores the MLP input projection (inner, hidden); HF's Conv1D (hidden, inner).
            let (fc, dim) = if names.is_gguf() {
                (names.layer(0, "ffn_up.weight", ""), 0)
            } else {
                (names.layer(0, "", "mlp.c_fc.weight"), 1)
            };
            checks.push(check(fc, dim, Size::Inner, cfg.intermediate_size));
        }
        _ => {
            checks.extend([
                check(names.role(0, Role::Q), 0, Size::QDim, cfg.q_dim()),
                check(names.role(0, Role::K), 0, Size::KvDim, cfg.kv_dim()),
                check(
                    names.role(0, Role::Gate),
                    0,
                    Size::Inner,
                    cfg.intermediate_size,
                ),
            ]);
        }
    }
    checks
}

/// A tensor of a RoPE decoder's layer, by what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    AttnNorm,
    Q,
    K,
    V,
    /// q|k|v rows in one tensor (Phi-3).
    Qkv,
    QBias,
    KBias,
    VBias,
    /// Per-head RMSNorm weights of q and k (Qwen3, Gemma 3).
    QNorm,
    KNorm,
    O,
    /// The norm on attention's output before the residual add (Gemma 2/3).
    PostAttnNorm,
    MlpNorm,
    Gate,
    Up,
    /// gate|up rows in one tensor (Phi-3).
    GateUp,
    Down,
    /// The norm on the MLP's output before the residual add (Gemma 2/3).
    PostMlpNorm,
}

impl Role {
    /// (GGUF name, Hugging Face name) within a layer.
    fn names(self, arch: Architecture) -> (&'static str, &'static str) {
        let gemma = matches!(arch, Architecture::Gemma2 | Architecture::Gemma3);
        match self {
            Role::AttnNorm => ("attn_norm.weight", "input_layernorm.weight"),
            Role::Q => ("attn_q.weight", "self_attn.q_proj.weight"),
            Role::K => ("attn_k.weight", "self_attn.k_proj.weight"),
            Role::V => ("attn_v.weight", "self_attn.v_proj.weight"),
            Role::Qkv => ("attn_qkv.weight", "self_attn.qkv_proj.weight"),
            Role::QBias => ("attn_q.bias", "self_attn.q_proj.bias"),
            Role::KBias => ("attn_k.bias", "self_attn.k_proj.bias"),
            Role::VBias => ("attn_v.bias", "self_attn.v_proj.bias"),
            Role::QNorm => ("attn_q_norm.weight", "self_attn.q_norm.weight"),
            Role::KNorm => ("attn_k_norm.weight", "self_attn.k_norm.weight"),
            Role::O => ("attn_output.weight", "self_attn.o_proj.weight"),
            Role::PostAttnNorm => (
                "post_attention_norm.weight",
                "post_attention_layernorm.weight",
            ),
            // Gemma's `post_attention_layernorm` is the sandwich norm; its MLP's is `pre_feedforward`.
            Role::MlpNorm if gemma => ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
            Role::MlpNorm => ("ffn_norm.weight", "post_attention_layernorm.weight"),
            Role::Gate => ("ffn_gate.weight", "mlp.gate_proj.weight"),
            Role::Up => ("ffn_up.weight", "mlp.up_proj.weight"),
            Role::GateUp => ("ffn_up.weight", "mlp.gate_up_proj.weight"),
            Role::Down => ("ffn_down.weight", "mlp.down_proj.weight"),
            Role::PostMlpNorm => ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_indices_parse_only_whole_numbers_after_the_prefix() {
        assert_eq!(layer_index("blk.12.attn_q.weight", "blk."), Some(12));
        assert_eq!(layer_index("blk.x.attn_q.weight", "blk."), None);
        assert_eq!(layer_index("blk.3", "blk."), None);
        assert_eq!(layer_index("output.weight", "blk."), None);
        let huge = "blk.99999999999999999999999.w";
        assert_eq!(layer_index(huge, "blk."), Some(usize::MAX));
    }
}
