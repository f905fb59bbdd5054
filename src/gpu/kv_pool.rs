//! Where a layer's paged K or V pool lives on the GPU: a storage buffer, or (CPU adapters) an
//! `Rgba32Uint` texture.
//!
//! Either way the pool is `num_blocks * block_size` slots of `kv_dim` elements (slot =
//! block id * block_size + offset), each slot `kv_dim` u32 words (f32) or `kv_dim / 2`
//! (f16 pairs). In a buffer the slots follow one another. In a texture a slot is
//! [`KvTextureLayout::slot_texels`] consecutive texels of one row, 4 words each, and a row
//! holds [`KvTextureLayout::row_slots`] slots, a whole number of blocks:
//!   texel j of slot s sits at ((s % row_slots) * slot_texels + j, s / row_slots),
//! so a block is one run of texels in one row (copy-on-write copies a rectangle of height 1).
//!
//! Why textures: llvmpipe fetches a texel for all 8 SIMD lanes in one gather but loads from
//! a storage buffer lane by lane. Paged attention reads every K/V row of a context for every
//! token, and measured 2x faster at one decode token and 4.2-4.7x at four with its rows in a
//! texture (lavapipe, 480-token context; `BENCHMARKS.md`, twelfth session).

use crate::gpu::Placement;
use crate::gpu::kernels::AttentionKind;
use crate::gpu::{GpuContext, GpuError, WeightDType};

/// Texel geometry of a pool held in a texture. Built only by [`KvTextureLayout::new`] and
/// [`KvTextureLayout::with_blocks_per_row`], which refuse what the kernels cannot address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvTextureLayout {
    /// Texels per slot: its words, 4 per texel (a slot never shares a texel).
    slot_texels: u32,
    /// Slots per texture row, a multiple of the block size.
    row_slots: u32,
    /// Texture rows.
    rows: u32,
}

impl KvTextureLayout {
    /// The layout of a pool of `num_blocks` blocks, or `None` where a texture cannot hold it
    /// (see [`KvTextureLayout::with_blocks_per_row`]). A row takes one block unless the pool
    /// has more blocks than `max_dim` (the adapter's `max_texture_dimension_2d`) rows.
    pub fn new(
        num_blocks: usize,
        block_size: usize,
        kv_dim: usize,
        dtype: WeightDType,
        max_dim: u32,
    ) -> Option<KvTextureLayout> {
        let blocks_per_row = num_blocks.div_ceil((max_dim as usize).max(1));
        Self::with_blocks_per_row(
            num_blocks,
            block_size,
            kv_dim,
            dtype,
            blocks_per_row,
            max_dim,
        )
    }

    /// The layout with `blocks_per_row` blocks in each texture row, or `None` where a texture
    /// cannot hold it: a slot is not a whole number of texels (`kv_dim` a multiple of 8 in f16,
    /// 4 in f32: the kernels give a thread `kv_dim / elements per texel` texels), a size is
    /// zero, or the texture would be wider or taller than `max_dim`.
    pub fn with_blocks_per_row(
        num_blocks: usize,
        block_size: usize,
        kv_dim: usize,
        dtype: WeightDType,
        blocks_per_row: usize,
        max_dim: u32,
    ) -> Option<KvTextureLayout> {
        let per_texel = texel_elements(dtype);
        let zero = [kv_dim, num_blocks, block_size, blocks_per_row].contains(&0);
        if zero || !kv_dim.is_multiple_of(per_texel) {
            return None;
        }
        let slot_texels = kv_dim / per_texel;
        let row_slots = blocks_per_row * block_size;
        let rows = num_blocks.div_ceil(blocks_per_row);
        let max_dim = max_dim as usize;
        if row_slots * slot_texels > max_dim || rows > max_dim {
            return None;
        }
        Some(KvTextureLayout {
            slot_texels: slot_texels as u32,
            row_slots: row_slots as u32,
            rows: rows as u32,
        })
    }

    /// Texels per slot.
    pub fn slot_texels(&self) -> u32 {
        self.slot_texels
    }

    /// Slots per texture row (a whole number of blocks).
    pub fn row_slots(&self) -> u32 {
        self.row_slots
    }

    /// Texture rows.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Texels per texture row.
    pub fn width(&self) -> u32 {
        self.row_slots * self.slot_texels
    }

