// Gated activation: y[t, i] = act(gate_up[t, i]) * gate_up[t, F + i], the gate in the first F
// columns of the fused gate|up projection's output. act is chosen by Params.act:
//   0  silu(g) = g / (1 + exp(-g))                            (SwiGLU: Llama, Qwen, Phi-3)
//   1  gelu_tanh(g) = 0.5 * g * (1 + tanh(k * (g + 0.044715 * g^3))), k = sqrt(2/pi)
//                                                             (GeGLU: Gemma; PyTorch's
//                                                             gelu(approximate='tanh'), gelu_new)
// Both are g / (1 + exp(-z)): z = g for silu, z = 2k * (g + 0.044715 * g^3) for gelu_tanh,
// since 0.5 * (1 + tanh(u)) = 1 / (1 + exp(-2u)). That form needs no tanh (which some drivers
// build from exp(u) and exp(-u), overflowing for large |u|), does not cancel where 1 + tanh(u)
// nears 0 (gate << 0), and is never NaN: exp(-z) = +inf gives g / inf = -0, exp(-z) = 0 gives g.
// silu runs the same expression it always did (z = g), so its results are unchanged bit for bit.
//
// Bindings:
//   0 gate_up  f32 (T, 2F)
//   1 y        f32 (T, F) output
// Immediates: Params below.
// Dispatch: ceil(T*F / 256) workgroups of 256 (x, then y).

struct Params {
    num_tokens: u32,
    inner: u32,
    act: u32,
}

@group(0) @binding(0) var<storage, read> gate_up: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
var<immediate> p: Params;

// 2 * sqrt(2/pi) and 2 * sqrt(2/pi) * 0.044715: z = g * (GELU_A + GELU_B * g^2).
const GELU_A: f32 = 1.5957691216057308;
const GELU_B: f32 = 0.07135481627260025;

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
    var z = g;
    if p.act == 1u {
        z = g * (GELU_A + GELU_B * (g * g));
    }
    y[idx] = (g / (1.0 + exp(-z))) * u;
}
