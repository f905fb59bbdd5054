// Token feed for a step scheduled before the previous step was read back: every token id
// marked FED (top bit set) is replaced by the id the previous step's sampler picked for the
// logits row the mark names, token_ids[t] = ids[token_ids[t] & 0x7fffffff]; other ids are
// left as they are. It runs first in a step, before the embedding, and before this step's
// own argmax/sampler overwrite `ids`.
//
// Bindings:
//   0 token_ids  u32 (T), read_write
//   1 ids        u32 (rows of the previous step): the previous step's picked tokens
// Immediates: num_tokens (T), num_ids (rows of the previous step; a mark past it is a
// runner bug, checked on the CPU, and leaves the id 0 rather than reading out of range).
// Dispatch: ceil(T / 64) workgroups of 64 (x only: T is at most a few thousand).

const FED: u32 = 0x80000000u;

struct Params {
    num_tokens: u32,
    num_ids: u32,
}

@group(0) @binding(0) var<storage, read_write> token_ids: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
var<immediate> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if t >= p.num_tokens {
        return;
    }
    let id = token_ids[t];
    if (id & FED) == 0u {
        return;
    }
    let row = id & ~FED;
    token_ids[t] = select(0u, ids[row], row < p.num_ids);
}
