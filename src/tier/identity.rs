//! The model identity hash: a 64-bit name for "these weights", part of the KV disk tier's
//! namespace ([`super::disk::DiskNamespace::model`]), so KV written by one model is never read
//! by another.
//!
//! Hashing gigabytes of weights at every start would cost seconds, so the hash covers what
//! describes the model and its tensor layout, plus the file lengths:
//! - GGUF: the file's bytes from 0 to the start of the tensor data (header, metadata, tensor
//!   table, padding), and the file length;
//! - Hugging Face directory: `config.json` (as parsed), `model.safetensors.index.json` when the
//!   weights are sharded, and for each weight file the loader reads, in sorted order, its name,
//!   its length and its JSON header (the 8-byte length and the header bytes).
//!
//! Two files that differ only in tensor *values* (a fine-tune re-saved with the very same
//! metadata and tensor table) therefore hash the same; GGUF metadata normally names the model
//! (`general.name`, quantization version, file type), which is what tells those apart in
//! practice. Modification times are deliberately not hashed: a copied model keeps its cache.
//!
//! The hash is the crate's stable `Fnv64` (FNV-1a with the splitmix64 finaliser, as block keys),
//! so it is the same across Rust versions. Reads are bounded: a header longer than
//! [`MAX_HEADER_BYTES`] is an error, and bytes are streamed through a small buffer.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::kv::prefix_cache::Fnv64;
use crate::loader::LoadError;
use crate::loader::gguf::GgufFile;
use crate::loader::hf::HfModelDir;
use crate::model::ModelFiles;

/// Largest header (GGUF metadata + tensor table, safetensors JSON header, config or index
/// JSON) hashed; real ones are a few MiB at most (a GGUF's vocabulary dominates).
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Bumped when what is hashed changes, so old caches stop matching.
const DOMAIN: &[u8] = b"wllm model identity v1\0";
const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// The identity hash of an opened model (see the module doc). Rereads only headers.
pub fn model_identity(files: &ModelFiles) -> Result<u64, LoadError> {
    let mut h = Fnv64::new();
    h.bytes(DOMAIN);
    match files {
        ModelFiles::Gguf(g) => gguf_identity(&mut h, g)?,
        ModelFiles::Hf(d) => hf_identity(&mut h, d)?,
    }
    Ok(h.finish())
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn too_large(path: &Path, what: &str, len: u64) -> LoadError {
    LoadError::Malformed {
        path: path.to_path_buf(),
        msg: format!(
            "{what} is {len} bytes, more than the {MAX_HEADER_BYTES} bytes a model identity reads"
        ),
    }
}

/// Feeds exactly `n` bytes of `r` to `h` through a fixed buffer.
fn hash_exact(
    h: &mut Fnv64,
    r: &mut impl Read,
    mut n: u64,
    path: &Path,
    what: &str,
) -> Result<(), LoadError> {
    let mut buf = [0u8; 64 * 1024];
    while n > 0 {
        let want = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let got = match r.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(LoadError::Truncated {
                    path: path.to_path_buf(),
                    what: what.to_string(),
                });
            }
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        h.bytes(&buf[..got]);
        n -= got as u64;
    }
    Ok(())
}

fn gguf_identity(h: &mut Fnv64, g: &GgufFile) -> Result<(), LoadError> {
    h.field(b"gguf");
    let path = g.path.as_path();
    // The loader's map is private; the header is a small prefix, so reading it again is cheap.
    let mut file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if g.data_start > MAX_HEADER_BYTES {
        return Err(too_large(
            path,
            "the GGUF header and tensor table",
            g.data_start,
        ));
    }
    h.u64(len);
    h.u64(g.data_start);
    hash_exact(
        h,
        &mut file,
        g.data_start,
        path,
        "GGUF header (file changed since it was opened?)",
    )
}

