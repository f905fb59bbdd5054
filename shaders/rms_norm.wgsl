// RMSNorm: y[r, :] = x[row(r), :] * inverseSqrt(mean(x[row(r), :]^2) + eps) * weight
// where row(r) = rows[r] when GATHER (e.g. only the rows that need logits), else r.
// With accumulate != 0 the normalized row is added to y instead: y[r, :] += that (Gemma 2's
// post-norms, x = x + post_norm(attn_out), in one pass), each element y + ((x * inv) * w);
// the reduction, inv and the product are the same expressions either way, so accumulate = 0
// stores exactly the bits it always did.
//
// Bindings:
//   0 x       f32 (rows_in, D)
//   1 weight  f32 (D)
//   2 rows    u32 (R) row indices into x (any buffer when !GATHER)
//   3 y       f32 (R, D) output (read too when accumulating)
// Immediates: Params below (eps as f32 bits).
// Dispatch: one workgroup of WG per output row: R workgroups (x <= 65535, then y).
// The sum of squares uses a fixed tree order, so a row's result never depends on the batch.
// WG is 256 on GPUs and 8 on CPU adapters: llvmpipe runs an 8-lane workgroup as one SIMD
// program, where a barrier costs little, but runs every barrier of a 256-wide tree as a switch
// through all 256 invocations (~100 µs per 576-wide row). An earlier CPU form gave each row to
// one thread, summed in order; this one measured level with it on lavapipe (decode at B = 1
// and 8, prefill of 128) with one code path fewer.

override GATHER: bool = false;
override WG: u32 = 256u;

struct Params {
    num_rows: u32,
    dim: u32,
    eps: f32,
    accumulate: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
var<immediate> p: Params;

var<workgroup> partial: array<f32, WG>;

// Where input row r starts in x.
fn input_base(r: u32) -> u32 {
    var src = r;
    if GATHER {
        src = rows[r];
    }
    return src * p.dim;
}

// Sum of squares of the row's elements d0, d0 + step, ... in that order.
fn sum_squares(base: u32, d0: u32, step: u32) -> f32 {
    var s = 0.0;
    for (var d = d0; d < p.dim; d += step) {
        let v = x[base + d];
        s = fma(v, v, s);
    }
    return s;
}

// Output row r's elements d0, d0 + step, ...
fn write_row(r: u32, base: u32, sum: f32, d0: u32, step: u32) {
    let inv = inverseSqrt(sum / f32(p.dim) + p.eps);
    let out = r * p.dim;
    for (var d = d0; d < p.dim; d += step) {
        let v = (x[base + d] * inv) * weight[d];
        if p.accumulate != 0u {
            y[out + d] = y[out + d] + v;
        } else {
            y[out + d] = v;
        }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let r = wg.y * nwg.x + wg.x;
    if r >= p.num_rows {
        return;
    }
    let base = input_base(r);
    partial[lid] = sum_squares(base, lid, WG);
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    write_row(r, base, partial[0], lid, WG);
}
