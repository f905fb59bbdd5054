// Matrix multiply with a linear layer's weight: y[m, y_col + n] (+)= sum_k x[m, k] * W[n, k] + bias[n]
//
// x is (M, K) f32 activations. The weight W (N out-features × K in-features) is stored
// transposed, (K, n_pad) with n_pad = N rounded up to a multiple of 8, so that for each k the
// columns a thread needs are one aligned run: 8 columns = one vec4<u32> of packed f16 pairs
// when W_F16 (column 2j in the low half of word j), else two vec4<u32> of f32 bits.
// Each thread owns 8 adjacent output columns for ROWS rows (1 or 8).
// y has row stride y_stride; this call writes columns [y_col, y_col + N) (a weight split
// across buffers is one call per part). flags bit 0: add bias[n]; bit 1: accumulate into y
// (the fused residual add).
//
// Bindings:
//   0 x     f32 (M, K)
//   1 w     vec4<u32> words of (K, n_pad)
//   2 bias  f32 (N) (any buffer when flag 0 is off)
//   3 y     f32 (M, y_stride) read_write
// Immediates: Params below.
// Dispatch: (ceil(N / 256), ceil(M / ROWS)) workgroups of 32 threads.
//
// Each output element is one sequential fma chain over k = 0..K-1, whatever M is and
// whichever rows share the workgroup: a row's result never depends on its batch. There is
// no workgroup memory and no barrier (llvmpipe pays dearly for barriers; GPUs read x from cache).

override W_F16: bool = true;
const WG: u32 = 32u;
// Rows per thread: 8, or 1 for small batches (the wrapper picks).
override ROWS: u32 = 8u;
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
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
var<immediate> p: Params;

struct Cols8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// Columns n0..n0+8 (n0 a multiple of 8) of row k.
fn load_w8(k: u32, n0: u32) -> Cols8 {
    let i = k * p.n_pad + n0;
    if W_F16 {
        let q = w[i >> 3u];
        let a = unpack2x16float(q.x);
        let b = unpack2x16float(q.y);
        let c = unpack2x16float(q.z);
        let d = unpack2x16float(q.w);
        return Cols8(vec4<f32>(a, b), vec4<f32>(c, d));
    }
    return Cols8(bitcast<vec4<f32>>(w[i >> 2u]), bitcast<vec4<f32>>(w[(i >> 2u) + 1u]));
}

fn store(row: u32, col: u32, acc: f32) {
    if col >= p.n {
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

@compute @workgroup_size(32)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n0 = (wg.x * WG + lid) * 8u;
    let row0 = wg.y * ROWS;
    if n0 >= p.n || row0 >= p.m {
        return;
    }
    // Every loop over rows runs the constant ROWS times (rows past the batch re-read its last
    // row and are never stored): a compiler can then unroll it and keep lo/hi in registers,
    // where a trip count read from memory left llvmpipe indexing them in per-lane scratch.
    let last = p.m - 1u;
    var lo: array<vec4<f32>, MAX_ROWS>;
    var hi: array<vec4<f32>, MAX_ROWS>;
    for (var k = 0u; k < p.k; k++) {
        let wv = load_w8(k, n0);
        for (var r = 0u; r < ROWS; r++) {
            let xv = vec4<f32>(x[min(row0 + r, last) * p.k + k]);
            lo[r] = fma(xv, wv.lo, lo[r]);
            hi[r] = fma(xv, wv.hi, hi[r]);
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        let row = row0 + r;
        if row <= last {
            for (var j = 0u; j < 4u; j++) {
                store(row, n0 + j, lo[r][j]);
                store(row, n0 + 4u + j, hi[r][j]);
            }
        }
    }
}
