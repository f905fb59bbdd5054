//! wllm's CPU dequantization of every tensor of the quantized GGUF fixtures, bit for bit
//! against gguf-py's (`gguf.quants.dequantize`, an implementation independent of this
//! project): tests/fixtures/arch/gguf/dequant_sha256.json holds, per file and tensor, the
//! type name and the SHA-256 of gguf-py's little-endian f32 output, and gguf-py's
//! GGML_QUANT_SIZES (type id, weights and bytes per block) of each format wllm reads. Made by
//! scripts/make_dequant_reference.py.

mod common;
#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use std::collections::BTreeMap;

use common::{fixtures, read_json};
use gguf_writer::GgufBuilder;
use wllm::loader::LoadError;
use wllm::loader::TensorSource;
use wllm::loader::gguf::GgufFile;
use wllm::loader::quant_formats::FORMATS;

/// SHA-256 of `data`, lowercase hex (what the reference script writes).
fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn reference() -> serde_json::Value {
    read_json(&fixtures().join("arch/gguf/dequant_sha256.json"))
}

#[test]
fn format_table_matches_gguf_py() {
    let formats = reference()["formats"].as_object().unwrap().clone();
    for f in FORMATS {
        let r = formats
            .get(f.name)
            .unwrap_or_else(|| panic!("{} is not in GGML_QUANT_SIZES", f.name));
        let r: Vec<u64> = r
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            r,
            [
                u64::from(f.ggml_type),
                f.block_weights as u64,
                f.block_bytes as u64
            ],
            "{}: [type id, weights, bytes] per block",
            f.name
        );
        assert_eq!(f.dtype.block_len(), f.block_weights);
        assert_eq!(f.dtype.block_bytes(), f.block_bytes);
    }
    assert_eq!(
        FORMATS.len(),
        formats.len(),
        "a format of the JSON is missing"
    );
}

#[test]
fn every_tensor_dequantizes_like_gguf_py() {
    let files = reference()["files"].as_object().unwrap().clone();
    // type name → (tensors matched, tensors)
    let mut per_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for (file, tensors) in &files {
        let g = GgufFile::open(fixtures().join("arch/gguf").join(file)).unwrap();
        let tensors = tensors.as_object().unwrap();
        assert_eq!(
            g.tensor_names().len(),
            tensors.len(),
            "{file}: tensor count"
        );
        for (name, r) in tensors {
            let (ty, want) = (r[0].as_str().unwrap(), r[1].as_str().unwrap());
            let t = g.tensor(name).unwrap();
            assert_eq!(t.dtype.format().name, ty, "{file}: {name}");
            let bytes: Vec<u8> = t
                .to_f32()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let e = per_type.entry(ty.to_string()).or_default();
            e.1 += 1;
            if sha256(&bytes) == want {
                e.0 += 1;
            } else {
                mismatches.push(format!("{file}: {name} ({ty})"));
            }
        }
    }
    for (ty, (ok, n)) in &per_type {
        eprintln!("{ty:>7}: {ok}/{n} tensors bit for bit");
    }
    assert!(
        mismatches.is_empty(),
        "differ from gguf-py: {mismatches:#?}"
    );
    // Every format the fixtures were made to cover was seen.
    for ty in [
        "Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS",
    ] {
        assert!(per_type.contains_key(ty), "no {ty} tensor in the fixtures");
    }
}

/// Opens a one-tensor GGUF: `shape` row-major, `data` the tensor's bytes.
fn open_one(ty: u32, shape: &[u64], data: Vec<u8>) -> Result<GgufFile, LoadError> {
    let b = GgufBuilder::new()
        .tensor("blk.0.w", shape, ty, data)
        .build();
    let dir = std::env::temp_dir().join(format!("wllm-dequant-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("t{ty}-{}-{shape:?}.gguf", b.bytes.len()));
    std::fs::write(&p, &b.bytes).unwrap();
    let r = GgufFile::open(&p);
    std::fs::remove_file(&p).ok();
    r
}

/// Sizes that do not fit a format's blocks are clear errors at open, never a panic or an
/// over-read: a row that is not whole blocks (though the tensor's element count may be),
/// data cut short at the end of the file, and a type wllm does not read.
#[test]
fn hostile_sizes_of_every_format() {
    for f in FORMATS.iter().filter(|f| f.block_weights > 1) {
        let (n, bb) = (f.block_weights as u64, f.block_bytes);
        let whole = open_one(f.ggml_type, &[2, n], vec![0; 2 * bb]).unwrap();
        assert_eq!(
            whole.tensor("blk.0.w").unwrap().to_f32().unwrap().len(),
            2 * n as usize
        );
        for shape in [vec![n / 2], vec![2, n / 2], vec![n + 16], vec![n - 1]] {
            let err = open_one(f.ggml_type, &shape, vec![0; 2 * bb]).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, LoadError::Malformed { .. })
                    && msg.contains("blk.0.w")
                    && msg.contains(&format!("whole number of {} blocks", f.name)),
                "{} {shape:?}: {msg}",
                f.name
            );
        }
        // The last tensor one byte short of its size: it extends past the end of the file.
        let err = open_one(f.ggml_type, &[2, n], vec![0; 2 * bb - 1]).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::Truncated { .. } | LoadError::Malformed { .. }
            ),
            "{}: {err:?}",
            f.name
        );
    }
    let err = open_one(16, &[256], vec![0; 66]).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, LoadError::UnsupportedTensorType { .. })
            && msg.contains("blk.0.w")
            && msg.contains("IQ2_XXS"),
        "{msg}"
    );
}
