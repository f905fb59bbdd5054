//! A Hugging Face model directory: `config.json` plus `model.safetensors`, or shards listed by
//! `model.safetensors.index.json` (`weight_map`: tensor name → shard file name).
//!
//! Each shard is opened and memory-mapped once; its header is parsed and validated by the
//! `safetensors` crate (offsets contiguous, so no two tensors share bytes; sizes matching
//! dtype × shape; the last tensor ending at the end of the file), so
//! [`HfModelDir::tensor_bytes`] is a bounds-checked slice of a map.
//! Tensors of a dtype wllm does not use (integers, fp8, …) may sit in the files (older
//! checkpoints store buffers); only reading one fails, with [`LoadError::UnsupportedTensorType`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use super::{LoadError, RawTensor, TensorDType, TensorSource};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where one tensor lives.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensorInfo {
    pub name: String,
    /// Row-major, outermost first, as safetensors stores it.
    pub shape: Vec<usize>,
    /// The safetensors dtype as stored (may be one wllm cannot read).
    pub dtype: Dtype,
    /// Index into the directory's shard list.
    pub shard: usize,
    /// Absolute `[start, end)` byte range in the shard file.
    pub range: (usize, usize),
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// An opened Hugging Face model directory.
#[derive(Debug)]
pub struct HfModelDir {
    pub path: PathBuf,
    /// The parsed `config.json`.
    pub config: serde_json::Value,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, HfTensorInfo>,
}

impl HfModelDir {
    /// Reads `config.json` and maps every weight file of the directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<HfModelDir, LoadError> {
        let path = dir.as_ref().to_path_buf();
        let config_path = path.join("config.json");
        let config: serde_json::Value = read_json(&config_path)?;
        if !config.is_object() {
            return Err(LoadError::Config {
                path: config_path,
                msg: "config.json is not a JSON object".into(),
            });
        }

        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        let single = path.join(SINGLE_FILE);
        let index_path = path.join(INDEX_FILE);
        if single.is_file() {
            let shard = open_shard(&single)?;
            for info in shard_tensors(&shard, 0)? {
                tensors.insert(info.name.clone(), info);
            }
            shards.push(shard);
        } else if index_path.is_file() {
            let index: serde_json::Value = read_json(&index_path)?;
            let malformed = |msg: String| LoadError::Malformed {
                path: index_path.clone(),
                msg,
            };
            let weight_map = index
                .get("weight_map")
                .and_then(|w| w.as_object())
                .ok_or_else(|| malformed("no `weight_map` object".into()))?;
            // Shard file name → (shard index, every tensor the shard holds).
            let mut opened: HashMap<&str, (usize, HashMap<String, HfTensorInfo>)> = HashMap::new();
            for (name, file) in weight_map {
                let file = file
                    .as_str()
                    .ok_or_else(|| malformed(format!("weight_map[`{name}`] is not a string")))?;
                if file.is_empty() || file.contains(['/', '\\']) || file == "." || file == ".." {
                    return Err(malformed(format!(
                        "weight_map[`{name}`] = `{file}` is not a file name in the directory"
                    )));
                }
                if !opened.contains_key(file) {
                    let shard = open_shard(&path.join(file))?;
                    let idx = shards.len();
                    let infos = shard_tensors(&shard, idx)?
                        .into_iter()
                        .map(|t| (t.name.clone(), t))
                        .collect();
                    shards.push(shard);
                    opened.insert(file, (idx, infos));
                }
                let info = opened
                    .get(file)
                    .and_then(|(_, infos)| infos.get(name))
                    .ok_or_else(|| {
                        malformed(format!("tensor `{name}` is not in its shard `{file}`"))
                    })?;
                tensors.insert(name.clone(), info.clone());
            }
        } else {
            return Err(LoadError::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("neither {SINGLE_FILE} nor {INDEX_FILE} exists in the directory"),
                ),
            });
        }
        Ok(HfModelDir {
            path,
            config,
            shards,
            tensors,
        })
    }

    /// `tokenizer.json`, when the directory has one.
    pub fn tokenizer_json(&self) -> Option<PathBuf> {
        existing(self.path.join("tokenizer.json"))
    }

    /// `tokenizer_config.json` (chat template, special tokens), when the directory has one.
    pub fn tokenizer_config(&self) -> Option<PathBuf> {
        existing(self.path.join("tokenizer_config.json"))
    }

    /// What config.json names the model: `architectures[0]` (the class) and `model_type`.
    pub fn architecture_names(&self) -> (Option<&str>, Option<&str>) {
        let class = self
            .config
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str());
        let model_type = self.config.get("model_type").and_then(|m| m.as_str());
        (class, model_type)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&HfTensorInfo> {
        self.tensors.get(name)
    }

    /// Every tensor, sorted by name.
    pub fn tensor_infos(&self) -> impl Iterator<Item = &HfTensorInfo> {
        self.tensors.values()
    }

    /// The stored bytes of tensor `name`, borrowed from its shard's map (no copy), with its dtype.
    pub fn tensor_bytes(&self, name: &str) -> Result<(TensorDType, &[u8]), LoadError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        let shard = self
            .shards
            .get(info.shard)
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        let dtype = readable(info.dtype).ok_or_else(|| LoadError::UnsupportedTensorType {
            path: shard.path.clone(),
            tensor: name.to_string(),
            type_name: format!("{:?}", info.dtype),
        })?;
        let bytes =
            shard
                .map
                .get(info.range.0..info.range.1)
                .ok_or_else(|| LoadError::Truncated {
                    path: shard.path.clone(),
                    what: format!("data of tensor `{name}`"),
                })?;
        Ok((dtype, bytes))
    }
}

