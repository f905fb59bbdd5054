//! Whole KV blocks copied between the GPU pools and host memory: the host tier of the prefix
//! cache saves a block it evicts and later restores it into another free block.
//!
//! A block's *host image* is, for each layer in order, the block's K words then its V words,
//! each [`BlockGeometry::part_bytes`]: its `block_size` slots in order, as
//! [`KvPool::read_words`] returns them, as little-endian bytes. The image is the same whether
//! the pools are buffers or textures, so an image read from one kind restores into the other.
//!
//! Ordering follows the queue: [`read_blocks`] and [`write_blocks`] each record their copies in
//! their own encoder and submit it at once. So a read submitted before a write to the same
//! block returns the old bytes: in one engine step the prefix cache can evict a block (read),
//! hand it to a new sequence and restore another image into it (write), and the saved image is
//! still the evicted one.
//!
//! Buffer pools copy with `copy_buffer_to_buffer`; texture pools with `copy_texture_to_buffer`
//! and `copy_buffer_to_texture` of one texel row per block and part (a block is one run of
//! texels in one row, so no row pitch, and its offset in a staging buffer only needs to be a
//! multiple of the 16-byte texel, which every part size is).
//!
//! Costs: a read or a write is 2 × layers copy commands per block and one submit, through
//! staging buffers of at most [`STAGING_CAP`] bytes holding whole images (MAP_READ for reads,
//! MAP_WRITE and mapped at creation for writes). The GPU copies run in queue order with the
//! steps; a read's host copy out happens in [`BlockReadback::try_take`].

use std::sync::mpsc;

use crate::gpu::kv_pool::{KvPool, KvStorage, KvTextureLayout, slot_words};
use crate::gpu::{GpuContext, GpuError, WeightDType};

/// Most bytes of one readback staging buffer: a large read is split over several so no single
/// allocation gets big (and none passes the adapter's `max_buffer_size`).
pub const STAGING_CAP: u64 = 64 << 20;

/// How long [`BlockReadback::wait`] waits for the map callbacks once the copies are done.
const CALLBACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The sizes that place a block in the pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockGeometry {
    /// Slots per block.
    pub block_size: usize,
    /// Elements per slot.
    pub kv_dim: usize,
    /// Storage type of the pools.
    pub dtype: WeightDType,
    /// Blocks in each pool.
    pub num_blocks: usize,
    /// Layers: one K and one V pool each.
    pub layers: usize,
}

impl BlockGeometry {
    /// Bytes of one layer's K (or V) part of an image: `block_size` slots of
    /// [`slot_words`] words.
    pub fn part_bytes(&self) -> u64 {
        (self.block_size as u64) * (slot_words(self.kv_dim, self.dtype) as u64) * 4
    }

    /// Bytes of a block's whole image: a K and a V part per layer.
    pub fn image_bytes(&self) -> u64 {
        2 * self.layers as u64 * self.part_bytes()
    }

    /// Where layer `layer`'s K (`v` false) or V part starts in an image.
    pub fn part_offset(&self, layer: usize, v: bool) -> u64 {
        (2 * layer as u64 + u64::from(v)) * self.part_bytes()
    }
}

