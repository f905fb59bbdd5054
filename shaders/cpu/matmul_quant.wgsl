// Matrix multiply with a quantized linear weight: y[m, y_col + n] (+)= sum_k x[m, k] * W[n, k] + bias[n]
//
// Same contract as matmul.wgsl, but W (N out-features × K in-features, K a multiple of 32)
// stays in GGUF's 32-weight blocks and is dequantized in registers. Blocks are stored
// block-column-major: block (row n, k-block b) starts at word (b * N + n) * BW, so the threads
// of a workgroup (adjacent n) read adjacent blocks.
//   4-bit (Q8 = false, BW = 5; GGUF Q4_1 as is, Q4_0 with m = -8 d):
//     word 0: d f16 in the low half, m f16 in the high half; words 1..5: the 16 `qs` bytes as
//     GGUF stores them (byte j: low nibble = element j, high nibble = element j + 16);
//     weight = d * q + m.
//   8-bit (Q8 = true, BW = 9; GGUF Q8_0): word 0: d f16 in the low half; words 1..9: the 32
//     int8 `qs` (element 4w + i in byte i of word 1 + w); weight = d * q.
// x is (M, K) f32 read as vec4s; y has row stride y_stride and this call writes columns
// [y_col, y_col + N) (a weight split across buffers by rows is one call per part).
// flags bit 0: add bias[n]; bit 1: accumulate into y (the fused residual add).
// GLU = true (SwiGLU's gate, up and SiLU·mul in one pass): W is the stacked (2N, K) gate|up
// weight, the thread computes gate row n and up row N + n from the same loaded x, and writes
// y[m, y_col + n] = silu(gate) * up with silu(g) = g / (1 + exp(-g)) as in silu_mul.wgsl
// (no bias, no accumulate; COLS <= 8 counts output columns, so a thread reads 2·COLS weight
// rows).
//
// Bindings:
//   0 x         vec4<f32> (M, K / 4)
//   1 w         u32 words of the blocks above
//   2 bias      f32 (N) (any buffer when flag 0 is off)
//   3 y         f32 (M, y_stride) read_write
//   4 x_window  (X_WINDOW only) uniform, 64 KiB of x starting at row row0 (a dynamic offset)
//   5 w_texture (W_TEXTURE only) rgba32uint texels of the weight planes below
// Immediates: Params below; this call computes rows [row0, m).
// Dispatch: (ceil(N / (WG * COLS)), ceil((m - row0) / ROWS)) workgroups of WG threads; a thread
// owns output columns n0 + c * WG (c < COLS, n0 = wg.x * WG * COLS + lid) and rows
// [r0, r0 + ROWS), r0 = row0 + wg.y * ROWS.
// X_WINDOW (CPU adapters): x is read through a uniform-buffer window instead. llvmpipe turns a
// storage load into a loop over the SIMD lanes (~3.8 ns per word and lane) but a uniform load
// into one gather (~0.6 ns), and x is most of what this kernel loads once ROWS > 1. A window
// holds 16,384 floats, so the wrapper issues one dispatch per window of rows.
// X_SHARED (with X_WINDOW, where a subgroup is exactly the workgroup of WG lanes, WG = 8):
// the lanes share the workgroup's rows, so each lane loads one of a block's 8 vec4s of a row
// and subgroupBroadcast hands it to the others: one gather instead of eight (llvmpipe gathers
// a uniform buffer element by element, and does not see that all lanes want the same one).
// On adapters without subgroups the wrapper compiles this file with the calls renamed to
// subgroup_broadcast_unavailable below (X_SHARED is off there).
// W_TEXTURE (CPU adapters): the weight is read from a texture of 4-word texels instead of w,
// because llvmpipe fetches a texel for all lanes in one gather (~1.4 ns per word against
// ~4 ns per word and lane from a storage buffer). Texel i is at (i % TEX_WIDTH, i / TEX_WIDTH).
// The blocks' words are split in two planes so that every load is a whole aligned texel:
//   qs plane, texels [0, QT * B * NW): block (row n, k-block b)'s qs words (word 1.. of the
//     layout above) in texels (b * NW + n) * QT .. + QT (QT = 1 for 4-bit, 2 for 8-bit);
//   scale plane, from texel QT * B * NW: word 0 of block (n, b) is component b % 4 of texel
//     (b / 4) * NW + n, so a thread loads one scale texel per 4 k-blocks.
// (B = K / 32 k-blocks, NW = weight rows: N, or 2N with GLU.)
// Per block it loads its rows of x once and reuses them for all its columns: on llvmpipe every
// load from a storage buffer costs a loop over the SIMD lanes, so loads per multiply-add are
// what decide speed there (COLS = 8). GPUs take matmul_quant_split.wgsl instead (many threads,
// each column's k-blocks split over 16 lanes), except where quantized weights are put in
// textures (WLLM_QUANT_WEIGHTS=texture): only this kernel reads W_TEXTURE, so the GPU forms
// run it too then (one thread per column, k_split 1; see DeviceProfile::quant_tuning).
// The thread's sums live in 16 named `Tile`s of 8 rows, every row and weight-row step written
// out and switched off by `if` on the override constants (folded away when the pipeline is
// built): llvmpipe keeps such values in registers, but an array indexed by a loop counter it
// cannot unroll goes to per-lane scratch memory, which made the array form of this kernel
// ~2x slower there.
//
// FORMAT (shaders/lib/quant_blocks.wgsl, appended to this file) != 0: the other GGUF formats
// (Q5_0/1, IQ4_NL, K-quants, IQ4_XS) stay in their blocks in w (never in textures) and each
// 32-weight sub-block is dequantized in registers exactly as the loader does (the library's
// quant_vec4), then dotted like the plain matmul: acc + (l0 + l1) + (l2 + l3) of the vec4 chain.
// Per block the Q4/Q8 weights are not dequantized: sum_k x·(d·q + m) is taken as
// d · sum_k x·q + m · sum_k x, so the per-weight work is one multiply-add on the integer q
// (held exactly in f32) and the scale and offset cost two multiply-adds per block and row;
// sum_k x is computed once per block and row and shared by the thread's columns. On llvmpipe
// this made decode 1.13-1.17x faster (it saves the per-weight d·q + m, which the thread's
// rows share only in prefill) and prefill no slower (the sums are now one f32 per output,
// not a vec4, so fewer of them leave registers).
//
// Batch invariance: each output element is accumulated by one thread into its own f32, one
// block at a time in increasing k: the block's x·q products are summed in a vec4 (lane l
// takes the k ≡ l mod 4 terms in increasing k, one explicit fma each) and reduced as
// (l0 + l1) + (l2 + l3); then acc = fma(d, that, fma(m, sum x, acc)) (8-bit: no m term);
// after the last block bias, then the residual. The same operations in the same order
// whatever M or ROWS is and whichever rows share the workgroup; COLS and WG only decide
// which thread computes a column.
// No workgroup memory and no barrier (llvmpipe pays dearly for barriers).

