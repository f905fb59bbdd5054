//! `shaders/kv_write.wgsl`: copies each token's K and V into its slot of the paged pools,
//! which are storage buffers or (CPU adapters) textures ([`KvStorage`]).

use crate::gpu::kv_pool::{KvPool, KvStorage, storage_texture_entry, unused_storage_texture};
use crate::gpu::pipeline::{KV_WRITE, Kernel, ShaderSource};
use crate::gpu::{GpuContext, WeightDType};

use super::groups_for;

pub struct KvWrite {
    kernel: Kernel,
    targets: KvTargets,
}

impl KvWrite {
    /// A pipeline that writes pools of `kv_dtype` held in `storage`.
    pub fn new(ctx: &GpuContext, kv_dtype: WeightDType, storage: KvStorage) -> Self {
        let targets = KvTargets::new(ctx, "kv_write", kv_dtype, storage);
        Self {
            kernel: targets.kernel(ctx, KV_WRITE, &[true, true], &[]),
            targets,
        }
    }

    /// `k_cache` and `v_cache` are one layer's pools, in the storage the kernel was built for
    /// (panics otherwise).
    pub fn bind(
        &self,
        ctx: &GpuContext,
        qkv: &wgpu::Buffer,
        slot_mapping: &wgpu::Buffer,
        k_cache: &KvPool,
        v_cache: &KvPool,
    ) -> wgpu::BindGroup {
        let mut resources = vec![qkv.as_entire_binding(), slot_mapping.as_entire_binding()];
        resources.extend(self.targets.resources(k_cache, v_cache));
        self.kernel.bind_resources(ctx, resources)
    }

    /// K sits at columns `[k_col, k_col + kv_dim)` of each qkv row, V right after. With
    /// texture pools, a slot's `kv_dim` elements must be the layout's `slot_texels` texels.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        num_tokens: usize,
        row_stride: usize,
        k_col: usize,
        kv_dim: usize,
    ) {
        self.targets.check(kv_dim);
        let imm = [
            num_tokens as u32,
            row_stride as u32,
            k_col as u32,
            kv_dim as u32,
            self.targets.storage.row_slots(),
        ];
        // A thread per element pair (buffers) or per texel of a slot (textures).
        let threads = match self.targets.storage {
            KvStorage::Buffer => num_tokens * kv_dim / 2,
            KvStorage::Texture(l) => num_tokens * l.slot_texels() as usize,
        };
        self.kernel
            .dispatch(pass, bg, &imm, groups_for(threads, 256));
    }
}

/// The pool side of a KV-writing kernel (this one and [`super::RopeKvWrite`]): its storage,
/// the layout entries of its four pool bindings (K and V buffers, then K and V textures, all
/// declared by the shader whatever the storage), and the stand-ins bound to the two the
/// storage does not use.
pub(crate) struct KvTargets {
    op: &'static str,
    pub(crate) storage: KvStorage,
    dtype: WeightDType,
    unused_buffer: wgpu::Buffer,
    unused_texture: wgpu::TextureView,
}

impl KvTargets {
    pub(crate) fn new(
        ctx: &GpuContext,
        op: &'static str,
        dtype: WeightDType,
        storage: KvStorage,
    ) -> Self {
        Self {
            op,
            storage,
            dtype,
            unused_buffer: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("unused KV buffer"),
                size: 4,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }),
            unused_texture: unused_storage_texture(ctx),
        }
    }

    /// The pipeline of `src` (with `KV_F16`, `KV_TEXTURE` and `constants`): its first
    /// bindings storage buffers, read-only where `read_only`, then the four pool bindings.
    pub(crate) fn kernel(
        &self,
        ctx: &GpuContext,
        src: ShaderSource,
        read_only: &[bool],
        constants: &[(&str, f64)],
    ) -> Kernel {
        let n = read_only.len() as u32;
        let mut entries: Vec<wgpu::BindGroupLayoutEntry> = read_only
            .iter()
            .enumerate()
            .map(|(i, ro)| Kernel::storage_entry(i as u32, *ro))
            .collect();
        entries.extend([
            Kernel::storage_entry(n, false),
            Kernel::storage_entry(n + 1, false),
            storage_texture_entry(n + 2),
            storage_texture_entry(n + 3),
        ]);
        let mut all = vec![
            ("KV_F16", self.dtype.is_f16()),
            ("KV_TEXTURE", f64::from(u8::from(self.storage.is_texture()))),
        ];
        all.extend_from_slice(constants);
        Kernel::with_layout(ctx, &entries, &[(src, &all[..])])
            .into_iter()
            .next()
            .expect("one pipeline per member")
    }

    /// The resources of the four pool bindings: the pools where the storage puts them, the
    /// stand-ins elsewhere. Panics when a pool is not in the kernel's storage (or a texture
    /// is not as wide as the layout's rows, or has fewer rows).
    pub(crate) fn resources<'a>(
        &'a self,
        k_cache: &'a KvPool,
        v_cache: &'a KvPool,
    ) -> [wgpu::BindingResource<'a>; 4] {
        for pool in [k_cache, v_cache] {
            assert!(
                pool.is_in(self.storage),
                "{}: a pool not in the kernel's {:?}",
                self.op,
                self.storage
            );
        }
        [
            k_cache.buffer_or(&self.unused_buffer).as_entire_binding(),
            v_cache.buffer_or(&self.unused_buffer).as_entire_binding(),
            wgpu::BindingResource::TextureView(k_cache.view_or(&self.unused_texture)),
            wgpu::BindingResource::TextureView(v_cache.view_or(&self.unused_texture)),
        ]
    }

    /// Panics when texture pools' slots do not hold `kv_dim` elements: whole texels, as many
    /// as the layout's `slot_texels` (the shader derives them from `kv_dim`).
    pub(crate) fn check(&self, kv_dim: usize) {
        if let KvStorage::Texture(l) = self.storage {
            assert!(
                l.holds(kv_dim, self.dtype),
                "{}: {kv_dim} {} elements per slot in a layout of {} texels per slot",
                self.op,
                self.dtype.name(),
                l.slot_texels()
            );
        }
    }
}

/// Writes K and V rows into `(k_cache, v_cache)`, each (slots, kv_dim).
pub fn reference(
    qkv: &[f32],
    slot_mapping: &[u32],
    row_stride: usize,
    k_col: usize,
    kv_dim: usize,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
) {
    for (t, &slot) in slot_mapping.iter().enumerate() {
        let src = t * row_stride + k_col;
        let dst = slot as usize * kv_dim;
        k_cache[dst..dst + kv_dim].copy_from_slice(&qkv[src..src + kv_dim]);
        v_cache[dst..dst + kv_dim].copy_from_slice(&qkv[src + kv_dim..src + 2 * kv_dim]);
    }
}
