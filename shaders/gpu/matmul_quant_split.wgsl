// Quantized matmul with the k blocks split over lanes (GPUs): y[m, y_col + n] (+)= sum_k x[m, k] * W[n, k] + bias[n]
//
// Same contract, weight layout, immediates (plus eps) and flags as matmul_quant.wgsl (storage
// buffers only: no x windows, no textures), GLU included. What differs is who sums what: SPLIT lanes share each output column, lane s summing the column's k-blocks
// b = s, s + SPLIT, s + 2·SPLIT, ... for the thread's rows; the lanes' partial sums then meet in
// workgroup memory and one lane adds them up. A decode step (M = 1) thus puts N · SPLIT
// threads to work with K / (32 · SPLIT) blocks each, where one thread per column would walk
// all K / 32 blocks alone (9 workgroups and 48 dependent loads for SmolLM2's down projection).
//
// NORM (RMSNorm fused in front): x is the un-normed residual stream and the call computes
// y = x̂ · Wᵀ with x̂[m, k] = x[m, k] · inverseSqrt(mean_k x[m, k]² + eps) · g[k], as
// (x · (W · diag g)ᵀ) · inverseSqrt(...): each block's dequantized weights are scaled by g once,
// and the lanes of column slot 0 also sum x² over their blocks, in the order of the dot
// products, which meet like theirs (partial 0 + partial 1 + ...). Every workgroup computes a
// row's sum of squares the same way, so the fused pass is as batch-invariant as the plain one.
//
// Bindings (matmul_quant.wgsl's 0..3, then 6; its layout's 4 and 5 are bound, unused here):
//   0 x       vec4<f32> (M, K / 4)
//   1 w       u32 words of the blocks (matmul_quant.wgsl's layout)
//   2 bias    f32 (N) (any buffer when flag 0 is off)
//   3 y       f32 (M, y_stride) read_write
//   6 norm_g  vec4<f32> (K / 4): the RMSNorm weight g (NORM only; any buffer otherwise)
// Immediates: Params below (eps as f32 bits, NORM only); this call computes rows [row0, m).
// Dispatch: (G, ceil((m - row0) / ROWS), Z) workgroups of WG threads, G · Z >= ceil(N / (WG /
// SPLIT)) column groups, group g = wg.z · G + wg.x (Z > 1 only past 65,535 groups), SPLIT
// dividing WG, WG <= 128. Lane lid takes column g * (WG / SPLIT) + lid % (WG / SPLIT)
// and segment s = lid / (WG / SPLIT): neighbouring lanes read neighbouring columns' blocks,
// which are adjacent in memory. Rows [r0, r0 + ROWS), r0 = row0 + wg.y * ROWS.
//
// Batch invariance (the fixed order, whatever M, ROWS or WG): lane s's partial for an output
// is a vec4 whose lane l sums the k ≡ l mod 4 terms of its blocks in increasing k (one fma
// each), reduced as (l0 + l1) + (l2 + l3); the output is partial 0 + partial 1 + ... in
// segment order over the min(SPLIT, K / 32) segments that have blocks, then + bias, then the
// residual. SPLIT fixes the order, so one adapter must use one SPLIT for a weight at every M
// (the wrapper's tuning does); it differs from matmul_quant.wgsl's order (SPLIT = 1 there).

override Q8: bool = false;
// ggml type id of blocks read through shaders/lib/quant_blocks.wgsl; 0: the Q4/Q8 layout.
override FORMAT: u32 = 0u;
override GLU: bool = false;
override NORM: bool = false;
// Rows of x per thread: 1, 4 or 8.
override ROWS: u32 = 1u;
// Lanes per output column.
override SPLIT: u32 = 16u;
// Threads per workgroup (WG below; named apart from the other kernels' WG, which reach 256).
override SPLIT_WG: u32 = 64u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    y_stride: u32,
    y_col: u32,
    flags: u32,
    row0: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> norm_g: array<vec4<f32>>;
var<immediate> p: Params;

// Partial sums, index (row * WG + column slot * SPLIT + segment); the up half's with GLU.
var<workgroup> partial: array<f32, SPLIT_WG * 8u>;
var<workgroup> partial_up: array<f32, SPLIT_WG * 8u>;
// NORM: the sums of squares, index (row * SPLIT + segment).
var<workgroup> partial_sq: array<f32, SPLIT * 8u>;

// The 32 weights of one block, elements 4j..4j+3 in w[j].
struct Block {
    w: array<vec4<f32>, 8>,
}

// d * q + m for the four nibbles of `q` starting at bit `shift` of each byte.
fn nibbles(q: u32, shift: u32, d: vec4<f32>, m: vec4<f32>) -> vec4<f32> {
    return fma(d, vec4<f32>(unpack4xU8((q >> shift) & 0x0f0f0f0fu)), m);
}

// Word i of the weight buffer, for quant_blocks.wgsl.
fn quant_word(i: u32) -> u32 {
    return w[i];
}

