// LayerNorm: y[r, :] = (x[row(r), :] - mean) * inverseSqrt(var + eps) * weight + bias
// where row(r) = rows[r] when GATHER, else r. Mean first, then the variance of (x - mean),
// both reduced in a fixed tree order.
//
// Bindings:
//   0 x       f32 (rows_in, D)
//   1 weight  f32 (D)
//   2 bias    f32 (D)
//   3 rows    u32 (R) row indices into x (any buffer when !GATHER)
//   4 y       f32 (R, D) output
// Immediates: Params below (eps as f32 bits).
// Dispatch: one workgroup of WG per output row: R workgroups (x <= 65535, then y).
// WG is 256 on GPUs and 8 on CPU adapters, as for rms_norm.wgsl (llvmpipe runs each barrier of
// a 256-wide workgroup as a switch through all its invocations).

override GATHER: bool = false;
override WG: u32 = 256u;

struct Params {
    num_rows: u32,
    dim: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
var<immediate> p: Params;

var<workgroup> partial: array<f32, WG>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let r = wg.y * nwg.x + wg.x;
    if r >= p.num_rows {
        return;
    }
    var src = r;
    if GATHER {
        src = rows[r];
    }
    let base = src * p.dim;
    var s = 0.0;
    for (var d = lid; d < p.dim; d += WG) {
        s = s + x[base + d];
    }
    let mean = reduce_sum(lid, s) / f32(p.dim);
    var q = 0.0;
    for (var d = lid; d < p.dim; d += WG) {
        let c = x[base + d] - mean;
        q = fma(c, c, q);
    }
    let inv = inverseSqrt(reduce_sum(lid, q) / f32(p.dim) + p.eps);
    let out = r * p.dim;
    for (var d = lid; d < p.dim; d += WG) {
        y[out + d] = (x[base + d] - mean) * inv * weight[d] + bias[d];
    }
}
