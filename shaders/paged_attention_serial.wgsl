// Paged causal attention, one thread per (token, query head): the same contract as
// paged_attention.wgsl (bindings, immediates, math), for adapters where a thread walking the
// keys alone is fastest (CPU adapters such as llvmpipe, whose every storage or workgroup load
// costs a loop over the SIMD lanes and whose barriers are expensive).
//
// For token t of sequence s = token_seq[t] at position pos = positions[t], and query head h
// (KV head h / (num_heads / num_kv_heads)):
//   out[t, h, :] = sum_{j <= pos} softmax_j(scale * q[t, h, :] . K[s, j, :]) * V[s, j, :]
// with K/V of position j in slot block_tables[s, j / block_size] * block_size + j % block_size.
//
// Bindings:
//   0 qkv           f32 (T, row_stride): Q heads at columns [0, num_heads * HEAD_DIM)
//   1 k_cache       u32 words (slots, num_kv_heads * HEAD_DIM): f16 pairs when KV_F16, else f32 bits
//   2 v_cache       same layout as k_cache
//   3 block_tables  u32 (S, max_blocks) physical block ids
//   4 token_seq     u32 (T) row of block_tables for each token
//   5 positions     u32 (T)
//   6 out           f32 (T, num_heads * HEAD_DIM)
// Immediates: Params below (scale as f32 bits). HEAD_DIM must be even and at most 256.
// Dispatch: ceil(T * num_heads / WG) workgroups of WG threads (x, then y past 65535).
//
// The thread visits keys in position order with an online softmax (running max m, sum l and
// accumulator rescaled per key): the order depends only on pos, never on the batch, the
// chunking of a prompt or where its blocks live.

override HEAD_DIM: u32 = 64u;
override KV_F16: bool = true;
override WG: u32 = 8u;
// Pairs of dimensions in the largest head.
const MAX_PAIRS: u32 = 128u;
const NEG_BIG: f32 = -3.0e38;

struct Params {
    num_tokens: u32,
    num_heads: u32,
    num_kv_heads: u32,
    row_stride: u32,
    block_size: u32,
    max_blocks: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> k_cache: array<u32>;
@group(0) @binding(2) var<storage, read> v_cache: array<u32>;
@group(0) @binding(3) var<storage, read> block_tables: array<u32>;
@group(0) @binding(4) var<storage, read> token_seq: array<u32>;
@group(0) @binding(5) var<storage, read> positions: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

// Elements i and i + 1 (i even) of a cache row.
fn load_k2(i: u32) -> vec2<f32> {
    if KV_F16 {
        return unpack2x16float(k_cache[i >> 1u]);
    }
    return vec2<f32>(bitcast<f32>(k_cache[i]), bitcast<f32>(k_cache[i + 1u]));
}

fn load_v2(i: u32) -> vec2<f32> {
    if KV_F16 {
        return unpack2x16float(v_cache[i >> 1u]);
    }
    return vec2<f32>(bitcast<f32>(v_cache[i]), bitcast<f32>(v_cache[i + 1u]));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let item = (wg.y * nwg.x + wg.x) * WG + lid;
    if item >= p.num_tokens * p.num_heads {
        return;
    }
    let t = item / p.num_heads;
    let h = item % p.num_heads;
    let kv_head = h / (p.num_heads / p.num_kv_heads);
    let kv_dim = p.num_kv_heads * HEAD_DIM;
    let seq = token_seq[t];
    let ctx = positions[t] + 1u;
    let pairs = HEAD_DIM / 2u;

    var q: array<vec2<f32>, MAX_PAIRS>;
    var acc: array<vec2<f32>, MAX_PAIRS>;
    let qb = t * p.row_stride + h * HEAD_DIM;
    for (var i = 0u; i < pairs; i++) {
        q[i] = vec2<f32>(qkv[qb + 2u * i], qkv[qb + 2u * i + 1u]);
        acc[i] = vec2<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    for (var j = 0u; j < ctx; j++) {
        let block = block_tables[seq * p.max_blocks + j / p.block_size];
        let base = (block * p.block_size + j % p.block_size) * kv_dim + kv_head * HEAD_DIM;
        var dot = 0.0;
        for (var i = 0u; i < pairs; i++) {
            let k = load_k2(base + 2u * i);
            dot = fma(q[i].x, k.x, dot);
            dot = fma(q[i].y, k.y, dot);
        }
        let score = dot * p.scale;
        let m_new = max(m, score);
        let correction = exp(m - m_new);
        let w = exp(score - m_new);
        l = l * correction + w;
        for (var i = 0u; i < pairs; i++) {
            acc[i] = fma(vec2<f32>(w), load_v2(base + 2u * i), acc[i] * correction);
        }
        m = m_new;
    }
    let ob = t * p.num_heads * HEAD_DIM + h * HEAD_DIM;
    for (var i = 0u; i < pairs; i++) {
        out[ob + 2u * i] = acc[i].x / l;
        out[ob + 2u * i + 1u] = acc[i].y / l;
    }
}
