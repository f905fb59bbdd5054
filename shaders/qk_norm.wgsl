// Per-head RMSNorm of the Q and K heads, in place on the packed QKV rows (Qwen3's and Gemma 3's
// q_norm / k_norm, after the qkv projection and before RoPE). For token t and head h of the
// num_heads Q heads, then the num_kv_heads K heads (Q head 0 starts at column 0 of the row),
// with x = qkv[t * row_stride + h * head_dim ..][..head_dim]:
//   x = (x * inverseSqrt(mean(x^2) + eps)) * w,   w = q_w for a Q head, k_w for a K head.
// The V heads, and whatever follows them in a row, are untouched.
//
// The arithmetic is rms_norm.wgsl's with the head as the row: thread l sums the squares of the
// head's elements l, l + WG, ... in that order with fma, a fixed tree adds the WG partial sums,
// and each element becomes (x * inv) * w. So with the same WG a head gets the same bits as
// rms_norm.wgsl gives that head as a row of its own, and a head's result never depends on the
// batch or on where the head sits in it. In place is safe: every thread writes only the
// elements it read itself, and all of them are read before the barrier.
//
// Bindings:
//   0 qkv  f32 (T, row_stride) read_write
//   1 q_w  f32 (head_dim)
//   2 k_w  f32 (head_dim)
// Immediates: Params below (eps as f32 bits).
// Dispatch: one workgroup of WG per (token, head): T * (num_heads + num_kv_heads) workgroups
// (x <= 65535, then y); workgroup r serves token r / heads, head r % heads. WG is rms_norm's:
// 256 on GPUs, 8 on CPU adapters (see rms_norm.wgsl for why).

override WG: u32 = 256u;

struct Params {
    num_tokens: u32,
    row_stride: u32,
    num_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> q_w: array<f32>;
@group(0) @binding(2) var<storage, read> k_w: array<f32>;
var<immediate> p: Params;

var<workgroup> partial: array<f32, WG>;

// Sum of squares of the head's elements d0, d0 + step, ... in that order.
fn sum_squares(base: u32, d0: u32, step: u32) -> f32 {
    var s = 0.0;
    for (var d = d0; d < p.head_dim; d += step) {
        let v = qkv[base + d];
        s = fma(v, v, s);
    }
    return s;
}

// The head's elements d0, d0 + step, ..., normalized and weighted in place.
fn write_head(is_q: bool, base: u32, sum: f32, d0: u32, step: u32) {
    let inv = inverseSqrt(sum / f32(p.head_dim) + p.eps);
    for (var d = d0; d < p.head_dim; d += step) {
        var w: f32;
        if is_q {
            w = q_w[d];
        } else {
            w = k_w[d];
        }
        qkv[base + d] = (qkv[base + d] * inv) * w;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let heads = p.num_heads + p.num_kv_heads;
    let r = wg.y * nwg.x + wg.x;
    if r >= p.num_tokens * heads {
        return;
    }
    // Uniform over the workgroup: one scalar divide.
    let t = r / heads;
    let h = r % heads;
    let base = t * p.row_stride + h * p.head_dim;
    partial[lid] = sum_squares(base, lid, WG);
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    write_head(h < p.num_heads, base, partial[0], lid, WG);
}
