//! CPU decoders of ggml's 256-weight K-quant super-blocks and of the IQ4 codebook formats
//! (rows of [`super::quant_formats::FORMATS`]). Layouts, little endian, offsets in bytes:
//! - Q2_K (84): `scales[16]` (low nibble: scale, high nibble: min, one pair per 16 weights),
//!   `qs[64]` (2-bit quants), f16 `d` at 80, f16 `dmin` at 82;
//!   `w = d·sc·q − dmin·mn`.
//! - Q3_K (110): `hmask[32]` (high bits), `qs[64]` (low 2 bits), 12 bytes of sixteen 6-bit
//!   scales (stored − 32), f16 `d` at 108; `q = low − 4` where the high bit is 0, else `low`;
//!   `w = d·sc·q`.
//! - Q4_K (144): f16 `d`, f16 `dmin`, 12 bytes of eight 6-bit scales and eight 6-bit mins,
//!   `qs[128]`; `w = d·sc·q − dmin·mn`, one (sc, mn) per 32 weights.
//! - Q5_K (176): as Q4_K with `qh[32]` (a fifth bit) before `qs[128]`.
//! - Q6_K (210): `ql[128]` (low nibbles), `qh[64]` (2 high bits), `scales[16]` (i8, one per
//!   16 weights), f16 `d` at 208; `w = d·sc·(q − 32)`.
//! - IQ4_NL (18, 32 weights): f16 `d`, 16 bytes of nibbles in Q4_0's order indexing
//!   [`IQ4_VALUES`]; `w = d·v`.
//! - IQ4_XS (136): f16 `d`, u16 `scales_h` (2 bits per 32 weights), `scales_l[4]` (a nibble
//!   per 32 weights), `qs[128]`; 6-bit scale − 32; `w = d·sc·v`.
//!
//! Within a 32-weight group of the 4-bit formats, weights `0..16` (or `0..32` for the K-quants'
//! pairs of groups) take low nibbles and the next ones the high nibbles of the same bytes.
//! Products are taken in the order gguf-py takes them (`(d·sc)·q − dmin·mn`), so the CPU
//! result matches it bit for bit.

use super::dequant::f16_at;

