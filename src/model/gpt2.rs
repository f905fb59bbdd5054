//! GPT-2's forward pass: learned positions, pre-norm LayerNorm blocks with biases everywhere,
//! multi-head attention, a GELU MLP and a head tied to the token embedding.
//!
//! Shapes: `T` tokens in the step, `R` of them read as logits; `d` hidden, `f` MLP inner,
//! `V` vocabulary.

use super::ModelConfig;
use super::weights::{ModelWeights, Norm};
use crate::gpu::graph::{AttentionOptions, Graph, Rows, Vector};

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

    let x = g.act("x (residual)", d, Rows::Tokens); // (T, d)
    let h = g.act("h (normed)", d, Rows::Tokens); // (T, d)
    let qkv = g.act("qkv", heads.qkv_dim(), Rows::Tokens); // (T, 3d)
    let att = g.act("attention out", heads.q_dim(), Rows::Tokens); // (T, d)
    let fc = g.act("fc", f, Rows::Tokens); // (T, f)
    let final_h = g.act("final normed rows", d, Rows::Logits); // (R, d)
    let logits = g.act("logits", cfg.vocab_size, Rows::Logits); // (R, V)

    let embed = g.matrix(w.embed);
    let lm_head = match w.lm_head {
        Some(m) => g.matrix(m),
        None => embed,
    };
    let positions = w.pos_embed.map(|p| g.vector(p));
    let opts = AttentionOptions {
        scale: cfg.attn_scale,
        softcap: None,
        window: None,
    };
    let norm = |g: &mut Graph, n: Norm| -> (Vector, Vector) {
        let b = n.b.expect("GPT-2's loader reads every LayerNorm bias");
        (g.vector(n.w), g.vector(b))
    };

    g.embed(embed, positions, x); // x = E[token] + P[position]
    for (l, lw) in w.layers.into_iter().enumerate() {
        let (ln1_w, ln1_b) = norm(&mut g, lw.attn_norm);
        let (ln2_w, ln2_b) = norm(&mut g, lw.mlp_norm);
        let mut linear =
            |lin: super::weights::Linear| (g.matrix(lin.w), lin.b.map(|b| g.vector(b)));
        let (w_qkv, b_qkv) = linear(lw.qkv);
        let (w_o, b_o) = linear(lw.o);
        let (w_fc, b_fc) = linear(lw.up);
        let (w_proj, b_proj) = linear(lw.down);

        g.layer_norm(x, ln1_w, ln1_b, eps, h); // h = LN(x)
        g.linear("qkv", h, w_qkv, b_qkv, qkv); // [q | k | v] = h · Wqkvᵀ + b
        g.kv_write(qkv, l); // cache k, v
        g.attention(qkv, l, opts, att); // a = softmax(q · kᵀ · scale) · v
        g.linear_add("out", att, w_o, b_o, x); // x += a · Woᵀ + b

        g.layer_norm(x, ln2_w, ln2_b, eps, h); // h = LN(x)
        g.linear("up", h, w_fc, b_fc, fc); // u = h · Wfcᵀ + b
        g.gelu(fc); // u = gelu(u)
        g.linear_add("down", fc, w_proj, b_proj, x); // x += u · Wprojᵀ + b
    }
    let (lnf_w, lnf_b) = norm(&mut g, w.final_norm);
    g.layer_norm(x, lnf_w, lnf_b, eps, final_h); // the logits rows only
    g.linear("lm_head", final_h, lm_head, None, logits); // logits = h · Eᵀ
    g.output(logits);
    g
}
