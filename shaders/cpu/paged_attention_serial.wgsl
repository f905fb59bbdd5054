// Paged causal attention for CPU adapters (llvmpipe/lavapipe), each thread walking the keys
// alone: the same math as gpu/paged_attention_split.wgsl + gpu/attention_combine.wgsl (the GPU
// form), K/V read as vec4<u32> from buffers or, where the pools live there, from textures at
// 7 and 8 (KV_TEXTURE).
//
// For token t of sequence s = token_seq[t] at position pos = positions[t], and query head h
// (KV head h / (num_heads / num_kv_heads)):
//   out[t, h, :] = sum_{lo <= j <= pos} softmax_j(score_j) * V[s, j, :]
//   score_j = scale * q[t, h, :] . K[s, j, :], or softcap * tanh(that / softcap) when softcap > 0
//   lo = 0, or with a sliding window (window > 0) max(0, pos + 1 - window): the key at j is
//   used iff pos - j < window, so the window holds `window` keys counting the query's own
//   (transformers' sliding_window_overlay: kv_idx > q_idx - sliding_window)
// with K/V of position j in slot block_tables[s, j / block_size] * block_size + j % block_size.
//
// Bindings:
//   0 qkv           f32 (T, row_stride): Q heads at columns [0, num_heads * HEAD_DIM)
//   1 k_cache       u32 words (slots, num_kv_heads * HEAD_DIM), read as vec4<u32>: f16 pairs
//                   when KV_F16, else f32 bits
//   2 v_cache       same layout as k_cache
//   3 block_tables  u32 (S, max_blocks) physical block ids
//   4 token_seq     u32 (T) row of block_tables for each token
//   5 positions     u32 (T)
//   6 out           f32 (T, num_heads * HEAD_DIM)
//   7 k_tex         with KV_TEXTURE, the K pool as texture_2d<u32> (Rgba32Uint) in place of
//                   k_cache: texel j of slot s at ((s % row_slots) * slot_texels + j,
//                   s / row_slots), slot_texels = words per slot / 4 (src/gpu/kv_pool.rs)
//   8 v_tex         same for V
// (The storage the kernel does not read is still declared, and bound to an unused one.)
// Immediates: Params below (scale and softcap as f32 bits; window 0 and softcap 0 switch
// those off). HEAD_DIM must be even and at most 256; GROUP
// (at most 8) must divide num_heads / num_kv_heads.
// A thread serves one token and GROUP query heads of one KV head (a head group: heads
// GROUP * g .. + GROUP, g < G = num_heads / GROUP), so each K/V row it loads serves all of
// them. Dispatch (x, then y past 65535), WG threads per workgroup, by `lanes`:
//   TOKEN_LANES: ceil(T / WG) * G workgroups; workgroup w serves head group w % G for
//     tokens WG * (w / G) + lane (lanes past the batch repeat its last token, unstored);
//   ITEM_LANES: ceil(T * G / WG) workgroups; lane i of workgroup w serves item
//     WG * w + i = token * G + head group (items past T * G repeat the last, unstored);
//   HEAD_LANES (GROUP = 1 and SHARED only): T * num_kv_heads * S workgroups, S = ceil(R / WG)
//     for R = num_heads / num_kv_heads query heads per KV head; workgroup w serves token
//     w / (num_kv_heads * S) and KV head (w / S) % num_kv_heads, lane i its query head
//     (w % S) * WG + i (lanes past R repeat the last, unstored).
// (The wrapper picks TOKEN_LANES with SHARED and T >= WG: a prompt chunk's tokens share rows;
// HEAD_LANES with SHARED where the T * G items fit in one workgroup (a decode batch of one or
// two tokens): a token's heads share rows, and the workgroups spread over the CPU's cores;
// ITEM_LANES otherwise.)
//
// The thread visits keys in position order from lo with an online softmax (running max m, sum
// l and accumulator rescaled per key): q . k sums the dims in increasing order, one fma each,
// and acc = fma(w, v, acc * correction): the order depends only on pos and window, never on
// the batch, the chunking of a prompt or where its blocks live. Keys before lo are never read
// (the walk starts at lo's block): the cost is O(min(pos + 1, window)) per token.
//
// What decides speed on llvmpipe, which runs the 8 lanes of a workgroup as one SIMD program:
// - A load from a storage buffer is a loop over the lanes (~4 ns per lane), whatever its
//   width, where a texel fetch is one gather for all lanes: K/V rows come from textures
//   (KV_TEXTURE) where the runner keeps its pools there, and are read as vec4<u32>s (8 f16 or
//   4 f32 dims each) where rows start on a 16-byte boundary (HEAD_DIM % 8 == 0 with f16, % 4
//   with f32), else word by word.
// - An array indexed by a loop counter NIR does not unroll goes to per-lane scratch memory:
//   queries, accumulators and K/V rows are named mat4x4 values in structs (Part = 64 dims,
//   Head = 4 Parts; Queries and States hold up to 8 heads), every access written out and
//   switched off by `if` on the override constants (folded when the pipeline is built).
// - SHARED (set by the wrapper where the subgroup is exactly the 8-lane workgroup), with
//   TOKEN_LANES or HEAD_LANES: when a workgroup's tokens all belong to one sequence (a prompt
//   chunk; with HEAD_LANES always, as it serves one token), the lanes load each K/V row
//   together, lane i its i-th vec4s, and subgroupBroadcast hands every vec4 to all lanes; the
//   loop runs from the workgroup's earliest lo to its longest context and each lane folds in
//   the keys of its own [lo, pos] only. Other workgroups read privately. Both paths feed the same values to the same
//   arithmetic, and a query head's arithmetic does not depend on GROUP, so a token's result
//   does not depend on which one ran.

