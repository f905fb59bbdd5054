// Structured-output masks and logit_bias: changes the logits rows in place right before the
// argmax and the sampler pick a token (the CPU reference is src/gpu/kernels/logit_adjust.rs).
//
// Per row r with adjust[r] = (mask_offset, bias_start, bias_count):
// 1. mask_offset != NONE: token v is allowed iff bit v % 32 of masks[mask_offset + v / 32] is
//    set; a disallowed token's logit becomes -inf, whatever it was (NaN included).
// 2. Then each entry (token, b) of biases[bias_start .. bias_start + bias_count] with
//    token < vocab adds b to that logit (after the mask: a masked token stays -inf). A row's
//    entries are sorted by token with no duplicates (the CPU side sums duplicates); the thread
//    of column v finds its entry by binary search. Entries with token >= vocab match no column.
// Only changed logits are written: a row with no mask and no biases, and an allowed column
// without a bias, keep their bits (NaN payloads included).
// Every logit is handled by one thread, with no atomics and no reduction, so a row's result
// depends on nothing but that row: not the batch, not the grid.
//
// Bindings:
//   0 logits f32 (rows, vocab) read_write
//   1 adjust RowAdjust (rows) read (src/batch.rs)
//   2 masks  u32 read (at least one word: wgpu binds no empty buffer)
//   3 biases TokenBias read (at least one entry)
// Immediates: Params below. rows * vocab < 2^32.
// Dispatch: (min(ceil(vocab / WG), 65535), min(rows, 65535), 1) workgroups of WG threads;
// thread l of workgroup (x, y) handles rows y, y + ny, ... and in each the columns
// x * WG + l, x * WG + l + nx * WG, ... (nx, ny: the grid), so any vocab and rows fit.

override WG: u32 = 256u;

struct Params {
    rows: u32,
    vocab: u32,
}

struct RowAdjust {
    mask_offset: u32,
    bias_start: u32,
    bias_count: u32,
    pad: u32,
}

struct TokenBias {
    token: u32,
    bias: f32,
}

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read> adjust: array<RowAdjust>;
@group(0) @binding(2) var<storage, read> masks: array<u32>;
@group(0) @binding(3) var<storage, read> biases: array<TokenBias>;
var<immediate> p: Params;

const NONE: u32 = 0xffffffffu;
const NEG_INF: u32 = 0xff800000u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    for (var r = wg.y; r < p.rows; r += nwg.y) {
        let a = adjust[r];
        let has_mask = a.mask_offset != NONE;
        if !has_mask && a.bias_count == 0u {
            continue;
        }
        let base = r * p.vocab;
        let end = a.bias_start + a.bias_count;
        for (var v = wg.x * WG + lid; v < p.vocab; v += nwg.x * WG) {
            if has_mask {
                let word = masks[a.mask_offset + v / 32u];
                if ((word >> (v % 32u)) & 1u) == 0u {
                    logits[base + v] = bitcast<f32>(NEG_INF);
                    continue;
                }
            }
            // The first entry of the row with token >= v.
            var lo = a.bias_start;
            var hi = end;
            while lo < hi {
                let mid = lo + (hi - lo) / 2u;
                if biases[mid].token < v {
                    lo = mid + 1u;
                } else {
                    hi = mid;
                }
            }
            if lo < end && biases[lo].token == v {
                logits[base + v] = logits[base + v] + biases[lo].bias;
            }
        }
    }
}
