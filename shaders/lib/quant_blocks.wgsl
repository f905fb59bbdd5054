// Library (not a kernel): dequantizes GGUF blocks kept as they are in GPU memory, for the
// kernels that include it (shaders/cpu/matmul_quant.wgsl, shaders/gpu/matmul_quant_split.wgsl,
// shaders/embedding_quant.wgsl; pipeline.rs appends this file to their text).
//
// The including kernel defines `fn quant_word(i: u32) -> u32` (word i of its weight buffer)
// and `override FORMAT: u32`, the ggml type id of the blocks (src/loader/quant_formats.rs's
// table; 0 means the kernel's own Q4/Q8 layout, which this file does not read). It declares
// the override among its own, ahead of any array sized by an override expression: declared
// here, at the end of the text, naga's override processing failed an internal assertion.
// A stored unit is one GGUF block (32 weights) or super-block (256 weights, 8 sub-blocks of 32),
// its bytes as GGUF has them, zero-padded to whole words; Q5_0 and IQ4_NL get two zero bytes
// after their f16 scale so their quants start on a word. The kernels walk k in sub-blocks of
// 32 weights: sub-block b of weight row n lives in unit (b / unit_subs(), n), which starts at
// word ((b / unit_subs()) * rows + n) * unit_words() (block-column-major, as the Q4/Q8 layout).
//
// Arithmetic: every weight is computed exactly as gguf-py's `dequantize` computes it (the
// sub-block scale d·sc in f32 first, then d'·q, or fma(d', q, −dmin·m) where the format has a
// min: one rounding, like numpy's d*q - m whose product is exact), so a dequantized weight
// equals the loader's CPU decoder (src/loader/kquants.rs) bit for bit.

// 32-weight sub-blocks per stored unit.
fn unit_subs() -> u32 {
    switch FORMAT {
        case 10u, 11u, 12u, 13u, 14u, 23u: { return 8u; }
        default: { return 1u; }
    }
}

// Words per stored unit (GGUF block bytes, padded).
fn unit_words() -> u32 {
    switch FORMAT {
        case 6u, 7u: { return 6u; }   // Q5_0 (22 + 2 bytes), Q5_1 (24)
        case 20u: { return 5u; }      // IQ4_NL (18 + 2)
        case 10u: { return 21u; }     // Q2_K (84)
        case 11u: { return 28u; }     // Q3_K (110 + 2)
        case 12u: { return 36u; }     // Q4_K (144)
        case 13u: { return 44u; }     // Q5_K (176)
        case 14u: { return 53u; }     // Q6_K (210 + 2)
        case 23u: { return 34u; }     // IQ4_XS (136)
        default: { return 0u; }
    }
}

// First word of the unit holding sub-block b of weight row n, the buffer holding `rows` rows.
fn unit_base(n: u32, b: u32, rows: u32) -> u32 {
    return ((b / unit_subs()) * rows + n) * unit_words();
}

fn qbyte(word: u32, i: u32) -> u32 {
    return (word >> (8u * i)) & 0xffu;
}

// Bits 0..3 of v moved to bit 0 of bytes 0..3.
fn bits_to_bytes(v: u32) -> u32 {
    return (v & 1u) | ((v & 2u) << 7u) | ((v & 4u) << 14u) | ((v & 8u) << 21u);
}

// IQ4_NL / IQ4_XS's non-linear codebook as int8 bytes, entry i in byte i % 4 of word i / 4
// (selects and shifts rather than an indexed array, which llvmpipe puts in scratch memory and
// compiled 3-7x slower).
const IQ4_WORDS = vec4<u32>(0xbfad9881u, 0xf6eaddcfu, 0x26190d01u, 0x71594535u);

fn iq4_value(i: u32) -> f32 {
    let word = select(
        select(IQ4_WORDS.x, IQ4_WORDS.y, i >= 4u),
        select(IQ4_WORDS.z, IQ4_WORDS.w, i >= 12u),
        i >= 8u,
    );
    return signed_byte(word, i % 4u);
}