    /// Whether a slot holds exactly `kv_dim` elements of `dtype` (the kernels give each slot
    /// `kv_dim / elements per texel` texels).
    pub fn holds(&self, kv_dim: usize, dtype: WeightDType) -> bool {
        self.slot_texels as usize * texel_elements(dtype) == kv_dim
    }

    /// Bytes of the whole texture (16 per texel).
    pub fn bytes(&self) -> u64 {
        u64::from(self.width()) * u64::from(self.rows) * 16
    }

    /// Where texel `j` of slot `slot` sits: (x, y).
    pub fn texel(&self, slot: u32, j: u32) -> (u32, u32) {
        (
            (slot % self.row_slots) * self.slot_texels + j,
            slot / self.row_slots,
        )
    }

    /// The pool's slots (the texture may hold a few more in its last row).
    fn slots(&self) -> u32 {
        self.row_slots * self.rows
    }
}

/// K/V elements per `Rgba32Uint` texel: 8 f16 or 4 f32.
pub fn texel_elements(dtype: WeightDType) -> usize {
    match dtype {
        WeightDType::F32 => 4,
        WeightDType::F16 => 8,
    }
}

/// u32 words per slot: f16 pairs or f32 bits.
pub fn slot_words(kv_dim: usize, dtype: WeightDType) -> usize {
    match dtype {
        WeightDType::F32 => kv_dim,
        WeightDType::F16 => kv_dim.div_ceil(2),
    }
}

/// How the pools of a runner (and the kernels that read and write them) store K and V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvStorage {
    Buffer,
    Texture(KvTextureLayout),
}

impl KvStorage {
    /// Textures where the serial attention kernel runs (CPU adapters) and the pool fits one
    /// (its sides within `max_texture_dimension_2d`, its bytes within what one storage binding
    /// may hold, so a texture pool never takes more memory than a buffer pool could), buffers
    /// elsewhere. `WLLM_KV_POOL` (`buffer` or `texture`) overrides; `texture` where textures
    /// cannot be used is an error, as is any other value.
    pub fn for_adapter(
        ctx: &GpuContext,
        num_blocks: usize,
        block_size: usize,
        kv_dim: usize,
        dtype: WeightDType,
    ) -> Result<KvStorage, GpuError> {
        let asked = ctx.profile.kv_pool;
        // Only the serial attention kind reads textures.
        let serial = ctx.profile.attention == AttentionKind::Serial;
        let layout = KvTextureLayout::new(
            num_blocks,
            block_size,
            kv_dim,
            dtype,
            ctx.limits.max_texture_dimension_2d,
        )
        .filter(|l| l.bytes() <= ctx.max_binding_bytes());
        match (asked, layout) {
            (Some(Placement::Buffer), _) => Ok(KvStorage::Buffer),
            (_, Some(l)) if serial => Ok(KvStorage::Texture(l)),
            (Some(Placement::Texture), _) => Err(GpuError::BadEnv {
                name: "WLLM_KV_POOL",
                value: "texture".into(),
                why: format!(
                    "texture pools need the CPU kernel forms and slots of whole texels that fit \
                     the adapter's textures ({num_blocks} blocks of {block_size} slots of \
                     {kv_dim} {} here)",
                    dtype.name()
                ),
            }),
            _ => Ok(KvStorage::Buffer),
        }
    }

    pub fn is_texture(&self) -> bool {
        matches!(self, KvStorage::Texture(_))
    }

    /// Slots per texture row (the kernels' `row_slots` immediate); 0 for buffers.
    pub fn row_slots(&self) -> u32 {
        match self {
            KvStorage::Buffer => 0,
            KvStorage::Texture(l) => l.row_slots,
        }
    }
}

/// One layer's K or V pool.
#[derive(Debug)]
pub enum KvPool {
    Buffer(wgpu::Buffer),
    Texture {
        texture: wgpu::Texture,
        view: wgpu::TextureView,
    },
}

