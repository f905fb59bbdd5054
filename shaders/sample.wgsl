// Random sampling on the GPU: ids[r] = a token drawn from logits row r under temperature, top-k,
// top-p and min-p (vLLM's order, as sampling::Sampler without penalties), so a sampled step
// reads back one u32 per sequence instead of a vocab-sized row.
//
// Per row r, one workgroup (the CPU reference is src/sampling.rs: weights, kept, race; the CPU
// sampler runs the same algorithm):
// 1. Greedy rows (!(temperature > 0), NaN included) and vocab <= 1 are left alone: ids[r] keeps
//    the argmax the argmax kernel wrote there, the row keeps its logits.
// 2. key(l) = l with NaN as -inf; m = the row's largest key. m infinite (+inf somewhere, or no
//    finite value): left alone too.
// 3. w_i = exp((key_i - m) / T) written over the row's logits: in [0, 1], exactly 1 at the
//    maximum, 0 for -inf.
// 4. Rank order: w descending (compared as u32 bits, monotone for w >= 0), then id ascending.
//    Fixed-point mass q_i = u32(w_i * 2^24), summed exactly in 64 bits (two u32 words).
// 5. Kept set: a prefix of the rank order, then min-p.
//    top-k (0 < top_k < vocab): the first top_k. top-p (top_p < 1), within that: the first L
//    with L the smallest n >= 1 whose mass reaches target = (M * u32(top_p * 2^24)) >> 24, M the
//    mass of the top-k prefix. min-p (min_p > 0): drop w_i < min(min_p, 1).
//    A prefix is found by radix selection on the bits of w: 4 rounds of 8-bit digits, high
//    first, each a 256-bin workgroup histogram (counts, and for top-p 64-bit masses) over the
//    elements that match the digits chosen so far, scanned by one thread from the high digit
//    down (16 group totals first, then the 16 bins of the chosen group). That gives the
//    boundary value v* and the count/mass strictly above it; the ties at v* are taken in id
//    order, the r-th smallest tie id found by 3 more rounds over the id bits (ids < 2^24).
//    The prefix is {w > v*} ∪ {w == v*, id <= boundary id}.
// 6. Draw by an exponential race: every kept i with w_i > 0 gets u_i in (0, 1) from a hash of
//    (key, i), E_i = -ln(u_i), and ids[r] = the i with the largest w_i / E_i (lowest id on
//    ties). That picks i with probability w_i / Σ w (up to the 2^-23 grid of u).
//
// Why this shape: the race needs no prefix sum over the row, and both it and the selection are
// decided by comparisons and exact integer sums, which no reduction order can change. So the
// pick depends on nothing but the row's logits and its key: not the workgroup size, not the
// batch, not the row's index. (Float sums of the weights would depend on the order of atomics.)
// ln is computed here (neg_log) rather than with the built-in, whose absolute error near 1
// (2^-21 allowed by Vulkan) would be a large relative error in the small E_i that win.
//
// Bindings:
//   0 logits f32 (rows, vocab) read_write: a sampled row's logits are replaced by its weights
//   1 ids    u32 (rows) read_write: the argmax on entry, a sampled row's pick on exit
//   2 params RowSampling (rows) read (src/sampling.rs, 8 words)
// Immediates: Params below. vocab <= 2^24.
// Dispatch: (rows, 1, 1) workgroups of WG threads (x, then y when rows > 65535); thread l
// handles columns l, l + WG, ...; WG is a power of two.

override WG: u32 = 256u;

struct Params {
    rows: u32,
    vocab: u32,
}

struct RowSampling {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    key_lo: u32,
    key_hi: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
@group(0) @binding(2) var<storage, read> params: array<RowSampling>;
var<immediate> p: Params;

const BINS: u32 = 256u;
const NONE: u32 = 0xffffffffu;
// 2^24: the fixed-point scale of the masses and of top_p.
const ONE24: f32 = 16777216.0;

// Tree reductions (row maximum, race winner).
var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
// Histograms: counts and 64-bit masses (low word, carries into the high word).
var<workgroup> cnt: array<atomic<u32>, BINS>;
var<workgroup> mass_lo: array<atomic<u32>, BINS>;
var<workgroup> mass_hi: array<atomic<u32>, BINS>;
// Totals of the histograms' groups of SPAN bins.
const SPAN: u32 = 16u;
const GROUPS: u32 = 16u;
var<workgroup> group_cnt: array<u32, GROUPS>;
var<workgroup> group_mass: array<vec2<u32>, GROUPS>;
// Thread 0's decisions, read back by all with workgroupUniformLoad.
var<workgroup> bcast_f: f32;
var<workgroup> bcast_u: u32;
var<workgroup> bcast_all: u32;

var<private> lid: u32;
var<private> base: u32;
// The top-k prefix, once known: {w > k_value} ∪ {w == k_value, id <= k_id}.
var<private> k_on: bool;
var<private> k_value: u32;
var<private> k_id: u32;

fn is_nan(v: f32) -> bool {
    // Written without relying on `v != v`, which fast-math compilers may fold away.
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn is_inf(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) == 0x7f800000u;
}

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// ---- 64-bit unsigned arithmetic on vec2(low, high) ----

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

fn ge64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y > b.y || (a.y == b.y && a.x >= b.x);
}

