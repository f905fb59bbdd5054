//! [`pack_quantized`]: GGUF's quantized blocks → the kernels' block-column-major layout (see
//! the parent module's docs), and back ([`dequantize_packed`], for tests).

use super::{QUANT_BLOCK, QuantFormat};
use crate::gpu::GpuError;
use crate::loader::TensorDType;
use half::f16;

fn pack_error(msg: String) -> GpuError {
    GpuError::Shape {
        op: "pack_quantized",
        msg,
    }
}

/// Bytes of one GGUF row of `k` weights of a quantized `dtype` (to slice a row range out of a
/// bigger matrix: rows `start..start + n` are `raw[start * row_bytes..(start + n) * row_bytes]`).
pub fn row_bytes(dtype: TensorDType, k: usize) -> usize {
    (k / dtype.block_len()) * dtype.block_bytes()
}

/// Packs `n` rows of `k` weights, stored by GGUF as `dtype` blocks in `raw` (row-major, any
/// row range of a bigger matrix), into the kernel's layout. O(bytes), one allocation.
///
/// Fails when `dtype` is not quantized, `k` is not a multiple of its block, `raw` is not
/// exactly n·k weights, or a Q4_0 scale times −8 overflows f16 (|d| > 8188; never seen in a
/// real model).
pub fn pack_quantized(
    raw: &[u8],
    dtype: TensorDType,
    n: usize,
    k: usize,
) -> Result<(Vec<u32>, QuantFormat), GpuError> {
    let format = QuantFormat::of(dtype)
        .ok_or_else(|| pack_error(format!("{dtype:?} is not a quantized type")))?;
    let unit = format.unit_weights();
    if !k.is_multiple_of(unit) {
        return Err(pack_error(format!(
            "k = {k} is not a multiple of {dtype:?}'s {unit}-weight block"
        )));
    }
    let blocks_per_row = k / unit;
    let bb = dtype.block_bytes();
    let expected = n
        .checked_mul(blocks_per_row)
        .and_then(|b| b.checked_mul(bb))
        .ok_or_else(|| pack_error(format!("({n}, {k}) is too large")))?;
    if raw.len() != expected {
        return Err(pack_error(format!(
            "({n}, {k}) {dtype:?} weights need {expected} bytes, got {}",
            raw.len()
        )));
    }
    let bw = format.block_words();
    let mut out = vec![0u32; n * blocks_per_row * bw];
    let word = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    for (i, block) in raw.chunks_exact(bb).enumerate() {
        let (row, b) = (i / blocks_per_row, i % blocks_per_row);
        let dst = &mut out[(b * n + row) * bw..][..bw];
        if let QuantFormat::Blocks(_) = format {
            store_block(block, format.scale_pad(), dst);
            continue;
        }
        // (header word, offset of the qs bytes in the GGUF block)
        let (head, qs_at) = match dtype {
            TensorDType::Q8_0 => (u32::from(u16::from_le_bytes([block[0], block[1]])), 2),
            TensorDType::Q4_1 => (word(block, 0), 4),
            TensorDType::Q4_0 => {
                let d = f16::from_le_bytes([block[0], block[1]]);
                // Exact: a power-of-two scale, unless it leaves f16's range.
                let m = f16::from_f32(d.to_f32() * -8.0);
                if m.is_infinite() && d.is_finite() {
                    return Err(pack_error(format!(
                        "Q4_0 block {b} of row {row}: -8 · d = -8 · {d} overflows f16"
                    )));
                }
                (u32::from(d.to_bits()) | (u32::from(m.to_bits()) << 16), 2)
            }
            _ => return Err(pack_error(format!("{dtype:?} has no packed GPU layout"))),
        };
        dst[0] = head;
        for (j, w) in dst[1..].iter_mut().enumerate() {
            *w = word(block, qs_at + 4 * j);
        }
    }
    Ok((out, format))
}

/// A GGUF block's bytes into `dst`'s words (little-endian), with `scale_pad` zero bytes after
/// its leading f16 scale and zeros to the end.
fn store_block(block: &[u8], scale_pad: usize, dst: &mut [u32]) {
    let bytes = block[..2]
        .iter()
        .chain(&[0u8, 0][..scale_pad])
        .chain(&block[2..]);
    dst.fill(0);
    for (i, &byte) in bytes.enumerate() {
        dst[i / 4] |= u32::from(byte) << (8 * (i % 4));
    }
}

/// The GGUF bytes of [`store_block`]'s words (its inverse).
fn load_block(words: &[u32], scale_pad: usize, block_bytes: usize) -> Vec<u8> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut block = bytes[..2].to_vec();
    block.extend_from_slice(&bytes[2 + scale_pad..block_bytes + scale_pad]);
    block
}

/// Dequantizes [`pack_quantized`]'s words back to row-major (n, k) f32 (for tests: it must
/// equal [`crate::loader::dequant`] of the GGUF bytes): Q4/Q8 with the shader's arithmetic,
/// the other formats by unpacking each block's bytes and decoding them with the loader's table
/// (their kernels are checked against it directly).
pub fn dequantize_packed(words: &[u32], format: QuantFormat, n: usize, k: usize) -> Vec<f32> {
    let bw = format.block_words();
    let mut out = vec![0f32; n * k];
    if let QuantFormat::Blocks(dtype) = format {
        let unit = format.unit_weights();
        for (row, out_row) in out.chunks_exact_mut(k).enumerate() {
            for (b, out_block) in out_row.chunks_exact_mut(unit).enumerate() {
                let block = load_block(
                    &words[(b * n + row) * bw..][..bw],
                    format.scale_pad(),
                    dtype.block_bytes(),
                );
                (dtype.format().dequant)(&block, out_block);
            }
        }
        return out;
    }
    for (row, out_row) in out.chunks_exact_mut(k).enumerate() {
        for (b, out_block) in out_row.chunks_exact_mut(QUANT_BLOCK).enumerate() {
            let blk = &words[(b * n + row) * bw..][..bw];
            let low_f16 = |bits: u32| f16::from_bits(bits as u16).to_f32();
            let (d, m) = (low_f16(blk[0]), low_f16(blk[0] >> 16));
            for (e, v) in out_block.iter_mut().enumerate() {
                *v = match format {
                    QuantFormat::Q8 => {
                        let q = (blk[1 + e / 4] >> (8 * (e % 4))) as u8 as i8;
                        d * f32::from(q)
                    }
                    QuantFormat::Blocks(_) => unreachable!("decoded above"),
                    QuantFormat::Q4 => {
                        let j = e % 16;
                        let byte = (blk[1 + j / 4] >> (8 * (j % 4))) as u8;
                        let q = if e < 16 { byte & 15 } else { byte >> 4 };
                        d.mul_add(f32::from(q), m)
                    }
                };
            }
        }
    }
    out
}
