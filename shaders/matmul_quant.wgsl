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
//   0 x     vec4<f32> (M, K / 4)
//   1 w     u32 words of the blocks above
//   2 bias  f32 (N) (any buffer when flag 0 is off)
//   3 y     f32 (M, y_stride) read_write
// Immediates: Params below.
// Dispatch: (ceil(N / (WG * COLS)), ceil(M / ROWS)) workgroups of WG threads; a thread owns
// output columns n0 + c * WG (c < COLS, n0 = wg.x * WG * COLS + lid) and rows [row0, row0 + ROWS).
// Per block it loads its rows of x once and reuses them for all its columns: on llvmpipe every
// load from a storage buffer costs a loop over the SIMD lanes, so loads per multiply-add are
// what decide speed there (COLS = 16); GPUs want many threads instead (COLS = 1).
//
// Batch invariance: each output element is accumulated by one thread into its own vec4
// (lane l sums the k ≡ l mod 4 terms in increasing k, one explicit fma each), then reduced
// as (l0 + l1) + (l2 + l3), then bias, then the residual: the same operations in the same
// order whatever M or ROWS is and whichever rows share the workgroup. The dequantized weights
// are computed once per block and column and shared by the thread's rows, so they cannot
// differ either; COLS and WG only decide which thread computes a column.
// No workgroup memory and no barrier (llvmpipe pays dearly for barriers).

override Q8: bool = false;
override GLU: bool = false;
// Rows of x per thread (the wrapper uses 1, 4 or 8).
override ROWS: u32 = 4u;
// Output columns per thread: n = wg.x * WG * COLS + c * WG + lid for c < COLS.
override COLS: u32 = 4u;
override WG: u32 = 64u;
const MAX_ROWS: u32 = 8u;
const MAX_COLS: u32 = 8u;
// Where GLU keeps the up sums in acc (its COLS is at most 8).
const UP: u32 = 64u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    y_stride: u32,
    y_col: u32,
    flags: u32,
}

@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
var<immediate> p: Params;

// The 32 weights of one block, elements 4j..4j+3 in wj.
struct Block {
    w0: vec4<f32>,
    w1: vec4<f32>,
    w2: vec4<f32>,
    w3: vec4<f32>,
    w4: vec4<f32>,
    w5: vec4<f32>,
    w6: vec4<f32>,
    w7: vec4<f32>,
}

// d * q + m for the four nibbles of `q` starting at bit `shift` of each byte.
fn nibbles(q: u32, shift: u32, d: vec4<f32>, m: vec4<f32>) -> vec4<f32> {
    return fma(d, vec4<f32>(unpack4xU8((q >> shift) & 0x0f0f0f0fu)), m);
}

// Weight rows stored: the stacked gate|up has twice the output columns.
fn weight_rows() -> u32 {
    return select(p.n, 2u * p.n, GLU);
}

fn load_block(n: u32, b: u32) -> Block {
    if Q8 {
        let i = (b * weight_rows() + n) * 9u;
        let d = vec4<f32>(unpack2x16float(w[i]).x);
        return Block(
            d * vec4<f32>(unpack4xI8(w[i + 1u])),
            d * vec4<f32>(unpack4xI8(w[i + 2u])),
            d * vec4<f32>(unpack4xI8(w[i + 3u])),
            d * vec4<f32>(unpack4xI8(w[i + 4u])),
            d * vec4<f32>(unpack4xI8(w[i + 5u])),
            d * vec4<f32>(unpack4xI8(w[i + 6u])),
            d * vec4<f32>(unpack4xI8(w[i + 7u])),
            d * vec4<f32>(unpack4xI8(w[i + 8u])),
        );
    }
    let i = (b * weight_rows() + n) * 5u;
    let dm = unpack2x16float(w[i]);
    let d = vec4<f32>(dm.x);
    let m = vec4<f32>(dm.y);
    let q0 = w[i + 1u];
    let q1 = w[i + 2u];
    let q2 = w[i + 3u];
    let q3 = w[i + 4u];
    return Block(
        nibbles(q0, 0u, d, m),
        nibbles(q1, 0u, d, m),
        nibbles(q2, 0u, d, m),
        nibbles(q3, 0u, d, m),
        nibbles(q0, 4u, d, m),
        nibbles(q1, 4u, d, m),
        nibbles(q2, 4u, d, m),
        nibbles(q3, 4u, d, m),
    );
}

