// Second pass of split (flash-decoding) attention: merges the per-partition results that
// paged_attention_split.wgsl left in scratch into the attention output. For token t at
// position pos = positions[t], query head h and dimension d, over the partitions
// c = 0, 1, ..., ceil((pos + 1) / PARTITION) - 1 of (t, h), each holding (m_c, l_c, acc_c):
//   M = max_c m_c
//   out[t, h, d] = (sum_c exp(m_c - M) * acc_c[d]) / (sum_c exp(m_c - M) * l_c)
// which is the softmax over all keys j <= pos weighting V. Tokens with a single partition
// (pos < PARTITION) are skipped: paged_attention_split.wgsl wrote their output itself.
//
// Bindings (the layout shared with paged_attention_split.wgsl; bindings 0-4 are not used here):
//   5 positions     u32 (T)
//   6 scratch       f32 (T, num_heads, part_stride, 2 + HEAD_DIM): m, l, acc[0..HEAD_DIM]
//                   (read only, but read_write to match the shared layout)
//   7 out           f32 (T, num_heads * HEAD_DIM)
// Immediates: Params below.
// Dispatch: one thread per output element, ceil(T * num_heads * HEAD_DIM / 64) workgroups
// of 64 (x, then y past 65535); not dispatched at all when every token of the batch has a
// single partition.
//
// Batch invariance: the partition count and PARTITION depend only on the token's own pos and
// the model, and the sums run over the partitions in the fixed order 0, 1, 2, ... .

override HEAD_DIM: u32 = 64u;
override PARTITION: u32 = 256u;
const WG: u32 = 64u;
const NEG_BIG: f32 = -3.0e38;

struct Params {
    num_tokens: u32,
    num_heads: u32,
    // Partitions per (token, head) in the scratch layout.
    part_stride: u32,
}

@group(0) @binding(5) var<storage, read> positions: array<u32>;
@group(0) @binding(6) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * WG + lid;
    if i >= p.num_tokens * p.num_heads * HEAD_DIM {
        return;
    }
    let th = i / HEAD_DIM;
    let d = i % HEAD_DIM;
    let t = th / p.num_heads;
    let parts = min(positions[t] / PARTITION + 1u, p.part_stride);
    if parts <= 1u {
        return;
    }
    let stride = HEAD_DIM + 2u;
    let base = th * p.part_stride * stride;

    var m = NEG_BIG;
    for (var c = 0u; c < parts; c++) {
        m = max(m, scratch[base + c * stride]);
    }
    var l = 0.0;
    var a = 0.0;
    for (var c = 0u; c < parts; c++) {
        let b = base + c * stride;
        let w = exp(scratch[b] - m);
        l = fma(w, scratch[b + 1u], l);
        a = fma(w, scratch[b + 2u + d], a);
    }
    out[i] = a / l;
}
