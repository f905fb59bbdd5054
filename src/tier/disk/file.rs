//! One block file: its header written and checked, the whole entry read and validated, and
//! written atomically (the layout is in the parent module's docs).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{
    DiskEntry, DiskError, FIXED_HEADER, FLAG_PARENT, FLAG_SALT, FORMAT_VERSION, MAGIC, Shared,
    TMP_SUFFIX,
};
use crate::kv::BlockHash;

/// The outcome of reading one file, before it is counted.
pub(super) enum Outcome {
    Hit { image: Vec<u8>, file_len: u64 },
    Miss,
    Bad(String),
}

/// Whether a failed read means a bad file (`Bad`) or a file we could not judge (`Miss`).
fn read_error(e: io::Error) -> Outcome {
    match e.kind() {
        io::ErrorKind::NotFound => Outcome::Miss,
        io::ErrorKind::UnexpectedEof => Outcome::Bad("file is truncated".into()),
        _ => Outcome::Bad(format!("read error: {e}")),
    }
}

impl Shared {
    /// The fixed header and the variable part before the image, as written.
    pub(super) fn encode_header(&self, entry: &DiskEntry) -> Vec<u8> {
        let ns = &self.ns;
        let mut h = Vec::with_capacity(FIXED_HEADER + ns.var_len());
        let flags = if entry.parent.is_some() {
            FLAG_PARENT
        } else {
            0
        } | if entry.salt.is_some() { FLAG_SALT } else { 0 };
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&ns.model.to_le_bytes());
        h.extend_from_slice(&entry.key.0.to_le_bytes());
        h.extend_from_slice(&entry.parent.map_or(0, |p| p.0).to_le_bytes());
        h.extend_from_slice(&entry.salt.unwrap_or(0).to_le_bytes());
        h.extend_from_slice(&ns.image_bytes.to_le_bytes());
        // Both fit: checked at open, and store checks the token count.
        h.extend_from_slice(&(ns.block_size as u32).to_le_bytes());
        h.extend_from_slice(&(entry.tokens.len() as u32).to_le_bytes());
        h.extend_from_slice(&(ns.dtype.len() as u16).to_le_bytes());
        h.extend_from_slice(&(ns.kernel_family.len() as u16).to_le_bytes());
        debug_assert_eq!(h.len(), FIXED_HEADER);
        h.extend_from_slice(ns.dtype.as_bytes());
        h.extend_from_slice(ns.kernel_family.as_bytes());
        for t in &entry.tokens {
            h.extend_from_slice(&t.to_le_bytes());
        }
        h
    }

    /// Reads and validates `path`. Allocates only what the namespace says an entry holds.
    pub(super) fn read_entry(
        &self,
        path: &Path,
        key: BlockHash,
        parent: Option<BlockHash>,
        salt: Option<u64>,
        tokens: &[u32],
    ) -> Outcome {
        let ns = &self.ns;
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Outcome::Miss,
            Err(e) => {
                // Not the file's fault (permissions, too many open files): leave it.
                log::warn!("KV disk cache: cannot open {}: {e}", path.display());
                return Outcome::Miss;
            }
        };
        let file_len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return read_error(e),
        };
        // Checked at open.
        let want_len = ns.file_len().unwrap_or(u64::MAX);
        if file_len != want_len {
            return Outcome::Bad(format!(
                "file is {file_len} bytes, an entry of this namespace is {want_len} (truncated or foreign)"
            ));
        }
        let mut header = vec![0u8; FIXED_HEADER + ns.var_len()];
        let mut image = vec![0u8; ns.image_bytes as usize];
        let mut crc = [0u8; 4];
        for buf in [&mut header[..], &mut image[..], &mut crc[..]] {
            if let Err(e) = file.read_exact(buf) {
                return read_error(e);
            }
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        hasher.update(&image);
        let (got, stored) = (hasher.finalize(), u32::from_le_bytes(crc));
        if got != stored {
            return Outcome::Bad(format!(
                "checksum mismatch (stored {stored:08x}, computed {got:08x})"
            ));
        }
        if let Err(reason) = self.check_header(&header, key, parent, salt, tokens) {
            return Outcome::Bad(reason);
        }
        Outcome::Hit { image, file_len }
    }

    /// Compares a checksummed header with the namespace and the caller's block.
    pub(super) fn check_header(
        &self,
        header: &[u8],
        key: BlockHash,
        parent: Option<BlockHash>,
        salt: Option<u64>,
        tokens: &[u32],
    ) -> Result<(), String> {
        let ns = &self.ns;
        // `header` has FIXED_HEADER + var_len bytes (read_exact filled it), so these slices hold.
        let u16_at = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]);
        let u32_at = |o: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&header[o..o + 4]);
            u32::from_le_bytes(b)
        };
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[o..o + 8]);
            u64::from_le_bytes(b)
        };
        if header[..8] != MAGIC {
            return Err("not a wllm KV block file (bad magic)".into());
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            ));
        }
        let flags = u32_at(12);
        if flags & !(FLAG_PARENT | FLAG_SALT) != 0 {
            return Err(format!("unknown flags {flags:#x}"));
        }
        let d = usize::from(u16_at(64));
        let f = usize::from(u16_at(66));
        let dtype = header.get(FIXED_HEADER..FIXED_HEADER + d);
        let family = header.get(FIXED_HEADER + d..FIXED_HEADER + d + f);
        let same_ns = u64_at(16) == ns.model
            && u64_at(48) == ns.image_bytes
            && u32_at(56) as usize == ns.block_size
            && u32_at(60) as usize == ns.block_size
            && dtype == Some(ns.dtype.as_bytes())
            && family == Some(ns.kernel_family.as_bytes());
        if !same_ns {
            return Err("written for another namespace (model, dtype, block size, kernel family or image size)".into());
        }
        if u64_at(24) != key.0 {
            return Err(format!("holds key {:016x}", u64_at(24)));
        }
        let file_parent = (flags & FLAG_PARENT != 0).then(|| BlockHash(u64_at(32)));
        if file_parent != parent {
            return Err(format!(
                "parent mismatch (file {file_parent:?}, asked {parent:?})"
            ));
        }
        let file_salt = (flags & FLAG_SALT != 0).then(|| u64_at(40));
        if file_salt != salt {
            return Err("salt mismatch".into());
        }
        let Some(file_tokens) = header.get(FIXED_HEADER + d + f..) else {
            return Err("string lengths exceed the header".into());
        };
        let same_tokens = file_tokens.len() == 4 * tokens.len()
            && file_tokens
                .chunks_exact(4)
                .zip(tokens)
                .all(|(b, t)| b == t.to_le_bytes());
        if !same_tokens {
            return Err("token mismatch (a key collision, or the caller's tokens differ)".into());
        }
        Ok(())
    }

    /// Writes `entry` to a temporary file, syncs it, renames it into place. `Ok(None)` when
    /// the file already exists.
    pub(super) fn write_entry(&self, entry: &DiskEntry) -> Result<Option<u64>, DiskError> {
        let path = self.path_of(entry.key);
        if path.is_file() {
            return Ok(None);
        }
        let tmp = self.dir.join(format!(
            ".{:016x}.{}.{}{TMP_SUFFIX}",
            entry.key.0,
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let header = self.encode_header(entry);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        hasher.update(&entry.image);
        let crc = hasher.finalize().to_le_bytes();
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&header)?;
            f.write_all(&entry.image)?;
            f.write_all(&crc)?;
            // The same clock as a load's touch: a write's own mtime comes from the kernel's
            // coarser clock and could sort before a touch made just before it.
            let _ = f.set_modified(SystemTime::now());
            f.sync_data()?;
            drop(f);
            fs::rename(&tmp, &path)
        };
        match write() {
            Ok(()) => Ok(Some((header.len() + entry.image.len() + crc.len()) as u64)),
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                Err(DiskError::Io { path, source })
            }
        }
    }
}
