//! A forward pass as data: the model layer (src/model/) writes one with [`Graph`]'s methods,
//! top to bottom like the math, and the [`crate::gpu::Runner`] turns it into buffers, bind
//! groups and dispatches, deciding which neighbouring ops run as one kernel. Nothing here
//! knows an architecture; a graph names weights, activations and the ops between them.
//!
//! Shapes: an activation is a matrix of `rows × width` f32, where the rows are either the
//! step's tokens (`T`, at most `max_batch_tokens`) or its logits rows (`R`, the tokens whose
//! next-token distribution is read).

use crate::gpu::kernels::rope::RopeStyle;
use crate::gpu::weights::GpuMatrix;
use crate::gpu::{GpuTensor, WeightDType};

/// An activation matrix of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Act(pub(crate) usize);

/// A weight matrix the graph owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mat(pub(crate) usize);

/// A weight vector (norm weight or bias) the graph owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vector(pub(crate) usize);

/// Which rows an activation has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// One per token of the step (`T`).
    Tokens,
    /// One per logits row of the step (`R`).
    Logits,
}

#[derive(Debug)]
pub(crate) struct ActInfo {
    pub(crate) name: &'static str,
    pub(crate) width: usize,
    pub(crate) rows: Rows,
}

/// The attention geometry shared by every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Columns of a fused qkv row: Q heads, then K heads, then V heads.
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }
}

/// Rotary position embedding: the inverse frequency of each rotated pair. The first
/// `2 · inv_freq.len()` dimensions of each head rotate; the rest pass through.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotary {
    pub style: RopeStyle,
    /// Angle per position step of each rotated pair.
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (so the rotated dimensions of q and k, not the pass-through
    /// ones): YaRN's and LongRoPE's attention factor, 1 for everyone else.
    pub attention_factor: f32,
}

impl Rotary {
    /// The (cos, sin) table, (positions, rotated pairs, 2) f32: cos and sin of
    /// `pos · inv_freq`, each times the attention factor in f32 (transformers'
    /// `emb.cos() * attention_scaling`; a factor of 1 leaves every bit as it was).
    pub fn cos_sin(&self, positions: usize) -> Vec<f32> {
        let mut table = Vec::with_capacity(positions * self.inv_freq.len() * 2);
        for pos in 0..positions {
            for f in &self.inv_freq {
                let a = pos as f32 * f;
                table.push(a.cos() * self.attention_factor);
                table.push(a.sin() * self.attention_factor);
            }
        }
        table
    }
}

/// A rotary table of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotaryId(pub(crate) usize);

/// The gated MLP's activation on `gate` in `act(gate) · up`.
pub use crate::gpu::kernels::GateActivation;

/// One operation. Widths come from the activations' declarations.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// `out[t] = table[token_ids[t]] (+ positions[pos[t]])`.
    Embed {
        table: Mat,
        positions: Option<Vector>,
        out: Act,
    },
    /// `out = x / rms(x) · w`, or `out += …` with `accumulate`.
    RmsNorm {
        x: Act,
        w: Vector,
        eps: f32,
        out: Act,
        accumulate: bool,
    },
    /// Each Q head and each K head of `qkv` RMS-normalized over the head, in place.
    QkNorm {
        qkv: Act,
        q_w: Vector,
        k_w: Vector,
        eps: f32,
    },
    /// `out = (x − mean) / std · w + b`.
    LayerNorm {
        x: Act,
        w: Vector,
        b: Vector,
        eps: f32,
        out: Act,
    },
    /// `out (+)= x · Wᵀ (+ b)`.
    Linear {
        label: &'static str,
        x: Act,
        w: Mat,
        bias: Option<Vector>,
        out: Act,
        accumulate: bool,
    },
    /// `out = act(gate) · up` where `x = [gate | up]`.
    GatedAct {
        x: Act,
        out: Act,
        act: GateActivation,
    },
    /// `x *= c`, in place.
    Scale { x: Act, c: f32 },
    /// `x = cap · tanh(x / cap)`, in place.
    SoftCap { x: Act, cap: f32 },
    /// GPT-2's tanh-approximated GELU, in place.
    Gelu { x: Act },
    /// Rotates the Q and K heads of `qkv` at the tokens' positions and writes K and V to
    /// `layer`'s KV blocks at the tokens' slots.
    RopeKvWrite {
        qkv: Act,
        layer: usize,
        rotary: RotaryId,
    },
    /// Writes the K and V heads of `qkv` to `layer`'s KV blocks (no rotation).
    KvWrite { qkv: Act, layer: usize },
    /// Causal attention of the Q heads of `qkv` over each token's context in `layer`'s
    /// KV blocks: scores `q · k · scale` (soft-capped when set), over the last `window`
    /// positions when set.
    Attention {
        qkv: Act,
        layer: usize,
        out: Act,
        params: AttentionOptions,
    },
}

/// What may differ between attention layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionOptions {
    pub scale: f32,
    /// Scores become `cap · tanh(s / cap)`.
    pub softcap: Option<f32>,
    /// A query attends to the keys of the last `window` positions (itself included).
    pub window: Option<usize>,
}

