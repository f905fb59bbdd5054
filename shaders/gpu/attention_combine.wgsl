// Second pass of split (flash-decoding) attention: merges the per-partition results that
// paged_attention_split.wgsl left in scratch into the attention output. For token t at
// position pos = positions[t], query head h and dimension d: the token's keys are [lo, pos],
// lo = 0 or, with a sliding window (window > 0), max(0, pos + 1 - window) (the key at j is
// used iff pos - j < window); they lie in partitions first = lo / PARTITION .. last =
// pos / PARTITION, n = last - first + 1 of them, whose results (m_r, l_r, acc_r) the split
// kernel left at r = 0 .. n - 1 of (t, h), each over at least one key:
//   M = max_r m_r
//   out[t, h, d] = (sum_r exp(m_r - M) * acc_r[d]) / (sum_r exp(m_r - M) * l_r)
// which is the softmax over the keys j in [lo, pos] weighting V. Partitions wholly before the
// window are no part of the n, so no empty partition is ever merged (and M is a real score,
// the largest of the token's: its exp(0) makes the denominator at least 1). Tokens with a
// single partition (n = 1) are skipped: paged_attention_split.wgsl wrote their output itself.
//
// Bindings (the layout shared with paged_attention_split.wgsl; bindings 0-4 are not used here):
//   5 positions     u32 (T)
//   6 scratch       f32 (T, num_heads, part_stride, 2 + HEAD_DIM): m, l, acc[0..HEAD_DIM]
//                   (read only, but read_write to match the shared layout)
//   7 out           f32 (T, num_heads * HEAD_DIM)
// Immediates: Params below (window 0: the whole context).
// Dispatch: one thread per output element, ceil(T * num_heads * HEAD_DIM / 64) workgroups
// of 64 (x, then y past 65535); not dispatched at all when every token of the batch has a
// single partition.
//
// Batch invariance: the partitions and PARTITION depend only on the token's own pos, the
// window and the model, and the sums run over the partitions in the fixed order r = 0, 1, ... .

override HEAD_DIM: u32 = 64u;
override PARTITION: u32 = 256u;
const WG: u32 = 64u;
const NEG_BIG: f32 = -3.0e38;

struct Params {
    num_tokens: u32,
    num_heads: u32,
    // Partitions per (token, head) in the scratch layout.
    part_stride: u32,
    // Keys per sliding window (0: the whole context).
    window: u32,
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
    let pos = positions[t];
    var lo = 0u;
    if p.window > 0u && pos + 1u > p.window {
        lo = pos + 1u - p.window;
    }
    let parts = min(pos / PARTITION - lo / PARTITION + 1u, p.part_stride);
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
