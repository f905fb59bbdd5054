// Rotary position embedding and the KV write in one pass (RoPE followed by kv_write.wgsl, fused
// to save a dispatch per layer and a round trip of K through memory).
//
// For token t at position pos = positions[t] (qkv row t: num_heads Q heads, then num_kv_heads
// K heads, then as many V heads, head_dim columns each):
//   Q heads are rotated in place (attention reads them from qkv);
//   K heads are rotated into slot slot_mapping[t] of k_cache (qkv's K columns stay as they were);
//   V heads are copied into the same slot of v_cache.
// The rotation is over the first rotary_dim dimensions of each head (rotary_dim
// even, <= HEAD_DIM; less than HEAD_DIM for partial rotary, e.g. Phi-3's partial_rotary_factor;
// the other dimensions pass through unchanged): pair i < rotary_dim/2 is (2i, 2i+1) when
// style = 0 (interleaved, GGUF llama) or (i, i + rotary_dim/2) when style = 1 (rotate_half
// within the rotated part, Hugging Face llama and Phi-3); a' = a*cos - b*sin, b' = b*cos + a*sin
// with (cos, sin) = cos_sin[pos, i]. The table is computed on the CPU in f32 the way
// transformers does (inv_freq = 1 / theta^(2i/rotary_dim), angle = pos * inv_freq), so large
// positions stay exact. With rotary_dim = HEAD_DIM the arithmetic is full rotary's, bit for bit.
// Pools as in kv_write.wgsl: a slot's kv_dim elements as u32 words, f16 pairs when KV_F16,
// in storage buffers (slots, words), or with KV_TEXTURE in Rgba32Uint textures, texel j of slot
// s at ((s % row_slots) * slot_texels + j, s / row_slots), slot_texels = words/4 (on CPU
// adapters: the attention kernel that reads the pools gathers texels for all SIMD lanes at
// once but loads storage-buffer words lane by lane).
//
// Work items per token: num_heads * HEAD_DIM/2 Q pairs (a thread rotates both elements of its
// pair, so the in-place update never races; pairs past rotary_dim/2 have nothing to do), then
// kv_items K items and as many V items, each writing whole cache words and reading whatever
// partners its rotation needs from qkv, which it does not modify:
//   buffer mode:  kv_items = num_kv_heads * HEAD_DIM/2; an item writes one pair of elements
//                 2j, 2j+1 (one word in f16, two in f32);
//   texture mode: kv_items = slot_texels; an item writes one whole texel, 4 words (8 elements
//                 in f16, 4 in f32), so no two threads share a texel.
// Every output word is computed by one thread with the same expression in both modes, so the
// modes store the same bits and results do not depend on the batch.
//
// Bindings (every one is declared in both modes: naga counts a binding used even in a branch
// KV_TEXTURE switches off; the wrapper binds an unused buffer or texture to the other mode's):
//   0 qkv           f32 (T, row_stride) read_write
//   1 positions     u32 (T)
//   2 cos_sin       f32 (max_positions, rotary_dim/2, 2)
//   3 slot_mapping  u32 (T)
//   4 k_cache       u32 words (slots, words) read_write        (buffer mode)
//   5 v_cache       same layout as k_cache                     (buffer mode)
//   6 k_tex         texture_storage_2d<rgba32uint, write>      (texture mode)
//   7 v_tex         same layout as k_tex                       (texture mode)
// Immediates: Params below (head_dim must equal HEAD_DIM, which must be even; row_slots is 0 in
// buffer mode). Texture mode needs words a multiple of 4 (kv_dim a multiple of 8 in f16, of 4
// in f32); a texel may straddle two heads.
// Dispatch: T * chunks workgroups of WG (x, then y when > 65535), chunks = ceil(items per token
// / WG) with the mode's kv_items: workgroup w serves token w / chunks, items (w % chunks) * WG
// + lane.
// Why HEAD_DIM is a constant and a workgroup never straddles two tokens: every other index is
// then a division by a constant (a shift or a multiply) or by a value uniform over the
// workgroup, not five divisions by runtime values per item (a GPU runs each as a ~20-
// instruction sequence, and x86 has no vector divide, so llvmpipe runs one per lane). On
// lavapipe this measured level: its time here goes to the per-lane loops of the storage loads.

override KV_F16: bool = true;
override KV_TEXTURE: bool = false;
override HEAD_DIM: u32 = 64u;
const WG: u32 = 64u;

// Rotation pairs per head at full rotary (a constant once the pipeline is built).
fn half_dim() -> u32 {
    return HEAD_DIM / 2u;
}

// Rotation pairs per head: rotary_dim / 2.
fn rot_half() -> u32 {
    return p.rotary_dim / 2u;
}

struct Params {
    num_tokens: u32,
    row_stride: u32,
    num_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    max_positions: u32,
    style: u32,
    row_slots: u32,
    rotary_dim: u32,
}

@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read> cos_sin: array<f32>;
@group(0) @binding(3) var<storage, read> slot_mapping: array<u32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(6) var k_tex: texture_storage_2d<rgba32uint, write>;
@group(0) @binding(7) var v_tex: texture_storage_2d<rgba32uint, write>;
var<immediate> p: Params;

// Columns (within a head) of rotation pair i.
fn pair_cols(i: u32) -> vec2<u32> {
    if p.style == 1u {
        return vec2<u32>(i, i + rot_half());
    }
    return vec2<u32>(2u * i, 2u * i + 1u);
}

