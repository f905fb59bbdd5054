//! The table of stored element types: for each GGUF type wllm reads, its ggml type id and
//! name, weights per block, bytes per block, the CPU dequantization of one block, the byte
//! offsets of the block's f16 scale fields (checked for NaN / infinity at load), and how the
//! GPU kernels hold its blocks ([`GpuLayout`]; the WGSL dequantization of `Blocks` formats is
//! `shaders/lib/quant_blocks.wgsl`, selected by the ggml id).
//!
//! Every size computation in the loader (GGUF tensor and row sizes, [`super::dequant::to_f32`],
//! [`super::dequant::first_non_finite`]) reads this table; nothing else assumes a block size.
//! Block layouts are ggml's (gguf-py's `gguf/quants.py` is the reference the tests compare
//! against); the per-format decoders live in [`super::dequant`] and [`super::kquants`].

use super::TensorDType;
use super::dequant::{dequant_bf16, dequant_f16, dequant_f32, dequant_q4_0, dequant_q4_1};
use super::dequant::{dequant_q5_0, dequant_q5_1, dequant_q8_0};
use super::kquants::{dequant_iq4_nl, dequant_iq4_xs, dequant_q2_k, dequant_q3_k};
use super::kquants::{dequant_q4_k, dequant_q5_k, dequant_q6_k};

/// How the GPU keeps a type's weights (see `src/gpu/kernels/matmul_quant.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuLayout {
    /// Plain floats: uploaded dense (f32 / f16).
    Dense,
    /// Q4_0 / Q4_1: repacked as d, m and 16 nibble bytes (5 words per block).
    Q4,
    /// Q8_0: d and 32 int8 (9 words per block).
    Q8,
    /// The GGUF block's bytes as they are, zero-padded to whole words; `scale_pad`: two zero
    /// bytes after the leading f16 scale (Q5_0, IQ4_NL), so the quants start on a word.
    Blocks { scale_pad: bool },
}

const DENSE: GpuLayout = GpuLayout::Dense;
const BLOCKS: GpuLayout = GpuLayout::Blocks { scale_pad: false };
const PADDED: GpuLayout = GpuLayout::Blocks { scale_pad: true };

/// One stored element type.
#[derive(Debug)]
pub struct QuantFormatRow {
    pub dtype: TensorDType,
    /// ggml's `GGMLQuantizationType` id (the `u32` in a GGUF tensor header).
    pub ggml_type: u32,
    /// ggml's name of the type (`Q4_K`).
    pub name: &'static str,
    /// Weights per block: 1 for plain floats, 32 or 256 for quantized types.
    pub block_weights: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Decodes one block (`block_bytes` bytes) into `block_weights` floats.
    pub dequant: fn(&[u8], &mut [f32]),
    /// Offsets in the block of its f16 scales (`d`, and `dmin` / `m` where the format has one).
    /// A quantized block's weights are finite exactly when these are (its quants and sub-block
    /// scales are small integers). Empty for plain float types, checked element by element.
    pub f16_scales: &'static [usize],
    /// How the GPU kernels hold it.
    pub gpu: GpuLayout,
}

#[allow(clippy::too_many_arguments)]
const fn row(
    dtype: TensorDType,
    ggml_type: u32,
    name: &'static str,
    block_weights: usize,
    block_bytes: usize,
    dequant: fn(&[u8], &mut [f32]),
    f16_scales: &'static [usize],
    gpu: GpuLayout,
) -> QuantFormatRow {
    QuantFormatRow {
        dtype,
        ggml_type,
        name,
        block_weights,
        block_bytes,
        dequant,
        f16_scales,
        gpu,
    }
}

use TensorDType as T;

