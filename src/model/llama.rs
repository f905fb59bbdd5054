//! The Llama family's forward pass: a pre-norm decoder with RMSNorm, rotary positions,
//! grouped-query attention and a SwiGLU MLP (Llama, Mistral, SmolLM2).
//!
//! Shapes: `T` tokens in the step, `R` of them read as logits; `d` hidden, `f` MLP inner,
//! `q` = heads × head_dim, `kv` = KV heads × head_dim, `V` vocabulary.

use super::weights::ModelWeights;
use super::{ModelConfig, rope};
use crate::gpu::graph::{Graph, Rows};

pub(crate) fn forward(cfg: &ModelConfig, w: ModelWeights) -> Graph {
    let (d, f, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.norm_eps);
    let heads = cfg.attention_shape();
    let mut g = Graph::new(
        cfg.vocab_size,
        cfg.max_context,
        cfg.num_layers,
        heads,
        w.dtype,
    );
    g.set_rotary(rope::rotary(cfg));

    let x = g.act("x (residual)", d, Rows::Tokens); // (T, d)
    let h = g.act("h (normed)", d, Rows::Tokens); // (T, d)
    let qkv = g.act("qkv", heads.qkv_dim(), Rows::Tokens); // (T, q + 2kv)
    let att = g.act("attention out", heads.q_dim(), Rows::Tokens); // (T, q)
    let gate_up = g.act("gate_up", 2 * f, Rows::Tokens); // (T, 2f)
    let mlp = g.act("mlp act", f, Rows::Tokens); // (T, f)
    let final_h = g.act("final normed rows", d, Rows::Logits); // (R, d)
    let logits = g.act("logits", cfg.vocab_size, Rows::Logits); // (R, V)

    let embed = g.matrix(w.embed);
    let lm_head = match w.lm_head {
        Some(m) => g.matrix(m),
        None => embed,
    };
    let scale = 1.0 / (heads.head_dim as f32).sqrt();

    g.embed(embed, None, x); // x = E[token]
    for (l, lw) in w.layers.into_iter().enumerate() {
        let (attn_norm, mlp_norm) = (g.vector(lw.attn_norm.w), g.vector(lw.mlp_norm.w));
        let (wqkv, wo) = (g.matrix(lw.qkv.w), g.matrix(lw.o.w));
        let (w_gate_up, w_down) = (g.matrix(lw.up.w), g.matrix(lw.down.w));

        g.rms_norm(x, attn_norm, eps, h); // h = x / rms(x) · g_attn
        g.linear("qkv", h, wqkv, None, qkv); // [q | k | v] = h · Wqkvᵀ
        g.rope_kv_write(qkv, l); // rotate q, k; cache k, v
        g.attention(qkv, l, scale, att); // a = softmax(q · kᵀ · scale) · v
        g.linear_add("out", att, wo, None, x); // x += a · Woᵀ

        g.rms_norm(x, mlp_norm, eps, h); // h = x / rms(x) · g_mlp
        g.linear("up", h, w_gate_up, None, gate_up); // [gate | up] = h · Wguᵀ
        g.silu_mul(gate_up, mlp); // m = silu(gate) · up
        g.linear_add("down", mlp, w_down, None, x); // x += m · Wdownᵀ
    }
    let final_norm = g.vector(w.final_norm.w);
    g.rms_norm(x, final_norm, eps, final_h); // the logits rows only
    g.linear("lm_head", final_h, lm_head, None, logits); // logits = h · Eᵀ (or W_headᵀ)
    g.output(logits);
    g
}