// Block (weight row n, k-block b); the stacked gate|up weight has 2N rows.
fn load_block(n: u32, b: u32) -> Block {
    let rows = select(p.n, 2u * p.n, GLU);
    var out: Block;
    if FORMAT != 0u {
        let base = unit_base(n, b, rows);
        let sub = b % unit_subs();
        for (var j = 0u; j < 8u; j++) {
            out.w[j] = quant_vec4(base, sub, j);
        }
        return out;
    }
    let i = (b * rows + n) * select(5u, 9u, Q8);
    if Q8 {
        let d = vec4<f32>(unpack2x16float(w[i]).x);
        for (var j = 0u; j < 8u; j++) {
            out.w[j] = d * vec4<f32>(unpack4xI8(w[i + 1u + j]));
        }
        return out;
    }
    let dm = unpack2x16float(w[i]);
    let d = vec4<f32>(dm.x);
    let m = vec4<f32>(dm.y);
    for (var j = 0u; j < 4u; j++) {
        let q = w[i + 1u + j];
        out.w[j] = nibbles(q, 0u, d, m);
        out.w[j + 4u] = nibbles(q, 4u, d, m);
    }
    return out;
}

// load_block, times the norm weight g of block b's k with NORM.
fn load_scaled_block(n: u32, b: u32) -> Block {
    var out = load_block(n, b);
    if NORM {
        for (var j = 0u; j < 8u; j++) {
            out.w[j] = out.w[j] * norm_g[b * 8u + j];
        }
    }
    return out;
}

// acc + row `row`'s squares in block b, one fma per 4 lanes in increasing k.
fn squares_block(acc: vec4<f32>, row: u32, b: u32) -> vec4<f32> {
    let i = row * (p.k / 4u) + b * 8u;
    var a = acc;
    for (var j = 0u; j < 8u; j++) {
        let v = x[i + j];
        a = fma(v, v, a);
    }
    return a;
}

// acc + row `row`'s terms of block b, one fma per 4 lanes in increasing k.
fn dot_block(acc: vec4<f32>, row: u32, b: u32, wb: Block) -> vec4<f32> {
    let i = row * (p.k / 4u) + b * 8u;
    var a = acc;
    for (var j = 0u; j < 8u; j++) {
        a = fma(x[i + j], wb.w[j], a);
    }
    return a;
}

fn reduce(acc: vec4<f32>) -> f32 {
    return (acc.x + acc.y) + (acc.z + acc.w);
}

@compute @workgroup_size(SPLIT_WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // (max: a SPLIT over WG is refused by the wrapper; it must not divide by zero here.)
    let cols = max(SPLIT_WG / SPLIT, 1u);
    let slot = lid % cols;
    let seg = lid / cols;
    // Column groups past 65,535 (a big vocabulary's lm_head) continue along z.
    let col = (wg.z * nwg.x + wg.x) * cols + slot;
    // Columns past n compute the last one and store nothing (every lane reaches the barrier).
    let n = min(col, p.n - 1u);
    let row0 = p.row0 + wg.y * ROWS;
    let last = p.m - 1u;
    var acc: array<vec4<f32>, 8>;
    var acc_up: array<vec4<f32>, 8>;
    var acc_sq: array<vec4<f32>, 8>;
    // Slot 0's lanes sum the squares for the workgroup (every workgroup has a column 0).
    let sums_squares = NORM && slot == 0u;
    let blocks = p.k / 32u;
    for (var b = seg; b < blocks; b += SPLIT) {
        let wb = load_scaled_block(n, b);
        for (var r = 0u; r < ROWS; r++) {
            // Rows past the batch read its last row: computed, never stored.
            acc[r] = dot_block(acc[r], min(row0 + r, last), b, wb);
        }
        if GLU {
            let ub = load_scaled_block(p.n + n, b);
            for (var r = 0u; r < ROWS; r++) {
                acc_up[r] = dot_block(acc_up[r], min(row0 + r, last), b, ub);
            }
        }
        if sums_squares {
            for (var r = 0u; r < ROWS; r++) {
                acc_sq[r] = squares_block(acc_sq[r], min(row0 + r, last), b);
            }
        }
    }
    let at = slot * SPLIT + seg;
    for (var r = 0u; r < ROWS; r++) {
        partial[r * SPLIT_WG + at] = reduce(acc[r]);
        if GLU {
            partial_up[r * SPLIT_WG + at] = reduce(acc_up[r]);
        }
        if sums_squares {
            partial_sq[r * SPLIT + seg] = reduce(acc_sq[r]);
        }
    }
    workgroupBarrier();
    // Segment lane s adds up rows s, s + SPLIT, ... of its column, in segment order.
    let used = min(SPLIT, blocks);
    for (var r = seg; r < ROWS; r += SPLIT) {
        let row = row0 + r;
        if row >= p.m || col >= p.n {
            continue;
        }
        let base = r * SPLIT_WG + slot * SPLIT;
        var v = partial[base];
        for (var s = 1u; s < used; s++) {
            v = v + partial[base + s];
        }
        // 1, or the row's RMSNorm factor (as rms_norm.wgsl computes it from its sum).
        var inv = 1.0;
        if NORM {
            var sq = partial_sq[r * SPLIT];
            for (var s = 1u; s < used; s++) {
                sq = sq + partial_sq[r * SPLIT + s];
            }
            inv = inverseSqrt(sq / f32(p.k) + p.eps);
            v = v * inv;
        }
        let o = row * p.y_stride + p.y_col + col;
        if GLU {
            var u = partial_up[base];
            for (var s = 1u; s < used; s++) {
                u = u + partial_up[base + s];
            }
            if NORM {
                u = u * inv;
            }
            // silu as in silu_mul.wgsl.
            y[o] = (v / (1.0 + exp(-v))) * u;
            continue;
        }
        if (p.flags & 1u) != 0u {
            v = v + bias[col];
        }
        if (p.flags & 2u) != 0u {
            v = y[o] + v;
        }
        y[o] = v;
    }
}