// Element `e` (0 <= e < HEAD_DIM) of the rotated head starting at qkv[base].
fn rotated(base: u32, e: u32, pos: u32) -> f32 {
    if e >= p.rotary_dim {
        return qkv[base + e];
    }
    var i = e / 2u;
    if p.style == 1u {
        // e % rot_half() for e < rotary_dim, without a division by a runtime value.
        i = select(e, e - rot_half(), e >= rot_half());
    }
    let cols = pair_cols(i);
    let c = cos_sin[(pos * rot_half() + i) * 2u];
    let s = cos_sin[(pos * rot_half() + i) * 2u + 1u];
    let a = qkv[base + cols.x];
    let b = qkv[base + cols.y];
    if e == cols.x {
        return a * c - b * s;
    }
    return b * c + a * s;
}

// Elements col, col + 1 of the token's rotated K row (the token's qkv row starts at `row`).
fn k_pair(row: u32, k_col: u32, col: u32, pos: u32) -> vec2<f32> {
    let base = row + k_col + (col / HEAD_DIM) * HEAD_DIM;
    let e = col % HEAD_DIM;
    return vec2<f32>(rotated(base, e, pos), rotated(base, e + 1u, pos));
}

// Elements col, col + 1 of the token's V row.
fn v_pair(row: u32, k_col: u32, kv_dim: u32, col: u32) -> vec2<f32> {
    let src = row + k_col + kv_dim + col;
    return vec2<f32>(qkv[src], qkv[src + 1u]);
}

// Elements col, col + 1 of the token's K row (rotated) or V row.
fn kv_pair(is_k: bool, row: u32, k_col: u32, kv_dim: u32, col: u32, pos: u32) -> vec2<f32> {
    if is_k {
        return k_pair(row, k_col, col, pos);
    }
    return v_pair(row, k_col, kv_dim, col);
}

// Cache elements per texel: 4 words of f16 pairs or of f32 bits.
fn texel_elems() -> u32 {
    return select(4u, 8u, KV_F16);
}

// Texture mode: texel j of token t's K (is_k) or V slot.
fn store_texel(is_k: bool, t: u32, j: u32, slot_texels: u32, row: u32, k_col: u32, kv_dim: u32,
               pos: u32) {
    let col = j * texel_elems();
    var w: vec4<u32>;
    if KV_F16 {
        w = vec4<u32>(pack2x16float(kv_pair(is_k, row, k_col, kv_dim, col, pos)),
                      pack2x16float(kv_pair(is_k, row, k_col, kv_dim, col + 2u, pos)),
                      pack2x16float(kv_pair(is_k, row, k_col, kv_dim, col + 4u, pos)),
                      pack2x16float(kv_pair(is_k, row, k_col, kv_dim, col + 6u, pos)));
    } else {
        let a = kv_pair(is_k, row, k_col, kv_dim, col, pos);
        let b = kv_pair(is_k, row, k_col, kv_dim, col + 2u, pos);
        w = vec4<u32>(bitcast<u32>(a.x), bitcast<u32>(a.y), bitcast<u32>(b.x), bitcast<u32>(b.y));
    }
    let slot = slot_mapping[t];
    let at = vec2<u32>((slot % p.row_slots) * slot_texels + j, slot / p.row_slots);
    if is_k {
        textureStore(k_tex, at, w);
    } else {
        textureStore(v_tex, at, w);
    }
}

fn store(cache_is_k: bool, dst: u32, v: vec2<f32>) {
    if KV_F16 {
        if cache_is_k {
            k_cache[dst >> 1u] = pack2x16float(v);
        } else {
            v_cache[dst >> 1u] = pack2x16float(v);
        }
    } else if cache_is_k {
        k_cache[dst] = bitcast<u32>(v.x);
        k_cache[dst + 1u] = bitcast<u32>(v.y);
    } else {
        v_cache[dst] = bitcast<u32>(v.x);
        v_cache[dst + 1u] = bitcast<u32>(v.y);
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let q_items = p.num_heads * half_dim();
    var kv_items = p.num_kv_heads * half_dim();
    if KV_TEXTURE {
        kv_items = p.num_kv_heads * HEAD_DIM / texel_elems();
    }
    let per_token = q_items + 2u * kv_items;
    let chunks = (per_token + WG - 1u) / WG;
    // Uniform over the workgroup: one scalar divide, not one per lane.
    let w = wg.y * nwg.x + wg.x;
    let t = w / chunks;
    let u = (w % chunks) * WG + lid;
    if t >= p.num_tokens || u >= per_token {
        return;
    }
    let pos = min(positions[t], p.max_positions - 1u);
    let row = t * p.row_stride;
    if u < q_items {
        let i = u % half_dim();
        if i >= rot_half() {
            return;
        }
        let base = row + (u / half_dim()) * HEAD_DIM;
        let cols = pair_cols(i);
        let c = cos_sin[(pos * rot_half() + i) * 2u];
        let s = cos_sin[(pos * rot_half() + i) * 2u + 1u];
        let a = qkv[base + cols.x];
        let b = qkv[base + cols.y];
        qkv[base + cols.x] = a * c - b * s;
        qkv[base + cols.y] = b * c + a * s;
        return;
    }
    let kv_dim = p.num_kv_heads * HEAD_DIM;
    let k_col = p.num_heads * HEAD_DIM;
    // Item j of this token's K (or V) row: elements 2j and 2j + 1, or texel j (texture mode).
    let is_k = u < q_items + kv_items;
    let j = select(u - q_items - kv_items, u - q_items, is_k);
    if KV_TEXTURE {
        store_texel(is_k, t, j, kv_items, row, k_col, kv_dim, pos);
        return;
    }
    let col = 2u * j;
    let dst = slot_mapping[t] * kv_dim + col;
    if is_k {
        store(true, dst, k_pair(row, k_col, col, pos));
    } else {
        store(false, dst, v_pair(row, k_col, kv_dim, col));
    }
}
