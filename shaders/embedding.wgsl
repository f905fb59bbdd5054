// Embedding lookup: x[t, d] = E[token_ids[t] - first_id, d] (+ pos_table[positions[t], d]
// when HAS_POS) for the tokens whose id lies in [first_id, first_id + vocab); other rows are
// left untouched, so a table split across buffers is one dispatch per part.
// The table E is stored the way matmul stores weights, transposed: (D, table_stride) with
// table_stride = vocab rounded up to a multiple of 8, so a tied LM head and the embedding share one copy.
//
// Bindings:
//   0 token_ids  u32 (T)
//   1 positions  u32 (T)
//   2 table      (D, table_stride) weights: f16 pairs packed in u32 when W_F16, else f32 bits
//   3 pos_table  (P, D) row-major, same encoding (any buffer when !HAS_POS)
//   4 x          f32 (T, D) output
// Immediates: Params below.
// Dispatch: ceil(T*D / 256) workgroups of 256, spread over x and y (x ≤ 65535).
// Ids are checked against the whole vocabulary on the CPU before dispatch.

override W_F16: bool = true;
override HAS_POS: bool = false;

struct Params {
    num_tokens: u32,
    dim: u32,
    vocab: u32,
    num_positions: u32,
    first_id: u32,
    table_stride: u32,
}

@group(0) @binding(0) var<storage, read> token_ids: array<u32>;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read> pos_table: array<u32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
var<immediate> p: Params;

fn load_table(i: u32) -> f32 {
    if W_F16 {
        let v = unpack2x16float(table[i >> 1u]);
        return select(v.x, v.y, (i & 1u) == 1u);
    }
    return bitcast<f32>(table[i]);
}

fn load_pos(i: u32) -> f32 {
    if W_F16 {
        let v = unpack2x16float(pos_table[i >> 1u]);
        return select(v.x, v.y, (i & 1u) == 1u);
    }
    return bitcast<f32>(pos_table[i]);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    if i >= p.num_tokens * p.dim {
        return;
    }
    let t = i / p.dim;
    let d = i % p.dim;
    let tok = token_ids[t];
    if tok < p.first_id || tok - p.first_id >= p.vocab {
        return;
    }
    var v = load_table(d * p.table_stride + (tok - p.first_id));
    if HAS_POS {
        let pos = positions[t];
        if pos < p.num_positions {
            v = v + load_pos(pos * p.dim + d);
        }
    }
    x[i] = v;
}
