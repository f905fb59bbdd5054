// SwiGLU gating: y[t, i] = silu(gate_up[t, i]) * gate_up[t, F + i], silu(g) = g / (1 + exp(-g)).
// gate_up is the output of the fused gate|up projection, gate in its first F columns.
//
// Bindings:
//   0 gate_up  f32 (T, 2F)
//   1 y        f32 (T, F) output
// Immediates: Params below.
// Dispatch: ceil(T*F / 256) workgroups of 256 (x, then y).

struct Params {
    num_tokens: u32,
    inner: u32,
}

@group(0) @binding(0) var<storage, read> gate_up: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
var<immediate> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = (wg.y * nwg.x + wg.x) * 256u + lid;
    if idx >= p.num_tokens * p.inner {
        return;
    }
    let t = idx / p.inner;
    let i = idx % p.inner;
    let g = gate_up[t * 2u * p.inner + i];
    let u = gate_up[t * 2u * p.inner + p.inner + i];
    y[idx] = (g / (1.0 + exp(-g))) * u;
}