override HEAD_DIM: u32 = 64u;
override KV_F16: bool = true;
override WG: u32 = 8u;
// Query heads per thread (at most 8).
override GROUP: u32 = 1u;
// K/V rows shared through subgroupBroadcast (see above).
override SHARED: bool = false;
// K/V read from k_tex / v_tex instead of k_cache / v_cache.
override KV_TEXTURE: bool = false;
const NEG_BIG: f32 = -3.0e38;

struct Params {
    num_tokens: u32,
    num_heads: u32,
    num_kv_heads: u32,
    row_stride: u32,
    block_size: u32,
    max_blocks: u32,
    scale: f32,
    // TOKEN_LANES, ITEM_LANES or HEAD_LANES: what the lanes of a workgroup serve (see the
    // dispatch above).
    lanes: u32,
    // Slots per texture row (KV_TEXTURE), a multiple of block_size.
    row_slots: u32,
    // Keys per sliding window (0: the whole context).
    window: u32,
    // Logit soft-cap (0: none).
    softcap: f32,
}

const ITEM_LANES: u32 = 0u;
const TOKEN_LANES: u32 = 1u;
const HEAD_LANES: u32 = 2u;

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> k_cache: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> v_cache: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> block_tables: array<u32>;
@group(0) @binding(4) var<storage, read> token_seq: array<u32>;
@group(0) @binding(5) var<storage, read> positions: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var k_tex: texture_2d<u32>;
@group(0) @binding(8) var v_tex: texture_2d<u32>;
var<immediate> p: Params;

// 64 dims of a head: dims 16i .. 16i + 15 in mi, column c holding 16i + 4c .. + 3.
struct Part {
    m0: mat4x4<f32>,
    m1: mat4x4<f32>,
    m2: mat4x4<f32>,
    m3: mat4x4<f32>,
}

// A whole head: dims 64i .. 64i + 63 in pi (zero past HEAD_DIM).
struct Head {
    p0: Part,
    p1: Part,
    p2: Part,
    p3: Part,
}

// One query head's online softmax.
struct State {
    m: f32,
    l: f32,
    acc: Head,
}

// The thread's query heads (q0 .. q<GROUP-1>) and their states.
struct Queries {
    q0: Head,
    q1: Head,
    q2: Head,
    q3: Head,
    q4: Head,
    q5: Head,
    q6: Head,
    q7: Head,
}

struct States {
    s0: State,
    s1: State,
    s2: State,
    s3: State,
    s4: State,
    s5: State,
    s6: State,
    s7: State,
}

// The stand-in the wrapper renames subgroupBroadcast calls to where subgroups are missing
// (SHARED is off there, so it never runs).
fn subgroup_broadcast_unavailable(v: vec4<u32>, from_lane: u32) -> vec4<u32> {
    return v;
}