fn reduce(acc: vec4<f32>) -> f32 {
    return (acc.x + acc.y) + (acc.z + acc.w);
}

fn store(row: u32, col: u32, acc: vec4<f32>) {
    var v = reduce(acc);
    if (p.flags & 1u) != 0u {
        v = v + bias[col];
    }
    let o = row * p.y_stride + p.y_col + col;
    if (p.flags & 2u) != 0u {
        v = y[o] + v;
    }
    y[o] = v;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n0 = wg.x * WG * COLS + lid;
    let row0 = wg.y * ROWS;
    if n0 >= p.n || row0 >= p.m {
        return;
    }
    let row_vec4s = p.k / 4u;
    // acc[c * MAX_ROWS + r]: column n0 + c * WG, row row0 + r.
    // With GLU (COLS <= 8): the up rows' sums at acc[UP + c * MAX_ROWS + r].
    var acc: array<vec4<f32>, 128>;
    // x[row0 + r, this block] as 8 vec4 each: loaded once per block, used for every column.
    var xs: array<vec4<f32>, 64>;
    for (var b = 0u; b < p.k / 32u; b++) {
        for (var r = 0u; r < ROWS; r++) {
            if row0 + r < p.m {
                let xi = (row0 + r) * row_vec4s + b * 8u;
                for (var j = 0u; j < 8u; j++) {
                    xs[r * 8u + j] = x[xi + j];
                }
            }
        }
        for (var c = 0u; c < COLS; c++) {
            let n = n0 + c * WG;
            if n < p.n {
                let wb = load_block(n, b);
                for (var r = 0u; r < ROWS; r++) {
                    if row0 + r < p.m {
                        let i = c * MAX_ROWS + r;
                        let xr = r * 8u;
                        var a = acc[i];
                        a = fma(xs[xr], wb.w0, a);
                        a = fma(xs[xr + 1u], wb.w1, a);
                        a = fma(xs[xr + 2u], wb.w2, a);
                        a = fma(xs[xr + 3u], wb.w3, a);
                        a = fma(xs[xr + 4u], wb.w4, a);
                        a = fma(xs[xr + 5u], wb.w5, a);
                        a = fma(xs[xr + 6u], wb.w6, a);
                        a = fma(xs[xr + 7u], wb.w7, a);
                        acc[i] = a;
                    }
                }
                if GLU {
                    // The up row of the same column, over the same x.
                    let wu = load_block(p.n + n, b);
                    for (var r = 0u; r < ROWS; r++) {
                        if row0 + r < p.m {
                            let i = UP + c * MAX_ROWS + r;
                            let xr = r * 8u;
                            var a = acc[i];
                            a = fma(xs[xr], wu.w0, a);
                            a = fma(xs[xr + 1u], wu.w1, a);
                            a = fma(xs[xr + 2u], wu.w2, a);
                            a = fma(xs[xr + 3u], wu.w3, a);
                            a = fma(xs[xr + 4u], wu.w4, a);
                            a = fma(xs[xr + 5u], wu.w5, a);
                            a = fma(xs[xr + 6u], wu.w6, a);
                            a = fma(xs[xr + 7u], wu.w7, a);
                            acc[i] = a;
                        }
                    }
                }
            }
        }
    }
    for (var c = 0u; c < COLS; c++) {
        let n = n0 + c * WG;
        for (var r = 0u; r < ROWS; r++) {
            if n < p.n && row0 + r < p.m {
                if GLU {
                    let g = reduce(acc[c * MAX_ROWS + r]);
                    let u = reduce(acc[UP + c * MAX_ROWS + r]);
                    y[(row0 + r) * p.y_stride + p.y_col + n] = (g / (1.0 + exp(-g))) * u;
                } else {
                    store(row0 + r, n, acc[c * MAX_ROWS + r]);
                }
            }
        }
    }
}
