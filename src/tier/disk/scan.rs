//! What `DiskTier::open` finds in a namespace directory: temporary files left by interrupted
//! writers, and the block files with their parents for the size cap's index.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use super::index::DiskIndex;
use super::{DiskError, EXTENSION, FLAG_PARENT, TMP_SUFFIX, TMP_SWEEP_AGE};
use crate::kv::BlockHash;

/// Removes temporary files (`.<…>.tmp`) at least [`TMP_SWEEP_AGE`] old. Only a directory that
/// cannot be listed is an error; a file that vanishes or cannot be removed is skipped.
pub(super) fn sweep_temporaries(dir: &Path) -> Result<(), DiskError> {
    let entries = fs::read_dir(dir).map_err(|source| DiskError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let now = SystemTime::now();
    let mut swept = 0usize;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with('.') && name.ends_with(TMP_SUFFIX)) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default() >= TMP_SWEEP_AGE)
            .unwrap_or(false);
        if old && fs::remove_file(entry.path()).is_ok() {
            swept += 1;
        }
    }
    if swept > 0 {
        log::info!(
            "KV disk cache: removed {swept} temporary file(s) left by an interrupted writer in {}",
            dir.display()
        );
    }
    Ok(())
}

/// The block files of a namespace directory, least recently used (written or loaded) first,
/// with their parents (read
/// from each header's first 40 bytes; a file too short to say is left to a load to reject).
pub(super) fn index_directory(dir: &Path) -> Result<DiskIndex, DiskError> {
    let entries = fs::read_dir(dir).map_err(|source| DiskError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(&format!(".{EXTENSION}")))
        else {
            continue;
        };
        let Ok(key) = u64::from_str_radix(stem, 16) else {
            continue;
        };
        let mut head = [0u8; 40];
        let read = File::open(entry.path()).and_then(|mut f| f.read_exact(&mut head));
        if read.is_err() {
            continue;
        }
        let flags = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
        let mut parent = [0u8; 8];
        parent.copy_from_slice(&head[32..40]);
        let parent = (flags & FLAG_PARENT != 0).then(|| BlockHash(u64::from_le_bytes(parent)));
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        files.push((modified, BlockHash(key), parent));
    }
    files.sort_by_key(|(t, k, _)| (*t, *k));
    let mut index = DiskIndex::default();
    for (_, key, parent) in files {
        index.insert(key, parent);
    }
    Ok(index)
}
