//! Which ops of a graph run as one kernel: the one place fusions are decided.
//!
//! - An RMSNorm whose output only the next projection reads, over the same rows (not the
//!   final norm that gathers the logit rows), runs inside that projection's quantized
//!   matmul where the kernel form has the fused norm (GPUs: one dispatch and one round trip
//!   of the activations fewer per norm).
//! - A gated projection (`[gate | up]`, one quantized binding) whose output only the next
//!   SiLU·mul reads runs with the activation in the same pass, writing the product directly.
//!
//! The plan depends on the graph and the kernel form only, never on a step's batch, so
//! results stay batch-invariant. Fusing is not bit-neutral: the fused-norm matmul sums the
//! row's squares in its own order (about 1e-5 on SmolLM2's logits), so a change to the plan
//! shows in tests/logits_snapshot.rs.

use crate::gpu::graph::{Act, GateActivation, Graph, Op};
use crate::gpu::kernels::matmul_quant::QuantFormat;
use crate::gpu::weights::{GpuMatrix, MatrixFormat};

/// One dispatch group of the plan, naming the graph's ops by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Planned {
    /// The op alone.
    Op(usize),
    /// A Linear with the RMSNorm before it fused in front (`norm`, `linear`), and the
    /// SiLU·mul after it fused behind when `glu` is set.
    NormedLinear {
        norm: usize,
        linear: usize,
        glu: Option<usize>,
    },
    /// A Linear with the SiLU·mul after it fused behind.
    GluLinear { linear: usize, glu: usize },
}

/// The quantized format of a stacked gate|up weight the fused SwiGLU matmul can take (one
/// binding), if any.
pub(super) fn fused_glu_format(w: &GpuMatrix) -> Option<QuantFormat> {
    match w.single_format() {
        Some(MatrixFormat::Quant(f)) if w.parts.len() == 1 => Some(f),
        _ => None,
    }
}

/// Reads of `act` by the ops after `i`, up to the first op that overwrites it.
fn reads_after(ops: &[Op], i: usize, act: Act) -> usize {
    let mut n = 0;
    for op in &ops[i + 1..] {
        let (reads, writes) = op_io(op);
        n += reads.iter().filter(|a| **a == act).count();
        if writes == Some(act) && !reads.contains(&act) {
            break;
        }
    }
    n
}

/// The activations an op reads, and the one it writes (accumulating writes read too).
pub(super) fn op_io(op: &Op) -> (Vec<Act>, Option<Act>) {
    match *op {
        Op::Embed { out, .. } => (vec![], Some(out)),
        Op::RmsNorm {
            x,
            out,
            accumulate: true,
            ..
        } => (vec![x, out], Some(out)),
        Op::RmsNorm { x, out, .. } | Op::LayerNorm { x, out, .. } => (vec![x], Some(out)),
        Op::Linear {
            x, out, accumulate, ..
        } => {
            if accumulate {
                (vec![x, out], Some(out))
            } else {
                (vec![x], Some(out))
            }
        }
        Op::GatedAct { x, out, .. } => (vec![x], Some(out)),
        Op::Gelu { x } | Op::Scale { x, .. } | Op::SoftCap { x, .. } => (vec![x], Some(x)),
        Op::QkNorm { qkv, .. } => (vec![qkv], Some(qkv)),
        Op::RopeKvWrite { qkv, .. } => (vec![qkv], Some(qkv)),
        Op::KvWrite { qkv, .. } => (vec![qkv], None),
        Op::Attention { qkv, out, .. } => (vec![qkv], Some(out)),
    }
}

/// The plan for `g`: `fuse_norms` where the quantized matmul has the fused-norm form.
pub(super) fn plan(g: &Graph, fuse_norms: bool) -> Vec<Planned> {
    let ops = &g.ops;
    // The SiLU·mul right after op `i` that only it feeds, if the Linear at `i` can take it.
    let glu_after = |i: usize| -> Option<usize> {
        let Op::Linear {
            w,
            bias: None,
            out,
            accumulate: false,
            ..
        } = ops[i]
        else {
            return None;
        };
        match ops.get(i + 1) {
            Some(Op::GatedAct {
                x,
                act: GateActivation::Silu,
                ..
            }) if *x == out
                && reads_after(ops, i, out) == 1
                && fused_glu_format(&g.matrices[w.0]).is_some() =>
            {
                Some(i + 1)
            }
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        if let (
            Op::RmsNorm {
                x: normed,
                out: h,
                accumulate: false,
                ..
            },
            Some(Op::Linear {
                x, w, bias: None, ..
            }),
        ) = (&ops[i], ops.get(i + 1))
        {
            let quant = g.matrices[w.0].is_quantized();
            // A norm that gathers the logit rows (final norm before the head) stays apart: the
            // fused kernel reads and writes the same rows.
            let same_rows = g.acts[normed.0].rows == g.acts[h.0].rows;
            if fuse_norms && quant && same_rows && x == h && reads_after(ops, i, *h) == 1 {
                let glu = glu_after(i + 1);
                // The fused-norm matmul takes the SiLU·mul only with it (one binding).
                let gated = matches!(ops.get(i + 2), Some(Op::GatedAct { .. }));
                if glu.is_some() || !gated {
                    out.push(Planned::NormedLinear {
                        norm: i,
                        linear: i + 1,
                        glu,
                    });
                    i += 2 + usize::from(glu.is_some());
                    continue;
                }
            }
        }
        if let Some(glu) = glu_after(i) {
            out.push(Planned::GluLinear { linear: i, glu });
            i += 2;
            continue;
        }
        out.push(Planned::Op(i));
        i += 1;
    }
    out
}