/// One pool as the copies address it, checked against the geometry.
#[derive(Clone, Copy)]
enum Part<'a> {
    Buffer(&'a wgpu::Buffer),
    Texture(&'a wgpu::Texture, KvTextureLayout),
}

fn shape(msg: String) -> GpuError {
    GpuError::Shape {
        op: "kv transfer",
        msg,
    }
}

/// The pools in image order (layer 0 K, layer 0 V, layer 1 K, …), once every one is checked to
/// hold `num_blocks` blocks of `geo` where `storage` says and to allow copies both ways: wgpu
/// reports a bad copy through its error handler (a panic by default), so nothing reaches it
/// unchecked.
fn parts<'a>(
    k_pools: &'a [KvPool],
    v_pools: &'a [KvPool],
    storage: KvStorage,
    geo: BlockGeometry,
) -> Result<Vec<Part<'a>>, GpuError> {
    if [geo.block_size, geo.kv_dim, geo.num_blocks, geo.layers].contains(&0) {
        return Err(shape(format!("{geo:?} has a zero size")));
    }
    if k_pools.len() != geo.layers || v_pools.len() != geo.layers {
        return Err(shape(format!(
            "{} K and {} V pools for {} layers",
            k_pools.len(),
            v_pools.len(),
            geo.layers
        )));
    }
    let slots = geo.num_blocks as u64 * geo.block_size as u64;
    if let KvStorage::Texture(layout) = storage {
        let fits = layout.holds(geo.kv_dim, geo.dtype)
            && layout.row_slots().is_multiple_of(geo.block_size as u32)
            && slots <= u64::from(layout.row_slots()) * u64::from(layout.rows());
        if !fits {
            return Err(shape(format!(
                "texture layout {layout:?} does not hold {geo:?}"
            )));
        }
    }
    let copy = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let tex_copy = wgpu::TextureUsages::COPY_SRC | wgpu::TextureUsages::COPY_DST;
    let part = |pool: &'a KvPool| match (pool, storage) {
        (KvPool::Buffer(b), KvStorage::Buffer) => {
            let need = slots * slot_words(geo.kv_dim, geo.dtype) as u64 * 4;
            if b.size() < need || !b.usage().contains(copy) {
                return Err(shape(format!(
                    "a pool buffer of {} bytes ({:?}) cannot copy {need}",
                    b.size(),
                    b.usage()
                )));
            }
            Ok(Part::Buffer(b))
        }
        (KvPool::Texture { texture, .. }, KvStorage::Texture(layout)) => {
            let ok = pool.is_in(storage)
                && texture.format() == wgpu::TextureFormat::Rgba32Uint
                && texture.usage().contains(tex_copy);
            if !ok {
                return Err(shape(format!(
                    "a pool texture ({:?}, {:?}) does not match {layout:?}",
                    texture.size(),
                    texture.format()
                )));
            }
            Ok(Part::Texture(texture, layout))
        }
        _ => Err(shape(format!("a pool is not held as {storage:?} says"))),
    };
    k_pools
        .iter()
        .zip(v_pools)
        .flat_map(|(k, v)| [part(k), part(v)])
        .collect()
}

fn check_blocks(geo: BlockGeometry, blocks: impl IntoIterator<Item = u32>) -> Result<(), GpuError> {
    match blocks.into_iter().find(|&b| b as usize >= geo.num_blocks) {
        Some(b) => Err(shape(format!(
            "block {b} outside the pool's {} blocks",
            geo.num_blocks
        ))),
        None => Ok(()),
    }
}

/// A block's texel row in a texture pool, and its width in texels.
fn texel_row<'a>(
    texture: &'a wgpu::Texture,
    layout: KvTextureLayout,
    geo: BlockGeometry,
    block: u32,
) -> (wgpu::TexelCopyTextureInfo<'a>, wgpu::Extent3d) {
    let (x, y) = layout.texel(block * geo.block_size as u32, 0);
    let at = wgpu::TexelCopyTextureInfo {
        texture,
        mip_level: 0,
        origin: wgpu::Origin3d { x, y, z: 0 },
        aspect: wgpu::TextureAspect::All,
    };
    let width = geo.block_size as u32 * layout.slot_texels();
    let size = wgpu::Extent3d {
        width,
        height: 1,
        depth_or_array_layers: 1,
    };
    (at, size)
}

/// How many images one staging buffer holds (at least one), for `n` images under `cap` bytes
/// per buffer; an image over the adapter's buffer limit is an error.
fn images_per_staging(ctx: &GpuContext, image: u64, n: usize, cap: u64) -> Result<usize, GpuError> {
    let max = ctx.limits.max_buffer_size;
    if image > max {
        return Err(GpuError::TooLarge {
            name: "kv block image".into(),
            bytes: image,
            limit: max,
        });
    }
    Ok((cap.min(max) / image).clamp(1, n as u64) as usize)
}

