//! Helpers for tests/loader.rs and tests/hostile_files.rs: temp dirs, a minimal GGUF writer,
//! hand-built tensor payloads with independently known values, and raw byte builders for
//! hostile headers.

use half::{bf16, f16};
use wllm::loader::gguf::GgufFile;
use wllm::loader::{LoadError, MetaValue, TensorDType};

// ---------------------------------------------------------------------------------------------
// Temp files

pub use crate::common::temp_dir::TempDir;

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer (the one tests/fuzz_entry uses, in tests/common/gguf_writer.rs)

#[path = "../common/gguf_writer.rs"]
mod gguf_writer;
pub use gguf_writer::{GgufBuilder, put_str, put_u32, put_u64};

/// [`GgufBuilder`] by value, empty arrays written as u8 arrays.
pub struct GgufWriter(GgufBuilder);

/// Byte offsets of the sections of a written file, for cutting it at interesting places.
#[derive(Debug)]
pub struct Sections {
    pub metadata_start: usize,
    pub tensor_infos_start: usize,
    pub data_start: usize,
}

impl GgufWriter {
    pub fn new(version: u32) -> Self {
        GgufWriter(GgufBuilder {
            version,
            empty_array_type: 0,
            ..GgufBuilder::new()
        })
    }

    pub fn kv(mut self, k: &str, v: MetaValue) -> Self {
        self.0.kv(k, v);
        self
    }

    pub fn tensor(mut self, name: &str, shape: &[u64], ggml_type: u32, data: Vec<u8>) -> Self {
        self.0.tensor(name, shape, ggml_type, data);
        self
    }

