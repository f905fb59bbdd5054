//! The disk tier of the prefix cache: full KV blocks kept in files so a process that restarts
//! with the same long prompt (a desktop app's system prompt) reads its KV back instead of
//! recomputing it. Opt-in (`--kv-cache-dir PATH`).
//!
//! A block's KV *image* is opaque here: all layers' K and V of one KV block, `image_bytes` long.
//! Entries are keyed by the prefix-cache chain hash ([`BlockHash`]), which already names the
//! whole token prefix up to the block. Everything else that changes the bits of a block's KV
//! (model, KV dtype, block size, kernel family, image size) is the [`DiskNamespace`]: each
//! namespace has its own directory, `<root>/<model hex>-<dtype>-bs<block size>-<family>-<image
//! bytes>/`, so entries of different namespaces never meet, and each file repeats the namespace
//! in its header so a file copied into the wrong directory is rejected too.
//!
//! # File layout
//! One file per block, `<key as 16 hex digits>.kvblock`, little-endian (`file.rs` writes and
//! checks it):
//!
//! | offset          | size        | field                                              |
//! |-----------------|-------------|----------------------------------------------------|
//! | 0               | 8           | magic `b"WLLMKVB\0"`                               |
//! | 8               | 4           | format version (`1`)                               |
//! | 12              | 4           | flags: bit 0 parent present, bit 1 salt present    |
//! | 16              | 8           | model identity hash                                |
//! | 24              | 8           | key                                                |
//! | 32              | 8           | parent key (0 when absent)                         |
//! | 40              | 8           | salt (0 when absent)                               |
//! | 48              | 8           | image bytes                                        |
//! | 56              | 4           | block size                                         |
//! | 60              | 4           | token count (= block size)                         |
//! | 64              | 2           | dtype length `d`                                   |
//! | 66              | 2           | kernel family length `f`                           |
//! | 68              | `d`         | dtype (UTF-8)                                      |
//! | 68+d            | `f`         | kernel family (UTF-8)                              |
//! | 68+d+f          | 4 × tokens  | token ids (u32)                                    |
//! | …               | image bytes | the image                                          |
//! | end − 4         | 4           | CRC-32 (IEEE) of every byte before it              |
//!
//! A load knows the file's exact length from its namespace and the caller's tokens before it
//! reads a byte, so a file never decides how much is allocated. It then checks the length, the
//! checksum, magic and version, every namespace field, and the key, parent, salt and tokens
//! against the caller's: any difference is [`DiskLoad::Rejected`] (logged, counted, the file
//! deleted), never a hit. Collisions of the 64-bit key are thus caught, like in the in-memory
//! prefix cache.
//!
//! # Writes and crashes
//! [`DiskTier::store`] only queues; one writer thread per tier writes each entry to a temporary
//! name in the same directory (`.<key>.<pid>.<counter>.tmp`), `sync_data`s it and renames it
//! onto the final name (atomic replace on POSIX; std's rename replaces on Windows too). Readers
//! only open `*.kvblock` names, so a crash mid-write leaves a temporary file that is never read;
//! [`DiskTier::open`] sweeps temporary files older than a minute (younger ones may belong to
//! another live process sharing the directory). The directory is not fsynced after the rename:
//! a power loss may lose a recent file, never expose a partial one (it would fail the checksum
//! anyway). Several processes may share a directory: names are unique per process, the last
//! rename of a key wins, and both contents are valid.
//!
//! The queue is bounded by bytes (`max_pending_bytes`, default 256 MiB): a store that does not
//! fit is dropped and counted, so a slow disk never blocks the engine nor grows memory.
//!
//! # Size cap
//! [`DiskTier::set_max_bytes`] caps the namespace's directory (every file of a namespace has
//! the same length, so this is a number of files). Past it, the writer deletes the least
//! recently used *leaf* file (none names it as its parent; loads and writes count as uses) until
//! the directory fits: a chain shrinks from its end, as in the memory tiers (`index.rs`). The
//! index is built at open (`scan.rs`; file times give the order) and kept by this process;
//! files another process writes there are counted once this one loads them.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::kv::BlockHash;
use file::Outcome;
use index::DiskIndex;
use scan::{index_directory, sweep_temporaries};