// Rows start on a 16-byte boundary, so they are read as whole vec4<u32>s.
fn aligned() -> bool {
    return select(HEAD_DIM % 4u == 0u, HEAD_DIM % 8u == 0u, KV_F16);
}

// Dims per vec4<u32> of the cache.
fn vec_dims() -> u32 {
    return select(4u, 8u, KV_F16);
}

// The i-th vec4<u32> of pool row y (the buffer has one row: y is 0 there).
fn pool_vec(v: bool, i: u32, y: u32) -> vec4<u32> {
    if KV_TEXTURE {
        if v {
            return textureLoad(v_tex, vec2<u32>(i, y), 0);
        }
        return textureLoad(k_tex, vec2<u32>(i, y), 0);
    }
    if v {
        return v_cache[i];
    }
    return k_cache[i];
}

// Where a K/V row is: it starts at element `row` of pool row `y` (see KeyCursor).
// The vec4<u32> holding dims d .. d + vec_dims() - 1 of the row (aligned rows; zero past
// HEAD_DIM).
fn row_vec(v: bool, row: u32, y: u32, d: u32) -> vec4<u32> {
    if d >= HEAD_DIM {
        return vec4<u32>();
    }
    return pool_vec(v, (row + d) / vec_dims(), y);
}

// Element d of the row (any alignment; zero past HEAD_DIM).
fn row_elem(v: bool, row: u32, y: u32, d: u32) -> f32 {
    if d >= HEAD_DIM {
        return 0.0;
    }
    let e = select(row + d, (row + d) / 2u, KV_F16);
    let w = pool_vec(v, e / 4u, y)[e % 4u];
    if KV_F16 {
        let h = unpack2x16float(w);
        return select(h.x, h.y, (row + d) % 2u == 1u);
    }
    return bitcast<f32>(w);
}

fn elem_vec(v: bool, row: u32, y: u32, d: u32) -> vec4<f32> {
    return vec4<f32>(
        row_elem(v, row, y, d),
        row_elem(v, row, y, d + 1u),
        row_elem(v, row, y, d + 2u),
        row_elem(v, row, y, d + 3u),
    );
}

fn halves(w: vec4<u32>) -> mat2x4<f32> {
    return mat2x4<f32>(
        vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)),
        vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)),
    );
}

// 16 dims from the vec4<u32>s holding them: a, b with f16; a, b, c, d with f32.
fn to_mat(a: vec4<u32>, b: vec4<u32>, c: vec4<u32>, d: vec4<u32>) -> mat4x4<f32> {
    if KV_F16 {
        let x = halves(a);
        let y = halves(b);
        return mat4x4<f32>(x[0], x[1], y[0], y[1]);
    }
    return mat4x4<f32>(
        bitcast<vec4<f32>>(a),
        bitcast<vec4<f32>>(b),
        bitcast<vec4<f32>>(c),
        bitcast<vec4<f32>>(d),
    );
}

// Dims d .. d + 15 of a K (v false) or V row, read by this thread alone.
fn load_mat(v: bool, row: u32, y: u32, d: u32) -> mat4x4<f32> {
    if d >= HEAD_DIM {
        return mat4x4<f32>();
    }
    if aligned() {
        let s = vec_dims();
        if KV_F16 {
            return to_mat(
                row_vec(v, row, y, d),
                row_vec(v, row, y, d + s),
                vec4<u32>(),
                vec4<u32>(),
            );
        }
        return to_mat(
            row_vec(v, row, y, d),
            row_vec(v, row, y, d + s),
            row_vec(v, row, y, d + 2u * s),
            row_vec(v, row, y, d + 3u * s),
        );
    }
    return mat4x4<f32>(
        elem_vec(v, row, y, d),
        elem_vec(v, row, y, d + 4u),
        elem_vec(v, row, y, d + 8u),
        elem_vec(v, row, y, d + 12u),
    );
}

fn load_part(v: bool, row: u32, y: u32, d: u32) -> Part {
    return Part(
        load_mat(v, row, y, d),
        load_mat(v, row, y, d + 16u),
        load_mat(v, row, y, d + 32u),
        load_mat(v, row, y, d + 48u),
    );
}

