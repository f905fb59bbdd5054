// KV write through the slot mapping (vLLM's reshape_and_cache): the K and V parts of each
// token's QKV row go to slot slot_mapping[t] of this layer's paged K and V pools.
// A slot (= block_id * block_size + offset) holds kv_dim elements as u32 words: f16 pairs when
// KV_F16 (kv_dim/2 words), else f32 bits (kv_dim words).
//
// Pools (src/gpu/kv_pool.rs): storage buffers (slots, words) when !KV_TEXTURE; Rgba32Uint
// textures when KV_TEXTURE, where a slot's words are slot_texels = words/4 consecutive texels,
// texel j of slot s at ((s % row_slots) * slot_texels + j, s / row_slots). Why textures: on
// CPU adapters the attention kernel that reads the pools gathers a texel for all SIMD lanes at
// once but loads storage-buffer words lane by lane; this kernel writes them there.
//
// Bindings (every one is declared in both modes: naga counts a binding used even in a branch
// KV_TEXTURE switches off; the wrapper binds an unused buffer or texture to the other mode's):
//   0 qkv           f32 (T, row_stride): K at columns [k_col, k_col + kv_dim), V right after it
//   1 slot_mapping  u32 (T)
//   2 k_cache       u32 words (slots, words) read_write          (buffer mode)
//   3 v_cache       same layout as k_cache                       (buffer mode)
//   4 k_tex         texture_storage_2d<rgba32uint, write>        (texture mode)
//   5 v_tex         same layout as k_tex                         (texture mode)
// Immediates: Params below (row_slots 0 in buffer mode). kv_dim must be even; in texture mode
// words must be a multiple of 4 (kv_dim a multiple of 8 in f16, of 4 in f32).
// Dispatch, workgroups of 256 (x, then y):
//   buffer mode:  ceil(T * kv_dim/2 / 256); each thread writes one pair of elements (one u32
//                 word in f16), so no two threads share a word.
//   texture mode: ceil(T * words/4 / 256); each thread writes one whole texel (4 words: 8
//                 elements in f16, 4 in f32) of K and of V, so no two threads share a texel.
// Either way each word is computed by the same expression, so both modes store the same bits.

override KV_F16: bool = true;
override KV_TEXTURE: bool = false;

struct Params {
    num_tokens: u32,
    row_stride: u32,
    k_col: u32,
    kv_dim: u32,
    row_slots: u32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> slot_mapping: array<u32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(4) var k_tex: texture_storage_2d<rgba32uint, write>;
@group(0) @binding(5) var v_tex: texture_storage_2d<rgba32uint, write>;
var<immediate> p: Params;

// The f16 cache word of elements src, src + 1 of qkv (buffer mode's pack2x16float).
fn pair_word(src: u32) -> u32 {
    return pack2x16float(vec2<f32>(qkv[src], qkv[src + 1u]));
}

// Texture mode: thread idx writes texel j of token t's slot in both pools.
fn write_texel(idx: u32) {
    // Elements per texel: 4 words of f16 pairs or of f32 bits.
    let per_texel = select(4u, 8u, KV_F16);
    let slot_texels = p.kv_dim / per_texel;
    if idx >= p.num_tokens * slot_texels {
        return;
    }
    let t = idx / slot_texels;
    let j = idx % slot_texels;
    let src = t * p.row_stride + p.k_col + j * per_texel;
    var k: vec4<u32>;
    var v: vec4<u32>;
    if KV_F16 {
        k = vec4<u32>(pair_word(src), pair_word(src + 2u), pair_word(src + 4u),
                      pair_word(src + 6u));
        let vs = src + p.kv_dim;
        v = vec4<u32>(pair_word(vs), pair_word(vs + 2u), pair_word(vs + 4u), pair_word(vs + 6u));
    } else {
        k = vec4<u32>(bitcast<u32>(qkv[src]), bitcast<u32>(qkv[src + 1u]),
                      bitcast<u32>(qkv[src + 2u]), bitcast<u32>(qkv[src + 3u]));
        let vs = src + p.kv_dim;
        v = vec4<u32>(bitcast<u32>(qkv[vs]), bitcast<u32>(qkv[vs + 1u]),
                      bitcast<u32>(qkv[vs + 2u]), bitcast<u32>(qkv[vs + 3u]));
    }
    let slot = slot_mapping[t];
    let at = vec2<u32>((slot % p.row_slots) * slot_texels + j, slot / p.row_slots);
    textureStore(k_tex, at, k);
    textureStore(v_tex, at, v);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = (wg.y * nwg.x + wg.x) * 256u + lid;
    if KV_TEXTURE {
        write_texel(idx);
        return;
    }
    let pairs = p.kv_dim / 2u;
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
