// Block copy for copy-on-write (vLLM's copy_blocks): for each pair (src, dst), the whole KV
// block src of this layer's K and V pools is copied over block dst. Used when a sequence
// forked from another (parallel sampling, beam) is about to write into a shared, partly
// filled last block: the scheduler gives it a fresh block and this kernel fills it first.
// Pool layout as in kv_write.wgsl: (num_blocks * block_size, kv_dim) stored as u32 words,
// so block b is the contiguous run of words [b * words_per_block, (b + 1) * words_per_block),
// words_per_block = block_size * kv_dim / 2 for f16 pairs, block_size * kv_dim for f32 bits.
// The copy moves words, so one module serves both element types (no KV_F16 override).
//
// Bindings:
//   0 pairs    u32 (P, 2) read: [src block, dst block] (plain u32, so a 4-byte buffer binds when
//              P = 0). No dst is also a src of any pair, and a dst listed twice comes with the
//              same src (then both write equal words).
//   1 k_cache  u32 words (num_blocks * words_per_block) read_write
//   2 v_cache  same layout as k_cache
// Immediates: Params below.
// Dispatch: ceil(P * words_per_block / 256) workgroups of 256 (x, then y when > 65535); each
// thread copies one word of K and the same word of V for one pair.

struct Params {
    num_pairs: u32,
    words_per_block: u32,
}

@group(0) @binding(0) var<storage, read> pairs: array<u32>;
@group(0) @binding(1) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(2) var<storage, read_write> v_cache: array<u32>;
var<immediate> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = (wg.y * nwg.x + wg.x) * 256u + lid;
    if idx >= p.num_pairs * p.words_per_block {
        return;
    }
    let pair = idx / p.words_per_block;
    let w = idx % p.words_per_block;
    let src = pairs[2u * pair] * p.words_per_block + w;
    let dst = pairs[2u * pair + 1u] * p.words_per_block + w;
    k_cache[dst] = k_cache[src];
    v_cache[dst] = v_cache[src];
}
