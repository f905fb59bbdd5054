//! The engine's side of the KV tiers (src/tier): images moved between the GPU pool, host
//! memory and disk around each step.
//!
//! - After `schedule`, before anything else reaches the GPU queue: the step's offloads are
//!   read back (one submit: ordered before this step writes any evicted block), then its
//!   restores are written (one upload and one submit: they land before the step's forward
//!   pass). Readbacks land asynchronously; `land` stores their images and confirms
//!   the slots to the scheduler, without waiting, after every step (waiting when idle).
//! - At submit, with a disk tier: when the block after what the GPU cache and the host tier
//!   hold is on disk, the request is parked and a loader thread reads the chain from there
//!   (the steps of running requests go on meanwhile); its blocks go into host slots and the
//!   request starts, so admission restores them. A request whose prefix a queued job reads
//!   already waits behind that job instead of reading the same files again.
//! - After a persistent request's first token (its prompt's KV is computed), its full
//!   prompt blocks not on disk yet are read back and queued for the disk writer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use super::{Pending, Worker};
use crate::engine::{Command, Event};
use crate::gpu::kv_transfer::BlockReadback;
use crate::gpu::{GpuContext, GpuError};
use crate::kv::{BlockHash, BlockId, CachedBlock, HostSlot, block_hash};
use crate::scheduler::{SchedulerOutput, SchedulerStats, SeqId};
use crate::tier::disk::{DiskEntry, DiskLoad, DiskTier};
use crate::tier::{HostStore, TierStats};

/// Blocks of a parked request's prompt for the loader thread, in chain order.
struct LoadJob {
    ticket: u64,
    salt: Option<u64>,
    blocks: Vec<(BlockHash, Option<BlockHash>, Vec<u32>)>,
}

/// What the loader read for a parked request: its blocks in chain order, up to the first
/// that is not on disk (or does not check out).
pub(crate) struct Loaded {
    ticket: u64,
    blocks: Vec<(CachedBlock, Vec<u8>)>,
}