/// A forward pass: weights, activations and ops, and the sizes the runner needs.
pub struct Graph {
    pub(crate) matrices: Vec<GpuMatrix>,
    pub(crate) vectors: Vec<GpuTensor>,
    pub(crate) acts: Vec<ActInfo>,
    pub(crate) ops: Vec<Op>,
    /// The activation the step's logits are (rows `R`, width `vocab`).
    pub(crate) logits: Option<Act>,
    pub(crate) vocab: usize,
    /// Positions a sequence may reach.
    pub(crate) max_context: usize,
    pub(crate) attention: AttentionShape,
    pub(crate) num_layers: usize,
    pub(crate) rotaries: Vec<Rotary>,
    /// Storage type of the dense weights.
    pub(crate) weight_dtype: WeightDType,
}

impl Graph {
    pub fn new(
        vocab: usize,
        max_context: usize,
        num_layers: usize,
        attention: AttentionShape,
        weight_dtype: WeightDType,
    ) -> Graph {
        Graph {
            matrices: Vec::new(),
            vectors: Vec::new(),
            acts: Vec::new(),
            ops: Vec::new(),
            logits: None,
            vocab,
            max_context,
            attention,
            num_layers,
            rotaries: Vec::new(),
            weight_dtype,
        }
    }

    /// A rotary table (positions × frequencies) for [`Graph::rope_kv_write`].
    pub fn rotary(&mut self, rotary: Rotary) -> RotaryId {
        self.rotaries.push(rotary);
        RotaryId(self.rotaries.len() - 1)
    }

    pub fn matrix(&mut self, m: GpuMatrix) -> Mat {
        self.matrices.push(m);
        Mat(self.matrices.len() - 1)
    }

    pub fn vector(&mut self, v: GpuTensor) -> Vector {
        self.vectors.push(v);
        Vector(self.vectors.len() - 1)
    }

    /// Declares an activation of `width` columns (its buffer is the runner's).
    pub fn act(&mut self, name: &'static str, width: usize, rows: Rows) -> Act {
        self.acts.push(ActInfo { name, width, rows });
        Act(self.acts.len() - 1)
    }

    pub fn embed(&mut self, table: Mat, positions: Option<Vector>, out: Act) {
        self.ops.push(Op::Embed {
            table,
            positions,
            out,
        });
    }

    pub fn rms_norm(&mut self, x: Act, w: Vector, eps: f32, out: Act) {
        self.ops.push(Op::RmsNorm {
            x,
            w,
            eps,
            out,
            accumulate: false,
        });
    }

    /// `out += x / rms(x) · w`: a normed branch added to the residual stream.
    pub fn rms_norm_add(&mut self, x: Act, w: Vector, eps: f32, out: Act) {
        self.ops.push(Op::RmsNorm {
            x,
            w,
            eps,
            out,
            accumulate: true,
        });
    }

    pub fn qk_norm(&mut self, qkv: Act, q_w: Vector, k_w: Vector, eps: f32) {
        self.ops.push(Op::QkNorm { qkv, q_w, k_w, eps });
    }

    pub fn layer_norm(&mut self, x: Act, w: Vector, b: Vector, eps: f32, out: Act) {
        self.ops.push(Op::LayerNorm { x, w, b, eps, out });
    }

    /// `out = x · Wᵀ (+ b)`; `label` names it in profiles ("qkv", "down", …).
    pub fn linear(&mut self, label: &'static str, x: Act, w: Mat, bias: Option<Vector>, out: Act) {
        self.ops.push(Op::Linear {
            label,
            x,
            w,
            bias,
            out,
            accumulate: false,
        });
    }

    /// `out += x · Wᵀ (+ b)`: a projection added to the residual stream.
    pub fn linear_add(
        &mut self,
        label: &'static str,
        x: Act,
        w: Mat,
        bias: Option<Vector>,
        out: Act,
    ) {
        self.ops.push(Op::Linear {
            label,
            x,
            w,
            bias,
            out,
            accumulate: true,
        });
    }

    pub fn gated_act(&mut self, x: Act, act: GateActivation, out: Act) {
        self.ops.push(Op::GatedAct { x, out, act });
    }

    pub fn scale(&mut self, x: Act, c: f32) {
        self.ops.push(Op::Scale { x, c });
    }

    pub fn softcap(&mut self, x: Act, cap: f32) {
        self.ops.push(Op::SoftCap { x, cap });
    }

    pub fn gelu(&mut self, x: Act) {
        self.ops.push(Op::Gelu { x });
    }

    pub fn rope_kv_write(&mut self, qkv: Act, layer: usize, rotary: RotaryId) {
        self.ops.push(Op::RopeKvWrite { qkv, layer, rotary });
    }

    pub fn kv_write(&mut self, qkv: Act, layer: usize) {
        self.ops.push(Op::KvWrite { qkv, layer });
    }

    pub fn attention(&mut self, qkv: Act, layer: usize, params: AttentionOptions, out: Act) {
        self.ops.push(Op::Attention {
            qkv,
            layer,
            out,
            params,
        });
    }

    /// Marks `logits` (rows `R`, width `vocab`) as the step's output.
    pub fn output(&mut self, logits: Act) {
        self.logits = Some(logits);
    }
}
