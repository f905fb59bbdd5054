//! Architecture hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

/// The transformer families wllm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// RMSNorm, RoPE, grouped-query attention, SwiGLU (Llama, Mistral, SmolLM2).
    Llama,
    /// LayerNorm, learned positions, gelu_new MLP, biases everywhere (GPT-2 family).
    Gpt2,
}

/// Which dimensions RoPE rotates together within one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGUF llama checkpoints, whose Q/K rows were permuted by the converter.
    Interleaved,
    /// Pairs (i, i + head_dim/2): Hugging Face llama checkpoints ("rotate_half").
    Half,
}

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
    /// Width of the K (or V) projection: num_kv_heads × head_dim.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Width of the Q projection: num_heads × head_dim.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
}
