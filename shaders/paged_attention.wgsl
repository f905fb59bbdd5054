// Paged causal attention over packed, variable-length queries (prefill chunks and decode
// tokens alike): for token t of sequence s = token_seq[t] at position pos = positions[t],
// and query head h (KV head h / (num_heads / num_kv_heads)):
//   out[t, h, :] = sum_{lo <= j <= pos} softmax_j(score_j) * V[s, j, :]
//   score_j = scale * q[t, h, :] . K[s, j, :], or softcap * tanh(that / softcap) when softcap > 0
//   lo = 0, or with a sliding window (window > 0) max(0, pos + 1 - window): the key at j is
//   used iff pos - j < window, so the window holds `window` keys counting the query's own
//   (transformers' sliding_window_overlay: kv_idx > q_idx - sliding_window)
// where K/V of position j live in slot block_tables[s, j / block_size] * block_size
// + j % block_size of this layer's pools. The KV of the batch's own tokens must already be
// written (kv_write runs first), so a prompt chunk attends to itself and to earlier chunks.
//
// Bindings:
//   0 qkv           f32 (T, row_stride): Q heads at columns [0, num_heads * HEAD_DIM)
//   1 k_cache       u32 words (slots, num_kv_heads * HEAD_DIM): f16 pairs when KV_F16, else f32 bits
//   2 v_cache       same layout as k_cache
//   3 block_tables  u32 (S, max_blocks) physical block ids
//   4 token_seq     u32 (T) row of block_tables for each token
//   5 positions     u32 (T)
//   6 out           f32 (T, num_heads * HEAD_DIM)
// Immediates: Params below (scale and softcap as f32 bits; window 0 and softcap 0 switch
// those off). HEAD_DIM must be even and at most 256.
// Dispatch: one workgroup of 64 threads per (token, head): T * num_heads workgroups (x, then y).
// Keys are visited in tiles of 64 in position order from lo, with an online softmax: thread j
// scores key j of the tile, then thread d accumulates V's dimension d over the tile in key
// order. Keys before lo are never read: the cost is O(min(pos + 1, window)). The order
// depends only on pos and window, never on the batch, chunking or block placement.

override HEAD_DIM: u32 = 64u;
override KV_F16: bool = true;
const WG: u32 = 64u;
const MAX_DIMS_PER_THREAD: u32 = 4u;
const NEG_BIG: f32 = -3.0e38;

struct Params {
    num_tokens: u32,
    num_heads: u32,
    num_kv_heads: u32,
    row_stride: u32,
    block_size: u32,
    max_blocks: u32,
    scale: f32,
    // Keys per sliding window (0: the whole context).
    window: u32,
    // Logit soft-cap (0: none).
    softcap: f32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> k_cache: array<u32>;
@group(0) @binding(2) var<storage, read> v_cache: array<u32>;
@group(0) @binding(3) var<storage, read> block_tables: array<u32>;
@group(0) @binding(4) var<storage, read> token_seq: array<u32>;
@group(0) @binding(5) var<storage, read> positions: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
var<immediate> p: Params;

var<workgroup> q_tile: array<f32, HEAD_DIM>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> slots: array<u32, WG>;
var<workgroup> context_len: u32;

// Soft-caps a score (softcap > 0): softcap * tanh(score / softcap). The argument is clamped
// where tanh is already 1 in f32, so that no driver's tanh overflows.
fn cap(score: f32) -> f32 {
    if p.softcap > 0.0 {
        return p.softcap * tanh(clamp(score / p.softcap, -15.0, 15.0));
    }
    return score;
}

// The first key of a context of ctx keys: 0, or the sliding window's first.
fn window_start(ctx: u32) -> u32 {
    if p.window > 0u && ctx > p.window {
        return ctx - p.window;
    }
    return 0u;
}

fn load_k2(i: u32) -> vec2<f32> {
    if KV_F16 {
        return unpack2x16float(k_cache[i >> 1u]);
    }
    return vec2<f32>(bitcast<f32>(k_cache[i]), bitcast<f32>(k_cache[i + 1u]));
}

fn load_v(i: u32) -> f32 {
    if KV_F16 {
        let v = unpack2x16float(v_cache[i >> 1u]);
        return select(v.x, v.y, (i & 1u) == 1u);
    }
    return bitcast<f32>(v_cache[i]);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let item = wg.y * nwg.x + wg.x;
    if item >= p.num_tokens * p.num_heads {
        return;
    }
    let t = item / p.num_heads;
    let h = item % p.num_heads;
    let kv_head = h / (p.num_heads / p.num_kv_heads);
    let kv_dim = p.num_kv_heads * HEAD_DIM;
    let seq = token_seq[t];
    if lid == 0u {
        context_len = positions[t] + 1u;
    }
    for (var d = lid; d < HEAD_DIM; d += WG) {
        q_tile[d] = qkv[t * p.row_stride + h * HEAD_DIM + d];
    }
    let ctx = workgroupUniformLoad(&context_len);

    var m = NEG_BIG;
    var l = 0.0;
    var acc: array<f32, MAX_DIMS_PER_THREAD>;
    for (var s0 = window_start(ctx); s0 < ctx; s0 += WG) {
        let n = min(WG, ctx - s0);
        var score = NEG_BIG;
        if lid < n {
            let pos = s0 + lid;
            let block = block_tables[seq * p.max_blocks + pos / p.block_size];
            let slot = block * p.block_size + pos % p.block_size;
            slots[lid] = slot;
            let base = slot * kv_dim + kv_head * HEAD_DIM;
            var dot = 0.0;
            for (var d = 0u; d < HEAD_DIM; d += 2u) {
                let k = load_k2(base + d);
                dot = fma(q_tile[d], k.x, dot);
                dot = fma(q_tile[d + 1u], k.y, dot);
            }
            score = cap(dot * p.scale);
        }
        probs[lid] = score;
        workgroupBarrier();
        var tile_max = m;
        for (var j = 0u; j < n; j++) {
            tile_max = max(tile_max, probs[j]);
        }
        workgroupBarrier();
        if lid < n {
            probs[lid] = exp(score - tile_max);
        }
        workgroupBarrier();
        let correction = exp(m - tile_max);
        l = l * correction;
        for (var j = 0u; j < n; j++) {
            l = l + probs[j];
        }
        for (var i = 0u; i < MAX_DIMS_PER_THREAD; i++) {
            let d = lid + i * WG;
            if d < HEAD_DIM {
                var a = acc[i] * correction;
                for (var j = 0u; j < n; j++) {
                    a = fma(probs[j], load_v(slots[j] * kv_dim + kv_head * HEAD_DIM + d), a);
                }
                acc[i] = a;
            }
        }
        m = tile_max;
        workgroupBarrier();
    }
    for (var i = 0u; i < MAX_DIMS_PER_THREAD; i++) {
        let d = lid + i * WG;
        if d < HEAD_DIM {
            out[t * p.num_heads * HEAD_DIM + h * HEAD_DIM + d] = acc[i] / l;
        }
    }
}
