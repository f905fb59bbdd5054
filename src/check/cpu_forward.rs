//! A whole model's forward pass on the CPU, read from the same [`Graph`] the GPU runner
//! records: each op is its kernel's CPU reference (f64 sums), over the weights the loader kept
//! on the host ([`GpuMatrix::host`]: GGUF blocks dequantized row by row by the loader's
//! reference, dense weights as stored). One sequence, its K and V kept per layer in order of
//! position (rounded to the KV cache's storage type, as the GPU stores them).
//!
//! [`GpuMatrix::host`]: crate::gpu::weights::GpuMatrix::host

use crate::gpu::graph::{Act, AttentionShape, Graph, Op, Rotary};
use crate::gpu::kernels::{
    AttentionParams, MatmulParams, QkNormParams, RopeParams, activation, attention, embedding,
    matmul, norm, pointwise, rope,
};
use crate::gpu::weights::HostRows;
use crate::gpu::{GpuContext, WeightDType};

/// Rows of a weight dequantized at a time by [`CpuForward`]'s matmul.
const ROW_CHUNK: usize = 64;

/// A matrix's host rows, stacked in row order.
struct HostMatrix {
    cols: usize,
    parts: Vec<HostRows>,
}

impl HostMatrix {
    /// Rows `first..first + n` as f32, row-major.
    fn rows(&self, first: usize, n: usize) -> Result<Vec<f32>, String> {
        let mut out = Vec::with_capacity(n * self.cols);
        let mut r = first;
        let mut start = 0;
        for p in &self.parts {
            while r < first + n && r < start + p.rows {
                out.extend(p.row(r - start)?);
                r += 1;
            }
            start += p.rows;
        }
        if r != first + n {
            return Err(format!("rows {first}..{} past the matrix", first + n));
        }
        Ok(out)
    }

    fn num_rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }
}

pub(crate) struct CpuForward {
    ops: Vec<Op>,
    widths: Vec<usize>,
    matrices: Vec<HostMatrix>,
    vectors: Vec<Vec<f32>>,
    rotaries: Vec<Rotary>,
    attention: AttentionShape,
    logits: Act,
    /// K and V are stored in f16 (the KV cache's storage type).
    kv_f16: bool,
    /// Per layer, K and V of every position so far, (positions, kv_dim).
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Positions run so far.
    len: usize,
}

impl CpuForward {
    /// Takes the host rows of `g`'s matrices (loaded with `keep_host`) and reads its vectors
    /// back from the GPU.
    pub(crate) fn from_graph(
        ctx: &GpuContext,
        g: &mut Graph,
        kv_dtype: WeightDType,
    ) -> Result<CpuForward, String> {
        let mut matrices = Vec::with_capacity(g.matrices.len());
        for m in &mut g.matrices {
            let parts = std::mem::take(&mut m.host);
            let hm = HostMatrix {
                cols: m.cols,
                parts,
            };
            if hm.num_rows() != m.rows {
                return Err(format!(
                    "a {}×{} matrix was loaded without its host rows",
                    m.rows, m.cols
                ));
            }
            matrices.push(hm);
        }
        let vectors = g
            .vectors
            .iter()
            .map(|v| v.read_f32(ctx))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        Ok(CpuForward {
            ops: g.ops.clone(),
            widths: g.acts.iter().map(|a| a.width).collect(),
            matrices,
            vectors,
            rotaries: g.rotaries.clone(),
            attention: g.attention,
            logits: g.logits.ok_or("the graph has no logits")?,
            kv_f16: kv_dtype == WeightDType::F16,
            keys: vec![Vec::new(); g.num_layers],
            values: vec![Vec::new(); g.num_layers],
            len: 0,
        })
    }

    /// Forgets the sequence: the next [`CpuForward::forward`] starts at position 0.
    pub(crate) fn reset(&mut self) {
        self.keys
            .iter_mut()
            .chain(&mut self.values)
            .for_each(Vec::clear);
        self.len = 0;
    }

