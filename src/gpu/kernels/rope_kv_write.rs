//! `shaders/rope_kv_write.wgsl`: RoPE on the Q and K heads and the KV write in one dispatch
//! (RoPE then kv_write.wgsl, fused; the runner's only RoPE). Q is rotated in place; K is
//! rotated on its way into the pool, so qkv's K columns keep their unrotated values. The pools
//! are storage buffers or (CPU adapters) textures ([`KvStorage`]). Full rotary, or partial:
//! only the first `rotary_dim` dimensions of each head rotate ([`RopeKvWrite::encode_partial`]).

use crate::gpu::kv_pool::{KvPool, KvStorage};
use crate::gpu::pipeline::{Kernel, ROPE_KV_WRITE, grid_2d};
use crate::gpu::{GpuContext, WeightDType};

use super::kv_write::KvTargets;
use super::{RopeParams, kv_write, rope};

/// Threads per workgroup (the shader's `WG`).
const WG: usize = 64;

pub struct RopeKvWrite {
    kernel: Kernel,
    head_dim: usize,
    targets: KvTargets,
}

impl RopeKvWrite {
    /// A pipeline for one head width (even): the shader takes it as a constant, so that its
    /// index arithmetic has no division by a runtime value. It writes pools of `kv_dtype` held
    /// in `storage`.
    pub fn new(
        ctx: &GpuContext,
        kv_dtype: WeightDType,
        head_dim: usize,
        storage: KvStorage,
    ) -> Self {
        let targets = KvTargets::new(ctx, "rope_kv_write", kv_dtype, storage);
        // qkv is read_write (Q rotates in place); positions, cos_sin, slot_mapping are read.
        let kernel = targets.kernel(
            ctx,
            ROPE_KV_WRITE,
            &[false, true, true, true],
            &[("HEAD_DIM", head_dim as f64)],
        );
        Self {
            kernel,
            head_dim,
            targets,
        }
    }

    /// `cos_sin`: [`rope::cos_sin_table`]; the pools are one layer's, in the storage the
    /// kernel was built for (panics otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &GpuContext,
        qkv: &wgpu::Buffer,
        positions: &wgpu::Buffer,
        cos_sin: &wgpu::Buffer,
        slot_mapping: &wgpu::Buffer,
        k_cache: &KvPool,
        v_cache: &KvPool,
    ) -> wgpu::BindGroup {
        let mut resources: Vec<_> = [qkv, positions, cos_sin, slot_mapping]
            .iter()
            .map(|b| b.as_entire_binding())
            .collect();
        resources.extend(self.targets.resources(k_cache, v_cache));
        self.kernel.bind_resources(ctx, resources)
    }

    /// K starts right after the Q heads (column num_heads · head_dim), V right after K.
    /// `p.head_dim` must be the one the pipeline was built for; with texture pools, a slot's
    /// kv_dim elements must be the layout's `slot_texels` texels. Full rotary: every dimension
    /// of each head rotates.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bg: &wgpu::BindGroup, p: &RopeParams) {
        self.encode_partial(pass, bg, p, p.head_dim);
    }

    /// [`RopeKvWrite::encode`] with partial rotary: the first `rotary_dim` dimensions of each Q
    /// and K head rotate (pairs in `p.style` within them), the others go through as they are;
    /// `cos_sin` is [`rope::cos_sin_table`] of `rotary_dim`. `rotary_dim = p.head_dim` is
    /// [`RopeKvWrite::encode`], bit for bit. Panics unless rotary_dim is even and at most
    /// head_dim.
    pub fn encode_partial(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        p: &RopeParams,
        rotary_dim: usize,
    ) {
        rope::check_rotary_dim(p, rotary_dim);
        assert_eq!(
            p.head_dim, self.head_dim,
            "rope_kv_write pipeline built for another head width"
        );
        let kv_dim = p.num_kv_heads * p.head_dim;
        self.targets.check(kv_dim);
        let mut imm = [0; 9];
        imm[..7].copy_from_slice(&p.immediates());
        imm[7] = self.targets.storage.row_slots();
        imm[8] = rotary_dim as u32;
        // Q pairs, then K and V items: element pairs (buffers) or slot texels (textures).
        let kv_items = match self.targets.storage {
            KvStorage::Buffer => kv_dim / 2,
            KvStorage::Texture(l) => l.slot_texels() as usize,
        };
        let per_token = p.num_heads * p.head_dim / 2 + 2 * kv_items;
        let groups = p.num_tokens * per_token.div_ceil(WG);
        self.kernel.dispatch(pass, bg, &imm, grid_2d(groups as u32));
    }
}

/// What the kernel computes: Q rotated in `qkv` in place, rotated K and plain V written to the
/// pools (each (slots, kv_dim)), qkv's K and V columns left as they were.
pub fn reference(
    qkv: &mut [f32],
    positions: &[u32],
    cos_sin: &[f32],
    slot_mapping: &[u32],
    p: &RopeParams,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
) {
    let rd = p.head_dim;
    reference_partial(
        qkv,
        positions,
        cos_sin,
        slot_mapping,
        p,
        rd,
        k_cache,
        v_cache,
    );
}

/// [`reference()`] with partial rotary ([`rope::reference_partial`]).
#[allow(clippy::too_many_arguments)]
pub fn reference_partial(
    qkv: &mut [f32],
    positions: &[u32],
    cos_sin: &[f32],
    slot_mapping: &[u32],
    p: &RopeParams,
    rotary_dim: usize,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
) {
    let mut rotated = qkv.to_vec();
    rope::reference_partial(&mut rotated, positions, cos_sin, p, rotary_dim);
    let q_dim = p.num_heads * p.head_dim;
    let kv_dim = p.num_kv_heads * p.head_dim;
    // RoPE leaves V alone, so the rotated rows carry both the rotated K and the plain V.
    kv_write::reference(
        &rotated,
        slot_mapping,
        p.row_stride,
        q_dim,
        kv_dim,
        k_cache,
        v_cache,
    );
    for t in 0..p.num_tokens {
        let row = t * p.row_stride;
        qkv[row..row + q_dim].copy_from_slice(&rotated[row..row + q_dim]);
    }
}
