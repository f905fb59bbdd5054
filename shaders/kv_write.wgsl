// KV write through the slot mapping (vLLM's reshape_and_cache): the K and V parts of each
// token's QKV row go to slot slot_mapping[t] of this layer's paged K and V pools.
// Pool layout: (num_blocks * block_size, kv_dim), slot = block_id * block_size + offset.
//
// Bindings:
//   0 qkv           f32 (T, row_stride): K at columns [k_col, k_col + kv_dim), V right after it
//   1 slot_mapping  u32 (T)
//   2 k_cache       u32 words (slots, kv_dim) read_write: f16 pairs when KV_F16, else f32 bits
//   3 v_cache       same layout as k_cache
// Immediates: Params below. kv_dim must be even.
// Dispatch: ceil(T * kv_dim/2 / 256) workgroups of 256 (x, then y); each thread writes one
// pair of elements (one u32 word in f16), so no two threads share a word.

override KV_F16: bool = true;

struct Params {
    num_tokens: u32,
    row_stride: u32,
    k_col: u32,
    kv_dim: u32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> slot_mapping: array<u32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;
var<immediate> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let pairs = p.kv_dim / 2u;
    let idx = (wg.y * nwg.x + wg.x) * 256u + lid;
    if idx >= p.num_tokens * pairs {
        return;
    }
    let t = idx / pairs;
    let j = (idx % pairs) * 2u;
    let src = t * p.row_stride + p.k_col + j;
    let k = vec2<f32>(qkv[src], qkv[src + 1u]);
    let v = vec2<f32>(qkv[src + p.kv_dim], qkv[src + p.kv_dim + 1u]);
    let dst = slot_mapping[t] * p.kv_dim + j;
    if KV_F16 {
        k_cache[dst >> 1u] = pack2x16float(k);
        v_cache[dst >> 1u] = pack2x16float(v);
    } else {
        k_cache[dst] = bitcast<u32>(k.x);
        k_cache[dst + 1u] = bitcast<u32>(k.y);
        v_cache[dst] = bitcast<u32>(v.x);
        v_cache[dst + 1u] = bitcast<u32>(v.y);
    }
}