    /// Runs `tokens` at the next positions; returns each one's logits row.
    pub(crate) fn forward(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, String> {
        let t = tokens.len();
        let positions: Vec<u32> = (self.len..self.len + t).map(|p| p as u32).collect();
        let mut acts: Vec<Vec<f32>> = self.widths.iter().map(|w| vec![0.0; t * w]).collect();
        let ops = std::mem::take(&mut self.ops);
        let res = ops
            .iter()
            .try_for_each(|op| self.run(op, tokens, &positions, &mut acts));
        self.ops = ops;
        res?;
        self.len += t;
        let vocab = self.widths[self.logits.0];
        Ok(acts[self.logits.0]
            .chunks(vocab)
            .map(<[f32]>::to_vec)
            .collect())
    }

    fn run(
        &mut self,
        op: &Op,
        tokens: &[u32],
        positions: &[u32],
        acts: &mut [Vec<f32>],
    ) -> Result<(), String> {
        let t = tokens.len();
        let sh = self.attention;
        let width = |a: Act| self.widths[a.0];
        match *op {
            Op::Embed {
                table,
                positions: pos_table,
                out,
            } => {
                let m = &self.matrices[table.0];
                let mut rows = Vec::with_capacity(t * m.cols);
                for &id in tokens {
                    rows.extend(m.rows(id as usize, 1)?);
                }
                let ids: Vec<u32> = (0..t as u32).collect();
                let pt = pos_table.map(|p| self.vectors[p.0].as_slice());
                acts[out.0] = embedding::reference(&ids, positions, &rows, pt, m.cols);
            }
            Op::RmsNorm {
                x,
                w,
                eps,
                out,
                accumulate,
            } => {
                let dim = width(x);
                let y = norm::rms_norm_reference(&acts[x.0], &self.vectors[w.0], None, dim, eps);
                add_or_set(&mut acts[out.0], y, accumulate);
            }
            Op::QkNorm { qkv, q_w, k_w, eps } => {
                let p = QkNormParams {
                    num_tokens: t,
                    row_stride: width(qkv),
                    num_heads: sh.num_heads,
                    num_kv_heads: sh.num_kv_heads,
                    head_dim: sh.head_dim,
                    eps,
                };
                let (q, k) = (&self.vectors[q_w.0], &self.vectors[k_w.0]);
                norm::qk_norm_reference(&mut acts[qkv.0], q, k, &p);
            }
            Op::LayerNorm { x, w, b, eps, out } => {
                let (w, b) = (&self.vectors[w.0], &self.vectors[b.0]);
                acts[out.0] = norm::layer_norm_reference(&acts[x.0], w, b, None, width(x), eps);
            }
            Op::Linear {
                x,
                w,
                bias,
                out,
                accumulate,
                ..
            } => {
                let m = &self.matrices[w.0];
                let n = m.num_rows();
                let bias = bias.map(|b| self.vectors[b.0].as_slice());
                let xs = std::mem::take(&mut acts[x.0]);
                let y = &mut acts[out.0];
                for first in (0..n).step_by(ROW_CHUNK) {
                    let rows = ROW_CHUNK.min(n - first);
                    let wr = m.rows(first, rows)?;
                    let p = MatmulParams {
                        m: t,
                        n: rows,
                        k: m.cols,
                        y_stride: n,
                        y_col: first,
                        bias: bias.is_some(),
                        accumulate,
                    };
                    matmul::reference(&xs, &wr, bias.map(|b| &b[first..]), y, &p);
                }
                acts[x.0] = xs;
            }
            Op::GatedAct { x, out, act } => {
                acts[out.0] = activation::gated_reference(&acts[x.0], width(out), act);
            }
            Op::Scale { x, c } => pointwise::scale_reference(&mut acts[x.0], c),
            Op::SoftCap { x, cap } => pointwise::softcap_reference(&mut acts[x.0], cap),
            Op::Gelu { x } => acts[x.0] = activation::gelu_reference(&acts[x.0]),
            Op::RopeKvWrite { qkv, layer, rotary } => {
                let r = &self.rotaries[rotary.0];
                let max_positions = self.len + t;
                let p = RopeParams {
                    num_tokens: t,
                    row_stride: width(qkv),
                    num_heads: sh.num_heads,
                    num_kv_heads: sh.num_kv_heads,
                    head_dim: sh.head_dim,
                    max_positions,
                    style: r.style,
                };
                let cos_sin = r.cos_sin(max_positions);
                let rotary_dim = 2 * r.inv_freq.len();
                rope::reference_partial(&mut acts[qkv.0], positions, &cos_sin, &p, rotary_dim);
                self.write_kv(&acts[qkv.0], width(qkv), layer);
            }
            Op::KvWrite { qkv, layer } => self.write_kv(&acts[qkv.0], width(qkv), layer),
            Op::Attention {
                qkv,
                layer,
                out,
                params,
            } => {
                let p = AttentionParams {
                    num_tokens: t,
                    num_heads: sh.num_heads,
                    num_kv_heads: sh.num_kv_heads,
                    head_dim: sh.head_dim,
                    row_stride: width(qkv),
                    block_size: 1,
                    max_blocks: 1,
                    scale: params.scale,
                    max_context_len: self.len + t,
                    window: params.window.map(|w| w as u32),
                    softcap: params.softcap,
                };
                let keys = std::slice::from_ref(&self.keys[layer]);
                let values = std::slice::from_ref(&self.values[layer]);
                let seq = vec![0u32; t];
                acts[out.0] = attention::reference(&acts[qkv.0], keys, values, &seq, positions, &p);
            }
        }
        Ok(())
    }

    /// Appends the K and V heads of each row of `qkv` to `layer`'s cache, in the cache's
    /// storage type.
    fn write_kv(&mut self, qkv: &[f32], stride: usize, layer: usize) {
        let (q, kv) = (self.attention.q_dim(), self.attention.kv_dim());
        let round = |v: f32| {
            if self.kv_f16 {
                half::f16::from_f32(v).to_f32()
            } else {
                v
            }
        };
        for row in qkv.chunks(stride) {
            self.keys[layer].extend(row[q..q + kv].iter().map(|&v| round(v)));
            self.values[layer].extend(row[q + kv..q + 2 * kv].iter().map(|&v| round(v)));
        }
    }
}

fn add_or_set(out: &mut Vec<f32>, y: Vec<f32>, accumulate: bool) {
    if accumulate {
        out.iter_mut().zip(y).for_each(|(o, v)| *o += v);
    } else {
        *out = y;
    }
}