fn iq4_values(nibbles: u32) -> vec4<f32> {
    let b = unpack4xU8(nibbles);
    return vec4<f32>(iq4_value(b.x), iq4_value(b.y), iq4_value(b.z), iq4_value(b.w));
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j from the 12 packed bytes in words s0..s2.
fn k4_scale_min(j: u32, s0: u32, s1: u32, s2: u32) -> vec2<f32> {
    if j < 4u {
        return vec2<f32>(f32(qbyte(s0, j) & 63u), f32(qbyte(s1, j) & 63u));
    }
    let i = j - 4u;
    let sc = (qbyte(s2, i) & 15u) | ((qbyte(s0, i) >> 6u) << 4u);
    let mn = (qbyte(s2, i) >> 4u) | ((qbyte(s1, i) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}

fn signed_byte(word: u32, i: u32) -> f32 {
    return f32(bitcast<i32>(word << (24u - 8u * i)) >> 24u);
}

fn dq_q5(base: u32, sub: u32, c: u32) -> vec4<f32> {
    // Elements 0..15 (half 0) or 16..31 (half 1) of the sub-block.
    let half = c / 4u;
    // Q5_0 / Q5_1: word 0 d (| m), word 1 the fifth bits, words 2..5 nibbles (byte j:
    // element j low, element j + 16 high).
    let dm = unpack2x16float(quant_word(base));
    let lo = (quant_word(base + 2u + c % 4u) >> (4u * half)) & 0x0f0f0f0fu;
    let hi = bits_to_bytes((quant_word(base + 1u) >> (4u * c)) & 15u) << 4u;
    let q = vec4<f32>(unpack4xU8(lo | hi));
    if FORMAT == 6u {
        return vec4<f32>(dm.x) * (q - 16.0);
    }
    return fma(vec4<f32>(dm.x), q, vec4<f32>(dm.y));
}

fn dq_iq4_nl(base: u32, sub: u32, c: u32) -> vec4<f32> {
    // Elements 0..15 (half 0) or 16..31 (half 1) of the sub-block.
    let half = c / 4u;
    // IQ4_NL: word 0 d, words 1..4 nibbles as Q4_0's.
    let d = unpack2x16float(quant_word(base)).x;
    let nib = (quant_word(base + 1u + c % 4u) >> (4u * half)) & 0x0f0f0f0fu;
    return vec4<f32>(d) * iq4_values(nib);
}

fn dq_k4(base: u32, sub: u32, c: u32) -> vec4<f32> {
    // Q4_K / Q5_K: d | dmin, 12 scale bytes, (Q5_K: 32 bytes of fifth bits,) 128
    // bytes of nibbles: sub-blocks 2p and 2p + 1 share bytes 32p .. 32p + 32.
    let dm = unpack2x16float(quant_word(base));
    let sm = k4_scale_min(sub, quant_word(base + 1u), quant_word(base + 2u), quant_word(base + 3u));
    let d = dm.x * sm.x;
    let m = -(dm.y * sm.y);
    let qs_at = select(4u, 12u, FORMAT == 13u);
    var q = (quant_word(base + qs_at + 8u * (sub / 2u) + c) >> (4u * (sub % 2u))) & 0x0f0f0f0fu;
    if FORMAT == 13u {
        q = q | (((quant_word(base + 4u + c) >> sub) & 0x01010101u) << 4u);
    }
    return fma(vec4<f32>(d), vec4<f32>(unpack4xU8(q)), vec4<f32>(m));
}

fn dq_q6_k(base: u32, sub: u32, c: u32) -> vec4<f32> {
    // Elements 0..15 (half 0) or 16..31 (half 1) of the sub-block.
    let half = c / 4u;
    // Q6_K: ql[128], qh[64], 16 int8 scales, d. Sub-block j = 4h + r takes element l
    // from ql byte 64h + 32(r % 2) + l (nibble r / 2) and qh byte 32h + l (bits 2r).
    let h = sub / 4u;
    let r = sub % 4u;
    let ql = (quant_word(base + 16u * h + 8u * (r % 2u) + c) >> (4u * (r / 2u))) & 0x0f0f0f0fu;
    let qh = (quant_word(base + 32u + 8u * h + c) >> (2u * r)) & 0x03030303u;
    let q = vec4<f32>(unpack4xU8(ql | (qh << 4u))) - 32.0;
    let si = 8u * h + 2u * r + half;
    let d = unpack2x16float(quant_word(base + 52u)).x * signed_byte(quant_word(base + 48u + si / 4u), si % 4u);
    return vec4<f32>(d) * q;
}

fn dq_q3_k(base: u32, sub: u32, c: u32) -> vec4<f32> {
    // Elements 0..15 (half 0) or 16..31 (half 1) of the sub-block.
    let half = c / 4u;
    // Q3_K: hmask[32], qs[64], 12 bytes of 6-bit scales, d. Sub-block j = 4h + r takes
    // element l from qs byte 32h + l (bits 2r) and bit j of hmask byte l; q = low +
    // 4·high − 4.
    let h = sub / 4u;
    let r = sub % 4u;
    let lo = (quant_word(base + 8u + 8u * h + c) >> (2u * r)) & 0x03030303u;
    let hb = (quant_word(base + c) >> sub) & 0x01010101u;
    let q = vec4<f32>(unpack4xU8(lo | (hb << 2u))) - 4.0;
    let si = 2u * sub + half;
    let low = (qbyte(quant_word(base + 24u + (si % 8u) / 4u), si % 4u) >> (4u * (si / 8u))) & 15u;
    let high = (qbyte(quant_word(base + 26u), si % 4u) >> (2u * (si / 4u))) & 3u;
    let d = unpack2x16float(quant_word(base + 27u)).x * (f32(low | (high << 4u)) - 32.0);
    return vec4<f32>(d) * q;
}

fn dq_q2_k(base: u32, sub: u32, c: u32) -> vec4<f32> {
    // Elements 0..15 (half 0) or 16..31 (half 1) of the sub-block.
    let half = c / 4u;
    // Q2_K: 16 scale bytes (low nibble scale, high nibble min), qs[64], d | dmin.
    let h = sub / 4u;
    let r = sub % 4u;
    let q = (quant_word(base + 4u + 8u * h + c) >> (2u * r)) & 0x03030303u;
    let si = 2u * sub + half;
    let s = qbyte(quant_word(base + si / 4u), si % 4u);
    let dm = unpack2x16float(quant_word(base + 20u));
    let d = dm.x * f32(s & 15u);
    let m = -(dm.y * f32(s >> 4u));
    return fma(vec4<f32>(d), vec4<f32>(unpack4xU8(q)), vec4<f32>(m));
}

fn dq_iq4_xs(base: u32, sub: u32, c: u32) -> vec4<f32> {
    // Elements 0..15 (half 0) or 16..31 (half 1) of the sub-block.
    let half = c / 4u;
    // IQ4_XS: d | scales_h, scales_l[4], qs[128] (sub-block j: bytes 16j .. 16j + 16,
    // low nibbles then high).
    let w0 = quant_word(base);
    let ls = (qbyte(quant_word(base + 1u), sub / 2u) >> (4u * (sub % 2u))) & 15u;
    let hs = ((w0 >> 16u) >> (2u * sub)) & 3u;
    let d = unpack2x16float(w0).x * (f32(ls | (hs << 4u)) - 32.0);
    let nib = (quant_word(base + 2u + 4u * sub + c % 4u) >> (4u * half)) & 0x0f0f0f0fu;
    return vec4<f32>(d) * iq4_values(nib);
}

// Weights 4c .. 4c + 3 (c < 8) of sub-block `sub` of the unit at word `base`, decoded by
// FORMAT's function above. The text from BEGIN to END is swapped by the wrapper for a direct
// call to that one decoder (src/gpu/pipeline.rs, `ShaderSource::wgsl_for`), so a pipeline
// inlines one format's code instead of every format's.
// BEGIN quant_vec4 dispatch
fn quant_vec4(base: u32, sub: u32, c: u32) -> vec4<f32> {
    switch FORMAT {
        case 6u, 7u: { return dq_q5(base, sub, c); }
        case 20u: { return dq_iq4_nl(base, sub, c); }
        case 12u, 13u: { return dq_k4(base, sub, c); }
        case 14u: { return dq_q6_k(base, sub, c); }
        case 11u: { return dq_q3_k(base, sub, c); }
        case 10u: { return dq_q2_k(base, sub, c); }
        case 23u: { return dq_iq4_xs(base, sub, c); }
        default: { return vec4<f32>(); }
    }
}
// END quant_vec4 dispatch