/// The loader thread and its job queue.
struct DiskLoader {
    jobs: Option<Sender<LoadJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskLoader {
    /// Reads each job's blocks and hands them to the engine thread through `commands`.
    fn spawn(disk: Arc<DiskTier>, commands: Sender<Command>) -> std::io::Result<DiskLoader> {
        let (tx, rx) = std::sync::mpsc::channel::<LoadJob>();
        let thread = std::thread::Builder::new()
            .name("wllm-kv-disk-loader".into())
            .spawn(move || {
                for job in rx {
                    let mut blocks = Vec::new();
                    for (key, parent, tokens) in job.blocks {
                        let DiskLoad::Hit(image) = disk.load(key, parent, job.salt, &tokens) else {
                            break;
                        };
                        let b = CachedBlock {
                            block: BlockId::HOLE,
                            key,
                            parent,
                            salt: job.salt,
                            tokens,
                        };
                        blocks.push((b, image));
                    }
                    let loaded = Loaded {
                        ticket: job.ticket,
                        blocks,
                    };
                    if commands
                        .send(Command::DiskLoaded(Box::new(loaded)))
                        .is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(DiskLoader {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for DiskLoader {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the job it is reading.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Images in host memory, the disk tier, and the readbacks in flight.
pub(crate) struct Tiers {
    store: HostStore,
    /// Bytes of one block's image.
    image_bytes: u64,
    disk: Option<Arc<DiskTier>>,
    loader: Option<DiskLoader>,
    /// Requests waiting for the loader, by ticket.
    parked: HashMap<u64, Pending>,
    next_ticket: u64,
    /// Blocks that a job queued to the loader reads, with its ticket. The loader answers jobs
    /// in order, so a later job leaves these out: they are in the host tier before its answer.
    loading: HashMap<BlockHash, u64>,
    /// Prompts at least this long persist without asking.
    persist_min_tokens: Option<usize>,
    /// Offload readbacks not landed yet, with the slot of each block.
    offloading: Vec<(BlockReadback, Vec<HostSlot>)>,
    /// Persist readbacks not landed yet, with what each block holds.
    persisting: Vec<(BlockReadback, Vec<CachedBlock>)>,
    offload_bytes: u64,
    restore_bytes: u64,
    disk_loaded_tokens: u64,
}

impl Tiers {
    /// `slots` host slots (0: none) of `image_bytes` each; an optional disk tier, whose
    /// loader thread reports to the engine thread through `commands`.
    pub(crate) fn new(
        slots: usize,
        image_bytes: u64,
        disk: Option<(DiskTier, Sender<Command>)>,
        persist_min_tokens: Option<usize>,
    ) -> std::io::Result<Tiers> {
        let (disk, loader) = match disk {
            Some((d, commands)) => {
                let d = Arc::new(d);
                let loader = DiskLoader::spawn(d.clone(), commands)?;
                (Some(d), Some(loader))
            }
            None => (None, None),
        };
        Ok(Tiers {
            store: HostStore::new(slots),
            image_bytes,
            disk,
            loader,
            parked: HashMap::new(),
            next_ticket: 0,
            loading: HashMap::new(),
            persist_min_tokens,
            offloading: Vec::new(),
            persisting: Vec::new(),
            offload_bytes: 0,
            restore_bytes: 0,
            disk_loaded_tokens: 0,
        })
    }

    /// Completions of the parked requests (they count as held).
    pub(crate) fn num_parked(&self) -> usize {
        self.parked.values().map(|p| p.completions.len()).sum()
    }

    /// Whether a prompt of `len` tokens that asked (`asked`) persists to disk.
    pub(crate) fn persists(&self, asked: bool, len: usize) -> bool {
        self.disk.is_some() && (asked || self.persist_min_tokens.is_some_and(|n| len >= n))
    }
}

impl Worker {
    /// Issues the step's offloads and restores (see the module docs). A failed offload only
    /// loses that copy; a failed restore fails the step (its sequences lack their KV).
    pub(super) fn transfer(&mut self, out: &SchedulerOutput) -> Result<(), String> {
        if !out.offloads.is_empty() {
            let blocks: Vec<u32> = out.offloads.iter().map(|o| o.block.0).collect();
            let slots: Vec<HostSlot> = out.offloads.iter().map(|o| o.slot).collect();
            match self.runner.read_kv_blocks(&blocks) {
                Ok(rb) => self.tiers.offloading.push((rb, slots)),
                Err(e) => {
                    log::warn!(
                        "KV host tier: offloading {} blocks failed: {e}",
                        blocks.len()
                    );
                    for slot in slots {
                        let _ = self.sched.offload_done(slot, false);
                    }
                }
            }
        }
        if !out.restores.is_empty() {
            let store = &self.tiers.store;
            let writes: Vec<(u32, &[u8])> = (out.restores.iter())
                .map(|r| (r.block.0, store.get(r.slot)))
                .collect();
            self.runner
                .write_kv_blocks(&writes)
                .map_err(|e| format!("restoring KV from the host tier: {e}"))?;
            self.tiers.restore_bytes += out.restores.len() as u64 * self.tiers.image_bytes;
        }
        Ok(())
    }

    /// Stores the images of the readbacks that have landed (all of them, waiting, if
    /// `wait`): offloads into their host slots, persisted blocks to the disk writer.
    pub(super) fn land(&mut self, wait: bool) {
        if self.tiers.offloading.is_empty() && self.tiers.persisting.is_empty() {
            return;
        }
        let ctx = self.runner.context().clone();
        for (res, slots) in landed(&mut self.tiers.offloading, &ctx, wait) {
            match res {
                Ok(images) => {
                    for (slot, image) in slots.into_iter().zip(images) {
                        self.tiers.offload_bytes += image.len() as u64;
                        self.tiers.store.put(slot, image);
                        let _ = self.sched.offload_done(slot, true);
                    }
                }
                Err(e) => {
                    log::warn!("KV host tier: an offload readback failed: {e}");
                    for slot in slots {
                        let _ = self.sched.offload_done(slot, false);
                    }
                }
            }
        }
        for (res, blocks) in landed(&mut self.tiers.persisting, &ctx, wait) {
            match (res, &self.tiers.disk) {
                (Ok(images), Some(disk)) => {
                    for (b, image) in blocks.into_iter().zip(images) {
                        disk.store(DiskEntry {
                            key: b.key,
                            parent: b.parent,
                            salt: b.salt,
                            tokens: b.tokens,
                            image,
                        });
                    }
                }
                (Err(e), _) => log::warn!("KV disk tier: a persist readback failed: {e}"),
                (Ok(_), None) => {}
            }
        }
    }

    /// Parks `p` and asks the loader for its prompt's blocks when the block after what the
    /// GPU cache and the host tier hold is on disk, or a queued job reads it; otherwise gives
    /// `p` back to start now.
    pub(super) fn park_for_disk(&mut self, p: Pending) -> Option<Pending> {
        let (Some(disk), Some(loader)) = (&self.tiers.disk, &self.tiers.loader) else {
            return Some(p);
        };
        let salt = None;
        let bs = self.sched.pool().block_size();
        let cap = p.prompt.len().saturating_sub(1) / bs;
        let (start, mut parent) = self.sched.resident_prefix(&p.prompt, salt, cap);
        let mut blocks = Vec::new();
        for chunk in p.prompt[start * bs..].chunks_exact(bs).take(cap - start) {
            let key = block_hash(parent, chunk, salt);
            blocks.push((key, parent, chunk.to_vec()));
            parent = Some(key);
        }
        // Blocks an earlier job reads (a request with the same prefix just before this one)
        // are read once: this request waits for them behind that job.
        let queued = (blocks.iter())
            .take_while(|(key, _, _)| self.tiers.loading.contains_key(key))
            .count();
        blocks.drain(..queued);
        // One stat decides: nothing to load (the usual case) costs no round trip.
        if !blocks
            .first()
            .is_some_and(|(key, _, _)| disk.contains(*key))
        {
            if queued == 0 {
                return Some(p);
            }
            blocks.clear();
        }
        let ticket = self.tiers.next_ticket;
        for (key, _, _) in &blocks {
            self.tiers.loading.insert(*key, ticket);
        }
        let job = LoadJob {
            ticket,
            salt,
            blocks,
        };
        if loader.jobs.as_ref().is_none_or(|j| j.send(job).is_err()) {
            log::warn!("KV disk tier: the loader thread is gone");
            self.tiers.loading.retain(|_, t| *t != ticket);
            return Some(p);
        }
        self.tiers.next_ticket += 1;
        self.tiers.parked.insert(ticket, p);
        None
    }

    /// Puts what the loader read into host slots; returns the parked request to start (if
    /// it was not aborted meanwhile).
    pub(super) fn loaded_from_disk(&mut self, loaded: Loaded) -> Option<Pending> {
        let bs = self.sched.pool().block_size() as u64;
        self.tiers.loading.retain(|_, t| *t != loaded.ticket);
        for (b, image) in loaded.blocks {
            // The tier may have the block by now (another request), or be full of pins.
            if let Some(slot) = self.sched.reserve_host_slot(b) {
                self.tiers.store.put(slot, image);
                let _ = self.sched.offload_done(slot, true);
                self.tiers.disk_loaded_tokens += bs;
            }
        }
        self.tiers.parked.remove(&loaded.ticket)
    }

    /// A parked completion's handle went away: it is dropped (the request starts without it,
    /// or not at all).
    pub(super) fn abort_parked(&mut self, id: SeqId) {
        for p in self.tiers.parked.values_mut() {
            p.completions.retain(|(c, _)| *c != id);
        }
        self.tiers.parked.retain(|_, p| !p.completions.is_empty());
    }

    /// Fails every parked request (shutdown).
    pub(super) fn fail_parked(&mut self, msg: &str) {
        for (_, p) in self.tiers.parked.drain() {
            for (_, events) in p.completions {
                let _ = events.unbounded_send(Event::Failed(msg.into()));
            }
        }
    }

    /// Reads back `id`'s computed prompt blocks that the disk tier lacks, for the writer.
    pub(super) fn persist(&mut self, id: SeqId) {
        let Some(disk) = &self.tiers.disk else {
            return;
        };
        let blocks: Vec<CachedBlock> = (self.sched.computed_prompt_blocks(id).into_iter())
            .filter(|b| !disk.contains(b.key))
            .collect();
        if blocks.is_empty() {
            return;
        }
        let ids: Vec<u32> = blocks.iter().map(|b| b.block.0).collect();
        match self.runner.read_kv_blocks(&ids) {
            Ok(rb) => self.tiers.persisting.push((rb, blocks)),
            Err(e) => log::warn!(
                "KV disk tier: reading back {} blocks failed: {e}",
                ids.len()
            ),
        }
    }

    /// Lands every readback and waits for the disk writer (shutdown).
    pub(super) fn flush_tiers(&mut self) {
        self.land(true);
        if let Some(d) = &self.tiers.disk {
            d.flush();
        }
    }

    pub(super) fn tier_stats(&self, st: &SchedulerStats) -> TierStats {
        TierStats {
            host: st.host.clone(),
            host_hit_tokens: st.host_hit_tokens,
            image_bytes: self.tiers.image_bytes,
            host_resident_bytes: self.tiers.store.resident_bytes(),
            offload_bytes: self.tiers.offload_bytes,
            restore_bytes: self.tiers.restore_bytes,
            disk_enabled: self.tiers.disk.is_some(),
            disk: self
                .tiers
                .disk
                .as_ref()
                .map(|d| d.stats())
                .unwrap_or_default(),
            disk_loaded_tokens: self.tiers.disk_loaded_tokens,
        }
    }
}

/// A readback's block images, in its blocks' order.
type Images = Result<Vec<Vec<u8>>, GpuError>;

/// Takes the readbacks of `pending` that have landed (all, waiting for each, if `wait`),
/// with what each was for.
fn landed<T>(
    pending: &mut Vec<(BlockReadback, T)>,
    ctx: &GpuContext,
    wait: bool,
) -> Vec<(Images, T)> {
    if wait {
        return (pending.drain(..))
            .map(|(rb, what)| (rb.wait(ctx), what))
            .collect();
    }
    if pending.is_empty() {
        return Vec::new();
    }
    // One poll runs the map callbacks of every readback that has finished.
    if let Err(e) = ctx.device.poll(wgpu::PollType::Poll) {
        let e = e.to_string();
        return (pending.drain(..))
            .map(|(_, what)| (Err(GpuError::Readback(e.clone())), what))
            .collect();
    }
    let mut done = Vec::new();
    let mut i = 0;
    while i < pending.len() {
        match pending[i].0.take_if_landed() {
            Some(res) => done.push((res, pending.swap_remove(i).1)),
            None => i += 1,
        }
    }
    done
}
