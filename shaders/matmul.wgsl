// Matrix multiply with a linear layer's weight: y[m, col + n] (+)= sum_k x[m, k] * w[n, k] + bias[n]
//
// x is (M, K) f32 activations; w is (N, K) row-major (PyTorch's [out, in]) stored as f16 pairs
// packed in u32 when W_F16, else f32 bits; y has row stride y_stride and this call writes
// columns [y_col, y_col + N) (a weight split across buffers is one call per part).
// flags bit 0: add bias[n]; bit 1: accumulate into y (the residual add, fused).
//
// Bindings:
//   0 x     f32 (M, K)
//   1 w     u32 words of (N, K)
//   2 bias  f32 (N) (any buffer when flag 0 is off)
//   3 y     f32 (M, y_stride) read_write
// Immediates: Params below. K must be even (pairs of weights are read at once).
// Dispatch: (ceil(N / 64), ceil(M / 8)) workgroups of 64 threads; thread i owns output
// column 64*wg.x + i for the workgroup's 8 rows. X is staged 64 columns of K at a time.
//
// Each output element is one sequential fma chain over k = 0..K-1, whatever M is and
// whichever rows share the workgroup: a row's result never depends on its batch.

override W_F16: bool = true;
const WG: u32 = 64u;
const ROWS: u32 = 8u;
const TK: u32 = 64u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    y_stride: u32,
    y_col: u32,
    flags: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
var<immediate> p: Params;

var<workgroup> xs: array<f32, 512>; // (ROWS, TK)

// Weights i and i+1 (i even).
fn load_w2(i: u32) -> vec2<f32> {
    if W_F16 {
        return unpack2x16float(w[i >> 1u]);
    }
    return vec2<f32>(bitcast<f32>(w[i]), bitcast<f32>(w[i + 1u]));
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wg.x * WG + lid;
    let row0 = wg.y * ROWS;
    let rows = min(ROWS, p.m - row0);
    let col_ok = col < p.n;
    let w_base = col * p.k;
    var acc: array<f32, 8>;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        let kl = min(TK, p.k - k0);
        for (var i = lid; i < ROWS * TK; i += WG) {
            let r = i / TK;
            let kk = i % TK;
            var v = 0.0;
            if r < rows && kk < kl {
                v = x[(row0 + r) * p.k + k0 + kk];
            }
            xs[i] = v;
        }
        workgroupBarrier();
        if col_ok {
            for (var kk = 0u; kk < kl; kk += 2u) {
                let wv = load_w2(w_base + k0 + kk);
                for (var r = 0u; r < rows; r++) {
                    acc[r] = fma(xs[r * TK + kk], wv.x, acc[r]);
                    acc[r] = fma(xs[r * TK + kk + 1u], wv.y, acc[r]);
                }
            }
        }
        workgroupBarrier();
    }
    if !col_ok {
        return;
    }
    for (var r = 0u; r < rows; r++) {
        var v = acc[r];
        if (p.flags & 1u) != 0u {
            v = v + bias[col];
        }
        let o = (row0 + r) * p.y_stride + p.y_col + col;
        if (p.flags & 2u) != 0u {
            v = y[o] + v;
        }
        y[o] = v;
    }
}