fn load_head(v: bool, row: u32, y: u32) -> Head {
    var h: Head;
    h.p0 = load_part(v, row, y, 0u);
    if HEAD_DIM > 64u {
        h.p1 = load_part(v, row, y, 64u);
    }
    if HEAD_DIM > 128u {
        h.p2 = load_part(v, row, y, 128u);
    }
    if HEAD_DIM > 192u {
        h.p3 = load_part(v, row, y, 192u);
    }
    return h;
}

// Dims d .. d + 63 of a K or V row, loaded by the 8 lanes together (SHARED): lane i reads the
// i-th vec4<u32> of them (f32: also the (8 + i)-th), and each is broadcast to all lanes.
fn share_part(v: bool, row: u32, y: u32, d: u32, lane: u32) -> Part {
    let s = vec_dims();
    let a = row_vec(v, row, y, d + lane * s);
    let a0 = subgroupBroadcast(a, 0u);
    let a1 = subgroupBroadcast(a, 1u);
    let a2 = subgroupBroadcast(a, 2u);
    let a3 = subgroupBroadcast(a, 3u);
    let a4 = subgroupBroadcast(a, 4u);
    let a5 = subgroupBroadcast(a, 5u);
    let a6 = subgroupBroadcast(a, 6u);
    let a7 = subgroupBroadcast(a, 7u);
    if KV_F16 {
        let z = vec4<u32>();
        return Part(
            to_mat(a0, a1, z, z),
            to_mat(a2, a3, z, z),
            to_mat(a4, a5, z, z),
            to_mat(a6, a7, z, z),
        );
    }
    let b = row_vec(v, row, y, d + (8u + lane) * s);
    let b0 = subgroupBroadcast(b, 0u);
    let b1 = subgroupBroadcast(b, 1u);
    let b2 = subgroupBroadcast(b, 2u);
    let b3 = subgroupBroadcast(b, 3u);
    let b4 = subgroupBroadcast(b, 4u);
    let b5 = subgroupBroadcast(b, 5u);
    let b6 = subgroupBroadcast(b, 6u);
    let b7 = subgroupBroadcast(b, 7u);
    return Part(
        to_mat(a0, a1, a2, a3),
        to_mat(a4, a5, a6, a7),
        to_mat(b0, b1, b2, b3),
        to_mat(b4, b5, b6, b7),
    );
}

fn share_head(v: bool, row: u32, y: u32, lane: u32) -> Head {
    var h: Head;
    h.p0 = share_part(v, row, y, 0u, lane);
    if HEAD_DIM > 64u {
        h.p1 = share_part(v, row, y, 64u, lane);
    }
    if HEAD_DIM > 128u {
        h.p2 = share_part(v, row, y, 128u, lane);
    }
    if HEAD_DIM > 192u {
        h.p3 = share_part(v, row, y, 192u, lane);
    }
    return h;
}

fn q_elem(b: u32, d: u32) -> f32 {
    if d >= HEAD_DIM {
        return 0.0;
    }
    return qkv[b + d];
}

fn q_vec(b: u32, d: u32) -> vec4<f32> {
    return vec4<f32>(q_elem(b, d), q_elem(b, d + 1u), q_elem(b, d + 2u), q_elem(b, d + 3u));
}

fn q_mat(b: u32, d: u32) -> mat4x4<f32> {
    return mat4x4<f32>(q_vec(b, d), q_vec(b, d + 4u), q_vec(b, d + 8u), q_vec(b, d + 12u));
}

fn q_part(b: u32, d: u32) -> Part {
    return Part(q_mat(b, d), q_mat(b, d + 16u), q_mat(b, d + 32u), q_mat(b, d + 48u));
}

// The query head whose first column in qkv is b.
fn load_q(b: u32) -> Head {
    var h: Head;
    h.p0 = q_part(b, 0u);
    if HEAD_DIM > 64u {
        h.p1 = q_part(b, 64u);
    }
    if HEAD_DIM > 128u {
        h.p2 = q_part(b, 128u);
    }
    if HEAD_DIM > 192u {
        h.p3 = q_part(b, 192u);
    }
    return h;
}