/// IQ4_NL / IQ4_XS's 16-entry non-linear codebook.
pub const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Bits `2k..2k+2` of byte `i % 32` of a 64-byte group `i / 128` (the Q2_K / Q3_K / Q6_K
/// layout of 2-bit fields): element `e` of the super-block takes
/// `(bytes[32·(e / 128) + e % 32] >> 2·((e % 128) / 32)) & 3`.
fn crumb(bytes: &[u8], e: usize) -> u8 {
    (bytes[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3
}

pub(super) fn dequant_q2_k(b: &[u8], w: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, w) in w.iter_mut().enumerate() {
        let s = scales[e / 16];
        let dl = d * f32::from(s & 0x0f);
        let ml = dmin * f32::from(s >> 4);
        *w = dl * f32::from(crumb(qs, e)) - ml;
    }
}

pub(super) fn dequant_q3_k(b: &[u8], w: &mut [f32]) {
    let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let mut dl = [0f32; 16];
    for (j, dl) in dl.iter_mut().enumerate() {
        let lo = (sc[j % 8] >> (4 * (j / 8))) & 0x0f;
        let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        *dl = d * f32::from(((lo | (hi << 4)) as i8) - 32);
    }
    for (e, w) in w.iter_mut().enumerate() {
        let high = (hmask[e % 32] >> (e / 32)) & 1;
        let q = crumb(qs, e) as i8 - if high == 0 { 4 } else { 0 };
        *w = dl[e / 16] * f32::from(q);
    }
}

/// Q4_K / Q5_K's eight 6-bit scales and eight 6-bit mins, packed in 12 bytes: for `j < 4`,
/// scale = `s[j] & 63`, min = `s[j + 4] & 63`; for `j ≥ 4`, the low 4 bits come from the
/// nibbles of `s[j + 4]` and the high 2 bits from the top bits of `s[j − 4]` / `s[j]`.
fn scale_min_k4(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K and Q5_K (`qh` empty for Q4_K): group `g` of 32 weights takes the low (even `g`) or
/// high (odd `g`) nibbles of `qs[32·(g / 2)..][..32]`, and bit `g` of `qh[i]` as fifth bit.
fn dequant_k4(b: &[u8], qh: Option<&[u8]>, qs: &[u8], w: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    for (g, w) in w.chunks_exact_mut(32).enumerate() {
        let (sc, mn) = scale_min_k4(&b[4..16], g);
        let dl = d * f32::from(sc);
        let ml = dmin * f32::from(mn);
        for (i, w) in w.iter_mut().enumerate() {
            let mut q = (qs[32 * (g / 2) + i] >> (4 * (g % 2))) & 0x0f;
            if let Some(qh) = qh {
                q |= ((qh[i] >> g) & 1) << 4;
            }
            *w = dl * f32::from(q) - ml;
        }
    }
}

pub(super) fn dequant_q4_k(b: &[u8], w: &mut [f32]) {
    dequant_k4(b, None, &b[16..144], w);
}

pub(super) fn dequant_q5_k(b: &[u8], w: &mut [f32]) {
    dequant_k4(b, Some(&b[16..48]), &b[48..176], w);
}

pub(super) fn dequant_q6_k(b: &[u8], w: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (e, w) in w.iter_mut().enumerate() {
        // Each half of 128 weights: 64 bytes of ql (low nibbles, then high nibbles).
        let (h, r) = (e / 128, e % 128);
        let lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
        let q = (lo | (crumb(qh, e) << 4)) as i8 - 32;
        *w = (d * f32::from(scales[e / 16] as i8)) * f32::from(q);
    }
}

pub(super) fn dequant_iq4_nl(b: &[u8], w: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, w) in w.iter_mut().enumerate() {
        let q = (b[2 + i % 16] >> (4 * (i / 16))) & 0x0f;
        *w = d * f32::from(IQ4_VALUES[usize::from(q)]);
    }
}

pub(super) fn dequant_iq4_xs(b: &[u8], w: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for (g, w) in w.chunks_exact_mut(32).enumerate() {
        let lo = (scales_l[g / 2] >> (4 * (g % 2))) & 0x0f;
        let hi = ((scales_h >> (2 * g)) & 3) as u8;
        let dl = d * f32::from(((lo | (hi << 4)) as i8) - 32);
        for (i, w) in w.iter_mut().enumerate() {
            let q = (qs[16 * g + i % 16] >> (4 * (i / 16))) & 0x0f;
            *w = dl * f32::from(IQ4_VALUES[usize::from(q)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::TensorDType;
    use super::super::dequant::{first_non_finite, to_f32};

    // f16 bit patterns: 0x3800 = 0.5, 0x3c00 = 1.0, 0x4000 = 2.0, 0x3400 = 0.25.
    const F16_0_5: [u8; 2] = [0x00, 0x38];
    const F16_1: [u8; 2] = [0x00, 0x3c];
    const F16_2: [u8; 2] = [0x00, 0x40];
    const F16_0_25: [u8; 2] = [0x00, 0x34];
    const F16_NAN: [u8; 2] = [0x00, 0x7e];
    const F16_INF: [u8; 2] = [0x00, 0x7c];

    fn put(block: &mut [u8], at: usize, bytes: &[u8]) {
        block[at..at + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn q5_0_and_q5_1_fifth_bit() {
        // d = 0.5; qh = bit 0 and bit 17 set; qs byte j = 0x21 (low 1, high 2).
        // Element 0: q = 1 | 16 = 17 → 0.5 · 1 = 0.5; element 1: q = 1 → 0.5 · −15 = −7.5;
        // element 16: q = 2 → −7; element 17: q = 2 | 16 = 18 → 1.
        let mut b = vec![0u8; 22];
        put(&mut b, 0, &F16_0_5);
        put(&mut b, 2, &((1u32 << 0) | (1 << 17)).to_le_bytes());
        b[6..].fill(0x21);
        let w = to_f32(TensorDType::Q5_0, &b, 32).unwrap();
        assert_eq!((w[0], w[1], w[16], w[17]), (0.5, -7.5, -7.0, 1.0));
        // Q5_1: d = 0.25, m = 2; same quants: element 0 = 0.25 · 17 + 2 = 6.25.
        let mut b1 = vec![0u8; 24];
        put(&mut b1, 0, &F16_0_25);
        put(&mut b1, 2, &F16_2);
        put(&mut b1, 4, &b[2..22]);
        let w = to_f32(TensorDType::Q5_1, &b1, 32).unwrap();
        assert_eq!((w[0], w[1], w[16], w[17]), (6.25, 2.25, 2.5, 6.5));
    }

    #[test]
    fn q4_k_scales_mins_and_nibbles() {
        let mut b = vec![0u8; 144];
        put(&mut b, 0, &F16_0_5); // d
        put(&mut b, 2, &F16_1); // dmin
        // Group 0: sc = 3, mn = 5. Group 5: sc = 0b11_0010 = 50 (low nibble of s[9] = 2,
        // top bits of s[1] = 3), mn = 0b01_0111 = 23 (high nibble of s[9] = 7, top of s[5] = 1).
        b[4] = 3;
        b[8] = 5;
        b[5] = 0xc0;
        b[9] = 0x40;
        b[13] = 0x72;
        // qs[0] = 0x9_4: group 0 element 0 takes 4, group 1 element 0 takes 9.
        // qs[64] = 0x0_6 → group 4 element 0 = 6 ... group 5 element 0 = 0; qs[65]: 0xf0.
        b[16] = 0x94;
        b[16 + 64] = 0x06;
        b[16 + 65] = 0xf0;
        let w = to_f32(TensorDType::Q4_K, &b, 256).unwrap();
        assert_eq!(w[0], 0.5 * 3.0 * 4.0 - 5.0); // 1
        assert_eq!(w[1], -5.0); // q = 0
        assert_eq!(w[32], 0.0); // group 1: sc = mn = 0
        assert_eq!(w[160], -23.0); // group 5, q = 0
        assert_eq!(w[161], 0.5 * 50.0 * 15.0 - 23.0);
        // Q5_K: the same scales; qh[1] bit 5 set → group 5 element 1: q = 15 | 16 = 31.
        let mut b5 = vec![0u8; 176];
        put(&mut b5, 0, &b[..16]);
        b5[16 + 1] = 1 << 5;
        put(&mut b5, 48, &b[16..144]);
        let w = to_f32(TensorDType::Q5_K, &b5, 256).unwrap();
        assert_eq!(w[0], 1.0);
        assert_eq!(w[161], 0.5 * 50.0 * 31.0 - 23.0);
        assert_eq!(w[160], -23.0);
    }

    #[test]
    fn q6_k_layout() {
        let mut b = vec![0u8; 210];
        put(&mut b, 208, &F16_0_25);
        b[192] = 2; // scale of elements 0..16
        b[192 + 4] = (-1i8) as u8; // elements 64..80
        b[192 + 8] = 4; // elements 128..144
        // Element 0: ql[0] low = 5, qh[0] bits 0..2 = 2 → q = 37 − 32 = 5 → 0.25 · 2 · 5.
        // Element 64: ql[0] high = 0xa, qh[0] bits 4..6 = 1 → q = 26 − 32 = −6 → 0.25·−1·−6.
        // Element 128: ql[64] low = 0, qh[32] bits 0..2 = 0 → −32 → 0.25 · 4 · −32.
        b[0] = 0xa5;
        b[128] = 0x12;
        let w = to_f32(TensorDType::Q6_K, &b, 256).unwrap();
        assert_eq!((w[0], w[64], w[128]), (2.5, 1.5, -32.0));
    }

    #[test]
    fn q3_k_scales_and_high_bit() {
        let mut b = vec![0u8; 110];
        put(&mut b, 108, &F16_0_5);
        // Scale 0: low nibble of byte 96 = 0x1, high bits of byte 104 (bits 0..2) = 2 →
        // 0b10_0001 = 33 → 33 − 32 = 1. Scale 8: high nibble of byte 96 = 0 and bits 4..6 of
        // byte 104 = 0 → −32.
        b[96] = 0x01;
        b[104] = 0x02;
        // Element 0: qs low 2 bits = 3, hmask[0] bit 0 set → q = 3 → 0.5 · 1 · 3.
        // Element 1: qs = 0, high bit clear → q = −4 → −2. Element 128 (scale 8): qs[32] low
        // bits = 1, hmask[0] bit 4 clear → q = −3 → 0.5 · −32 · −3 = 48.
        b[32] = 3;
        b[32 + 32] = 1;
        b[0] = 1;
        let w = to_f32(TensorDType::Q3_K, &b, 256).unwrap();
        assert_eq!((w[0], w[1], w[128]), (1.5, -2.0, 48.0));
    }

    #[test]
    fn q2_k_scale_and_min_nibbles() {
        let mut b = vec![0u8; 84];
        put(&mut b, 80, &F16_0_5);
        put(&mut b, 82, &F16_0_25);
        b[0] = 0x46; // elements 0..16: sc = 6, mn = 4
        b[15] = 0x1f; // elements 240..256: sc = 15, mn = 1
        // Element 0: qs[0] bits 0..2 = 3 → 0.5·6·3 − 0.25·4 = 8.
        // Element 255: qs[32 + 31] bits 6..8 = 2 → 0.5·15·2 − 0.25 = 14.75.
        b[16] = 3;
        b[16 + 63] = 2 << 6;
        let w = to_f32(TensorDType::Q2_K, &b, 256).unwrap();
        assert_eq!((w[0], w[1], w[255], w[254]), (8.0, -1.0, 14.75, -0.25));
    }

    #[test]
    fn iq4_codebook() {
        let mut b = vec![0u8; 18];
        put(&mut b, 0, &F16_0_5);
        b[2] = 0xf0; // element 0 → v[0] = −127; element 16 → v[15] = 113
        b[3] = 0x98; // element 1 → v[8] = 1; element 17 → v[9] = 13
        let w = to_f32(TensorDType::IQ4_NL, &b, 32).unwrap();
        assert_eq!((w[0], w[16], w[1], w[17]), (-63.5, 56.5, 0.5, 6.5));
        // IQ4_XS: d = 2; group 0: scales_l low nibble 1, scales_h bits 0..2 = 2 → 33 − 32 = 1;
        // group 7: scales_l[3] high nibble 0, scales_h bits 14..16 = 0 → −32.
        let mut x = vec![0u8; 136];
        put(&mut x, 0, &F16_2);
        put(&mut x, 2, &2u16.to_le_bytes());
        x[4] = 0x01;
        x[8] = 0xf0; // group 0: element 0 → −127, element 16 → 113
        x[8 + 16 * 7] = 0x08; // group 7: element 0 → 1
        let w = to_f32(TensorDType::IQ4_XS, &x, 256).unwrap();
        assert_eq!(
            (w[0], w[16], w[224], w[225]),
            (-254.0, 226.0, -64.0, 2.0 * -32.0 * -127.0)
        );
    }

    #[test]
    fn non_finite_scales_of_every_format() {
        for (dtype, at) in [
            (TensorDType::Q5_0, 0),
            (TensorDType::Q5_1, 2),
            (TensorDType::IQ4_NL, 0),
            (TensorDType::Q2_K, 82),
            (TensorDType::Q3_K, 108),
            (TensorDType::Q4_K, 0),
            (TensorDType::Q5_K, 2),
            (TensorDType::Q6_K, 208),
            (TensorDType::IQ4_XS, 0),
        ] {
            let f = dtype.format();
            // Two blocks of 0xff quants with finite scales; then the second's scale at `at`.
            let mut data = vec![0x11u8; 2 * f.block_bytes];
            for block in data.chunks_exact_mut(f.block_bytes) {
                for &o in f.f16_scales {
                    put(block, o, &F16_1);
                }
            }
            assert!(first_non_finite(dtype, &data).is_none(), "{dtype:?}");
            for bad in [F16_NAN, F16_INF] {
                let mut d = data.clone();
                put(&mut d, f.block_bytes + at, &bad);
                let n = f.block_weights;
                assert_eq!(
                    first_non_finite(dtype, &d).unwrap(),
                    format!("scale of the block of elements {n}..{}", 2 * n),
                    "{dtype:?}"
                );
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert!(to_f32(TensorDType::Q4_K, &[0; 144], 32).is_err());
        assert!(to_f32(TensorDType::Q6_K, &[0; 209], 256).is_err());
        assert!(to_f32(TensorDType::IQ4_XS, &[0; 136 * 2], 256).is_err());
        assert!(to_f32(TensorDType::Q2_K, &[0; 84], 256).is_ok());
    }
}
