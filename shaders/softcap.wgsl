// Soft-capping in place (Gemma 2's final logits): x = cap * tanh(x / cap), over the first
// len = rows * cols elements of x.
//
// tanh is not WGSL's builtin: drivers may build that from exp(y) and exp(-y), which overflows
// for large |y| (NaN from inf / inf) and loses digits near 0. Here, with y = x / cap and a = |y|:
//   a < 0.625:  y + y^3 * P(y^2), Cephes' tanhf polynomial (within 1 ulp in f32 on [0, 0.625]);
//   otherwise:  sign(y) * (1 - e) / (1 + e) with e = exp(-2a): exp of a negative argument
//               only, e in [0, 0.29], so nothing overflows, nothing cancels (1 - e >= 0.71),
//               and for large a, e underflows to 0 and the result is exactly ±cap (never NaN).
// Each element is computed on its own, so a result never depends on the batch.
//
// Bindings:
//   0 x  f32 (len) read_write
// Immediates: Params below (cap as f32 bits, cap > 0).
// Dispatch: ceil(len / 256) workgroups of 256 (x, then y when > 65535).

struct Params {
    len: u32,
    cap: f32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
var<immediate> p: Params;

// tanh(y), accurate to a few ulps over all of f32, never NaN for a finite y.
fn tanh_accurate(y: f32) -> f32 {
    let a = abs(y);
    if a < 0.625 {
        let z = y * y;
        var q = -5.70498872745e-3;
        q = q * z + 2.06390887954e-2;
        q = q * z - 5.37397155531e-2;
        q = q * z + 1.33314422036e-1;
        q = q * z - 3.33332819422e-1;
        return q * z * y + y;
    }
    let e = exp(-2.0 * a);
    return sign(y) * ((1.0 - e) / (1.0 + e));
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    if i >= p.len {
        return;
    }
    x[i] = p.cap * tanh_accurate(x[i] / p.cap);
}