// s + q . k over dims d .. d + 15, in increasing order (nothing past HEAD_DIM).
fn mat_dot(s: f32, q: mat4x4<f32>, k: mat4x4<f32>, d: u32) -> f32 {
    var r = s;
    if d < HEAD_DIM {
        r = fma(q[0].x, k[0].x, r);
        r = fma(q[0].y, k[0].y, r);
        r = fma(q[0].z, k[0].z, r);
        r = fma(q[0].w, k[0].w, r);
    }
    if d + 4u < HEAD_DIM {
        r = fma(q[1].x, k[1].x, r);
        r = fma(q[1].y, k[1].y, r);
        r = fma(q[1].z, k[1].z, r);
        r = fma(q[1].w, k[1].w, r);
    }
    if d + 8u < HEAD_DIM {
        r = fma(q[2].x, k[2].x, r);
        r = fma(q[2].y, k[2].y, r);
        r = fma(q[2].z, k[2].z, r);
        r = fma(q[2].w, k[2].w, r);
    }
    if d + 12u < HEAD_DIM {
        r = fma(q[3].x, k[3].x, r);
        r = fma(q[3].y, k[3].y, r);
        r = fma(q[3].z, k[3].z, r);
        r = fma(q[3].w, k[3].w, r);
    }
    return r;
}

fn part_dot(s: f32, q: Part, k: Part, d: u32) -> f32 {
    var r = mat_dot(s, q.m0, k.m0, d);
    r = mat_dot(r, q.m1, k.m1, d + 16u);
    r = mat_dot(r, q.m2, k.m2, d + 32u);
    return mat_dot(r, q.m3, k.m3, d + 48u);
}

fn head_dot(q: Head, k: Head) -> f32 {
    var r = part_dot(0.0, q.p0, k.p0, 0u);
    if HEAD_DIM > 64u {
        r = part_dot(r, q.p1, k.p1, 64u);
    }
    if HEAD_DIM > 128u {
        r = part_dot(r, q.p2, k.p2, 128u);
    }
    if HEAD_DIM > 192u {
        r = part_dot(r, q.p3, k.p3, 192u);
    }
    return r;
}

// fma(w, v, a * c) per dim.
fn mat_axpy(a: mat4x4<f32>, c: f32, w: f32, v: mat4x4<f32>) -> mat4x4<f32> {
    let wv = vec4<f32>(w);
    return mat4x4<f32>(
        fma(wv, v[0], a[0] * c),
        fma(wv, v[1], a[1] * c),
        fma(wv, v[2], a[2] * c),
        fma(wv, v[3], a[3] * c),
    );
}

fn part_axpy(a: Part, c: f32, w: f32, v: Part) -> Part {
    return Part(
        mat_axpy(a.m0, c, w, v.m0),
        mat_axpy(a.m1, c, w, v.m1),
        mat_axpy(a.m2, c, w, v.m2),
        mat_axpy(a.m3, c, w, v.m3),
    );
}

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

// One key for one query head.
fn step(st: State, q: Head, k: Head, v: Head) -> State {
    let score = cap(head_dot(q, k) * p.scale);
    let m_new = max(st.m, score);
    let c = exp(st.m - m_new);
    let w = exp(score - m_new);
    var o = st;
    o.m = m_new;
    o.l = st.l * c + w;
    o.acc.p0 = part_axpy(st.acc.p0, c, w, v.p0);
    if HEAD_DIM > 64u {
        o.acc.p1 = part_axpy(st.acc.p1, c, w, v.p1);
    }
    if HEAD_DIM > 128u {
        o.acc.p2 = part_axpy(st.acc.p2, c, w, v.p2);
    }
    if HEAD_DIM > 192u {
        o.acc.p3 = part_axpy(st.acc.p3, c, w, v.p3);
    }
    return o;
}

// One key for each of the thread's query heads.
fn step_all(st: States, q: Queries, k: Head, v: Head) -> States {
    var o = st;
    o.s0 = step(st.s0, q.q0, k, v);
    if GROUP > 1u {
        o.s1 = step(st.s1, q.q1, k, v);
    }
    if GROUP > 2u {
        o.s2 = step(st.s2, q.q2, k, v);
    }
    if GROUP > 3u {
        o.s3 = step(st.s3, q.q3, k, v);
    }
    if GROUP > 4u {
        o.s4 = step(st.s4, q.q4, k, v);
    }
    if GROUP > 5u {
        o.s5 = step(st.s5, q.q5, k, v);
    }
    if GROUP > 6u {
        o.s6 = step(st.s6, q.q6, k, v);
    }
    if GROUP > 7u {
        o.s7 = step(st.s7, q.q7, k, v);
    }
    return o;
}