mod file;
mod index;
mod scan;

const MAGIC: [u8; 8] = *b"WLLMKVB\0";
const FORMAT_VERSION: u32 = 1;
/// Bytes before the dtype string.
const FIXED_HEADER: usize = 68;
const FLAG_PARENT: u32 = 1;
const FLAG_SALT: u32 = 2;
const EXTENSION: &str = "kvblock";
const TMP_SUFFIX: &str = ".tmp";
/// Default bound on bytes queued for the writer.
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 256 << 20;
/// Temporary files at least this old are taken for a crashed writer's and swept at open.
const TMP_SWEEP_AGE: Duration = Duration::from_secs(60);
/// Longest dtype / kernel family name (they become part of a directory name).
const MAX_NAME_LEN: usize = 32;

/// Everything that changes the bits of a block's KV: entries of different namespaces never meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskNamespace {
    /// The model identity hash ([`super::identity::model_identity`]).
    pub model: u64,
    /// KV storage type, e.g. `"f16"` / `"f32"`.
    pub dtype: String,
    pub block_size: usize,
    /// The attention kernel family that wrote the KV, e.g. `"serial"` / `"split"`.
    pub kernel_family: String,
    /// Length of every image of this namespace.
    pub image_bytes: u64,
}

impl DiskNamespace {
    /// The namespace's directory name.
    pub fn dir_name(&self) -> String {
        format!(
            "{:016x}-{}-bs{}-{}-{}",
            self.model, self.dtype, self.block_size, self.kernel_family, self.image_bytes
        )
    }

    /// Exact file length of an entry of this namespace, `None` on overflow.
    fn file_len(&self) -> Option<u64> {
        let tokens = u64::try_from(self.block_size).ok()?.checked_mul(4)?;
        (FIXED_HEADER as u64 + self.dtype.len() as u64 + self.kernel_family.len() as u64)
            .checked_add(tokens)?
            .checked_add(self.image_bytes)?
            .checked_add(4)
    }

    /// Length of everything between the fixed header and the image.
    fn var_len(&self) -> usize {
        self.dtype.len() + self.kernel_family.len() + 4 * self.block_size
    }

    fn check(&self) -> Result<(), String> {
        for (what, name) in [
            ("dtype", &self.dtype),
            ("kernel family", &self.kernel_family),
        ] {
            let ok = !name.is_empty()
                && name.len() <= MAX_NAME_LEN
                && !name.starts_with('.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(format!(
                    "{what} `{name}` must be 1 to {MAX_NAME_LEN} of [A-Za-z0-9_.-], not starting with '.'"
                ));
            }
        }
        if self.block_size == 0 || u32::try_from(self.block_size).is_err() {
            return Err(format!("block size {} out of range", self.block_size));
        }
        if self.image_bytes == 0 {
            return Err("image size 0".into());
        }
        // The whole file must be addressable, and its image allocatable as one Vec.
        match self.file_len() {
            Some(len) if usize::try_from(len).is_ok() => Ok(()),
            _ => Err(format!("image size {} too large", self.image_bytes)),
        }
    }
}

/// One block to store.
#[derive(Clone)]
pub struct DiskEntry {
    pub key: BlockHash,
    pub parent: Option<BlockHash>,
    pub salt: Option<u64>,
    pub tokens: Vec<u32>,
    pub image: Vec<u8>,
}

