// Rotary position embedding, in place on the Q and K heads of the packed QKV rows, over the
// first rotary_dim dimensions of each head (rotary_dim even, <= head_dim; = head_dim for full
// rotary; less for partial rotary, Phi-3's partial_rotary_factor). The head's other dimensions
// pass through unchanged.
//
// For token t at position pos = positions[t], head h (the num_heads query heads, then the
// num_kv_heads key heads, starting at column 0 of the row) and pair i < rotary_dim/2:
//   (a, b) = the pair's two elements: (2i, 2i+1) when style = 0 (interleaved, GGUF llama),
//            (i, i + rotary_dim/2) when style = 1 (rotate_half within the rotated part, Hugging
//            Face llama and Phi-3: q_rot = q[..., :rotary_dim]);
//   a' = a*cos - b*sin,  b' = b*cos + a*sin,  with (cos, sin) = cos_sin[pos, i].
// The cos/sin table is computed on the CPU in f32 the way transformers does
// (inv_freq = 1 / theta^(2i/rotary_dim), angle = pos * inv_freq), so large positions stay exact.
// With rotary_dim = head_dim this is the same arithmetic as full rotary, bit for bit.
//
// Bindings:
//   0 qkv        f32 (T, row_stride) read_write
//   1 positions  u32 (T)
//   2 cos_sin    f32 (max_positions, rotary_dim/2, 2)
// Immediates: Params below.
// Dispatch: ceil(T * (num_heads + num_kv_heads) * rotary_dim/2 / 256) workgroups of 256 (x,
// then y).

struct Params {
    num_tokens: u32,
    row_stride: u32,
    num_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    max_positions: u32,
    style: u32,
    rotary_dim: u32,
}

@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read> cos_sin: array<f32>;
var<immediate> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half_rot = p.rotary_dim / 2u;
    let heads = p.num_heads + p.num_kv_heads;
    let idx = (wg.y * nwg.x + wg.x) * 256u + lid;
    if idx >= p.num_tokens * heads * half_rot {
        return;
    }
    let i = idx % half_rot;
    let h = (idx / half_rot) % heads;
    let t = idx / (half_rot * heads);
    let pos = min(positions[t], p.max_positions - 1u);
    let c = cos_sin[(pos * half_rot + i) * 2u];
    let s = cos_sin[(pos * half_rot + i) * 2u + 1u];
    let base = t * p.row_stride + h * p.head_dim;
    var ia = base + 2u * i;
    var ib = ia + 1u;
    if p.style == 1u {
        ia = base + i;
        ib = ia + half_rot;
    }
    let a = qkv[ia];
    let b = qkv[ib];
    qkv[ia] = a * c - b * s;
    qkv[ib] = b * c + a * s;
}