impl KvPool {
    /// A zero pool of `num_slots` slots of `kv_dim` elements in `storage`.
    pub fn zeros(
        ctx: &GpuContext,
        name: &str,
        storage: KvStorage,
        num_slots: usize,
        kv_dim: usize,
        dtype: WeightDType,
    ) -> Result<KvPool, GpuError> {
        match storage {
            KvStorage::Buffer => {
                let shape = [num_slots, kv_dim];
                Ok(KvPool::Buffer(
                    crate::gpu::GpuTensor::zeros(ctx, name, &shape, dtype)?.buffer,
                ))
            }
            KvStorage::Texture(layout) => {
                let max_dim = ctx.limits.max_texture_dimension_2d;
                if layout.width() > max_dim || layout.rows > max_dim {
                    return Err(GpuError::Shape {
                        op: "kv pool",
                        msg: format!(
                            "texture layout {layout:?} is over the adapter's {max_dim} texels a side"
                        ),
                    });
                }
                if layout.bytes() > ctx.max_binding_bytes() {
                    return Err(GpuError::TooLarge {
                        name: name.to_string(),
                        bytes: layout.bytes(),
                        limit: ctx.max_binding_bytes(),
                    });
                }
                check_slots(layout, num_slots, kv_dim, dtype)?;
                let texture = ctx.device.create_texture(&wgpu::TextureDescriptor {
                    label: Some(name),
                    size: extent(layout.width(), layout.rows),
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::Rgba32Uint,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING
                        | wgpu::TextureUsages::STORAGE_BINDING
                        | wgpu::TextureUsages::COPY_SRC
                        | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                });
                let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
                Ok(KvPool::Texture { texture, view })
            }
        }
    }

    /// Whether this pool lives where `storage` says: a buffer, or a texture as wide as the
    /// layout's rows with at least its rows.
    pub fn is_in(&self, storage: KvStorage) -> bool {
        match (storage, self) {
            (KvStorage::Buffer, KvPool::Buffer(_)) => true,
            (KvStorage::Texture(l), KvPool::Texture { texture, .. }) => {
                texture.width() == l.width() && texture.height() >= l.rows
            }
            _ => false,
        }
    }

    /// The buffer, or `unused` for a texture pool (its kernels still declare the binding).
    pub fn buffer_or<'a>(&'a self, unused: &'a wgpu::Buffer) -> &'a wgpu::Buffer {
        match self {
            KvPool::Buffer(b) => b,
            KvPool::Texture { .. } => unused,
        }
    }

    /// The texture view, or `unused` for a buffer pool.
    pub fn view_or<'a>(&'a self, unused: &'a wgpu::TextureView) -> &'a wgpu::TextureView {
        match self {
            KvPool::Buffer(_) => unused,
            KvPool::Texture { view, .. } => view,
        }
    }

    /// Blocking read of the first `num_slots` slots as u32 words in slot order (the buffer
    /// layout, whatever the storage): for tests and debugging.
    pub fn read_words(
        &self,
        ctx: &GpuContext,
        storage: KvStorage,
        num_slots: usize,
        kv_dim: usize,
        dtype: WeightDType,
    ) -> Result<Vec<u32>, GpuError> {
        let words = slot_words(kv_dim, dtype);
        match (self, storage) {
            (KvPool::Buffer(b), _) => {
                let mut all = crate::gpu::tensor::read_words(ctx, b)?;
                all.truncate(num_slots * words);
                Ok(all)
            }
            (KvPool::Texture { texture, .. }, KvStorage::Texture(layout)) => {
                check_slots(layout, num_slots, kv_dim, dtype)?;
                let texels = texture_words(ctx, texture, layout.width(), layout.rows)?;
                let row_words = layout.width() as usize * 4;
                let mut out = Vec::with_capacity(num_slots * words);
                for s in 0..num_slots as u32 {
                    let (x, y) = layout.texel(s, 0);
                    let start = y as usize * row_words + x as usize * 4;
                    out.extend_from_slice(&texels[start..start + words]);
                }
                Ok(out)
            }
            (KvPool::Texture { .. }, KvStorage::Buffer) => Err(GpuError::Shape {
                op: "kv pool",
                msg: "a texture pool needs its texture layout".into(),
            }),
        }
    }