impl TensorSource for HfModelDir {
    fn tensor(&self, name: &str) -> Result<RawTensor, LoadError> {
        let (dtype, bytes) = self.tensor_bytes(name)?;
        let data = bytes.to_vec();
        if let Some(shard) = self
            .tensors
            .get(name)
            .and_then(|t| self.shards.get(t.shard))
        {
            super::release_mapped(&shard.map, bytes);
        }
        let shape = self
            .tensors
            .get(name)
            .map(|t| t.shape.clone())
            .unwrap_or_default();
        Ok(RawTensor {
            name: name.to_string(),
            dtype,
            shape,
            data,
        })
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn tensor_shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    fn tensor_byte_len(&self, name: &str) -> Option<usize> {
        self.tensors.get(name).map(|t| t.range.1 - t.range.0)
    }

    fn tensor_dtype(&self, name: &str) -> Option<TensorDType> {
        readable(self.tensors.get(name)?.dtype)
    }

    fn tensor_names(&self) -> Vec<String> {
        // BTreeMap keys are already sorted.
        self.tensors.keys().cloned().collect()
    }
}

fn existing(p: PathBuf) -> Option<PathBuf> {
    p.is_file().then_some(p)
}

fn read_json(path: &Path) -> Result<serde_json::Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| LoadError::Malformed {
        path: path.to_path_buf(),
        msg: format!("invalid JSON: {e}"),
    })
}

fn open_shard(path: &Path) -> Result<Shard, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: read-only private map; see GgufFile::open for the usual mmap caveat.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    Ok(Shard {
        path: path.to_path_buf(),
        map,
    })
}

/// Parses and validates a shard's header; returns its tensors with absolute byte ranges.
fn shard_tensors(shard: &Shard, idx: usize) -> Result<Vec<HfTensorInfo>, LoadError> {
    let (header_len, meta) = SafeTensors::read_metadata(&shard.map).map_err(|e| match e {
        SafeTensorError::HeaderTooSmall
        | SafeTensorError::InvalidHeaderLength
        | SafeTensorError::MetadataIncompleteBuffer => LoadError::Truncated {
            path: shard.path.clone(),
            what: format!("safetensors file: {e}"),
        },
        // The crate sorts tensors by offset and wants each to start where the one before it
        // ends, so two tensors can never share bytes; say so rather than "invalid offset".
        SafeTensorError::InvalidOffset(name) => LoadError::Malformed {
            path: shard.path.clone(),
            msg: format!(
                "tensor `{name}`: its data offsets overlap another tensor's data or leave a gap \
                 (safetensors data must be contiguous)"
            ),
        },
        e => LoadError::Malformed {
            path: shard.path.clone(),
            msg: format!("safetensors header: {e}"),
        },
    })?;
    // read_metadata checked that 8 + header_len + every data offset lies within the file.
    let base = header_len
        .checked_add(8)
        .ok_or_else(|| LoadError::Malformed {
            path: shard.path.clone(),
            msg: "header length overflows".into(),
        })?;
    meta.tensors()
        .into_iter()
        .map(|(name, t)| {
            let (s, e) = t.data_offsets;
            let range = base
                .checked_add(s)
                .zip(base.checked_add(e))
                .filter(|&(_, end)| end <= shard.map.len())
                .ok_or_else(|| LoadError::Truncated {
                    path: shard.path.clone(),
                    what: format!("data of tensor `{name}`"),
                })?;
            Ok(HfTensorInfo {
                shape: t.shape.clone(),
                dtype: t.dtype,
                shard: idx,
                range,
                name,
            })
        })
        .collect()
}

/// The element type wllm reads a safetensors dtype as; `None` for the others.
fn readable(dtype: Dtype) -> Option<TensorDType> {
    match dtype {
        Dtype::F32 => Some(TensorDType::F32),
        Dtype::F16 => Some(TensorDType::F16),
        Dtype::BF16 => Some(TensorDType::BF16),
        _ => None,
    }
}