fn store_vec(o: u32, d: u32, a: vec4<f32>) {
    if d < HEAD_DIM {
        out[o + d] = a.x;
        out[o + d + 1u] = a.y;
    }
    if d + 2u < HEAD_DIM {
        out[o + d + 2u] = a.z;
        out[o + d + 3u] = a.w;
    }
}

fn store_mat(o: u32, d: u32, a: mat4x4<f32>, l: f32) {
    store_vec(o, d, a[0] / l);
    store_vec(o, d + 4u, a[1] / l);
    store_vec(o, d + 8u, a[2] / l);
    store_vec(o, d + 12u, a[3] / l);
}

fn store_part(o: u32, d: u32, a: Part, l: f32) {
    store_mat(o, d, a.m0, l);
    store_mat(o, d + 16u, a.m1, l);
    store_mat(o, d + 32u, a.m2, l);
    store_mat(o, d + 48u, a.m3, l);
}

// Writes acc / l of a query head whose first column in out is o.
fn store_head(o: u32, st: State) {
    store_part(o, 0u, st.acc.p0, st.l);
    if HEAD_DIM > 64u {
        store_part(o, 64u, st.acc.p1, st.l);
    }
    if HEAD_DIM > 128u {
        store_part(o, 128u, st.acc.p2, st.l);
    }
    if HEAD_DIM > 192u {
        store_part(o, 192u, st.acc.p3, st.l);
    }
}

// Where the keys of a sequence are read from, walked in position order: key j sits at offset
// j % block_size of logical block j / block_size, and the walk steps both along instead of
// dividing per key (x86 has no vector integer divide).
struct KeyCursor {
    logical: u32,
    offset: u32,
    // First slot of the physical block of `logical`, counted from the start of its pool row
    // `y` (a texture row; the buffer is one row).
    slot0: u32,
    y: u32,
}

// The cursor at offset 0 of physical block `block`, logical block `logical`. With textures,
// one division per block finds its row.
fn block_key(logical: u32, block: u32) -> KeyCursor {
    let s = block * p.block_size;
    if KV_TEXTURE {
        let y = s / p.row_slots;
        return KeyCursor(logical, 0u, s - y * p.row_slots, y);
    }
    return KeyCursor(logical, 0u, s, 0u);
}

// Key j of the sequence whose block-table row starts at `table` (one division, per walk).
fn key_at(table: u32, j: u32) -> KeyCursor {
    let logical = j / p.block_size;
    var c = block_key(logical, block_tables[table + logical]);
    c.offset = j - logical * p.block_size;
    return c;
}

// Called before reading each key, after the previous one bumped `offset`: moves on to the next
// block when the current one is used up (so no block past the context is ever looked up).
fn enter_key(c: KeyCursor, table: u32) -> KeyCursor {
    if c.offset < p.block_size {
        return c;
    }
    return block_key(c.logical + 1u, block_tables[table + c.logical + 1u]);
}

