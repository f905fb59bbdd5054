//! GGUF metadata values and typed accessors.
//!
//! The parser in `gguf.rs` fills a [`GgufMetadata`]; everything downstream (model config,
//! tokenizer, chat template) reads it through the accessors here, which turn a missing key or
//! a value of the wrong type into a [`MetaError`] naming the key.

use std::collections::BTreeMap;

/// One metadata value, exactly as GGUF stores it (all 13 value types).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    /// An array of 1- or 2-byte numbers or bools, packed (see [`PackedArray`]).
    Packed(PackedArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// An array of u8, i8, u16, i16 or bool values kept as the file's little-endian bytes: an
/// element costs its own width rather than a whole [`MetaValue`] (32 bytes), so a hostile
/// file's megabytes of one-byte elements take megabytes, not gigabytes.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedArray {
    /// The GGUF element type: 0 u8, 1 i8, 2 u16, 3 i16, 7 bool.
    elem_type: u32,
    bytes: Vec<u8>,
}

impl PackedArray {
    /// Bytes per element of a packable GGUF type, or `None` for the others.
    pub fn width(elem_type: u32) -> Option<usize> {
        match elem_type {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            _ => None,
        }
    }

    /// `bytes` hold whole little-endian elements of `elem_type` (a packable type).
    pub fn new(elem_type: u32, bytes: Vec<u8>) -> Option<PackedArray> {
        let w = Self::width(elem_type)?;
        bytes
            .len()
            .is_multiple_of(w)
            .then_some(PackedArray { elem_type, bytes })
    }

    pub fn elem_type(&self) -> u32 {
        self.elem_type
    }

    /// The elements' little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / Self::width(self.elem_type).unwrap_or(1)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Element `i` as a value.
    pub fn get(&self, i: usize) -> Option<MetaValue> {
        let w = Self::width(self.elem_type)?;
        let b = self.bytes.get(i * w..(i + 1) * w)?;
        Some(match self.elem_type {
            0 => MetaValue::U8(b[0]),
            1 => MetaValue::I8(b[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes([b[0], b[1]])),
            3 => MetaValue::I16(i16::from_le_bytes([b[0], b[1]])),
            _ => MetaValue::Bool(b[0] != 0),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = MetaValue> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) if v >= 0 => Some(v as u64),
            MetaValue::I16(v) if v >= 0 => Some(v as u64),
            MetaValue::I32(v) if v >= 0 => Some(v as u64),
            MetaValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array of strings, wider numbers or arrays (a [`PackedArray`] of
    /// small numbers is read with [`MetaValue::as_packed`]).
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_packed(&self) -> Option<&PackedArray> {
        match self {
            MetaValue::Packed(a) => Some(a),
            _ => None,
        }
    }

    /// Elements of an array of any kind.
    pub fn array_len(&self) -> Option<usize> {
        match self {
            MetaValue::Array(a) => Some(a.len()),
            MetaValue::Packed(a) => Some(a.len()),
            _ => None,
        }
    }

    /// Short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::F32(_) => "f32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) | MetaValue::Packed(_) => "array",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F64(_) => "f64",
        }
    }
}

/// A metadata key that is missing or holds a value of another type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetaError {
    #[error("GGUF metadata key `{0}` is missing")]
    Missing(String),
    #[error("GGUF metadata key `{key}` holds {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
}

/// All key/value pairs of a GGUF file's header.
#[derive(Debug, Clone, Default)]
pub struct GgufMetadata {
    pub entries: BTreeMap<String, MetaValue>,
}

impl GgufMetadata {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries.get(key)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<T, MetaError> {
        let v = self
            .entries
            .get(key)
            .ok_or_else(|| MetaError::Missing(key.to_string()))?;
        f(v).ok_or_else(|| MetaError::WrongType {
            key: key.to_string(),
            expected,
            found: v.type_name(),
        })
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, MetaError> {
        self.typed(key, "an unsigned integer", MetaValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, MetaError> {
        self.typed(key, "a number", MetaValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, MetaError> {
        self.typed(key, "a bool", MetaValue::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<&str, MetaError> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, MetaError> {
        self.typed(key, "an array of strings", |v| {
            v.as_array()?.iter().map(MetaValue::as_str).collect()
        })
    }

    /// An array of integers (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>, MetaError> {
        self.typed(key, "an array of integers", |v| match v {
            MetaValue::Packed(p) => p.iter().map(|x| x.as_i64()).collect(),
            _ => v.as_array()?.iter().map(MetaValue::as_i64).collect(),
        })
    }

    /// `Ok(None)` when the key is absent; an error only when it is present with another type.
    pub fn opt<T>(&self, r: Result<T, MetaError>) -> Result<Option<T>, MetaError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(MetaError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_convert_and_name_the_key() {
        let mut m = GgufMetadata::default();
        m.entries.insert("a".into(), MetaValue::U32(7));
        m.entries.insert("b".into(), MetaValue::String("x".into()));
        m.entries.insert(
            "c".into(),
            MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::U8(3)]),
        );
        assert_eq!(m.get_u64("a").unwrap(), 7);
        assert_eq!(m.get_f64("a").unwrap(), 7.0);
        assert_eq!(m.get_str("b").unwrap(), "x");
        assert_eq!(m.get_i64_array("c").unwrap(), vec![-1, 3]);
        assert_eq!(
            m.get_str("a").unwrap_err(),
            MetaError::WrongType {
                key: "a".into(),
                expected: "a string",
                found: "u32"
            }
        );
        assert_eq!(
            m.get_u64("zz").unwrap_err(),
            MetaError::Missing("zz".into())
        );
        assert_eq!(m.opt(m.get_u64("zz")).unwrap(), None);
        assert!(m.opt(m.get_str("a")).is_err());
    }
}