    /// Overwrites the first `words.len() / slot words` slots with `words` in slot order (the
    /// buffer layout, as [`KvPool::read_words`] returns it): for tests and debugging. Lands
    /// before the next submit.
    pub fn write_words(
        &self,
        ctx: &GpuContext,
        storage: KvStorage,
        kv_dim: usize,
        dtype: WeightDType,
        words: &[u32],
    ) -> Result<(), GpuError> {
        let per_slot = slot_words(kv_dim, dtype);
        match (self, storage) {
            (KvPool::Buffer(b), _) => {
                ctx.queue.write_buffer(b, 0, bytemuck::cast_slice(words));
                Ok(())
            }
            (KvPool::Texture { texture, .. }, KvStorage::Texture(layout)) => {
                if !words.len().is_multiple_of(per_slot) {
                    return Err(GpuError::Shape {
                        op: "kv pool",
                        msg: format!("{} words are not whole slots of {per_slot}", words.len()),
                    });
                }
                check_slots(layout, words.len() / per_slot, kv_dim, dtype)?;
                // Row by row: the slots of one texture row are consecutive texels.
                let row_words = layout.row_slots as usize * per_slot;
                for (y, row) in words.chunks(row_words).enumerate() {
                    let texels = (row.len() / 4) as u32;
                    ctx.queue.write_texture(
                        wgpu::TexelCopyTextureInfo {
                            texture,
                            mip_level: 0,
                            origin: wgpu::Origin3d {
                                x: 0,
                                y: y as u32,
                                z: 0,
                            },
                            aspect: wgpu::TextureAspect::All,
                        },
                        bytemuck::cast_slice(row),
                        wgpu::TexelCopyBufferLayout {
                            offset: 0,
                            bytes_per_row: Some(texels * 16),
                            rows_per_image: Some(1),
                        },
                        extent(texels, 1),
                    );
                }
                Ok(())
            }
            (KvPool::Texture { .. }, KvStorage::Buffer) => Err(GpuError::Shape {
                op: "kv pool",
                msg: "a texture pool needs its texture layout".into(),
            }),
        }
    }
}

/// Refuses `num_slots` slots of `kv_dim` elements that `layout` does not hold.
fn check_slots(
    layout: KvTextureLayout,
    num_slots: usize,
    kv_dim: usize,
    dtype: WeightDType,
) -> Result<(), GpuError> {
    if num_slots > layout.slots() as usize || !layout.holds(kv_dim, dtype) {
        return Err(GpuError::Shape {
            op: "kv pool",
            msg: format!(
                "texture layout {layout:?} does not hold {num_slots} slots of {kv_dim} {}",
                dtype.name()
            ),
        });
    }
    Ok(())
}

/// A one-texel write-only storage texture for the texture bindings of kernels whose pools
/// are buffers.
pub fn unused_storage_texture(ctx: &GpuContext) -> wgpu::TextureView {
    ctx.device
        .create_texture(&wgpu::TextureDescriptor {
            label: Some("unused KV texture"),
            size: extent(1, 1),
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Uint,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::STORAGE_BINDING,
            view_formats: &[],
        })
        .create_view(&wgpu::TextureViewDescriptor::default())
}

/// The layout entry of a KV texture a kernel writes (write-only `Rgba32Uint` storage).
pub fn storage_texture_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::StorageTexture {
            access: wgpu::StorageTextureAccess::WriteOnly,
            format: wgpu::TextureFormat::Rgba32Uint,
            view_dimension: wgpu::TextureViewDimension::D2,
        },
        count: None,
    }
}

/// Records copies of whole blocks `src → dst` within each of `textures` (pools of one
/// layout). A texture cannot be copied onto itself, so the source blocks go through a buffer:
/// all of them out, then all of them in, so a destination that is also a source is read
/// before it is written.
pub fn copy_texture_blocks(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    textures: &[&wgpu::Texture],
    layout: KvTextureLayout,
    block_size: u32,
    pairs: &[[u32; 2]],
) {
    if pairs.is_empty() {
        return;
    }
    let width = block_size * layout.slot_texels;
    let block_bytes = u64::from(width) * 16;
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("kv block copies"),
        size: block_bytes * pairs.len() as u64,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let at = |texture, block: u32| {
        let (x, y) = layout.texel(block * block_size, 0);
        wgpu::TexelCopyTextureInfo {
            texture,
            mip_level: 0,
            origin: wgpu::Origin3d { x, y, z: 0 },
            aspect: wgpu::TextureAspect::All,
        }
    };
    // One row per copy: no row pitch to align.
    let slot = |i: usize| wgpu::TexelCopyBufferInfo {
        buffer: &staging,
        layout: wgpu::TexelCopyBufferLayout {
            offset: block_bytes * i as u64,
            bytes_per_row: None,
            rows_per_image: None,
        },
    };
    for texture in textures {
        for (i, &[src, _]) in pairs.iter().enumerate() {
            enc.copy_texture_to_buffer(at(*texture, src), slot(i), extent(width, 1));
        }
        for (i, &[_, dst]) in pairs.iter().enumerate() {
            enc.copy_buffer_to_texture(slot(i), at(*texture, dst), extent(width, 1));
        }
    }
}

