// Dense matmul with k split over lanes (GPUs): y[m, y_col + n] (+)= sum_k x[m, k] * W[n, k] + bias[n]
//
// Same contract, weight layout, immediates and flags as matmul.wgsl: x is (M, K) f32, the
// weight (N × K) is stored transposed, (K, n_pad) with n_pad = N rounded up to a multiple of 8,
// f16 pairs packed in u32 words when W_F16 (column 2j in the low half of word j), else f32 bits.
// What differs is who sums what. A lane owns a quad of 4 adjacent output columns (one vec2<u32>
// of f16 pairs, or one vec4 of f32, at each k) for ROWS rows, and SPLIT lanes share each quad:
// lane (segment) s sums k = s, s + SPLIT, s + 2·SPLIT, ... The lanes' partial sums then meet
// in workgroup memory and one lane per output adds them up. A decode step (M = 1) thus puts
// ceil(N / 4) · SPLIT threads to work with K / SPLIT terms each, where matmul.wgsl has N / 8
// threads walk all of K alone (3 workgroups for a 576-column layer).
//
// Bindings (matmul.wgsl's):
//   0 x     f32 (M, K)
//   1 w     vec2<u32> words of (K, n_pad): 4 columns per element (f16), 2 (f32)
//   2 bias  f32 (N) (any buffer when flag 0 is off)
//   3 y     f32 (M, y_stride) read_write
// Immediates: Params below (matmul.wgsl's). flags bit 0: add bias[n]; bit 1: accumulate into
// y (the fused residual add). This call writes columns [y_col, y_col + N) of y.
// Dispatch: (G, ceil(M / ROWS), Z) workgroups of SPLIT_WG threads, SPLIT dividing SPLIT_WG,
// G · Z >= ceil(ceil(N / 4) / (SPLIT_WG / SPLIT)) quad groups, group g = wg.z · G + wg.x
// (Z > 1 only past 65,535 groups). Lane lid takes quad g · (SPLIT_WG / SPLIT) + lid %
// (SPLIT_WG / SPLIT) and segment lid / (SPLIT_WG / SPLIT): neighbouring lanes read
// neighbouring quads of one weight row, which are adjacent in memory. Rows [r0, r0 + ROWS),
// r0 = wg.y · ROWS.
//
// Batch invariance (the fixed order, whatever M, ROWS or the workgroup): an output's partial
// in segment s is one fma chain over its k = s, s + SPLIT, ... in increasing k, from 0; the
// output is partial 0 + partial 1 + ... in segment order over the min(SPLIT, K) segments that
// have terms, then + bias, then the residual (y + v). Rows past the batch are computed from
// its last row and never stored, so a row's result depends only on SPLIT, never on M or the
// other rows. SPLIT fixes the order, so one adapter uses one SPLIT for every call (the
// wrapper does); SPLIT = 1 would be matmul.wgsl's order.

override W_F16: bool = true;
// Rows of x per thread: 1, 4 or 8.
override ROWS: u32 = 1u;
// Lanes per column quad.
override SPLIT: u32 = 16u;
// Threads per workgroup (at most 128: the partial sums fill workgroup memory).
override SPLIT_WG: u32 = 64u;
const MAX_ROWS: u32 = 8u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    n_pad: u32,
    y_stride: u32,
    y_col: u32,
    flags: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
var<immediate> p: Params;

// Partial sums, index ((row * 4 + column in quad) * SPLIT_WG + quad slot * SPLIT + segment).
var<workgroup> partial: array<f32, SPLIT_WG * ROWS * 4u>;

// Columns c0..c0+4 (c0 a multiple of 4) of weight row k.
fn load_w4(k: u32, c0: u32) -> vec4<f32> {
    let i = k * p.n_pad + c0;
    if W_F16 {
        let q = w[i >> 2u];
        return vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
    }
    let j = i >> 1u;
    return bitcast<vec4<f32>>(vec4<u32>(w[j], w[j + 1u]));
}

@compute @workgroup_size(SPLIT_WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    // (max: a SPLIT over SPLIT_WG is refused by the wrapper; it must not divide by zero here.)
    let quads_per_group = max(SPLIT_WG / SPLIT, 1u);
    let slot = lid % quads_per_group;
    let seg = lid / quads_per_group;
    // Quad groups past 65,535 (a big vocabulary's lm_head) continue along z.
    let quad = (wg.z * nwg.x + wg.x) * quads_per_group + slot;
    // Quads past n compute the last one and store nothing (every lane reaches the barrier).
    let quads = (p.n + 3u) / 4u;
    let c0 = min(quad, quads - 1u) * 4u;
    let row0 = wg.y * ROWS;
    let last = p.m - 1u;
    // Every loop over rows runs the constant ROWS times, so a compiler can unroll it and keep
    // acc in registers.
    var acc: array<vec4<f32>, MAX_ROWS>;
    for (var k = seg; k < p.k; k += SPLIT) {
        let wv = load_w4(k, c0);
        for (var r = 0u; r < ROWS; r++) {
            // Rows past the batch read its last row: computed, never stored.
            let xv = vec4<f32>(x[min(row0 + r, last) * p.k + k]);
            acc[r] = fma(xv, wv, acc[r]);
        }
    }
    let at = slot * SPLIT + seg;
    for (var r = 0u; r < ROWS; r++) {
        for (var j = 0u; j < 4u; j++) {
            partial[(r * 4u + j) * SPLIT_WG + at] = acc[r][j];
        }
    }
    workgroupBarrier();
    // Segment lane s adds up outputs s, s + SPLIT, ... (output = row * 4 + column in quad) of
    // its quad, each in segment order.
    let used = min(SPLIT, p.k);
    for (var o = seg; o < ROWS * 4u; o += SPLIT) {
        let row = row0 + o / 4u;
        let col = quad * 4u + o % 4u;
        if row >= p.m || col >= p.n {
            continue;
        }
        let base = o * SPLIT_WG + slot * SPLIT;
        var v = partial[base];
        for (var s = 1u; s < used; s++) {
            v = v + partial[base + s];
        }
        if (p.flags & 1u) != 0u {
            v = v + bias[col];
        }
        let i = row * p.y_stride + p.y_col + col;
        if (p.flags & 2u) != 0u {
            v = y[i] + v;
        }
        y[i] = v;
    }
}
