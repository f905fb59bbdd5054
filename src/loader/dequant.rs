//! CPU dequantization: the reference every GPU dequantizing kernel is tested against.
//!
//! Which decoder, block size and scale fields a type has is its row of
//! [`super::quant_formats::FORMATS`]; this module walks a tensor block by block through that
//! row. The 32-weight formats decode here (ggml's layouts, little endian); the 256-weight
//! K-quants and the IQ4 codebook formats in [`super::kquants`].
//! - Q8_0 (34 bytes): f16 scale `d`, 32 × i8 `q`; `w[i] = d · q[i]`.
//! - Q4_0 (18 bytes): f16 `d`, 16 bytes; byte `j` holds element `j` in its low nibble and
//!   element `j + 16` in its high nibble; `w = d · (q − 8)`.
//! - Q4_1 (20 bytes): f16 `d`, f16 min `m`, 16 bytes with the same nibble order; `w = d · q + m`.
//! - Q5_0 (22 bytes): f16 `d`, u32 `qh` (bit `i` is element `i`'s fifth bit), 16 bytes of low
//!   nibbles in Q4_0's order; `w = d · (q − 16)`.
//! - Q5_1 (24 bytes): f16 `d`, f16 `m`, `qh`, 16 bytes as Q5_0; `w = d · q + m`.
//!
//! Cost: O(numel), one pass, one allocation of `numel` floats (after the byte length is checked).

use half::{bf16, f16};

use super::TensorDType;

/// Dequantizes / widens `numel` elements stored as `dtype` in `data` to f32.
///
/// Fails when `data.len()` is not exactly the size of `numel` elements of `dtype`
/// (including when `numel` is not a whole number of blocks).
pub fn to_f32(dtype: TensorDType, data: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    let f = dtype.format();
    let expected = dtype.bytes_for(numel).ok_or_else(|| {
        format!(
            "{numel} elements is not a whole number of {dtype:?} blocks ({} elements each)",
            f.block_weights
        )
    })?;
    if data.len() != expected {
        return Err(format!(
            "{numel} elements of {dtype:?} need {expected} bytes, got {}",
            data.len()
        ));
    }
    let mut out = vec![0f32; numel];
    for (block, w) in data
        .chunks_exact(f.block_bytes)
        .zip(out.chunks_exact_mut(f.block_weights))
    {
        (f.dequant)(block, w);
    }
    Ok(out)
}

/// Where `data` (elements of `dtype`) holds a NaN or an infinity, described for an error
/// message; `None` when every value is finite. Quantized blocks are checked through their f16
/// scales (the table's `f16_scales`: `d`, and the min `m` / `dmin` where the format has one):
/// a block's weights are finite exactly when those are, since its quants and sub-block scales
/// are small integers. Cost: one pass over float data; 2–4 bytes of each block.
pub fn first_non_finite(dtype: TensorDType, data: &[u8]) -> Option<String> {
    // Exponent bits all ones: an infinity or a NaN.
    let f16_bad = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00;
    let element = |i: usize| format!("element {i}");
    let f = dtype.format();
    match dtype {
        TensorDType::F32 => data
            .chunks_exact(4)
            .position(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000)
            .map(element),
        TensorDType::F16 => data.chunks_exact(2).position(f16_bad).map(element),
        TensorDType::BF16 => data
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80)
            .map(element),
        _ => data
            .chunks_exact(f.block_bytes)
            .position(|b| f.f16_scales.iter().any(|&o| f16_bad(&b[o..o + 2])))
            .map(|b| {
                let n = f.block_weights;
                format!("scale of the block of elements {}..{}", b * n, (b + 1) * n)
            }),
    }
}

/// The f16 at `block[at..at + 2]`, widened.
pub(super) fn f16_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