fn extent(width: u32, height: u32) -> wgpu::Extent3d {
    wgpu::Extent3d {
        width,
        height,
        depth_or_array_layers: 1,
    }
}

/// Blocking read of a whole `width` × `rows` `Rgba32Uint` texture, rows back to back.
fn texture_words(
    ctx: &GpuContext,
    texture: &wgpu::Texture,
    width: u32,
    rows: u32,
) -> Result<Vec<u32>, GpuError> {
    // Copies to buffers go row by row at a pitch that is a multiple of 256 bytes.
    let row_bytes = width * 16;
    let pitch = row_bytes.next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
    let size = u64::from(pitch) * u64::from(rows);
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("kv texture readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("kv texture readback"),
        });
    enc.copy_texture_to_buffer(
        texture.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &staging,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(pitch),
                rows_per_image: Some(rows),
            },
        },
        extent(width, rows),
    );
    ctx.queue.submit([enc.finish()]);
    let padded = crate::gpu::tensor::map_and_read(ctx, &staging, size)?;
    let (pitch_words, row_words) = (pitch as usize / 4, row_bytes as usize / 4);
    Ok(padded
        .chunks_exact(pitch_words)
        .flat_map(|r| &r[..row_words])
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_blocks_in_one_row_and_slots_apart() {
        for (num_blocks, block_size, kv_dim, dtype, max_dim) in [
            (7, 16, 192, WeightDType::F16, 16384),
            (40, 4, 8, WeightDType::F32, 32),
            (33, 2, 24, WeightDType::F16, 32),
            (1, 1, 4, WeightDType::F32, 1),
        ] {
            let l =
                KvTextureLayout::new(num_blocks, block_size, kv_dim, dtype, max_dim).expect("fits");
            assert!(l.width() <= max_dim && l.rows <= max_dim, "{l:?}");
            assert_eq!(l.row_slots as usize % block_size, 0);
            assert!(l.slots() as usize >= num_blocks * block_size);
            let mut seen = std::collections::HashSet::new();
            for s in 0..(num_blocks * block_size) as u32 {
                for j in 0..l.slot_texels {
                    assert!(seen.insert(l.texel(s, j)), "texel shared: slot {s}");
                }
                // A block's slots share its first slot's row.
                let first = s - s % block_size as u32;
                assert_eq!(l.texel(s, 0).1, l.texel(first, 0).1);
            }
        }
    }

    #[test]
    fn layout_refuses_what_a_texture_cannot_hold() {
        // 6 f16 elements = 3 words: not whole texels.
        assert_eq!(KvTextureLayout::new(4, 4, 6, WeightDType::F16, 1024), None);
        // 64 slots of 1 texel need 64 texels in a row, over 16.
        assert_eq!(KvTextureLayout::new(4, 64, 4, WeightDType::F32, 16), None);
        // 300 one-slot blocks in at most 4 rows: 75 slots of 2 texels per row, over 4.
        assert_eq!(KvTextureLayout::new(300, 1, 8, WeightDType::F32, 4), None);
        // 7 f16 elements round up to 4 words, but the kernels write 7 / 8 = 0 texels a slot.
        assert_eq!(KvTextureLayout::new(4, 4, 7, WeightDType::F16, 1024), None);
        // 10 f32 elements: 2.5 texels.
        assert_eq!(KvTextureLayout::new(4, 4, 10, WeightDType::F32, 1024), None);
        // One block per row, 5 blocks: 5 rows, over 4.
        let per_row =
            |n, max| KvTextureLayout::with_blocks_per_row(5, 2, 8, WeightDType::F32, n, max);
        assert_eq!(per_row(1, 4), None);
        assert_eq!(per_row(0, 64), None);
        let l = per_row(2, 8).expect("3 rows of 4 slots of 2 texels");
        assert_eq!((l.width(), l.rows(), l.bytes()), (8, 3, 8 * 3 * 16));
    }
}
