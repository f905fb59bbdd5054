// GELU, tanh approximation ("gelu_new" in GPT-2), in place:
//   x = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
// The tanh argument is clamped to ±15 (tanh is ±1 there in f32) so no driver's tanh overflows.
//
// Bindings:
//   0 x  f32 (n) read_write
// Immediates: Params below.
// Dispatch: ceil(n / 256) workgroups of 256 (x, then y).

struct Params {
    len: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
var<immediate> p: Params;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    if i >= p.len {
        return;
    }
    let v = x[i];
    let inner = clamp(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v), -15.0, 15.0);
    x[i] = 0.5 * v * (1.0 + tanh(inner));
}