/// Which way [`record_copies`] copies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToStaging,
    FromStaging,
}

/// Records the copies of each block's image between the pools and `staging`, image-major (the
/// `i`-th block's image at `i` × image bytes, so each is one contiguous run there).
fn record_copies(
    enc: &mut wgpu::CommandEncoder,
    parts: &[Part],
    geo: BlockGeometry,
    blocks: &[u32],
    staging: &wgpu::Buffer,
    dir: Direction,
) {
    let (image, part_bytes) = (geo.image_bytes(), geo.part_bytes());
    for (i, &block) in blocks.iter().enumerate() {
        for (p, part) in parts.iter().enumerate() {
            let at = i as u64 * image + p as u64 * part_bytes;
            match (*part, dir) {
                (Part::Buffer(pool), Direction::ToStaging) => {
                    let from = u64::from(block) * part_bytes;
                    enc.copy_buffer_to_buffer(pool, from, staging, at, part_bytes);
                }
                (Part::Buffer(pool), Direction::FromStaging) => {
                    let to = u64::from(block) * part_bytes;
                    enc.copy_buffer_to_buffer(staging, at, pool, to, part_bytes);
                }
                (Part::Texture(texture, layout), dir) => {
                    let (row, size) = texel_row(texture, layout, geo, block);
                    // One row: no bytes_per_row (and so no 256-byte pitch) is needed.
                    let buf = wgpu::TexelCopyBufferInfo {
                        buffer: staging,
                        layout: wgpu::TexelCopyBufferLayout {
                            offset: at,
                            bytes_per_row: None,
                            rows_per_image: None,
                        },
                    };
                    match dir {
                        Direction::ToStaging => enc.copy_texture_to_buffer(row, buf, size),
                        Direction::FromStaging => enc.copy_buffer_to_texture(buf, row, size),
                    }
                }
            }
        }
    }
}

/// Copies the images of `blocks` (any order, repeats allowed) from every layer's K and V pool
/// to the host. The copies are recorded in their own encoder and submitted before this
/// returns, so they see every earlier submit and queue write and nothing later; the mapping
/// is started, and [`BlockReadback::try_take`] or [`BlockReadback::wait`] collects the images.
/// A block outside the pool, or pools that do not match `geo` and `storage`, is an error and
/// nothing is submitted. No blocks: a readback that is already complete, with no images.
pub fn read_blocks(
    ctx: &GpuContext,
    k_pools: &[KvPool],
    v_pools: &[KvPool],
    storage: KvStorage,
    geo: BlockGeometry,
    blocks: &[u32],
) -> Result<BlockReadback, GpuError> {
    read_blocks_staged(ctx, k_pools, v_pools, storage, geo, blocks, STAGING_CAP)
}

/// [`read_blocks`] with staging buffers of at most `staging_cap` bytes (at least one image
/// each): for tests of the split.
#[doc(hidden)]
pub fn read_blocks_staged(
    ctx: &GpuContext,
    k_pools: &[KvPool],
    v_pools: &[KvPool],
    storage: KvStorage,
    geo: BlockGeometry,
    blocks: &[u32],
    staging_cap: u64,
) -> Result<BlockReadback, GpuError> {
    let parts = parts(k_pools, v_pools, storage, geo)?;
    check_blocks(geo, blocks.iter().copied())?;
    let image = geo.image_bytes();
    let mut readback = BlockReadback {
        blocks: blocks.to_vec(),
        image_bytes: image,
        stagings: Vec::new(),
        submission: None,
        taken: false,
    };
    if blocks.is_empty() {
        return Ok(readback);
    }
    let per_staging = images_per_staging(ctx, image, blocks.len(), staging_cap)?;
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("kv block readback"),
        });
    let mut buffers = Vec::new();
    for chunk in blocks.chunks(per_staging) {
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kv block readback"),
            size: image * chunk.len() as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        record_copies(&mut enc, &parts, geo, chunk, &staging, Direction::ToStaging);
        buffers.push(staging);
    }
    readback.submission = Some(ctx.queue.submit([enc.finish()]));
    // Mapping may only start once the copies into the buffers are submitted.
    readback.stagings = buffers
        .into_iter()
        .map(|buffer| {
            let (tx, rx) = mpsc::channel();
            buffer.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            Staging {
                buffer,
                rx,
                mapped: false,
            }
        })
        .collect();
    Ok(readback)
}

