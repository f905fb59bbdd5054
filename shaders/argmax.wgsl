// Greedy sampling on the GPU: ids[r] = the index of the largest value of logits row r.
//
// Order: NaN ranks below every number (so it never wins unless the whole row is NaN), equal
// values rank by lower index. That is a total order on (value, index), so the maximum is one
// well-defined element and the reduction order below cannot change it: the result equals
// sampling::argmax on the CPU whatever the workgroup size or the batch.
// Used so that a greedy step reads back one u32 per sequence instead of a vocab-sized row.
//
// Bindings:
//   0 logits f32 (rows, vocab) read
//   1 ids    u32 (rows) read_write
// Immediates: Params below.
// Dispatch: (rows, 1, 1) workgroups of WG threads (x, then y when rows > 65535); thread l scans
// columns l, l + WG, ..., then the workgroup reduces its WG candidates in a tree.

override WG: u32 = 64u;

struct Params {
    rows: u32,
    vocab: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
var<immediate> p: Params;

var<workgroup> best_val: array<f32, WG>;
var<workgroup> best_idx: array<u32, WG>;

fn is_nan(v: f32) -> bool {
    // Written without relying on `v != v`, which fast-math compilers may fold away.
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Whether (v, i) ranks above (bv, bi).
fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    if is_nan(v) {
        return is_nan(bv) && i < bi;
    }
    if is_nan(bv) {
        return true;
    }
    return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * nwg.x + wg.x;
    // Uniform per workgroup, so every thread reaches the barriers or none does.
    if row >= p.rows {
        return;
    }
    let base = row * p.vocab;
    var bv = logits[base];
    var bi = 0u;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = logits[base + i];
        if better(v, i, bv, bi) {
            bv = v;
            bi = i;
        }
    }
    best_val[lid] = bv;
    best_idx[lid] = bi;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            let v = best_val[lid + stride];
            let i = best_idx[lid + stride];
            if better(v, i, best_val[lid], best_idx[lid]) {
                best_val[lid] = v;
                best_idx[lid] = i;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        ids[row] = best_idx[0];
    }
}
