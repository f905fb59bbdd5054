//! The RoPE decoders' forward pass (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3): pre-norm
//! blocks with RMSNorm, rotary positions, grouped-query attention and a gated MLP. What the
//! families do differently is data on the [`ModelConfig`]: biases, q/k norms, sandwich
//! norms, windows, soft-caps, the embedding scale and the MLP's activation.
//!
//! Shapes: `T` tokens in the step, `R` of them read as logits; `d` hidden, `f` MLP inner,
//! `q` = heads × head_dim, `kv` = KV heads × head_dim, `V` vocabulary.

use super::weights::ModelWeights;
use super::{MlpActivation, ModelConfig, ModelError, rope};
use crate::gpu::graph::{AttentionOptions, GateActivation, Graph, Rows};
use crate::loader::LoadError;

pub(crate) fn forward(cfg: &ModelConfig, w: ModelWeights) -> Result<Graph, ModelError> {
    let (d, f, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.norm_eps);
    let heads = cfg.attention_shape();
    let rope_cfg = cfg.rope.as_ref().ok_or_else(|| LoadError::Config {
        path: Default::default(),
        msg: format!("{:?} needs rotary positions", cfg.arch),
    })?;
    let mut g = Graph::new(
        cfg.vocab_size,
        cfg.max_context,
        cfg.num_layers,
        heads,
        w.dtype,
    );
    let global_rope = g.rotary(rope::rotary(
        rope_cfg,
        false,
        w.rope_freq_factors.as_deref(),
    ));
    let local_rope = match rope_cfg.local_theta {
        Some(_) => g.rotary(rope::rotary(rope_cfg, true, None)),
        None => global_rope,
    };
    let act = match cfg.mlp_activation {
        MlpActivation::Silu => GateActivation::Silu,
        MlpActivation::GeluTanh => GateActivation::GeluTanh,
    };

    let x = g.act("x (residual)", d, Rows::Tokens); // (T, d)
    let h = g.act("h (normed)", d, Rows::Tokens); // (T, d)
    let qkv = g.act("qkv", heads.qkv_dim(), Rows::Tokens); // (T, q + 2kv)
    let att = g.act("attention out", heads.q_dim(), Rows::Tokens); // (T, q)
    let gate_up = g.act("gate_up", 2 * f, Rows::Tokens); // (T, 2f)
    let mlp = g.act("mlp act", f, Rows::Tokens); // (T, f)
    let branch = g.act("branch out", d, Rows::Tokens); // (T, d), sandwich norms only
    let final_h = g.act("final normed rows", d, Rows::Logits); // (R, d)
    let logits = g.act("logits", cfg.vocab_size, Rows::Logits); // (R, V)

    let embed = g.matrix(w.embed);
    let lm_head = match w.lm_head {
        Some(m) => g.matrix(m),
        None => embed,
    };

    g.embed(embed, None, x); // x = E[token]
    if let Some(s) = cfg.embed_scale {
        g.scale(x, s); // x *= sqrt(d) (Gemma)
    }
    for (l, lw) in w.layers.into_iter().enumerate() {
        let window = cfg.layer_windows[l];
        let attn_norm = g.vector(lw.attn_norm.w);
        let mlp_norm = g.vector(lw.mlp_norm.w);
        let wqkv = g.matrix(lw.qkv.w);
        let bqkv = lw.qkv.b.map(|b| g.vector(b));
        let wo = g.matrix(lw.o.w);
        let w_gate_up = g.matrix(lw.up.w);
        let w_down = g.matrix(lw.down.w);
        let qk_norm = lw
            .q_norm
            .zip(lw.k_norm)
            .map(|(q, k)| (g.vector(q), g.vector(k)));
        let post_attn = lw.post_attn_norm.map(|n| g.vector(n.w));
        let post_mlp = lw.post_mlp_norm.map(|n| g.vector(n.w));

        g.rms_norm(x, attn_norm, eps, h); // h = x / rms(x) · g_attn
        g.linear("qkv", h, wqkv, bqkv, qkv); // [q | k | v] = h · Wqkvᵀ (+ b)
        if let Some((qn, kn)) = qk_norm {
            g.qk_norm(qkv, qn, kn, eps); // q, k = per-head rmsnorm (Qwen3, Gemma 3)
        }
        let rotary = if window.is_some() {
            local_rope
        } else {
            global_rope
        };
        g.rope_kv_write(qkv, l, rotary); // rotate q, k; cache k, v
        let opts = AttentionOptions {
            scale: cfg.attn_scale,
            softcap: cfg.attn_softcap,
            window,
        };
        g.attention(qkv, l, opts, att); // a = softmax(cap(q · kᵀ · scale)) · v
        match post_attn {
            None => g.linear_add("out", att, wo, None, x), // x += a · Woᵀ
            Some(pn) => {
                g.linear("out", att, wo, None, branch); // o = a · Woᵀ
                g.rms_norm_add(branch, pn, eps, x); // x += o / rms(o) · g_post
            }
        }

        g.rms_norm(x, mlp_norm, eps, h); // h = x / rms(x) · g_mlp
        g.linear("up", h, w_gate_up, None, gate_up); // [gate | up] = h · Wguᵀ
        g.gated_act(gate_up, act, mlp); // m = act(gate) · up
        match post_mlp {
            None => g.linear_add("down", mlp, w_down, None, x), // x += m · Wdownᵀ
            Some(pn) => {
                g.linear("down", mlp, w_down, None, branch); // o = m · Wdownᵀ
                g.rms_norm_add(branch, pn, eps, x); // x += o / rms(o) · g_post
            }
        }
    }
    let final_norm = g.vector(w.final_norm.w);
    g.rms_norm(x, final_norm, eps, final_h); // the logits rows only
    g.linear("lm_head", final_h, lm_head, None, logits); // logits = h · Eᵀ (or W_headᵀ)
    if let Some(cap) = cfg.final_softcap {
        g.softcap(logits, cap); // logits = cap · tanh(logits / cap) (Gemma 2)
    }
    g.output(logits);
    Ok(g)
}