override Q8: bool = false;
// ggml type id of blocks read through shaders/lib/quant_blocks.wgsl; 0: the Q4/Q8 layout.
override FORMAT: u32 = 0u;
override GLU: bool = false;
// Rows of x per thread: 1, 4 or 8.
override ROWS: u32 = 4u;
// Output columns per thread (at most 16, with GLU at most 8): n = wg.x * WG * COLS + c * WG +
// lid for c < COLS.
override COLS: u32 = 4u;
override WG: u32 = 64u;
override X_WINDOW: bool = false;
override X_SHARED: bool = false;
override W_TEXTURE: bool = false;
// Texels per row of w_texture (a power of two).
const TEX_WIDTH: u32 = 4096u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    y_stride: u32,
    y_col: u32,
    flags: u32,
    row0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> x_window: array<vec4<f32>, 4096>;
@group(0) @binding(5) var w_texture: texture_2d<u32>;
var<immediate> p: Params;
// This invocation's local_invocation_index (the subgroup lane with X_SHARED).
var<private> lane: u32;

// One weight block as its scale, offset and 32 quantized values: element 4j + i is
// d * qj[i] + m (m = 0 for 8-bit). The values stay integers held in f32 (exact): the dot
// product is taken against them and scaled once per block, not per weight (see main's notes).
struct Block {
    q0: vec4<f32>,
    q1: vec4<f32>,
    q2: vec4<f32>,
    q3: vec4<f32>,
    q4: vec4<f32>,
    q5: vec4<f32>,
    q6: vec4<f32>,
    q7: vec4<f32>,
    d: f32,
    m: f32,
}

// The four nibbles of `q` starting at bit `shift` of each byte.
fn nibbles(q: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xU8((q >> shift) & 0x0f0f0f0fu));
}

// Weight rows stored: the stacked gate|up has twice the output columns.
fn weight_rows() -> u32 {
    return select(p.n, 2u * p.n, GLU);
}