// a * b, exact, through 16-bit limbs.
fn mul32(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(lo, hi);
}

// (m * f) >> 24 for a 64-bit m and a 32-bit f, exact (the 96-bit product in three words);
// the result must fit 64 bits (here m < 2^48, f < 2^24).
fn mul_shift24(m: vec2<u32>, f: u32) -> vec2<u32> {
    let x = mul32(m.x, f);
    let y = mul32(m.y, f);
    let w1 = x.y + y.x;
    let w2 = y.y + select(0u, 1u, w1 < x.y);
    return vec2<u32>((x.x >> 24u) | (w1 << 8u), (w1 >> 24u) | (w2 << 8u));
}

// ---- the draw ----

fn pcg(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let t = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (t >> 22u) ^ t;
}

// -ln(u) for u in (0, 1), to a few ulps relative even near u = 1: u = 2^n m with m in
// [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s) = 2 (s + s^3/3 + ...) with s = (m - 1) / (m + 1),
// |s| < 0.172 (m - 1 is exact), and n ln 2 in two parts (fdlibm's ln2_hi has trailing zeros,
// so n * ln2_hi is exact).
fn neg_log(u: f32) -> f32 {
    let b = bitcast<u32>(u);
    var n = i32(b >> 23u) - 127;
    var m = bitcast<f32>((b & 0x007fffffu) | 0x3f800000u);
    if m > 1.4142135 {
        m = m * 0.5;
        n = n + 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let z = s * s;
    let series = 1.0 + z * (1.0 / 3.0 + z * (1.0 / 5.0 + z * (1.0 / 7.0 + z * (1.0 / 9.0
        + z * (1.0 / 11.0 + z * (1.0 / 13.0))))));
    let ln_m = 2.0 * s * series;
    let nf = f32(n);
    let ln2_hi = bitcast<f32>(0x3f317180u);
    let ln2_lo = bitcast<f32>(0x3717f7d1u);
    return -(nf * ln2_hi + (nf * ln2_lo + ln_m));
}

// ---- selection ----

fn in_top_k(b: u32, i: u32) -> bool {
    return !k_on || b > k_value || (b == k_value && i <= k_id);
}

fn clear_bins() {
    for (var d = lid; d < BINS; d += WG) {
        atomicStore(&cnt[d], 0u);
        atomicStore(&mass_lo[d], 0u);
        atomicStore(&mass_hi[d], 0u);
    }
}

fn bin_mass(d: u32) -> vec2<u32> {
    return vec2<u32>(atomicLoad(&mass_lo[d]), atomicLoad(&mass_hi[d]));
}

// After a histogram: the totals of each run of SPAN bins, so that a scan steps over GROUPS
// groups and then SPAN bins instead of 256 bins one by one.
fn group_totals(with_mass: bool) {
    for (var g = lid; g < GROUPS; g += WG) {
        var c = 0u;
        var m = vec2<u32>(0u, 0u);
        for (var j = 0u; j < SPAN; j++) {
            let d = g * SPAN + j;
            c += atomicLoad(&cnt[d]);
            if with_mass {
                m = add64(m, bin_mass(d));
            }
        }
        group_cnt[g] = c;
        group_mass[g] = m;
    }
    workgroupBarrier();
}

// Histogram, by the digit at `shift`, of the weights in the top-k prefix whose bits match
// `prefix` under `mask`: counts, and masses when `with_mass`; then the group totals.
fn value_histogram(prefix: u32, mask: u32, shift: u32, with_mass: bool) {
    clear_bins();
    workgroupBarrier();
    for (var i = lid; i < p.vocab; i += WG) {
        let w = logits[base + i];
        let b = bitcast<u32>(w);
        if (b & mask) == prefix && in_top_k(b, i) {
            let d = (b >> shift) & 0xffu;
            atomicAdd(&cnt[d], 1u);
            let q = u32(w * ONE24);
            if with_mass && q != 0u {
                // Exact whatever the order: the low word wraps, each wrap adds 1 above.
                let old = atomicAdd(&mass_lo[d], q);
                if old > NONE - q {
                    atomicAdd(&mass_hi[d], 1u);
                }
            }
        }
    }
    workgroupBarrier();
    group_totals(with_mass);
}

// The id of the r-th smallest (r >= 1; r is read on thread 0 only) among the elements of the
// top-k prefix whose weight has bits v: 3 rounds over 8-bit digits of the id, high first,
// each scanned from the low digit up.
fn select_tie(v: u32, r: u32) -> u32 {
    var prefix = 0u;
    var mask = 0u;
    var below = 0u;
    for (var round = 0u; round < 3u; round++) {
        let shift = 16u - 8u * round;
        clear_bins();
        workgroupBarrier();
        for (var i = lid; i < p.vocab; i += WG) {
            let b = bitcast<u32>(logits[base + i]);
            if b == v && (i & mask) == prefix && in_top_k(b, i) {
                atomicAdd(&cnt[(i >> shift) & 0xffu], 1u);
            }
        }
        workgroupBarrier();
        group_totals(false);
        if lid == 0u {
            var g = 0u;
            loop {
                let c = group_cnt[g];
                if below + c >= r || g == GROUPS - 1u {
                    break;
                }
                below += c;
                g += 1u;
            }
            var d = g * SPAN;
            loop {
                let c = atomicLoad(&cnt[d]);
                if below + c >= r || d == g * SPAN + SPAN - 1u {
                    break;
                }
                below += c;
                d += 1u;
            }
            bcast_u = d;
        }
        let d = workgroupUniformLoad(&bcast_u);
        prefix |= d << shift;
        mask |= 0xffu << shift;
    }
    return prefix;
}

// The top-k prefix's boundary: its k-th element in rank order (0 < k < vocab), as
// vec2(value bits, id).
fn select_top_k(k: u32) -> vec2<u32> {
    var prefix = 0u;
    var mask = 0u;
    var above = 0u;
    var r = 0u;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        value_histogram(prefix, mask, shift, false);
        if lid == 0u {
            // The highest group, then bin, that brings the count to k. above < k, so that bin
            // holds at least one element.
            var g = GROUPS - 1u;
            loop {
                let c = group_cnt[g];
                if above + c >= k || g == 0u {
                    break;
                }
                above += c;
                g -= 1u;
            }
            var d = g * SPAN + SPAN - 1u;
            loop {
                let c = atomicLoad(&cnt[d]);
                if above + c >= k || d == g * SPAN {
                    r = k - above;
                    // After the last round: whether the prefix takes every tie.
                    bcast_all = select(0u, 1u, r >= c);
                    break;
                }
                above += c;
                d -= 1u;
            }
            bcast_u = d;
        }
        let d = workgroupUniformLoad(&bcast_u);
        prefix |= d << shift;
        mask |= 0xffu << shift;
    }
    if workgroupUniformLoad(&bcast_all) == 1u {
        return vec2<u32>(prefix, NONE);
    }
    return vec2<u32>(prefix, select_tie(prefix, r));
}