/// Writes each `(block, image)` into every layer's K and V pool: the images go into upload
/// buffers (one mapped allocation per [`STAGING_CAP`] bytes, not one per part as queue writes
/// would make), and the copies out of them are recorded in one encoder and submitted before
/// this returns, so they land after every earlier submit (a read submitted earlier still sees
/// the old bytes) and before every later one. A later write to the same block wins. A block
/// outside the pool, an image that is not [`BlockGeometry::image_bytes`] long, or pools that
/// do not match `geo` and `storage`, is an error and nothing is written.
pub fn write_blocks(
    ctx: &GpuContext,
    k_pools: &[KvPool],
    v_pools: &[KvPool],
    storage: KvStorage,
    geo: BlockGeometry,
    writes: &[(u32, &[u8])],
) -> Result<(), GpuError> {
    write_blocks_staged(ctx, k_pools, v_pools, storage, geo, writes, STAGING_CAP)
}

/// [`write_blocks`] with upload buffers of at most `staging_cap` bytes (at least one image
/// each): for tests of the split.
#[doc(hidden)]
pub fn write_blocks_staged(
    ctx: &GpuContext,
    k_pools: &[KvPool],
    v_pools: &[KvPool],
    storage: KvStorage,
    geo: BlockGeometry,
    writes: &[(u32, &[u8])],
    staging_cap: u64,
) -> Result<(), GpuError> {
    let parts = parts(k_pools, v_pools, storage, geo)?;
    check_blocks(geo, writes.iter().map(|w| w.0))?;
    let image = geo.image_bytes();
    if let Some((b, img)) = writes.iter().find(|w| w.1.len() as u64 != image) {
        return Err(shape(format!(
            "the image for block {b} has {} bytes, not {image}",
            img.len()
        )));
    }
    if writes.is_empty() {
        return Ok(());
    }
    let per_upload = images_per_staging(ctx, image, writes.len(), staging_cap)?;
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("kv block restore"),
        });
    for chunk in writes.chunks(per_upload) {
        let upload = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kv block restore"),
            size: image * chunk.len() as u64,
            usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        {
            let mut view = upload
                .get_mapped_range_mut(..)
                .map_err(|e| GpuError::Validation(format!("mapping a kv restore buffer: {e:?}")))?;
            // Write-only (possibly write-combined) memory: whole images, in order.
            let image = image as usize;
            for (i, (_, img)) in chunk.iter().enumerate() {
                view.slice(i * image..(i + 1) * image).copy_from_slice(img);
            }
        }
        upload.unmap();
        let blocks: Vec<u32> = chunk.iter().map(|w| w.0).collect();
        record_copies(
            &mut enc,
            &parts,
            geo,
            &blocks,
            &upload,
            Direction::FromStaging,
        );
    }
    ctx.queue.submit([enc.finish()]);
    Ok(())
}

/// One readback staging buffer and its mapping's outcome.
struct Staging {
    buffer: wgpu::Buffer,
    rx: mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
    mapped: bool,
}

