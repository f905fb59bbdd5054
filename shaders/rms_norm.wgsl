// RMSNorm: y[r, :] = x[row(r), :] * inverseSqrt(mean(x[row(r), :]^2) + eps) * weight
// where row(r) = rows[r] when GATHER (e.g. only the rows that need logits), else r.
//
// Bindings:
//   0 x       f32 (rows_in, D)
//   1 weight  f32 (D)
//   2 rows    u32 (R) row indices into x (any buffer when !GATHER)
//   3 y       f32 (R, D) output
// Immediates: Params below (eps as f32 bits).
// Dispatch: one workgroup of WG = 256 per output row: R workgroups (x ≤ 65535, then y).
// The sum of squares uses a fixed tree order, so a row's result never depends on the batch.
// SERIAL (CPU adapters): one thread per output row summing in order d = 0, 1, ..., with
// ceil(R / WG) workgroups of WG = 8: llvmpipe runs every barrier of the tree as a switch
// through all 256 invocations, which made a 576-wide norm cost ~100 µs per row.

override GATHER: bool = false;
override SERIAL: bool = false;
override WG: u32 = 256u;

struct Params {
    num_rows: u32,
    dim: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
var<immediate> p: Params;

var<workgroup> partial: array<f32, WG>;

// The SERIAL path: row r alone in one thread.
fn serial_row(r: u32) {
    if r >= p.num_rows {
        return;
    }
    var src = r;
    if GATHER {
        src = rows[r];
    }
    let base = src * p.dim;
    var s = 0.0;
    for (var d = 0u; d < p.dim; d++) {
        let v = x[base + d];
        s = fma(v, v, s);
    }
    let inv = inverseSqrt(s / f32(p.dim) + p.eps);
    let out = r * p.dim;
    for (var d = 0u; d < p.dim; d++) {
        y[out + d] = (x[base + d] * inv) * weight[d];
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    if SERIAL {
        serial_row((wg.y * nwg.x + wg.x) * WG + lid);
        return;
    }
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
        let v = x[base + d];
        s = fma(v, v, s);
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(partial[0] / f32(p.dim) + p.eps);
    let out = r * p.dim;
    for (var d = lid; d < p.dim; d += WG) {
        y[out + d] = (x[base + d] * inv) * weight[d];
    }
}