fn hf_identity(h: &mut Fnv64, d: &HfModelDir) -> Result<(), LoadError> {
    h.field(b"hf");
    // The parsed config (key order preserved), not its bytes: whitespace does not matter.
    let config = serde_json::to_vec(&d.config).map_err(|e| LoadError::Malformed {
        path: d.path.join("config.json"),
        msg: format!("cannot serialize config: {e}"),
    })?;
    h.field(&config);
    for name in weight_files(h, &d.path)? {
        h.field(name.as_bytes());
        let path = d.path.join(&name);
        let mut file = File::open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(io_err(&path))?;
        let header_len = u64::from_le_bytes(n);
        if header_len > MAX_HEADER_BYTES {
            return Err(too_large(&path, "the safetensors header", header_len));
        }
        if header_len + 8 > len {
            return Err(LoadError::Truncated {
                path: path.clone(),
                what: "safetensors header".into(),
            });
        }
        h.u64(len);
        h.u64(header_len);
        hash_exact(h, &mut file, header_len, &path, "safetensors header")?;
    }
    Ok(())
}

/// The weight files the loader reads (`model.safetensors`, or the files the index names), in
/// sorted order; the index's bytes go into `h`.
fn weight_files(h: &mut Fnv64, dir: &Path) -> Result<Vec<String>, LoadError> {
    if dir.join(SINGLE_FILE).is_file() {
        return Ok(vec![SINGLE_FILE.to_string()]);
    }
    let path = dir.join(INDEX_FILE);
    let file = File::open(&path).map_err(io_err(&path))?;
    let len = file.metadata().map_err(io_err(&path))?.len();
    if len > MAX_HEADER_BYTES {
        return Err(too_large(&path, "the safetensors index", len));
    }
    let mut bytes = Vec::new();
    file.take(MAX_HEADER_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io_err(&path))?;
    h.field(&bytes);
    let malformed = |msg: &str| LoadError::Malformed {
        path: path.clone(),
        msg: msg.to_string(),
    };
    let index: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| malformed(&format!("invalid JSON: {e}")))?;
    let map = index
        .get("weight_map")
        .and_then(|w| w.as_object())
        .ok_or_else(|| malformed("no `weight_map` object"))?;
    let mut files = map
        .values()
        .map(|v| {
            v.as_str()
                .filter(|f| !f.is_empty() && !f.contains(['/', '\\']) && *f != "." && *f != "..")
                .map(str::to_string)
                .ok_or_else(|| malformed("a weight_map value is not a file name"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    files.sort();
    files.dedup();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::TempDir;

    fn gguf_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A minimal GGUF v3: two metadata entries (`test.value` = `value`), one 4-element F32
    /// tensor whose bytes are all `data`. Returns the bytes and the data section's offset.
    fn gguf(value: u32, data: u8) -> (Vec<u8>, usize) {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&2u64.to_le_bytes()); // metadata entries
        gguf_str(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes()); // string
        gguf_str(&mut b, "llama");
        gguf_str(&mut b, "test.value");
        b.extend_from_slice(&4u32.to_le_bytes()); // u32
        b.extend_from_slice(&value.to_le_bytes());
        gguf_str(&mut b, "w");
        b.extend_from_slice(&1u32.to_le_bytes()); // n_dims
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes()); // offset
        b.resize(b.len().next_multiple_of(32), 0);
        let data_start = b.len();
        b.extend_from_slice(&[data; 16]);
        (b, data_start)
    }

    fn gguf_identity_of(dir: &TempDir, name: &str, bytes: &[u8]) -> u64 {
        let path = dir.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        let files = ModelFiles::Gguf(GgufFile::open(&path).unwrap());
        model_identity(&files).unwrap()
    }

    #[test]
    fn gguf_identity_covers_header_not_data() {
        let dir = TempDir::new("gguf");
        let (base, data_start) = gguf(1, 0);
        let a = gguf_identity_of(&dir, "a.gguf", &base);
        assert_eq!(
            a,
            gguf_identity_of(&dir, "copy.gguf", &base),
            "identical copy"
        );
        assert_eq!(a, gguf_identity_of(&dir, "a.gguf", &base), "stable");
        assert_ne!(
            a,
            gguf_identity_of(&dir, "b.gguf", &gguf(2, 0).0),
            "metadata value"
        );
        assert_eq!(
            a,
            gguf_identity_of(&dir, "c.gguf", &gguf(1, 0x55).0),
            "tensor data"
        );
        let mut flipped = base.clone();
        flipped[data_start + 3] ^= 0xff;
        assert_eq!(
            a,
            gguf_identity_of(&dir, "d.gguf", &flipped),
            "one data byte"
        );
        // Trailing bytes after the tensors change the file length.
        let mut longer = base.clone();
        longer.extend_from_slice(&[0; 32]);
        assert_ne!(a, gguf_identity_of(&dir, "e.gguf", &longer), "file length");
    }

    #[test]
    fn gguf_changed_after_open_errors_not_panics() {
        let dir = TempDir::new("gguf-shrunk");
        let path = dir.0.join("m.gguf");
        let (bytes, _) = gguf(1, 0);
        std::fs::write(&path, &bytes).unwrap();
        let files = ModelFiles::Gguf(GgufFile::open(&path).unwrap());
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(matches!(
            model_identity(&files),
            Err(LoadError::Truncated { .. })
        ));
    }

    fn safetensors(name: &str, shape: Vec<usize>, data: &[u8]) -> Vec<u8> {
        use safetensors::tensor::TensorView;
        let view = TensorView::new(safetensors::Dtype::F32, shape, data).unwrap();
        safetensors::serialize([(name, view)], None).unwrap()
    }

    /// An HF directory with `config` and one tensor.
    fn hf_identity_of(config: &str, st: &[u8]) -> u64 {
        let dir = TempDir::new("hf");
        std::fs::write(dir.0.join("config.json"), config).unwrap();
        std::fs::write(dir.0.join(SINGLE_FILE), st).unwrap();
        let files = ModelFiles::Hf(HfModelDir::open(&dir.0).unwrap());
        model_identity(&files).unwrap()
    }

    #[test]
    fn hf_identity_covers_config_and_headers_not_data() {
        let cfg = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 4}"#;
        let st = safetensors("w", vec![4], &[0u8; 16]);
        let a = hf_identity_of(cfg, &st);
        assert_eq!(a, hf_identity_of(cfg, &st), "identical copy");
        let other_cfg = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8}"#;
        assert_ne!(a, hf_identity_of(other_cfg, &st), "config value");
        assert_eq!(
            a,
            hf_identity_of(cfg, &safetensors("w", vec![4], &[7u8; 16])),
            "tensor data"
        );
        assert_ne!(
            a,
            hf_identity_of(cfg, &safetensors("v", vec![4], &[0u8; 16])),
            "tensor name"
        );
        assert_ne!(
            a,
            hf_identity_of(cfg, &safetensors("w", vec![2, 2], &[0u8; 16])),
            "tensor shape"
        );
    }

    #[test]
    fn hf_sharded_identity() {
        let dir = TempDir::new("hf-sharded");
        std::fs::write(dir.0.join("config.json"), r#"{"hidden_size": 4}"#).unwrap();
        let index = r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors"}}"#;
        std::fs::write(dir.0.join(INDEX_FILE), index).unwrap();
        std::fs::write(
            dir.0.join("m-1.safetensors"),
            safetensors("b", vec![4], &[0u8; 16]),
        )
        .unwrap();
        std::fs::write(
            dir.0.join("m-2.safetensors"),
            safetensors("a", vec![4], &[0u8; 16]),
        )
        .unwrap();
        let id = |dir: &TempDir| {
            model_identity(&ModelFiles::Hf(HfModelDir::open(&dir.0).unwrap())).unwrap()
        };
        let a = id(&dir);
        assert_eq!(a, id(&dir));
        std::fs::write(
            dir.0.join("m-2.safetensors"),
            safetensors("a", vec![4], &[9u8; 16]),
        )
        .unwrap();
        assert_eq!(a, id(&dir), "tensor data");
        std::fs::write(
            dir.0.join("m-2.safetensors"),
            safetensors("a", vec![1, 4], &[0u8; 16]),
        )
        .unwrap();
        assert_ne!(a, id(&dir), "second shard's header");
    }

    #[test]
    fn hostile_safetensors_header_length_is_bounded() {
        let dir = TempDir::new("hf-hostile");
        std::fs::write(dir.0.join("config.json"), r#"{"hidden_size": 4}"#).unwrap();
        let path = dir.0.join(SINGLE_FILE);
        std::fs::write(&path, safetensors("w", vec![4], &[0u8; 16])).unwrap();
        let files = ModelFiles::Hf(HfModelDir::open(&dir.0).unwrap());
        // Rewritten after open with an absurd header length.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            model_identity(&files),
            Err(LoadError::Malformed { .. })
        ));
        let len = bytes.len() as u64;
        bytes[..8].copy_from_slice(&len.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            model_identity(&files),
            Err(LoadError::Truncated { .. })
        ));
    }
}