// Word i of the weight buffer, for quant_blocks.wgsl.
fn quant_word(i: u32) -> u32 {
    return w[i];
}

fn texel(i: u32) -> vec4<u32> {
    return textureLoad(w_texture, vec2<u32>(i % TEX_WIDTH, i / TEX_WIDTH), 0);
}

// qs texels per weight block.
fn qs_texels() -> u32 {
    return select(1u, 2u, Q8);
}

// The scale texel of weight row n for k-blocks 4 * (b / 4) .. + 4 (W_TEXTURE only).
fn load_scales(n: u32, b: u32) -> vec4<u32> {
    if !W_TEXTURE {
        return vec4<u32>();
    }
    let plane = qs_texels() * (p.k / 32u) * weight_rows();
    return texel(plane + (b / 4u) * weight_rows() + n);
}

// v[i] as selects (a dynamic index could put v in scratch memory on llvmpipe).
fn component(v: vec4<u32>, i: u32) -> u32 {
    return select(select(v.x, v.y, i == 1u), select(v.z, v.w, i == 3u), i >= 2u);
}

// FORMAT != 0: sub-block (n, b) dequantized, its weights in the q fields (d = 1, m = 0 unused).
fn load_unit_block(n: u32, b: u32) -> Block {
    let base = unit_base(n, b, weight_rows());
    let sub = b % unit_subs();
    return Block(
        quant_vec4(base, sub, 0u), quant_vec4(base, sub, 1u),
        quant_vec4(base, sub, 2u), quant_vec4(base, sub, 3u),
        quant_vec4(base, sub, 4u), quant_vec4(base, sub, 5u),
        quant_vec4(base, sub, 6u), quant_vec4(base, sub, 7u),
        1.0, 0.0,
    );
}

// Block (n, b); `scales` is load_scales(n, b) when W_TEXTURE (else unused).
fn load_block(n: u32, b: u32, scales: vec4<u32>) -> Block {
    if FORMAT != 0u {
        return load_unit_block(n, b);
    }
    var head: u32;
    var q0: u32;
    var q1: u32;
    var q2: u32;
    var q3: u32;
    var q4: u32;
    var q5: u32;
    var q6: u32;
    var q7: u32;
    if W_TEXTURE {
        head = component(scales, b % 4u);
        let t = (b * weight_rows() + n) * qs_texels();
        let lo = texel(t);
        q0 = lo.x;
        q1 = lo.y;
        q2 = lo.z;
        q3 = lo.w;
        if Q8 {
            let hi = texel(t + 1u);
            q4 = hi.x;
            q5 = hi.y;
            q6 = hi.z;
            q7 = hi.w;
        }
    } else {
        let i = (b * weight_rows() + n) * select(5u, 9u, Q8);
        head = w[i];
        q0 = w[i + 1u];
        q1 = w[i + 2u];
        q2 = w[i + 3u];
        q3 = w[i + 4u];
        if Q8 {
            q4 = w[i + 5u];
            q5 = w[i + 6u];
            q6 = w[i + 7u];
            q7 = w[i + 8u];
        }
    }
    let dm = unpack2x16float(head);
    if Q8 {
        return Block(
            vec4<f32>(unpack4xI8(q0)),
            vec4<f32>(unpack4xI8(q1)),
            vec4<f32>(unpack4xI8(q2)),
            vec4<f32>(unpack4xI8(q3)),
            vec4<f32>(unpack4xI8(q4)),
            vec4<f32>(unpack4xI8(q5)),
            vec4<f32>(unpack4xI8(q6)),
            vec4<f32>(unpack4xI8(q7)),
            dm.x,
            0.0,
        );
    }
    return Block(
        nibbles(q0, 0u),
        nibbles(q1, 0u),
        nibbles(q2, 0u),
        nibbles(q3, 0u),
        nibbles(q0, 4u),
        nibbles(q1, 4u),
        nibbles(q2, 4u),
        nibbles(q3, 4u),
        dm.x,
        dm.y,
    );
}

fn reduce(acc: vec4<f32>) -> f32 {
    return (acc.x + acc.y) + (acc.z + acc.w);
}

// x[row, k-block b]: elements 4j..4j+3 in xj.
struct XBlock {
    x0: vec4<f32>,
    x1: vec4<f32>,
    x2: vec4<f32>,
    x3: vec4<f32>,
    x4: vec4<f32>,
    x5: vec4<f32>,
    x6: vec4<f32>,
    x7: vec4<f32>,
    // The block's sum of x (4-bit only: the offset m multiplies it).
    sum: f32,
}