/// One row per [`TensorDType`], in the enum's declaration order (`FORMATS[dtype as usize]`).
#[rustfmt::skip]
pub const FORMATS: &[QuantFormatRow] = &[
    //   dtype      id  name      weights bytes  dequantize       f16 scales at  GPU layout
    row(T::F32,     0,  "F32",     1,     4,    dequant_f32,     &[],           DENSE),
    row(T::F16,     1,  "F16",     1,     2,    dequant_f16,     &[],           DENSE),
    row(T::BF16,   30,  "BF16",    1,     2,    dequant_bf16,    &[],           DENSE),
    // 32-weight blocks.
    row(T::Q8_0,    8,  "Q8_0",   32,    34,    dequant_q8_0,    &[0],          GpuLayout::Q8),
    row(T::Q4_0,    2,  "Q4_0",   32,    18,    dequant_q4_0,    &[0],          GpuLayout::Q4),
    row(T::Q4_1,    3,  "Q4_1",   32,    20,    dequant_q4_1,    &[0, 2],       GpuLayout::Q4),
    row(T::Q5_0,    6,  "Q5_0",   32,    22,    dequant_q5_0,    &[0],          PADDED),
    row(T::Q5_1,    7,  "Q5_1",   32,    24,    dequant_q5_1,    &[0, 2],       BLOCKS),
    row(T::IQ4_NL, 20,  "IQ4_NL", 32,    18,    dequant_iq4_nl,  &[0],          PADDED),
    // 256-weight super-blocks.
    row(T::Q2_K,   10,  "Q2_K",  256,    84,    dequant_q2_k,    &[80, 82],     BLOCKS),
    row(T::Q3_K,   11,  "Q3_K",  256,   110,    dequant_q3_k,    &[108],        BLOCKS),
    row(T::Q4_K,   12,  "Q4_K",  256,   144,    dequant_q4_k,    &[0, 2],       BLOCKS),
    row(T::Q5_K,   13,  "Q5_K",  256,   176,    dequant_q5_k,    &[0, 2],       BLOCKS),
    row(T::Q6_K,   14,  "Q6_K",  256,   210,    dequant_q6_k,    &[208],        BLOCKS),
    row(T::IQ4_XS, 23,  "IQ4_XS",256,   136,    dequant_iq4_xs,  &[0],          BLOCKS),
];

/// ggml type ids wllm does not read, by name (for the error that names a tensor's type).
const UNSUPPORTED: &[(u32, &str)] = &[
    (9, "Q8_1"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
    (40, "NVFP4"),
];

impl TensorDType {
    /// This type's row of [`FORMATS`].
    pub fn format(self) -> &'static QuantFormatRow {
        &FORMATS[self as usize]
    }

    /// The type of ggml type id `id`; for other ids, the ggml name (or `type id N`).
    pub fn from_ggml_type(id: u32) -> Result<TensorDType, String> {
        if let Some(f) = FORMATS.iter().find(|f| f.ggml_type == id) {
            return Ok(f.dtype);
        }
        match UNSUPPORTED.iter().find(|(i, _)| *i == id) {
            Some((_, name)) => Err(format!("{name} (type id {id})")),
            None => Err(format!("type id {id}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_indexed_by_dtype_and_ids_are_unique() {
        for (i, f) in FORMATS.iter().enumerate() {
            assert_eq!(f.dtype as usize, i, "{}", f.name);
            assert_eq!(format!("{:?}", f.dtype), f.name);
            assert_eq!(TensorDType::from_ggml_type(f.ggml_type), Ok(f.dtype));
            assert!(f.f16_scales.iter().all(|&o| o + 2 <= f.block_bytes));
            assert_eq!(f.f16_scales.is_empty(), f.block_weights == 1);
            assert!(!UNSUPPORTED.iter().any(|(id, _)| *id == f.ggml_type));
        }
        assert_eq!(
            TensorDType::from_ggml_type(16).unwrap_err(),
            "IQ2_XXS (type id 16)"
        );
        assert_eq!(
            TensorDType::from_ggml_type(1000).unwrap_err(),
            "type id 1000"
        );
    }
}
