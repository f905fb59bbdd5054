// Paged causal attention split over key partitions (flash-decoding), first of two passes:
// for token t of sequence s = token_seq[t] at position pos = positions[t] and query head h
// (KV head h / (num_heads / num_kv_heads)), the keys j in [lo, pos] are used, with
//   lo = 0, or with a sliding window (window > 0) max(0, pos + 1 - window): the key at j is
//   used iff pos - j < window, so the window holds `window` keys counting the query's own
//   (transformers' sliding_window_overlay: kv_idx > q_idx - sliding_window).
// Partition c holds positions [c * PARTITION, (c + 1) * PARTITION); the token's keys lie in
// partitions first = lo / PARTITION .. last = pos / PARTITION, and the workgroup of its r-th
// one (c = first + r) gives, over the keys j in [max(lo, c * PARTITION), min(pos + 1,
// (c + 1) * PARTITION)) (never empty),
//   m   = max_j score_j
//   l   = sum_j exp(score_j - m)
//   acc = sum_j exp(score_j - m) * V[s, j, :]     (not normalised)
// with score_j = scale * q[t, h, :] . K[s, j, :], or softcap * tanh(that / softcap) when
// softcap > 0, and K/V of position j in slot block_tables[s, j / block_size] * block_size
// + j % block_size of this layer's pools. attention_combine.wgsl then merges the partitions
// of each (t, h) into out[t, h, :] = the softmax-weighted sum over all j in [lo, pos]. A token
// whose keys fit in one partition (first == last) gets out[t, h, :] = acc / l here instead
// (what the combine would compute from one partition), and the combine skips it.
//
// Bindings (one layout shared with attention_combine.wgsl, which declares 5, 6 and 7):
//   0 qkv           f32 (T, row_stride): Q heads at columns [0, num_heads * HEAD_DIM)
//   1 k_cache       u32 words (slots, num_kv_heads * HEAD_DIM): f16 pairs when KV_F16, else f32 bits
//   2 v_cache       same layout as k_cache
//   3 block_tables  u32 (S, max_blocks) physical block ids
//   4 token_seq     u32 (T) row of block_tables for each token
//   5 positions     u32 (T)
//   6 scratch       f32 (T, num_heads, part_stride, 2 + HEAD_DIM): m, l, acc[0..HEAD_DIM] of
//                   the token's r-th partition at r
//   7 out           f32 (T, num_heads * HEAD_DIM)
// Immediates: Params below (scale and softcap as f32 bits; window 0 and softcap 0 switch
// those off). HEAD_DIM must be even and at most 256.
// Dispatch: one workgroup of 64 threads per (token, head, r), r fastest: T * num_heads *
// num_parts workgroups (x, then y), num_parts <= part_stride at least the most partitions any
// token of the batch has: ceil(largest pos + 1 / PARTITION), and with a window at most the
// partitions `window` consecutive keys can touch. Workgroups past their token's last partition
// exit at once, so partitions wholly before the window cost nothing and keys before lo are
// never read: the work is O(min(pos + 1, window)).
//
// Batch invariance: PARTITION is fixed for a model, so the partitions of a token depend only
// on its own pos and the window; inside a partition keys are visited in tiles of 64 in position
// order with an online softmax (thread j scores key j of the tile, then thread d accumulates
// V's dimension d over the tile in key order). Nothing depends on the batch, the chunking or
// block placement.

override HEAD_DIM: u32 = 64u;
override KV_F16: bool = true;
override PARTITION: u32 = 256u;
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
    // Partitions dispatched per (token, head) in this batch.
    num_parts: u32,
    // Partitions per (token, head) in the scratch layout.
    part_stride: u32,
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
@group(0) @binding(6) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
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
    if item >= p.num_tokens * p.num_heads * p.num_parts {
        return;
    }
    let r = item % p.num_parts;
    let th = item / p.num_parts;
    let t = th / p.num_heads;
    let h = th % p.num_heads;
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
    let lo = window_start(ctx);
    let first = lo / PARTITION;
    let part = first + r;
    if part * PARTITION >= ctx || r >= p.part_stride {
        return;
    }
    let start = max(lo, part * PARTITION);
    let end = min(ctx, (part + 1u) * PARTITION);

    var m = NEG_BIG;
    var l = 0.0;
    var acc: array<f32, MAX_DIMS_PER_THREAD>;
    for (var s0 = start; s0 < end; s0 += WG) {
        let n = min(WG, end - s0);
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
    if (ctx - 1u) / PARTITION == first {
        for (var i = 0u; i < MAX_DIMS_PER_THREAD; i++) {
            let d = lid + i * WG;
            if d < HEAD_DIM {
                out[th * HEAD_DIM + d] = acc[i] / l;
            }
        }
        return;
    }
    let base = (th * p.part_stride + r) * (HEAD_DIM + 2u);
    if lid == 0u {
        scratch[base] = m;
        scratch[base + 1u] = l;
    }
    for (var i = 0u; i < MAX_DIMS_PER_THREAD; i++) {
        let d = lid + i * WG;
        if d < HEAD_DIM {
            scratch[base + 2u + d] = acc[i];
        }
    }
}