fn x_block(
    x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
    x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32>,
) -> XBlock {
    var sum = 0.0;
    if !Q8 && FORMAT == 0u {
        sum = reduce(((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)));
    }
    return XBlock(x0, x1, x2, x3, x4, x5, x6, x7, sum);
}

// The thread's rows of x for one k-block (rows past ROWS unused).
struct XTile {
    r0: XBlock,
    r1: XBlock,
    r2: XBlock,
    r3: XBlock,
    r4: XBlock,
    r5: XBlock,
    r6: XBlock,
    r7: XBlock,
}

// One weight row's running sums for the thread's rows: rI sums row row0 + I.
struct Tile {
    r0: f32,
    r1: f32,
    r2: f32,
    r3: f32,
    r4: f32,
    r5: f32,
    r6: f32,
    r7: f32,
}

// The stand-in the wrapper renames subgroupBroadcast calls to where subgroups are missing.
fn subgroup_broadcast_unavailable(v: vec4<f32>, from_lane: u32) -> vec4<f32> {
    return v;
}

fn load_x(row: u32, b: u32) -> XBlock {
    if X_WINDOW {
        let i = (row - p.row0) * (p.k / 4u) + b * 8u;
        if X_SHARED {
            let v = x_window[i + lane];
            return x_block(
                subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
                subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u),
                subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
                subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u),
            );
        }
        return x_block(
            x_window[i], x_window[i + 1u], x_window[i + 2u], x_window[i + 3u],
            x_window[i + 4u], x_window[i + 5u], x_window[i + 6u], x_window[i + 7u],
        );
    }
    let i = row * (p.k / 4u) + b * 8u;
    return x_block(x[i], x[i + 1u], x[i + 2u], x[i + 3u], x[i + 4u], x[i + 5u], x[i + 6u], x[i + 7u]);
}

// Rows past the batch read its last row: their sums are computed and never stored.
fn load_x_tile(row0: u32, b: u32) -> XTile {
    let last = p.m - 1u;
    var t: XTile;
    t.r0 = load_x(row0, b);
    if ROWS > 1u {
        t.r1 = load_x(min(row0 + 1u, last), b);
        t.r2 = load_x(min(row0 + 2u, last), b);
        t.r3 = load_x(min(row0 + 3u, last), b);
    }
    if ROWS > 4u {
        t.r4 = load_x(min(row0 + 4u, last), b);
        t.r5 = load_x(min(row0 + 5u, last), b);
        t.r6 = load_x(min(row0 + 6u, last), b);
        t.r7 = load_x(min(row0 + 7u, last), b);
    }
    return t;
}

// acc + this block's terms: the 32 products x·q summed in a vec4 (lane l takes the k ≡ l
// mod 4 terms in increasing k, one explicit fma each), reduced as (l0 + l1) + (l2 + l3), then
// scaled by d, the offset's m · sum(x) added first.
fn dot_block(acc: f32, xb: XBlock, wb: Block) -> f32 {
    var s = xb.x0 * wb.q0;
    s = fma(xb.x1, wb.q1, s);
    s = fma(xb.x2, wb.q2, s);
    s = fma(xb.x3, wb.q3, s);
    s = fma(xb.x4, wb.q4, s);
    s = fma(xb.x5, wb.q5, s);
    s = fma(xb.x6, wb.q6, s);
    s = fma(xb.x7, wb.q7, s);
    if FORMAT != 0u {
        return acc + reduce(s);
    }
    var a = acc;
    if !Q8 {
        a = fma(wb.m, xb.sum, a);
    }
    return fma(wb.d, reduce(s), a);
}

fn mac(t: Tile, xt: XTile, wb: Block) -> Tile {
    var o = t;
    o.r0 = dot_block(o.r0, xt.r0, wb);
    if ROWS > 1u {
        o.r1 = dot_block(o.r1, xt.r1, wb);
        o.r2 = dot_block(o.r2, xt.r2, wb);
        o.r3 = dot_block(o.r3, xt.r3, wb);
    }
    if ROWS > 4u {
        o.r4 = dot_block(o.r4, xt.r4, wb);
        o.r5 = dot_block(o.r5, xt.r5, wb);
        o.r6 = dot_block(o.r6, xt.r6, wb);
        o.r7 = dot_block(o.r7, xt.r7, wb);
    }
    return o;
}