// The top-p prefix's boundary within the top-k prefix: its L-th element in rank order, L the
// smallest n >= 1 whose mass reaches target = (M * p24) >> 24, as vec2(value bits, id).
fn select_top_p(p24: u32) -> vec2<u32> {
    var prefix = 0u;
    var mask = 0u;
    // Thread 0's running state: the mass strictly above the current digit range, and the
    // target (`goal`: `target` is a reserved word in WGSL).
    var above = vec2<u32>(0u, 0u);
    var goal = vec2<u32>(0u, 0u);
    var ties = 0u;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        value_histogram(prefix, mask, shift, true);
        if lid == 0u {
            if round == 0u {
                var total = vec2<u32>(0u, 0u);
                for (var g = 0u; g < GROUPS; g++) {
                    total = add64(total, group_mass[g]);
                }
                goal = mul_shift24(total, p24);
            }
            // The highest non-empty group, then bin, whose mass with all above it reaches the
            // target. Above it the mass stays < target (or target = 0 and nothing is above).
            // The total reaches the target, so the scans stop at a non-empty bin.
            var g = GROUPS - 1u;
            loop {
                if group_cnt[g] != 0u {
                    let reach = add64(above, group_mass[g]);
                    if ge64(reach, goal) {
                        break;
                    }
                    above = reach;
                }
                if g == 0u {
                    break;
                }
                g -= 1u;
            }
            var d = g * SPAN + SPAN - 1u;
            loop {
                ties = atomicLoad(&cnt[d]);
                if ties != 0u {
                    let reach = add64(above, bin_mass(d));
                    if ge64(reach, goal) {
                        break;
                    }
                    above = reach;
                }
                if d == g * SPAN {
                    break;
                }
                d -= 1u;
            }
            bcast_u = d;
        }
        let d = workgroupUniformLoad(&bcast_u);
        prefix |= d << shift;
        mask |= 0xffu << shift;
    }
    // The smallest r >= 1 with above + r q(v*) >= target (r = ties does reach it).
    var r = 1u;
    if lid == 0u {
        let q = u32(bitcast<f32>(prefix) * ONE24);
        var hi = max(ties, 1u);
        while r < hi {
            let mid = r + (hi - r) / 2u;
            if ge64(add64(above, mul32(mid, q)), goal) {
                hi = mid;
            } else {
                r = mid + 1u;
            }
        }
        bcast_all = select(0u, 1u, r >= ties);
    }
    if workgroupUniformLoad(&bcast_all) == 1u {
        return vec2<u32>(prefix, NONE);
    }
    return vec2<u32>(prefix, select_tie(prefix, r));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) local: u32) {
    let row = wg.y * nwg.x + wg.x;
    // Every early return below is uniform per workgroup (workgroup ids, immediates, read-only
    // params, workgroupUniformLoad), so every thread reaches the barriers or none does.
    if row >= p.rows {
        return;
    }
    let sp = params[row];
    if !(sp.temperature > 0.0) || p.vocab <= 1u {
        return;
    }
    lid = local;
    base = row * p.vocab;

    // The row maximum (max is exact, so the tree's order does not matter).
    var mx = neg_inf();
    for (var i = lid; i < p.vocab; i += WG) {
        let l = logits[base + i];
        if !is_nan(l) {
            mx = max(mx, l);
        }
    }
    red_f[lid] = mx;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            red_f[lid] = max(red_f[lid], red_f[lid + stride]);
        }
        workgroupBarrier();
    }
    if lid == 0u {
        bcast_f = red_f[0];
    }
    let m = workgroupUniformLoad(&bcast_f);
    if is_inf(m) {
        return;
    }

    // Weights, in place. Each thread rereads only the columns it wrote.
    for (var i = lid; i < p.vocab; i += WG) {
        let l = logits[base + i];
        var w = 0.0;
        if l == m {
            w = 1.0;
        } else if !is_nan(l) && !is_inf(l) {
            w = exp((l - m) / sp.temperature);
        }
        logits[base + i] = w;
    }

    // (in_top_k lets everything through while k_on is false, as select_top_k needs.)
    if sp.top_k > 0u && sp.top_k < p.vocab {
        let bk = select_top_k(sp.top_k);
        k_value = bk.x;
        k_id = bk.y;
        k_on = true;
    }
    // Without top-p the kept prefix is the top-k prefix: v* = 0 with every tie is "all".
    var p_value = 0u;
    var p_id = NONE;
    if sp.top_p < 1.0 {
        let bp = select_top_p(u32(max(sp.top_p, 0.0) * ONE24));
        p_value = bp.x;
        p_id = bp.y;
    }
    let min_w = select(0.0, min(sp.min_p, 1.0), sp.min_p > 0.0);

    // The race.
    let seed = pcg(sp.key_lo ^ pcg(sp.key_hi));
    var best = -1.0;
    var best_id = NONE;
    for (var i = lid; i < p.vocab; i += WG) {
        let w = logits[base + i];
        let b = bitcast<u32>(w);
        let kept = in_top_k(b, i) && (b > p_value || (b == p_value && i <= p_id));
        if kept && w > 0.0 && !(w < min_w) {
            let bits = pcg(seed ^ pcg(i));
            // Strictly inside (0, 1): E > 0, so no score is infinite (u = 1 would let any kept
            // token win outright, 2^-24 of the time each).
            let u = (f32(bits >> 9u) + 0.5) * (1.0 / 8388608.0);
            let score = w / neg_log(u);
            // Columns ascend, so `>` keeps the lowest id on ties.
            if score > best {
                best = score;
                best_id = i;
            }
        }
    }
    red_f[lid] = best;
    red_u[lid] = best_id;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            let s = red_f[lid + stride];
            let i = red_u[lid + stride];
            if s > red_f[lid] || (s == red_f[lid] && i < red_u[lid]) {
                red_f[lid] = s;
                red_u[lid] = i;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u && red_u[0] != NONE {
        ids[row] = red_u[0];
    }
}
