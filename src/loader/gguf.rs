//! GGUF v2/v3 reader: header, metadata, tensor infos, and zero-copy access to tensor data.
//!
//! Layout (all little endian): `"GGUF"`, `u32 version`, `u64 tensor_count`, `u64 kv_count`,
//! `kv_count` × (string key, `u32` value type, value), `tensor_count` × (string name, `u32 n_dims`,
//! `n_dims` × `u64` dims innermost first, `u32` ggml type, `u64` offset), padding to
//! `general.alignment` (default 32), then the data section; each tensor's offset is relative to it.
//! A string is `u64` length + bytes; an array is `u32` element type + `u64` count + elements.
//!
//! The file is memory-mapped; parsing reads the header once (O(header size)) and keeps only the
//! metadata and tensor table, so [`GgufFile::tensor_bytes`] is a bounds-checked slice of the map.
//! Every length read from the file is checked against the bytes that remain before anything is
//! allocated for it, so a corrupt or hostile count fails with [`LoadError::Truncated`] instead of
//! exhausting memory.
//!
//! Tensors whose data ranges overlap make [`GgufFile::open`] fail with [`LoadError::Malformed`]
//! naming both.
//!
//! Tensors of a ggml type wllm cannot dequantize (K-quants, IQ-quants, …) make [`GgufFile::open`]
//! fail with [`LoadError::UnsupportedTensorType`]: such a file cannot be run, and failing at open
//! time names the first offending tensor instead of failing mid-load.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{
    GgufMetadata, LoadError, MetaValue, PackedArray, RawTensor, TensorDType, TensorSource,
};

const MAGIC: [u8; 4] = *b"GGUF";
/// `GGML_MAX_DIMS`: llama.cpp refuses more.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays of arrays deeper than this are refused (each level recurses once in the parser).
const MAX_ARRAY_DEPTH: usize = 8;
/// Pre-allocation cap: vectors grow past this only as elements are actually parsed.
const MAX_PREALLOC: usize = 1 << 16;

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Row-major, outermost first: GGUF's innermost-first dims reversed.
    pub shape: Vec<usize>,
    pub dtype: TensorDType,
    /// The ggml type id as stored in the file.
    pub ggml_type: u32,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Byte length of the data (whole blocks of `dtype`).
    pub size: usize,
}

impl GgufTensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed, memory-mapped GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: GgufMetadata,
    /// In file order.
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section (a multiple of `alignment`).
    pub data_start: u64,
    map: Mmap,
    index: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps `path` and parses its header, metadata and tensor table, checking every bound.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, LoadError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| LoadError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only and private to this struct. As with every mmap-based
        // loader, another process truncating or rewriting the file while it is mapped is
        // outside what we can guard against.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let parsed = Parser {
            buf: &map,
            pos: 0,
            path: &path,
        }
        .parse()?;
        let index = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
            map,
            index,
        })
    }

    /// `general.architecture` (e.g. `"llama"`).
    pub fn architecture(&self) -> Result<&str, LoadError> {
        self.metadata
            .get_str("general.architecture")
            .map_err(|source| LoadError::Meta {
                path: self.path.clone(),
                source,
            })
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The stored bytes of tensor `name`, borrowed from the map (no copy).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], LoadError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        // Checked at open; re-checked here so a slice can never panic.
        let range = data_range(self.data_start, info)
            .and_then(|(start, end)| self.map.get(start..end))
            .ok_or_else(|| LoadError::Truncated {
                path: self.path.clone(),
                what: format!("data of tensor `{name}` extends past the end of the file"),
            })?;
        Ok(range)
    }
}

impl TensorSource for GgufFile {
    fn tensor(&self, name: &str) -> Result<RawTensor, LoadError> {
        let bytes = self.tensor_bytes(name)?;
        let data = bytes.to_vec();
        super::release_mapped(&self.map, bytes);
        let info = self
            .tensor_info(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        Ok(RawTensor {
            name: info.name.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            data,
        })
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.tensor_info(name).map(|t| t.shape.as_slice())
    }

    fn tensor_byte_len(&self, name: &str) -> Option<usize> {
        self.tensor_info(name).map(|t| t.size)
    }

    fn tensor_dtype(&self, name: &str) -> Option<TensorDType> {
        self.tensor_info(name).map(|t| t.dtype)
    }

    fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.iter().map(|t| t.name.clone()).collect();
        names.sort();
        names
    }
}

/// Absolute `[start, end)` of a tensor's data, `None` on overflow.
fn data_range(data_start: u64, info: &GgufTensorInfo) -> Option<(usize, usize)> {
    let start = data_start.checked_add(info.offset)?;
    let end = start.checked_add(u64::try_from(info.size).ok()?)?;
    Some((usize::try_from(start).ok()?, usize::try_from(end).ok()?))
}