    pub fn build(&self) -> (Vec<u8>, Sections) {
        let b = self.0.build();
        let s = Sections {
            metadata_start: b.metadata_start,
            tensor_infos_start: b.tensor_infos_start,
            data_start: b.data_start,
        };
        (b.bytes, s)
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor payloads with independently known values

pub fn f16_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

/// `n_blocks` Q8_0 blocks: block k has d = 0.5·(k+1), q[i] = i − 16. Returns bytes, values.
pub fn q8_0(n_blocks: usize) -> (Vec<u8>, Vec<f32>) {
    let (mut b, mut w) = (Vec::new(), Vec::new());
    for k in 0..n_blocks {
        let d = 0.5 * (k + 1) as f32;
        b.extend_from_slice(&f16_bytes(d));
        for i in 0..32i32 {
            b.push((i - 16) as i8 as u8);
            w.push(d * (i - 16) as f32);
        }
    }
    (b, w)
}

/// Q4_0 / Q4_1 blocks: byte j = lo | hi << 4, lo = (j + k) % 16, hi = (15 − j) % 16.
/// Element j is the low nibble of byte j, element j + 16 its high nibble.
pub fn q4(n_blocks: usize, with_min: bool) -> (Vec<u8>, Vec<f32>) {
    let (mut b, mut w) = (Vec::new(), Vec::new());
    for k in 0..n_blocks {
        let d = 0.25 * (k + 1) as f32;
        let m = -1.0 - k as f32;
        b.extend_from_slice(&f16_bytes(d));
        if with_min {
            b.extend_from_slice(&f16_bytes(m));
        }
        let lo: Vec<u8> = (0..16).map(|j| ((j + k) % 16) as u8).collect();
        let hi: Vec<u8> = (0..16).map(|j| (15 - j) as u8).collect();
        b.extend(lo.iter().zip(&hi).map(|(l, h)| l | (h << 4)));
        for q in lo.iter().chain(&hi) {
            w.push(if with_min {
                d * *q as f32 + m
            } else {
                d * (*q as f32 - 8.0)
            });
        }
    }
    (b, w)
}

/// A tensor of one supported type with the values its bytes must dequantize to.
pub struct Sample {
    pub name: &'static str,
    pub shape: Vec<u64>,
    pub ggml_type: u32,
    pub dtype: TensorDType,
    pub bytes: Vec<u8>,
    pub values: Vec<f32>,
}

pub fn sample(
    name: &'static str,
    shape: &[u64],
    ty: u32,
    dtype: TensorDType,
    bv: (Vec<u8>, Vec<f32>),
) -> Sample {
    let (bytes, values) = bv;
    Sample {
        name,
        shape: shape.to_vec(),
        ggml_type: ty,
        dtype,
        bytes,
        values,
    }
}

/// One tensor of every supported type.
pub fn sample_tensors() -> Vec<Sample> {
    let f32v: Vec<f32> = (0..6).map(|i| i as f32 * 1.25 - 3.0).collect();
    let f16v: Vec<f32> = (0..10).map(|i| i as f32 * 0.5 - 2.0).collect();
    let bf16v: Vec<f32> = (0..4).map(|i| (i as f32 - 1.5) * 64.0).collect();
    let f32b = f32v.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16b = f16v.iter().flat_map(|v| f16_bytes(*v)).collect();
    let bf16b = bf16v
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();
    use TensorDType::*;
    vec![
        sample("f32.weight", &[2, 3], 0, F32, (f32b, f32v)),
        sample("f16.weight", &[10], 1, F16, (f16b, f16v)),
        sample("bf16.weight", &[1, 2, 2], 30, BF16, (bf16b, bf16v)),
        sample("q8_0.weight", &[2, 64], 8, Q8_0, q8_0(4)),
        sample("q4_0.weight", &[64], 2, Q4_0, q4(2, false)),
        sample("q4_1.weight", &[3, 1, 32], 3, Q4_1, q4(3, true)),
    ]
}

pub fn all_value_types() -> Vec<(&'static str, MetaValue)> {
    use MetaValue::*;
    vec![
        ("general.architecture", String("llama".into())),
        ("t.u8", U8(200)),
        ("t.i8", I8(-100)),
        ("t.u16", U16(60000)),
        ("t.i16", I16(-30000)),
        ("t.u32", U32(4_000_000_000)),
        ("t.i32", I32(-2_000_000_000)),
        ("t.f32", F32(-1.5e-3)),
        ("t.bool_true", Bool(true)),
        ("t.bool_false", Bool(false)),
        ("t.string", String("héllo\n\"world\"".into())),
        ("t.empty_string", String(std::string::String::new())),
        ("t.u64", U64(u64::MAX - 1)),
        ("t.i64", I64(i64::MIN + 1)),
        ("t.f64", F64(std::f64::consts::PI)),
        (
            "t.str_array",
            Array(vec![
                String("a".into()),
                String("<s>".into()),
                String("".into()),
            ]),
        ),
        ("t.i32_array", Array(vec![I32(-1), I32(0), I32(7)])),
        ("t.f32_array", Array(vec![F32(0.5), F32(-2.0)])),
        ("t.empty_array", Array(vec![])),
        (
            "t.nested",
            Array(vec![
                Array(vec![U32(1), U32(2)]),
                Array(vec![U32(3)]),
                Array(vec![]),
            ]),
        ),
        // 1- and 2-byte elements stay packed in memory.
        (
            "t.u8_array",
            Packed(wllm::loader::PackedArray::new(0, vec![1, 2, 255]).unwrap()),
        ),
        (
            "t.i16_array",
            Packed(wllm::loader::PackedArray::new(3, vec![0xff, 0xff, 7, 0]).unwrap()),
        ),
    ]
}

pub fn sample_writer(version: u32) -> GgufWriter {
    let mut w = GgufWriter::new(version);
    for (k, v) in all_value_types() {
        w = w.kv(k, v);
    }
    if version == 3 {
        w = w.kv("general.alignment", MetaValue::U32(64));
    }
    for t in sample_tensors() {
        w = w.tensor(t.name, &t.shape, t.ggml_type, t.bytes);
    }
    w
}

pub fn open_bytes(tag: &str, bytes: &[u8]) -> Result<GgufFile, LoadError> {
    let dir = TempDir::new(tag);
    let p = dir.write("x.gguf", bytes);
    GgufFile::open(&p)
}

/// A header claiming `kvs` entries, followed by `body`.
pub fn raw_header(tensors: u64, kvs: u64, body: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    put_u32(&mut b, 3);
    put_u64(&mut b, tensors);
    put_u64(&mut b, kvs);
    b.extend_from_slice(body);
    b
}

/// One metadata entry: key, value type, then `payload` as given (plus 64 bytes of slack so the
/// entry-count check passes and the parser reaches the payload).
pub fn one_kv(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, key);
    put_u32(&mut body, ty);
    body.extend_from_slice(payload);
    body.extend_from_slice(&[0; 64]);
    raw_header(0, 1, &body)
}

pub fn array_header(elem_ty: u32, count: u64) -> Vec<u8> {
    let mut b = Vec::new();
    put_u32(&mut b, elem_ty);
    put_u64(&mut b, count);
    b
}

/// One tensor info with the given dims (innermost first), type and offset, and `data` bytes after.
pub fn one_tensor(dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, "t");
    put_u32(&mut body, dims.len() as u32);
    for d in dims {
        put_u64(&mut body, *d);
    }
    put_u32(&mut body, ty);
    put_u64(&mut body, offset);
    let mut b = raw_header(1, 0, &body);
    b.resize(b.len().next_multiple_of(32) + data_len, 0);
    b
}