/// What [`DiskTier::load`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum DiskLoad {
    /// The entry's image, validated.
    Hit(Vec<u8>),
    Miss,
    /// Corrupt, truncated, or a header/tokens/parent/salt mismatch: the file was ignored, deleted
    /// and counted. The reason is for logs.
    Rejected(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskStats {
    pub hits: u64,
    pub misses: u64,
    pub rejected: u64,
    /// Bytes of files read by hits.
    pub bytes_read: u64,
    pub writes: u64,
    pub bytes_written: u64,
    /// Failed writes, entries with a wrong image or token length, and writes lost to a dead
    /// writer thread.
    pub write_errors: u64,
    /// Stores dropped because the queue was full.
    pub dropped_writes: u64,
    /// Files deleted to keep the directory within its cap, and the files it holds now.
    pub evictions: u64,
    pub files: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid KV disk namespace: {0}")]
    InvalidNamespace(String),
    #[error("cannot start a KV disk thread (writer or loader): {0}")]
    Thread(#[source] io::Error),
}

/// What is queued for the writer.
struct Queue {
    bytes: u64,
    jobs: usize,
    /// Keys queued and not yet written, so the same block is not queued twice.
    keys: HashSet<BlockHash>,
    writer_alive: bool,
    /// Tests: the writer waits before each write while set, so the queue can fill.
    #[cfg(test)]
    hold: bool,
}

struct Shared {
    dir: PathBuf,
    ns: DiskNamespace,
    stats: Mutex<DiskStats>,
    queue: Mutex<Queue>,
    /// Signalled when a job finishes (or the writer dies, or, in tests, `hold` changes).
    changed: Condvar,
    tmp_counter: AtomicU64,
    /// The directory's files, and how many it may hold (`None`: no cap).
    index: Mutex<(DiskIndex, Option<usize>)>,
}

/// A poisoned lock only means another thread panicked mid-update of counters; keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The disk store of one namespace. `Sync`: loads may run on any thread; writes go through one
/// background writer.
pub struct DiskTier {
    shared: Arc<Shared>,
    tx: Option<Sender<DiskEntry>>,
    writer: Option<JoinHandle<()>>,
    max_pending_bytes: u64,
}

impl DiskTier {
    /// Creates `dir/<namespace dir name>/`, sweeps leftover temporary files of crashed writers,
    /// starts one writer thread. Queue bound: [`DEFAULT_MAX_PENDING_BYTES`].
    pub fn open(dir: &Path, ns: DiskNamespace) -> Result<DiskTier, DiskError> {
        Self::open_with_queue_limit(dir, ns, DEFAULT_MAX_PENDING_BYTES)
    }

    /// [`DiskTier::open`] with at most `max_pending_bytes` queued for the writer.
    pub fn open_with_queue_limit(
        dir: &Path,
        ns: DiskNamespace,
        max_pending_bytes: u64,
    ) -> Result<DiskTier, DiskError> {
        ns.check().map_err(DiskError::InvalidNamespace)?;
        let ns_dir = dir.join(ns.dir_name());
        fs::create_dir_all(&ns_dir).map_err(|source| DiskError::Io {
            path: ns_dir.clone(),
            source,
        })?;
        sweep_temporaries(&ns_dir)?;
        let index = index_directory(&ns_dir)?;
        let shared = Arc::new(Shared {
            dir: ns_dir,
            ns,
            stats: Mutex::new(DiskStats::default()),
            queue: Mutex::new(Queue {
                bytes: 0,
                jobs: 0,
                keys: HashSet::new(),
                writer_alive: true,
                #[cfg(test)]
                hold: false,
            }),
            changed: Condvar::new(),
            tmp_counter: AtomicU64::new(0),
            index: Mutex::new((index, None)),
        });
        let (tx, rx) = mpsc::channel();
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("wllm-kv-disk".into())
                .spawn(move || writer_loop(&shared, rx))
                .map_err(DiskError::Thread)?
        };
        Ok(DiskTier {
            shared,
            tx: Some(tx),
            writer: Some(writer),
            max_pending_bytes,
        })
    }

    pub fn namespace(&self) -> &DiskNamespace {
        &self.shared.ns
    }

    /// Caps the directory at `max` bytes (≥ 1 file; `None`: no cap), evicting at once.
    pub fn set_max_bytes(&self, max: Option<u64>) {
        let file = self.shared.ns.file_len().unwrap_or(u64::MAX).max(1);
        let files = max.map(|m| usize::try_from(m / file).unwrap_or(usize::MAX).max(1));
        lock(&self.shared.index).1 = files;
        self.shared.enforce_cap();
    }

    /// The namespace's directory (under the root given to [`DiskTier::open`]).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Whether a (complete) file for `key` exists: a stat, no read, no validation.
    pub fn contains(&self, key: BlockHash) -> bool {
        fs::metadata(self.shared.path_of(key)).is_ok_and(|m| m.is_file())
    }

    /// Reads and validates the entry for `key` (see the module doc). Synchronous: one open,
    /// one stat and the file's bytes.
    pub fn load(
        &self,
        key: BlockHash,
        parent: Option<BlockHash>,
        salt: Option<u64>,
        tokens: &[u32],
    ) -> DiskLoad {
        let path = self.shared.path_of(key);
        let outcome = self.shared.read_entry(&path, key, parent, salt, tokens);
        let mut stats = lock(&self.shared.stats);
        match outcome {
            Outcome::Hit { image, file_len } => {
                stats.hits += 1;
                stats.bytes_read += file_len;
                drop(stats);
                lock(&self.shared.index).0.insert(key, parent);
                // The file's time is its last use for the next process's index (best effort).
                let touched = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                if let Err(e) = touched {
                    log::debug!("KV disk cache: cannot touch {}: {e}", path.display());
                }
                DiskLoad::Hit(image)
            }
            Outcome::Miss => {
                stats.misses += 1;
                DiskLoad::Miss
            }
            Outcome::Bad(reason) => {
                stats.rejected += 1;
                drop(stats);
                lock(&self.shared.index).0.remove(key);
                log::warn!("KV disk cache: rejected {}: {reason}", path.display());
                // A concurrent writer may have just renamed a good file here; losing it is only
                // a later miss.
                if let Err(e) = fs::remove_file(&path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    log::warn!("KV disk cache: cannot remove {}: {e}", path.display());
                }
                DiskLoad::Rejected(reason)
            }
        }
    }

    /// Queues `entry` for the writer. Skipped when its file exists or it is already queued;
    /// dropped (and counted) when more than `max_pending_bytes` would be queued; a wrong image
    /// or token length is counted as a write error and not written. Never blocks on the disk
    /// (one stat).
    pub fn store(&self, entry: DiskEntry) {
        let ns = &self.shared.ns;
        if entry.image.len() as u64 != ns.image_bytes || entry.tokens.len() != ns.block_size {
            let n = {
                let mut stats = lock(&self.shared.stats);
                stats.write_errors += 1;
                stats.write_errors
            };
            if n.is_power_of_two() {
                log::warn!(
                    "KV disk cache: not storing block {:016x}: image {} bytes / {} tokens, \
                     expected {} / {} ({n} write errors so far)",
                    entry.key.0,
                    entry.image.len(),
                    entry.tokens.len(),
                    ns.image_bytes,
                    ns.block_size
                );
            }
            return;
        }
        if self.contains(entry.key) {
            return;
        }
        let cost = entry_cost(&entry);
        let key = entry.key;
        let mut q = lock(&self.shared.queue);
        if q.keys.contains(&key) {
            return;
        }
        let alive = q.writer_alive;
        let fits = q.bytes.saturating_add(cost) <= self.max_pending_bytes;
        // Sent under the lock, so the writer cannot finish the job before it is counted.
        if alive && fits && self.tx.as_ref().is_some_and(|tx| tx.send(entry).is_ok()) {
            q.bytes += cost;
            q.jobs += 1;
            q.keys.insert(key);
            return;
        }
        drop(q);
        let mut stats = lock(&self.shared.stats);
        if alive && !fits {
            stats.dropped_writes += 1;
            let n = stats.dropped_writes;
            drop(stats);
            if n.is_power_of_two() {
                log::warn!(
                    "KV disk cache: write queue full ({} bytes max); {n} block(s) not stored so far",
                    self.max_pending_bytes
                );
            }
        } else {
            // The writer thread is gone: nothing can be written any more.
            stats.write_errors += 1;
        }
    }

    /// Blocks until every queued write is done (or the writer thread has died).
    pub fn flush(&self) {
        let mut q = lock(&self.shared.queue);
        while q.jobs > 0 && q.writer_alive {
            q = self
                .shared
                .changed
                .wait(q)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn stats(&self) -> DiskStats {
        let files = lock(&self.shared.index).0.len() as u64;
        DiskStats {
            files,
            ..lock(&self.shared.stats).clone()
        }
    }

    /// Tests: stops (or resumes) the writer before its next write.
    #[cfg(test)]
    fn hold_writer(&self, hold: bool) {
        lock(&self.shared.queue).hold = hold;
        self.shared.changed.notify_all();
    }

    #[cfg(test)]
    fn queued_bytes(&self) -> u64 {
        lock(&self.shared.queue).bytes
    }
}

impl Drop for DiskTier {
    /// Closes the queue and joins the writer, which finishes what is queued first. A writer
    /// that died is joined at once.
    fn drop(&mut self) {
        #[cfg(test)]
        self.hold_writer(false);
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Bytes an entry holds while queued.
fn entry_cost(entry: &DiskEntry) -> u64 {
    (entry.image.len() + 4 * entry.tokens.len() + std::mem::size_of::<DiskEntry>()) as u64
}

fn file_name(key: BlockHash) -> String {
    format!("{:016x}.{EXTENSION}", key.0)
}

impl Shared {
    fn path_of(&self, key: BlockHash) -> PathBuf {
        self.dir.join(file_name(key))
    }

    /// Deletes least recently used leaf files while the directory is over its cap.
    fn enforce_cap(&self) {
        let mut evicted = 0;
        {
            let mut ix = lock(&self.index);
            let Some(max) = ix.1 else { return };
            while ix.0.len() > max {
                let Some(key) = ix.0.evict() else { break };
                match fs::remove_file(self.path_of(key)) {
                    Ok(()) => evicted += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => log::warn!("KV disk cache: cannot evict {}: {e}", file_name(key)),
                }
            }
        }
        lock(&self.stats).evictions += evicted;
    }

    #[cfg(test)]
    fn wait_while_held(&self) {
        let mut q = lock(&self.queue);
        while q.hold {
            q = self.changed.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Marks the writer dead however it ends (a panic included), so `flush` and `store` stop
/// waiting on it; queued jobs are lost and counted as write errors.
struct WriterAlive<'a>(&'a Shared);

impl Drop for WriterAlive<'_> {
    fn drop(&mut self) {
        let lost = {
            let mut q = lock(&self.0.queue);
            q.writer_alive = false;
            let lost = q.jobs;
            q.jobs = 0;
            q.bytes = 0;
            q.keys.clear();
            lost
        };
        lock(&self.0.stats).write_errors += lost as u64;
        self.0.changed.notify_all();
    }
}

fn writer_loop(shared: &Shared, rx: Receiver<DiskEntry>) {
    let _alive = WriterAlive(shared);
    // Ends when the tier drops its sender, after every queued entry.
    while let Ok(entry) = rx.recv() {
        #[cfg(test)]
        shared.wait_while_held();
        let result = shared.write_entry(&entry);
        {
            let mut stats = lock(&shared.stats);
            match &result {
                Ok(Some(n)) => {
                    stats.writes += 1;
                    stats.bytes_written += n;
                    drop(stats);
                    lock(&shared.index).0.insert(entry.key, entry.parent);
                    shared.enforce_cap();
                }
                Ok(None) => {}
                Err(e) => {
                    stats.write_errors += 1;
                    let n = stats.write_errors;
                    drop(stats);
                    // A full disk fails every write: log the first few, then powers of two.
                    if n.is_power_of_two() {
                        log::warn!("KV disk cache: write failed ({n} so far): {e}");
                    }
                }
            }
        }
        let mut q = lock(&shared.queue);
        q.bytes = q.bytes.saturating_sub(entry_cost(&entry));
        q.jobs = q.jobs.saturating_sub(1);
        q.keys.remove(&entry.key);
        drop(q);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests;
