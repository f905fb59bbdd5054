//! A minimal GGUF writer that records where every length / count / type tag sits (for targeted
//! mutation) and where each section starts (for cutting a file at interesting places).
//!
//! Shared by the loader tests (through tests/loader/support.rs) and the fuzz harness
//! (tests/fuzz_entry, which the `fuzz/` crate builds too), each including this file with
//! `#[path]`: neither has `mod common`, and the fuzz crate depends on `wllm` and `std` only, as
//! this file does. Not declared in tests/common/mod.rs.

// Each includer uses a part of it.
#![allow(dead_code)]

use wllm::loader::{GgufMetadata, MetaValue};

pub fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
pub fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

/// The GGUF value type id of `v`.
pub fn value_type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) | MetaValue::Packed(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

/// What a recorded header field holds (for targeted mutations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `u32` version.
    Version,
    /// `u64` tensor count / metadata entry count.
    HeaderCount,
    /// `u64` length of a key, string value or tensor name.
    StrLen,
    /// `u32` value type of a metadata entry, or element type of an array.
    TypeTag,
    /// `u64` element count of an array.
    ArrayCount,
    /// A scalar integer value (`width` bytes) of a metadata entry.
    IntValue,
    /// A float value (`width` bytes) of a metadata entry.
    FloatValue,
    /// `u32` n_dims of a tensor.
    NDims,
    /// `u64` dimension of a tensor.
    Dim,
    /// `u32` ggml type of a tensor.
    GgmlType,
    /// `u64` data offset of a tensor.
    Offset,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub pos: usize,
    /// 1, 2, 4 or 8 bytes, little endian.
    pub width: usize,
    pub kind: FieldKind,
    /// The metadata key or tensor name the field belongs to.
    pub owner: String,
}

/// A GGUF file as written, with its field map and section offsets.
#[derive(Debug, Clone)]
pub struct BuiltGguf {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
    pub metadata_start: usize,
    pub tensor_infos_start: usize,
    pub data_start: usize,
}

#[derive(Debug, Clone, Default)]
pub struct GgufBuilder {
    pub version: u32,
    pub alignment: u64,
    /// The element type written for an empty array, whose [`MetaValue`] carries none: string
    /// (8) from [`GgufBuilder::new`]; the loader tests' `GgufWriter` writes u8 (0).
    pub empty_array_type: u32,
    pub kvs: Vec<(String, MetaValue)>,
    /// Name, row-major shape (outermost first; written reversed, as GGUF wants), ggml type id,
    /// data.
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl GgufBuilder {
    /// Version 3, alignment 32 (until a `general.alignment` entry says otherwise).
    pub fn new() -> Self {
        GgufBuilder {
            version: 3,
            alignment: 32,
            empty_array_type: 8,
            ..Default::default()
        }
    }

    pub fn kv(&mut self, k: &str, v: MetaValue) -> &mut Self {
        if k == "general.alignment" {
            if let Some(a) = v.as_u64() {
                self.alignment = a;
            }
        }
        self.kvs.push((k.to_string(), v));
        self
    }

    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[u64],
        ggml_type: u32,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors
            .push((name.to_string(), shape.to_vec(), ggml_type, data));
        self
    }

    /// Every metadata entry of an opened file, in key order.
    pub fn metadata_from(&mut self, meta: &GgufMetadata) -> &mut Self {
        for (k, v) in &meta.entries {
            self.kv(k, v.clone());
        }
        self
    }

    pub fn build(&self) -> BuiltGguf {
        let mut w = W {
            b: b"GGUF".to_vec(),
            fields: Vec::new(),
            empty_array_type: self.empty_array_type,
        };
        w.field(FieldKind::Version, "", &self.version.to_le_bytes());
        w.field(
            FieldKind::HeaderCount,
            "",
            &(self.tensors.len() as u64).to_le_bytes(),
        );
        w.field(
            FieldKind::HeaderCount,
            "",
            &(self.kvs.len() as u64).to_le_bytes(),
        );
        let metadata_start = w.b.len();
        for (k, v) in &self.kvs {
            w.string(k, k);
            w.field(FieldKind::TypeTag, k, &value_type_id(v).to_le_bytes());
            w.payload(k, v);
        }
        let tensor_infos_start = w.b.len();
        let align = self.alignment.max(1);
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, shape, ty, data) in &self.tensors {
            w.string(name, name);
            w.field(FieldKind::NDims, name, &(shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                w.field(FieldKind::Dim, name, &d.to_le_bytes());
            }
            w.field(FieldKind::GgmlType, name, &ty.to_le_bytes());
            w.field(FieldKind::Offset, name, &offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).next_multiple_of(align);
        }
        let mut b = w.b;
        b.resize(b.len().next_multiple_of(align as usize), 0);
        let data_start = b.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            b.resize(data_start + off as usize, 0);
            b.extend_from_slice(data);
        }
        BuiltGguf {
            bytes: b,
            fields: w.fields,
            metadata_start,
            tensor_infos_start,
            data_start,
        }
    }
}

struct W {
    b: Vec<u8>,
    fields: Vec<Field>,
    empty_array_type: u32,
}

impl W {
    fn field(&mut self, kind: FieldKind, owner: &str, bytes: &[u8]) {
        self.fields.push(Field {
            pos: self.b.len(),
            width: bytes.len(),
            kind,
            owner: owner.to_string(),
        });
        self.b.extend_from_slice(bytes);
    }

    fn string(&mut self, owner: &str, s: &str) {
        self.field(FieldKind::StrLen, owner, &(s.len() as u64).to_le_bytes());
        self.b.extend_from_slice(s.as_bytes());
    }

    /// The value's payload, without its type id. Arrays take their element type from the first
    /// element.
    fn payload(&mut self, owner: &str, v: &MetaValue) {
        use FieldKind::{FloatValue as F, IntValue as I};
        match v {
            MetaValue::U8(x) => self.field(I, owner, &[*x]),
            MetaValue::I8(x) => self.field(I, owner, &[*x as u8]),
            MetaValue::U16(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::I16(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::U32(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::I32(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::F32(x) => self.field(F, owner, &x.to_le_bytes()),
            MetaValue::Bool(x) => self.field(I, owner, &[*x as u8]),
            MetaValue::String(s) => self.string(owner, s),
            MetaValue::Array(items) => {
                let elem = items.first().map_or(self.empty_array_type, value_type_id);
                self.field(FieldKind::TypeTag, owner, &elem.to_le_bytes());
                self.field(
                    FieldKind::ArrayCount,
                    owner,
                    &(items.len() as u64).to_le_bytes(),
                );
                for it in items {
                    self.payload(owner, it);
                }
            }
            MetaValue::Packed(p) => {
                self.field(FieldKind::TypeTag, owner, &p.elem_type().to_le_bytes());
                self.field(
                    FieldKind::ArrayCount,
                    owner,
                    &(p.len() as u64).to_le_bytes(),
                );
                self.b.extend_from_slice(p.bytes());
            }
            MetaValue::U64(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::I64(x) => self.field(I, owner, &x.to_le_bytes()),
            MetaValue::F64(x) => self.field(F, owner, &x.to_le_bytes()),
        }
    }
}