/// The images of [`read_blocks`], on their way to the host. Dropping it unfinished is fine:
/// wgpu frees the staging buffers once the copies are done.
pub struct BlockReadback {
    blocks: Vec<u32>,
    image_bytes: u64,
    stagings: Vec<Staging>,
    submission: Option<wgpu::SubmissionIndex>,
    /// The images (or an error) were handed out.
    taken: bool,
}

impl std::fmt::Debug for BlockReadback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockReadback")
            .field("blocks", &self.blocks)
            .field("image_bytes", &self.image_bytes)
            .field("stagings", &self.stagings.len())
            .field("taken", &self.taken)
            .finish()
    }
}

impl BlockReadback {
    /// The blocks read, in the order of the images.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Non-blocking: polls the device once and returns `None` while the copies or the mapping
    /// are pending, else the images (one per block, in [`BlockReadback::blocks`] order) or the
    /// error. The result is handed out once: every call after the one that returned `Some`
    /// returns `Some(Err(GpuError::Readback(..)))`.
    pub fn try_take(&mut self, ctx: &GpuContext) -> Option<Result<Vec<Vec<u8>>, GpuError>> {
        if !self.taken
            && !self.stagings.is_empty()
            && let Err(e) = ctx.device.poll(wgpu::PollType::Poll)
        {
            self.taken = true;
            return Some(Err(GpuError::Readback(e.to_string())));
        }
        self.collect()
    }

    /// [`BlockReadback::try_take`] without the poll: for a caller that polled the device once
    /// for many readbacks.
    pub fn take_if_landed(&mut self) -> Option<Result<Vec<Vec<u8>>, GpuError>> {
        self.collect()
    }

    /// Blocks until the images are on the host (for tests and shutdown).
    pub fn wait(mut self, ctx: &GpuContext) -> Result<Vec<Vec<u8>>, GpuError> {
        if let Some(index) = self.submission.clone() {
            ctx.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(index),
                    timeout: None,
                })
                .map_err(|e| GpuError::Readback(e.to_string()))?;
        }
        // Another thread's poll may have taken the map callbacks off the device and not run
        // them yet, so they can come a little after the submission is done.
        let start = std::time::Instant::now();
        loop {
            if let Some(done) = self.collect() {
                return done;
            }
            if start.elapsed() > CALLBACK_WAIT {
                return Err(GpuError::Readback(format!(
                    "kv block readback still unmapped {CALLBACK_WAIT:?} after its copies finished"
                )));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
            ctx.device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| GpuError::Readback(e.to_string()))?;
        }
    }

    /// The images once every staging buffer is mapped (then unmapped), `None` before.
    fn collect(&mut self) -> Option<Result<Vec<Vec<u8>>, GpuError>> {
        if self.taken {
            return Some(Err(GpuError::Readback(
                "kv block readback already taken".into(),
            )));
        }
        let mut pending = false;
        for s in self.stagings.iter_mut().filter(|s| !s.mapped) {
            match s.rx.try_recv() {
                Ok(Ok(())) => s.mapped = true,
                Ok(Err(e)) => return Some(self.fail(e.to_string())),
                Err(mpsc::TryRecvError::Empty) => pending = true,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Some(self.fail("the map callback was dropped".into()));
                }
            }
        }
        if pending {
            return None;
        }
        self.taken = true;
        let mut images = Vec::with_capacity(self.blocks.len());
        for s in &self.stagings {
            let view = match s.buffer.get_mapped_range(..) {
                Ok(v) => v,
                Err(e) => return Some(Err(GpuError::Readback(format!("{e:?}")))),
            };
            images.extend(
                view.chunks_exact(self.image_bytes as usize)
                    .map(<[u8]>::to_vec),
            );
            drop(view);
            s.buffer.unmap();
        }
        Some(Ok(images))
    }

    fn fail(&mut self, why: String) -> Result<Vec<Vec<u8>>, GpuError> {
        self.taken = true;
        Err(GpuError::Readback(format!("kv block readback: {why}")))
    }
}
