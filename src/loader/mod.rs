//! Model files → host tensors.
//!
//! Two formats: a single GGUF file (v2/v3, [`gguf::GgufFile`]) and a Hugging Face directory
//! (`config.json` + safetensors, [`hf::HfModelDir`]). Both hand out [`RawTensor`]s in their
//! stored element type; [`RawTensor::to_f32`] dequantizes (the CPU reference for GPU dequant).
//!
//! Shapes are row-major, outermost dimension first, the way PyTorch and safetensors write them:
//! a linear layer's weight is `[out_features, in_features]`. GGUF lists dimensions innermost
//! first; the GGUF reader reverses them so both formats agree.

pub mod dequant;
pub mod gguf;
pub mod gguf_meta;
pub mod hf;
pub mod kquants;
pub mod quant_formats;

use std::path::PathBuf;

pub use gguf_meta::{GgufMetadata, MetaError, MetaValue, PackedArray};

/// Element type of a stored tensor. Block sizes, ggml ids and CPU dequantization of each are
/// one row of [`quant_formats::FORMATS`] (declared in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum TensorDType {
    F32,
    F16,
    BF16,
    /// 32 weights per block: f16 scale d, 32 × i8; w = d·q.
    Q8_0,
    /// 32 weights per block: f16 scale d, 16 bytes of nibbles; w = d·(q − 8).
    Q4_0,
    /// 32 weights per block: f16 scale d, f16 min m, 16 bytes of nibbles; w = d·q + m.
    Q4_1,
    /// 32 weights per block: Q4_0 with a fifth bit per weight; w = d·(q − 16).
    Q5_0,
    /// 32 weights per block: Q4_1 with a fifth bit per weight; w = d·q + m.
    Q5_1,
    /// 32 weights per block: f16 d, 16 bytes of nibbles indexing a 16-entry codebook.
    IQ4_NL,
    /// 256 weights: 16 sub-blocks of 2-bit quants, 4-bit scales and mins.
    Q2_K,
    /// 256 weights: 16 sub-blocks of 3-bit quants, 6-bit signed scales.
    Q3_K,
    /// 256 weights: 8 sub-blocks of 4-bit quants, 6-bit scales and mins.
    Q4_K,
    /// 256 weights: 8 sub-blocks of 5-bit quants, 6-bit scales and mins.
    Q5_K,
    /// 256 weights: 16 sub-blocks of 6-bit quants, 8-bit signed scales.
    Q6_K,
    /// 256 weights: 8 sub-blocks of IQ4_NL codebook nibbles, 6-bit signed scales.
    IQ4_XS,
}

impl TensorDType {
    /// Weights per quantization block (1 for plain float types).
    pub fn block_len(self) -> usize {
        self.format().block_weights
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.format().block_bytes
    }

    /// Bytes needed for `numel` elements; `None` when `numel` is not a whole number of blocks.
    pub fn bytes_for(self, numel: usize) -> Option<usize> {
        if !numel.is_multiple_of(self.block_len()) {
            return None;
        }
        (numel / self.block_len()).checked_mul(self.block_bytes())
    }
}

/// A tensor as stored in the file: its element type, shape and raw little-endian bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    pub dtype: TensorDType,
    /// Row-major, outermost first (`[out_features, in_features]` for a linear weight).
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Dequantizes / widens every element to f32, in row-major order.
    pub fn to_f32(&self) -> Result<Vec<f32>, LoadError> {
        dequant::to_f32(self.dtype, &self.data, self.numel()).map_err(|msg| LoadError::Tensor {
            name: self.name.clone(),
            msg,
        })
    }
}

/// Takes `part`, a slice of `map` whose bytes were just copied out, off this process's
/// resident memory. Loading reads each tensor once, so without this every page of the file
/// stays resident (and counted in RSS) until the model is dropped. The pages stay in the
/// kernel's page cache; touching them again reads them back from there. Unix only (a no-op
/// elsewhere); failures are ignored (the pages then just stay).
pub(crate) fn release_mapped(map: &memmap2::Mmap, part: &[u8]) {
    #[cfg(unix)]
    {
        let start = (part.as_ptr() as usize).wrapping_sub(map.as_ptr() as usize);
        if part.is_empty()
            || start
                .checked_add(part.len())
                .is_none_or(|end| end > map.len())
        {
            return;
        }
        // SAFETY: the map is read-only and never written, so a page dropped here reads the
        // same file bytes when touched again: slices borrowed from the map see no change.
        // (The usual mmap caveat, another process rewriting the file, is GgufFile::open's.)
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, part.len())
        };
    }
    #[cfg(not(unix))]
    let _ = (map, part);
}

/// Anything that can hand out named tensors (a GGUF file, a Hugging Face directory).
pub trait TensorSource {
    /// The tensor stored under `name` (the file's own naming), read and copied out of the file.
    fn tensor(&self, name: &str) -> Result<RawTensor, LoadError>;
    fn has_tensor(&self, name: &str) -> bool;
    /// The shape of tensor `name` (row-major, outermost first), without reading its data.
    fn tensor_shape(&self, name: &str) -> Option<&[usize]>;
    /// Every tensor name the source holds, sorted.
    fn tensor_names(&self) -> Vec<String>;
    /// Bytes tensor `name` takes in the file, without reading it.
    fn tensor_byte_len(&self, name: &str) -> Option<usize>;
    /// The stored element type of tensor `name`, without reading it (`None` for a type wllm
    /// does not read).
    fn tensor_dtype(&self, name: &str) -> Option<TensorDType>;
}

/// Why a model file could not be read. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: file is truncated: {what}")]
    Truncated { path: PathBuf, what: String },
    #[error("{path}: malformed: {msg}")]
    Malformed { path: PathBuf, msg: String },
    #[error(
        "{path}: tensor `{tensor}` has unsupported type {type_name} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"
    )]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        type_name: String,
    },
    /// A tensor stored in a type its role cannot take (e.g. a quantized norm weight).
    #[error("{path}: tensor `{tensor}` is stored as {found:?}; {expected}")]
    UnexpectedTensorType {
        path: PathBuf,
        tensor: String,
        found: TensorDType,
        expected: &'static str,
    },
    /// A weight (or a quantized block's scale) that is NaN or infinite.
    #[error("{path}: tensor `{tensor}` holds a NaN or infinity ({at})")]
    NonFinite {
        path: PathBuf,
        tensor: String,
        /// Where: the element, or the block whose scale it is.
        at: String,
    },
    #[error("{path}: tensor `{name}` not found")]
    MissingTensor { path: PathBuf, name: String },
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    #[error("{path}: {source}")]
    Meta {
        path: PathBuf,
        #[source]
        source: MetaError,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: unknown model architecture `{arch}` (supported: llama, gpt2)")]
    UnknownArchitecture { path: PathBuf, arch: String },
}