// First element of the key's K/V row for `kv_head`, in pool row c.y.
fn key_row(c: KeyCursor, kv_dim: u32, kv_head: u32) -> u32 {
    return (c.slot0 + c.offset) * kv_dim + kv_head * HEAD_DIM;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lane: u32) {
    let groups = p.num_heads / GROUP;
    let w = wg.y * nwg.x + wg.x;
    let last = p.num_tokens - 1u;
    let t0 = (w / groups) * WG;
    var t = min(t0 + lane, last);
    // HEAD_LANES: query heads per KV head, workgroups per KV head and per token.
    let per_kv = p.num_heads / p.num_kv_heads;
    let sets = (per_kv + WG - 1u) / WG;
    let per_token = p.num_kv_heads * sets;
    var h0 = (w % groups) * GROUP;
    var live = t0 + lane <= last;
    if p.lanes == ITEM_LANES {
        let items = p.num_tokens * groups;
        if w * WG >= items {
            return;
        }
        let item = min(w * WG + lane, items - 1u);
        t = item / groups;
        h0 = (item % groups) * GROUP;
        live = w * WG + lane < items;
    } else if p.lanes == HEAD_LANES {
        if w >= p.num_tokens * per_token {
            return;
        }
        t = w / per_token;
        let i = (w % sets) * WG + lane;
        h0 = ((w % per_token) / sets) * per_kv + min(i, per_kv - 1u);
        live = i < per_kv;
    } else if t0 > last {
        return;
    }
    let kv_head = h0 / per_kv;
    let kv_dim = p.num_kv_heads * HEAD_DIM;
    let seq = token_seq[t];
    let ctx = positions[t] + 1u;
    let lo = window_start(ctx);

    let qb = t * p.row_stride + h0 * HEAD_DIM;
    var q: Queries;
    q.q0 = load_q(qb);
    if GROUP > 1u {
        q.q1 = load_q(qb + HEAD_DIM);
    }
    if GROUP > 2u {
        q.q2 = load_q(qb + 2u * HEAD_DIM);
    }
    if GROUP > 3u {
        q.q3 = load_q(qb + 3u * HEAD_DIM);
    }
    if GROUP > 4u {
        q.q4 = load_q(qb + 4u * HEAD_DIM);
    }
    if GROUP > 5u {
        q.q5 = load_q(qb + 5u * HEAD_DIM);
    }
    if GROUP > 6u {
        q.q6 = load_q(qb + 6u * HEAD_DIM);
    }
    if GROUP > 7u {
        q.q7 = load_q(qb + 7u * HEAD_DIM);
    }
    var init: State;
    init.m = NEG_BIG;
    var st = States(init, init, init, init, init, init, init, init);

    // Whether the workgroup's tokens all belong to one sequence, their longest context and
    // earliest first key: every lane reads the same words, so all are uniform (HEAD_LANES: one
    // token). `lead`: the workgroup's first token, from workgroup-uniform values only.
    var one_seq = SHARED && aligned() && p.lanes != ITEM_LANES;
    let lead = min(select(t0, w / per_token, p.lanes == HEAD_LANES), last);
    var longest = positions[lead] + 1u;
    var earliest = window_start(longest);
    if one_seq && p.lanes == TOKEN_LANES {
        let seq0 = token_seq[t0];
        for (var i = 0u; i < WG; i++) {
            let u = min(t0 + i, last);
            one_seq = one_seq && token_seq[u] == seq0;
            longest = max(longest, positions[u] + 1u);
            earliest = min(earliest, window_start(positions[u] + 1u));
        }
    }
    if one_seq {
        let table = token_seq[lead] * p.max_blocks;
        var key = key_at(table, earliest);
        for (var j = earliest; j < longest; j++) {
            key = enter_key(key, table);
            let row = key_row(key, kv_dim, kv_head);
            key.offset++;
            let k = share_head(false, row, key.y, lane);
            let v = share_head(true, row, key.y, lane);
            if j >= lo && j < ctx {
                st = step_all(st, q, k, v);
            }
        }
    } else {
        let table = seq * p.max_blocks;
        var key = key_at(table, lo);
        for (var j = lo; j < ctx; j++) {
            key = enter_key(key, table);
            let row = key_row(key, kv_dim, kv_head);
            key.offset++;
            st = step_all(st, q, load_head(false, row, key.y), load_head(true, row, key.y));
        }
    }

    if !live {
        return;
    }
    let ob = t * p.num_heads * HEAD_DIM + h0 * HEAD_DIM;
    store_head(ob, st.s0);
    if GROUP > 1u {
        store_head(ob + HEAD_DIM, st.s1);
    }
    if GROUP > 2u {
        store_head(ob + 2u * HEAD_DIM, st.s2);
    }
    if GROUP > 3u {
        store_head(ob + 3u * HEAD_DIM, st.s3);
    }
    if GROUP > 4u {
        store_head(ob + 4u * HEAD_DIM, st.s4);
    }
    if GROUP > 5u {
        store_head(ob + 5u * HEAD_DIM, st.s5);
    }
    if GROUP > 6u {
        store_head(ob + 6u * HEAD_DIM, st.s6);
    }
    if GROUP > 7u {
        store_head(ob + 7u * HEAD_DIM, st.s7);
    }
}