pub(super) fn dequant_f32(b: &[u8], w: &mut [f32]) {
    w[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

pub(super) fn dequant_f16(b: &[u8], w: &mut [f32]) {
    w[0] = f16_at(b, 0);
}

pub(super) fn dequant_bf16(b: &[u8], w: &mut [f32]) {
    w[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
}

pub(super) fn dequant_q8_0(b: &[u8], w: &mut [f32]) {
    let d = f16_at(b, 0);
    for (w, &q) in w.iter_mut().zip(&b[2..34]) {
        *w = d * f32::from(q as i8);
    }
}

/// Quant `i` (0..32) of a block whose 16 bytes at `qs` hold elements `j` (low nibbles) and
/// `j + 16` (high nibbles), with bit `i` of `qh` as its fifth bit.
fn nibble5(b: &[u8], qs: usize, qh: u32, i: usize) -> f32 {
    let lo = (b[qs + i % 16] >> (4 * (i / 16))) & 0x0f;
    f32::from(lo | ((((qh >> i) & 1) as u8) << 4))
}

pub(super) fn dequant_q4_0(b: &[u8], w: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, w) in w.iter_mut().enumerate() {
        *w = d * (nibble5(b, 2, 0, i) - 8.0);
    }
}

pub(super) fn dequant_q4_1(b: &[u8], w: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (i, w) in w.iter_mut().enumerate() {
        *w = d * nibble5(b, 4, 0, i) + m;
    }
}

pub(super) fn dequant_q5_0(b: &[u8], w: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (i, w) in w.iter_mut().enumerate() {
        *w = d * (nibble5(b, 6, qh, i) - 16.0);
    }
}

pub(super) fn dequant_q5_1(b: &[u8], w: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (i, w) in w.iter_mut().enumerate() {
        *w = d * nibble5(b, 8, qh, i) + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // f16 bit patterns, worked out by hand: sign | 5-bit exponent (bias 15) | 10-bit mantissa.
    const F16_0_5: [u8; 2] = [0x00, 0x38]; // 0x3800 = 2^(14-15) = 0.5
    const F16_0_25: [u8; 2] = [0x00, 0x34]; // 0x3400 = 2^(13-15) = 0.25
    const F16_2: [u8; 2] = [0x00, 0x40]; // 0x4000 = 2^(16-15) = 2.0
    const F16_NEG_1_5: [u8; 2] = [0x00, 0xbe]; // 0xbe00 = -(1 + 512/1024) = -1.5
    const F16_NEG_3: [u8; 2] = [0x00, 0xc2]; // 0xc200 = -(2^1 · 1.5) = -3.0

    #[test]
    fn f32_f16_bf16_widen() {
        let f32s: Vec<u8> = [1.5f32, -0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            to_f32(TensorDType::F32, &f32s, 2).unwrap(),
            vec![1.5, -0.25]
        );

        let f16s = [F16_0_5, F16_NEG_1_5, F16_2].concat();
        assert_eq!(
            to_f32(TensorDType::F16, &f16s, 3).unwrap(),
            vec![0.5, -1.5, 2.0]
        );

        // bf16 is the top half of an f32: 0x3fc0 → 0x3fc00000 = 1.5; 0xc040 → -3.0.
        let bf16s = [0xc0, 0x3f, 0x40, 0xc0];
        assert_eq!(
            to_f32(TensorDType::BF16, &bf16s, 2).unwrap(),
            vec![1.5, -3.0]
        );
    }

    #[test]
    fn q8_0_block() {
        // d = 0.5, q[i] = i - 16 (−16 … 15) → w[i] = (i − 16) / 2.
        let mut block = F16_0_5.to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let w = to_f32(TensorDType::Q8_0, &block, 32).unwrap();
        assert_eq!(w[0], -8.0);
        assert_eq!(w[15], -0.5);
        assert_eq!(w[16], 0.0);
        assert_eq!(w[31], 7.5);
        // Two blocks: the second with d = -3, q = 127 and -128 at its ends.
        let mut two = block.clone();
        two.extend_from_slice(&F16_NEG_3);
        let mut qs = [0u8; 32];
        qs[0] = 127;
        qs[31] = 0x80; // -128
        two.extend_from_slice(&qs);
        let w = to_f32(TensorDType::Q8_0, &two, 64).unwrap();
        assert_eq!(w[32], -381.0); // -3 · 127
        assert_eq!(w[33], 0.0);
        assert_eq!(w[63], 384.0); // -3 · -128
    }

    #[test]
    fn q4_0_block_nibble_order() {
        // d = 2; byte j = (hi << 4) | lo with lo = j, hi = 15 − j.
        // Element j (low nibble) = 2 · (j − 8); element j + 16 (high nibble) = 2 · (7 − j).
        let mut block = F16_2.to_vec();
        block.extend((0u8..16).map(|j| ((15 - j) << 4) | j));
        let w = to_f32(TensorDType::Q4_0, &block, 32).unwrap();
        assert_eq!(w[0], -16.0); // q=0
        assert_eq!(w[1], -14.0); // q=1
        assert_eq!(w[8], 0.0); // q=8
        assert_eq!(w[15], 14.0); // q=15
        assert_eq!(w[16], 14.0); // high nibble of byte 0: q=15
        assert_eq!(w[17], 12.0); // high nibble of byte 1: q=14
        assert_eq!(w[31], -16.0); // high nibble of byte 15: q=0
    }

    #[test]
    fn q4_1_block_scale_and_min() {
        // d = 0.25, m = -1.5; byte j = 0x3_(j) → low nibble j, high nibble 3.
        // Element j = 0.25 · j − 1.5; element j + 16 = 0.25 · 3 − 1.5 = −0.75.
        let mut block = [F16_0_25, F16_NEG_1_5].concat();
        block.extend((0u8..16).map(|j| 0x30 | j));
        let w = to_f32(TensorDType::Q4_1, &block, 32).unwrap();
        assert_eq!(w[0], -1.5);
        assert_eq!(w[6], 0.0);
        assert_eq!(w[15], 2.25);
        for (i, v) in w.iter().enumerate().skip(16) {
            assert_eq!(*v, -0.75, "element {i}");
        }
    }

    #[test]
    fn non_finite_values_and_scales_are_found() {
        let f32s: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            first_non_finite(TensorDType::F32, &f32s).unwrap(),
            "element 1"
        );
        let f16_inf = [0x00, 0x7c]; // 0x7c00 = +inf
        let f16s = [F16_0_5, F16_2, f16_inf].concat();
        assert_eq!(
            first_non_finite(TensorDType::F16, &f16s).unwrap(),
            "element 2"
        );
        assert!(first_non_finite(TensorDType::F16, &f16s[..4]).is_none());
        // bf16 0xff80 = -inf.
        assert!(first_non_finite(TensorDType::BF16, &[0x80, 0x3f, 0x80, 0xff]).is_some());
        // Q8_0: the second block's d is NaN (0x7e00); q bytes of 0x7c/0xff are never read.
        let mut q8 = [F16_0_5.as_slice(), &[0xff; 32]].concat();
        q8.extend_from_slice(&[0x00, 0x7e]);
        q8.extend_from_slice(&[0x7c; 32]);
        let at = first_non_finite(TensorDType::Q8_0, &q8).unwrap();
        assert_eq!(at, "scale of the block of elements 32..64");
        assert!(first_non_finite(TensorDType::Q8_0, &q8[..34]).is_none());
        // Q4_1: a finite d with an infinite min.
        let q41 = [F16_0_25.as_slice(), &f16_inf, &[0; 16]].concat();
        assert!(first_non_finite(TensorDType::Q4_1, &q41).is_some());
        assert!(first_non_finite(TensorDType::Q4_0, &q41[..18]).is_none());
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert!(to_f32(TensorDType::F32, &[0; 7], 2).is_err());
        assert!(to_f32(TensorDType::F16, &[0; 4], 3).is_err());
        // 31 elements is not a whole Q8_0 block.
        assert!(to_f32(TensorDType::Q8_0, &[0; 34], 31).is_err());
        assert!(to_f32(TensorDType::Q4_0, &[0; 19], 32).is_err());
        assert!(to_f32(TensorDType::Q4_1, &[0; 20], 64).is_err());
        assert!(to_f32(TensorDType::Q4_1, &[], 0).unwrap().is_empty());
        // A huge element count with a tiny buffer fails before allocating.
        assert!(to_f32(TensorDType::F32, &[0; 4], usize::MAX / 2).is_err());
    }
}