/// Two tensors whose data ranges intersect, if any (empty tensors take no bytes): a file
/// whose tensors share bytes is corrupt, whatever each one's values. O(n log n): sorted by
/// offset, each range must end where or before the next begins.
fn overlapping(tensors: &[GgufTensorInfo]) -> Option<(&GgufTensorInfo, &GgufTensorInfo)> {
    let mut by_offset: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    by_offset
        .windows(2)
        .find(|w| w[0].offset.saturating_add(w[0].size as u64) > w[1].offset)
        .map(|w| (w[0], w[1]))
}

/// The wllm element type of a ggml type id (a row of [`super::quant_formats::FORMATS`]); for
/// other ids, the ggml name (or `type id N`).
pub fn ggml_type_to_dtype(id: u32) -> Result<TensorDType, String> {
    TensorDType::from_ggml_type(id)
}

struct Parsed {
    version: u32,
    metadata: GgufMetadata,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_start: u64,
}

/// A cursor over the mapped bytes. Every read checks the remaining length first.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Parser<'a> {
    fn truncated(&self, what: impl Into<String>) -> LoadError {
        LoadError::Truncated {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }

    fn malformed(&self, msg: impl Into<String>) -> LoadError {
        LoadError::Malformed {
            path: self.path.to_path_buf(),
            msg: msg.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], LoadError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.truncated(format!(
                "{what}: needs {n} bytes at offset {}, only {} remain",
                self.pos,
                self.remaining()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LoadError> {
        let s = self.bytes(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8, LoadError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, LoadError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in the remaining bytes at `min_bytes` per item.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize, LoadError> {
        let n = self.u64(what)?;
        let need = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_bytes).map(|b| (n, b)));
        match need {
            Some((n, bytes)) if bytes <= self.remaining() => Ok(n),
            _ => Err(self.truncated(format!(
                "{what} is {n}, but only {} bytes remain at offset {}",
                self.remaining(),
                self.pos
            ))),
        }
    }

    fn raw_string(&mut self, what: &str) -> Result<&'a [u8], LoadError> {
        let len = self.count(1, &format!("length of {what}"))?;
        self.bytes(len, what)
    }

    /// A string that must be valid UTF-8 (keys, tensor names).
    fn name(&mut self, what: &str) -> Result<String, LoadError> {
        let at = self.pos;
        let raw = self.raw_string(what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(self.malformed(format!("{what} at offset {at} is not valid UTF-8"))),
        }
    }

    fn parse(mut self) -> Result<Parsed, LoadError> {
        let magic = match self.buf.get(..4) {
            Some(m) => {
                let mut a = [0u8; 4];
                a.copy_from_slice(m);
                a
            }
            None if self.buf.iter().zip(MAGIC.iter()).all(|(a, b)| a == b) => {
                return Err(self.truncated("file header (magic)"));
            }
            None => {
                let mut a = [0u8; 4];
                for (d, s) in a.iter_mut().zip(self.buf) {
                    *d = *s;
                }
                return Err(LoadError::BadMagic {
                    path: self.path.to_path_buf(),
                    found: a,
                });
            }
        };
        if magic != MAGIC {
            return Err(LoadError::BadMagic {
                path: self.path.to_path_buf(),
                found: magic,
            });
        }
        self.pos = 4;
        let version = self.u32("file header (version)")?;
        if version != 2 && version != 3 {
            return Err(LoadError::UnsupportedVersion {
                path: self.path.to_path_buf(),
                version,
            });
        }
        // Smallest possible tensor info: name length (8) + n_dims (4) + type (4) + offset (8).
        let tensor_count = self.count(24, "tensor count")?;
        // Smallest possible entry: key length (8) + value type (4) + a one-byte value.
        let kv_count = self.count(13, "metadata entry count")?;

        let mut entries = BTreeMap::new();
        for i in 0..kv_count {
            let key = self.name(&format!("key of metadata entry {i}"))?;
            let ty = self.u32(&format!("value type of `{key}`"))?;
            let value = self.value(ty, &key, 0)?;
            if entries.insert(key.clone(), value).is_some() {
                return Err(self.malformed(format!("metadata key `{key}` appears twice")));
            }
        }
        let metadata = GgufMetadata { entries };

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(self.malformed(format!(
                        "general.alignment is {v:?}, expected a power of two"
                    )));
                }
            },
        };

        let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(tensor_count.min(MAX_PREALLOC));
        let mut seen = HashMap::new();
        for i in 0..tensor_count {
            let t = self.tensor_info(i)?;
            if t.offset % alignment != 0 {
                return Err(self.malformed(format!(
                    "tensor `{}` offset {} is not a multiple of the alignment {alignment}",
                    t.name, t.offset
                )));
            }
            if seen.insert(t.name.clone(), i).is_some() {
                return Err(self.malformed(format!("tensor `{}` appears twice", t.name)));
            }
            tensors.push(t);
        }

        let pos = self.pos as u64;
        let data_start = pos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| self.malformed("data section offset overflows"))?;
        for t in &tensors {
            let end = data_range(data_start, t).map(|(_, end)| end);
            if end.is_none_or(|end| end > self.buf.len()) {
                return Err(self.truncated(format!(
                    "data of tensor `{}` ({} bytes at data offset {}) extends past the end of the \
                     file ({} bytes, data section at {data_start})",
                    t.name,
                    t.size,
                    t.offset,
                    self.buf.len()
                )));
            }
        }
        if let Some((a, b)) = overlapping(&tensors) {
            return Err(self.malformed(format!(
                "the data of tensors `{}` (bytes {}..{} of the data section) and `{}` (from \
                 byte {}) overlap",
                a.name,
                a.offset,
                a.offset.saturating_add(a.size as u64),
                b.name,
                b.offset
            )));
        }
        Ok(Parsed {
            version,
            metadata,
            tensors,
            alignment,
            data_start,
        })
    }

    fn tensor_info(&mut self, i: usize) -> Result<GgufTensorInfo, LoadError> {
        let name = self.name(&format!("name of tensor {i}"))?;
        let n_dims = self.u32(&format!("n_dims of tensor `{name}`"))?;
        if n_dims > MAX_DIMS {
            return Err(self.malformed(format!(
                "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
            )));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        let mut numel: usize = 1;
        for _ in 0..n_dims {
            let d = self.u64(&format!("dimensions of tensor `{name}`"))?;
            numel = usize::try_from(d)
                .ok()
                .and_then(|d| numel.checked_mul(d))
                .filter(|&n| i64::try_from(n).is_ok())
                .ok_or_else(|| {
                    self.malformed(format!("tensor `{name}`: element count overflows"))
                })?;
            shape.push(d as usize);
        }
        shape.reverse();
        let ggml_type = self.u32(&format!("type of tensor `{name}`"))?;
        let offset = self.u64(&format!("offset of tensor `{name}`"))?;
        let dtype = ggml_type_to_dtype(ggml_type).map_err(|type_name| {
            LoadError::UnsupportedTensorType {
                path: self.path.to_path_buf(),
                tensor: name.clone(),
                type_name,
            }
        })?;
        // ggml quantizes row by row: each row (the innermost dimension) is whole blocks.
        let row = shape.last().copied().unwrap_or(1);
        if !numel.is_multiple_of(dtype.block_len()) || row % dtype.block_len() != 0 {
            return Err(self.malformed(format!(
                "tensor `{name}`: rows of {row} elements ({numel} in all) are not a whole \
                 number of {dtype:?} blocks ({} elements each)",
                dtype.block_len()
            )));
        }
        let size = dtype
            .bytes_for(numel)
            .ok_or_else(|| self.malformed(format!("tensor `{name}`: byte size overflows")))?;
        Ok(GgufTensorInfo {
            name,
            shape,
            dtype,
            ggml_type,
            offset,
            size,
        })
    }

    /// One metadata value of type `ty`; `depth` counts enclosing arrays.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue, LoadError> {
        let what = format!("value of `{key}`");
        Ok(match ty {
            0 => MetaValue::U8(self.u8(&what)?),
            1 => MetaValue::I8(self.u8(&what)? as i8),
            2 => MetaValue::U16(self.u16(&what)?),
            3 => MetaValue::I16(self.u16(&what)? as i16),
            4 => MetaValue::U32(self.u32(&what)?),
            5 => MetaValue::I32(self.u32(&what)? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32(&what)?)),
            7 => match self.u8(&what)? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.malformed(format!("`{key}`: bool byte is {b}"))),
            },
            // Values (token strings, templates) are decoded lossily: a vocabulary entry that is
            // not valid UTF-8 should not make the whole file unreadable.
            8 => MetaValue::String(String::from_utf8_lossy(self.raw_string(&what)?).into_owned()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.malformed(format!(
                        "`{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem_ty = self.u32(&format!("element type of `{key}`"))?;
                let min_bytes = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => {
                        return Err(
                            self.malformed(format!("`{key}`: unknown array element type {t}"))
                        );
                    }
                };
                let n = self.count(min_bytes, &format!("element count of `{key}`"))?;
                // Small numbers stay packed: one byte of file must not become 32 of memory.
                if let Some(w) = PackedArray::width(elem_ty).filter(|_| n > 0) {
                    let what = format!("elements of `{key}`");
                    let bytes = self.bytes(n * w, &what)?.to_vec();
                    if elem_ty == 7 {
                        if let Some(b) = bytes.iter().find(|b| **b > 1) {
                            return Err(self.malformed(format!("`{key}`: bool byte is {b}")));
                        }
                    }
                    return PackedArray::new(elem_ty, bytes)
                        .map(MetaValue::Packed)
                        .ok_or_else(|| self.malformed(format!("`{key}`: a partial element")));
                }
                let mut items = Vec::with_capacity(n.min(MAX_PREALLOC));
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(&what)?),
            11 => MetaValue::I64(self.u64(&what)? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64(&what)?)),
            t => return Err(self.malformed(format!("`{key}`: unknown value type {t}"))),
        })
    }
}