// Tile slot s holds output column c = s (with GLU: the gate row of c = s for s < 8, the up
// row of c = s - 8 above).
fn slot_col(s: u32) -> u32 {
    return select(s, s % 8u, GLU);
}

fn slot_used(s: u32) -> bool {
    return slot_col(s) < COLS;
}

// The weight row slot s reads in this thread (columns past n read the last one, unstored).
fn slot_row(s: u32, n0: u32) -> u32 {
    let n = min(n0 + slot_col(s) * WG, p.n - 1u);
    return select(n, p.n + n, GLU && s >= 8u);
}

fn store(row: u32, col: u32, acc: f32) {
    if row >= p.m || col >= p.n {
        return;
    }
    var v = acc;
    if (p.flags & 1u) != 0u {
        v = v + bias[col];
    }
    let o = row * p.y_stride + p.y_col + col;
    if (p.flags & 2u) != 0u {
        v = y[o] + v;
    }
    y[o] = v;
}

fn store_glu(row: u32, col: u32, g: f32, up: f32) {
    if row >= p.m || col >= p.n {
        return;
    }
    y[row * p.y_stride + p.y_col + col] = (g / (1.0 + exp(-g))) * up;
}

// Column `col` of the thread's rows from tile t (and, with GLU, the up sums in u). Written
// out like the loop above: indexing the tiles here would move them all to scratch memory.
fn store_tile(row0: u32, col: u32, t: Tile, u: Tile) {
    if GLU {
        store_glu(row0, col, t.r0, u.r0);
        if ROWS > 1u {
            store_glu(row0 + 1u, col, t.r1, u.r1);
            store_glu(row0 + 2u, col, t.r2, u.r2);
            store_glu(row0 + 3u, col, t.r3, u.r3);
        }
        if ROWS > 4u {
            store_glu(row0 + 4u, col, t.r4, u.r4);
            store_glu(row0 + 5u, col, t.r5, u.r5);
            store_glu(row0 + 6u, col, t.r6, u.r6);
            store_glu(row0 + 7u, col, t.r7, u.r7);
        }
    } else {
        store(row0, col, t.r0);
        if ROWS > 1u {
            store(row0 + 1u, col, t.r1);
            store(row0 + 2u, col, t.r2);
            store(row0 + 3u, col, t.r3);
        }
        if ROWS > 4u {
            store(row0 + 4u, col, t.r4);
            store(row0 + 5u, col, t.r5);
            store(row0 + 6u, col, t.r6);
            store(row0 + 7u, col, t.r7);
        }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n0 = wg.x * WG * COLS + lid;
    // Rows start below m (the dispatch covers them exactly). Columns past n compute the last
    // one and store nothing: every lane stays to the end, for X_SHARED's broadcasts.
    let row0 = p.row0 + wg.y * ROWS;
    lane = lid;
    var t0: Tile;
    var t1: Tile;
    var t2: Tile;
    var t3: Tile;
    var t4: Tile;
    var t5: Tile;
    var t6: Tile;
    var t7: Tile;
    var t8: Tile;
    var t9: Tile;
    var t10: Tile;
    var t11: Tile;
    var t12: Tile;
    var t13: Tile;
    var t14: Tile;
    var t15: Tile;
    // Scale texels of the slots' weight rows (W_TEXTURE), loaded every 4th k-block.
    var s0: vec4<u32>;
    var s1: vec4<u32>;
    var s2: vec4<u32>;
    var s3: vec4<u32>;
    var s4: vec4<u32>;
    var s5: vec4<u32>;
    var s6: vec4<u32>;
    var s7: vec4<u32>;
    var s8: vec4<u32>;
    var s9: vec4<u32>;
    var s10: vec4<u32>;
    var s11: vec4<u32>;
    var s12: vec4<u32>;
    var s13: vec4<u32>;
    var s14: vec4<u32>;
    var s15: vec4<u32>;
    for (var b = 0u; b < p.k / 32u; b++) {
        if W_TEXTURE && b % 4u == 0u {
            s0 = load_scales(slot_row(0u, n0), b);
            if slot_used(1u) { s1 = load_scales(slot_row(1u, n0), b); }
            if slot_used(2u) { s2 = load_scales(slot_row(2u, n0), b); }
            if slot_used(3u) { s3 = load_scales(slot_row(3u, n0), b); }
            if slot_used(4u) { s4 = load_scales(slot_row(4u, n0), b); }
            if slot_used(5u) { s5 = load_scales(slot_row(5u, n0), b); }
            if slot_used(6u) { s6 = load_scales(slot_row(6u, n0), b); }
            if slot_used(7u) { s7 = load_scales(slot_row(7u, n0), b); }
            if slot_used(8u) { s8 = load_scales(slot_row(8u, n0), b); }
            if slot_used(9u) { s9 = load_scales(slot_row(9u, n0), b); }
            if slot_used(10u) { s10 = load_scales(slot_row(10u, n0), b); }
            if slot_used(11u) { s11 = load_scales(slot_row(11u, n0), b); }
            if slot_used(12u) { s12 = load_scales(slot_row(12u, n0), b); }
            if slot_used(13u) { s13 = load_scales(slot_row(13u, n0), b); }
            if slot_used(14u) { s14 = load_scales(slot_row(14u, n0), b); }
            if slot_used(15u) { s15 = load_scales(slot_row(15u, n0), b); }
        }
        let xt = load_x_tile(row0, b);
        t0 = mac(t0, xt, load_block(slot_row(0u, n0), b, s0));
        if slot_used(1u) { t1 = mac(t1, xt, load_block(slot_row(1u, n0), b, s1)); }
        if slot_used(2u) { t2 = mac(t2, xt, load_block(slot_row(2u, n0), b, s2)); }
        if slot_used(3u) { t3 = mac(t3, xt, load_block(slot_row(3u, n0), b, s3)); }
        if slot_used(4u) { t4 = mac(t4, xt, load_block(slot_row(4u, n0), b, s4)); }
        if slot_used(5u) { t5 = mac(t5, xt, load_block(slot_row(5u, n0), b, s5)); }
        if slot_used(6u) { t6 = mac(t6, xt, load_block(slot_row(6u, n0), b, s6)); }
        if slot_used(7u) { t7 = mac(t7, xt, load_block(slot_row(7u, n0), b, s7)); }
        if slot_used(8u) { t8 = mac(t8, xt, load_block(slot_row(8u, n0), b, s8)); }
        if slot_used(9u) { t9 = mac(t9, xt, load_block(slot_row(9u, n0), b, s9)); }
        if slot_used(10u) { t10 = mac(t10, xt, load_block(slot_row(10u, n0), b, s10)); }
        if slot_used(11u) { t11 = mac(t11, xt, load_block(slot_row(11u, n0), b, s11)); }
        if slot_used(12u) { t12 = mac(t12, xt, load_block(slot_row(12u, n0), b, s12)); }
        if slot_used(13u) { t13 = mac(t13, xt, load_block(slot_row(13u, n0), b, s13)); }
        if slot_used(14u) { t14 = mac(t14, xt, load_block(slot_row(14u, n0), b, s14)); }
        if slot_used(15u) { t15 = mac(t15, xt, load_block(slot_row(15u, n0), b, s15)); }
    }
    // Column c of the thread is in slot c; with GLU its up sums are in slot c + 8 (COLS <= 8),
    // otherwise store_tile ignores its last argument.
    store_tile(row0, n0, t0, t8);
    if COLS > 1u { store_tile(row0, n0 + 1u * WG, t1, t9); }
    if COLS > 2u { store_tile(row0, n0 + 2u * WG, t2, t10); }
    if COLS > 3u { store_tile(row0, n0 + 3u * WG, t3, t11); }
    if COLS > 4u { store_tile(row0, n0 + 4u * WG, t4, t12); }
    if COLS > 5u { store_tile(row0, n0 + 5u * WG, t5, t13); }
    if COLS > 6u { store_tile(row0, n0 + 6u * WG, t6, t14); }
    if COLS > 7u { store_tile(row0, n0 + 7u * WG, t7, t15); }
    if !GLU && COLS > 8u { store_tile(row0, n0 + 8u * WG, t8, t8); }
    if !GLU && COLS > 9u { store_tile(row0, n0 + 9u * WG, t9, t9); }
    if !GLU && COLS > 10u { store_tile(row0, n0 + 10u * WG, t10, t10); }
    if !GLU && COLS > 11u { store_tile(row0, n0 + 11u * WG, t11, t11); }
    if !GLU && COLS > 12u { store_tile(row0, n0 + 12u * WG, t12, t12); }
    if !GLU && COLS > 13u { store_tile(row0, n0 + 13u * WG, t13, t13); }
    if !GLU && COLS > 14u { store_tile(row0, n0 + 14u * WG, t14, t14); }
    if !GLU && COLS > 15u { store_tile(row0, n0 + 15u * WG, t15, t15); }
}
