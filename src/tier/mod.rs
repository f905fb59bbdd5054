//! KV beyond the GPU pool: a host-memory tier for the prefix blocks the GPU cache evicts, and
//! an opt-in disk tier that keeps persistent prefixes across restarts.
//!
//! ```text
//! GPU prefix cache ── evict ──► host tier (HostStore, `--kv-host-memory`) ── LRU by leaf ──► gone
//!        ▲                             │   ▲
//!        └──── restore at admission ───┘   └── load at submit ── disk tier (`--kv-cache-dir`)
//! a persistent prefix (`cache: "persist"`, or over `persist_min_tokens`) ── after its prefill ──► disk
//! ```
//! The bookkeeping of the host tier is pure (`kv::HostTier`, driven by the scheduler); the
//! images (every layer's K and V of one block, `gpu::kv_transfer`) live here, in
//! `HostStore`, and on disk in [`disk::DiskTier`].

pub mod disk;
pub mod identity;

use std::path::PathBuf;

use crate::kv::HostSlot;

/// Where evicted and persistent KV goes besides the GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvTierConfig {
    /// Bytes of host memory for evicted prefix blocks (0: no host tier). `None`: a quarter
    /// of the memory available when the engine starts, at most 8 GiB
    /// ([`default_host_bytes`]). Taken as blocks are evicted, not up front.
    pub host_bytes: Option<u64>,
    /// The disk tier's directory (`None`: no disk tier).
    pub disk_dir: Option<PathBuf>,
    /// Most bytes of block files for this model, dtype, block size and adapter in `disk_dir`
    /// (least recently used leaf files go first); `None`: [`DEFAULT_DISK_CAP`].
    pub disk_max_bytes: Option<u64>,
    /// Prompts of at least this many tokens persist their prefix to the disk tier without
    /// asking (`Request::persist`); `None`: only requests that ask.
    pub persist_min_tokens: Option<usize>,
}

/// The disk tier's default cap per namespace directory.
pub const DEFAULT_DISK_CAP: u64 = 16 << 30;

/// Most host memory the default tier takes.
pub const DEFAULT_HOST_CAP: u64 = 8 << 30;

/// A quarter of the memory available now (Linux: `MemAvailable`), at most 8 GiB; 2 GiB
/// where the platform does not say.
pub fn default_host_bytes() -> u64 {
    available_memory().map_or(2 << 30, |m| (m / 4).min(DEFAULT_HOST_CAP))
}

fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// What the KV tiers did, as `EngineStats::kv_tiers` reports it (cumulative counters, and
/// the tier's state now).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TierStats {
    /// The host tier's slots and counters (blocks).
    pub host: crate::scheduler::HostTierStats,
    /// Prompt tokens whose KV was restored from the host tier (disk loads included).
    pub host_hit_tokens: u64,
    /// Bytes of one block's image (every layer's K and V).
    pub image_bytes: u64,
    /// Host memory the images take now.
    pub host_resident_bytes: u64,
    /// Bytes copied GPU → host (offloads landed) and host → GPU (restores).
    pub offload_bytes: u64,
    pub restore_bytes: u64,
    pub disk_enabled: bool,
    pub disk: disk::DiskStats,
    /// Prompt tokens whose KV was loaded from disk into the host tier.
    pub disk_loaded_tokens: u64,
}

/// The images of the host tier's slots, each allocated when the slot is first written.
#[derive(Debug, Default)]
pub(crate) struct HostStore {
    images: Vec<Vec<u8>>,
    /// Bytes the images hold, kept as they change (stats read it every step).
    resident: u64,
}

impl HostStore {
    pub fn new(slots: usize) -> HostStore {
        HostStore {
            images: vec![Vec::new(); slots],
            resident: 0,
        }
    }

    /// Keeps `image` as the contents of `slot` (dropping what it held).
    pub fn put(&mut self, slot: HostSlot, image: Vec<u8>) {
        if let Some(s) = self.images.get_mut(slot.0 as usize) {
            self.resident = self.resident - s.len() as u64 + image.len() as u64;
            *s = image;
        }
    }

    /// The image of `slot` (empty if it never held one).
    pub fn get(&self, slot: HostSlot) -> &[u8] {
        self.images.get(slot.0 as usize).map_or(&[], Vec::as_slice)
    }

    /// Bytes of host memory the images take now.
    pub fn resident_bytes(&self) -> u64 {
        self.resident
    }
}

/// A fresh directory under the system temp dir, removed on drop (the tier's unit tests).
#[cfg(test)]
pub(crate) struct TempDir(pub std::path::PathBuf);

#[cfg(test)]
impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "wllm-tier-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_bounded() {
        let d = default_host_bytes();
        assert!(d > 0 && d <= DEFAULT_HOST_CAP);
    }
}
