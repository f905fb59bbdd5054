//! The `hf` target: a Hugging Face directory, framed as one input.

use wllm::loader::TensorSource;
use wllm::loader::hf::HfModelDir;
use wllm::model::ModelConfig;

use super::{MAX_DEQUANT_ELEMS, Scratch};

/// A Hugging Face directory: `config.json`, then either one `model.safetensors` or
/// `model.safetensors.index.json` plus shards. Input: the files joined by [`HF_SEPARATOR`]:
/// `config ␞ index ␞ shard1 ␞ shard2 …`. An empty (or missing) index part means a single
/// `model.safetensors` (the first shard part, or an empty safetensors file when there is none);
/// otherwise shard `i` is written as `model-0000i-of-0000n.safetensors`.
/// Runs [`HfModelDir::open`], every tensor's bytes (small ones widened to f32),
/// [`ModelConfig::from_hf`].
pub fn hf(data: &[u8]) -> Result<(), String> {
    let parts = split_hf(data);
    let dir = Scratch::new("hf");
    dir.write("config.json", parts.first().copied().unwrap_or(b""));
    let index = parts.get(1).copied().unwrap_or(b"");
    let shards = parts.get(2..).unwrap_or(&[]);
    if index.is_empty() {
        let empty = empty_safetensors();
        dir.write(
            "model.safetensors",
            shards.first().copied().unwrap_or(&empty),
        );
    } else {
        dir.write("model.safetensors.index.json", index);
        for (i, s) in shards.iter().enumerate() {
            dir.write(&shard_name(i, shards.len()), s);
        }
    }
    let model = HfModelDir::open(&dir.0).map_err(|e| format!("open: {e}"))?;
    let mut budget = MAX_DEQUANT_ELEMS;
    for info in model.tensor_infos() {
        let numel = info.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        match model.tensor_bytes(&info.name) {
            Ok((dtype, bytes)) => {
                let numel = numel.unwrap_or_else(|| {
                    panic!("tensor `{}` accepted with an overflowing shape", info.name)
                });
                assert_eq!(
                    dtype.bytes_for(numel),
                    Some(bytes.len()),
                    "tensor `{}`: {} bytes for {numel} {dtype:?} elements",
                    info.name,
                    bytes.len()
                );
                if numel <= budget {
                    budget -= numel;
                    let t = model.tensor(&info.name).expect("tensor after tensor_bytes");
                    let v = t.to_f32().expect("to_f32 of a tensor of the right size");
                    assert_eq!(v.len(), numel);
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    let config = ModelConfig::from_hf(&model).map_err(|e| format!("config: {e}"))?;
    let _ = (config.kv_dim(), config.q_dim());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The HF directory framing

/// Separates the files of one `hf` input.
pub const HF_SEPARATOR: &[u8] = b"\n--8<--\n";

fn split_hf(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    // config, index, and at most four shards.
    while parts.len() < 5 {
        match find(rest, HF_SEPARATOR) {
            Some(at) => {
                parts.push(&rest[..at]);
                rest = &rest[at + HF_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

/// Joins HF files into one `hf` input (for seeds).
pub fn join_hf(config: &[u8], index: &[u8], shards: &[&[u8]]) -> Vec<u8> {
    let mut out = config.to_vec();
    if index.is_empty() && shards.is_empty() {
        return out;
    }
    out.extend_from_slice(HF_SEPARATOR);
    out.extend_from_slice(index);
    for s in shards {
        out.extend_from_slice(HF_SEPARATOR);
        out.extend_from_slice(s);
    }
    out
}

pub fn empty_safetensors() -> Vec<u8> {
    safetensors_bytes(&[])
}

/// A safetensors file: `(name, dtype, shape, data)`; the header lists tensors in order with
/// contiguous offsets.
pub fn safetensors_bytes(tensors: &[(&str, &str, &[usize], &[u8])]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut off = 0usize;
    for (i, (name, dtype, shape, data)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
            shape.join(","),
            off + data.len()
        ));
        off += data.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}
