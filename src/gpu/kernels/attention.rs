//! `shaders/cpu/paged_attention_serial.wgsl` (the CPU forms) and the split pair
//! `shaders/gpu/paged_attention_split.wgsl` + `shaders/gpu/attention_combine.wgsl` (the GPU
//! forms): causal attention for packed queries over the paged KV pool. One kind serves every
//! step on an adapter (prefill and decode alike), so results never depend on the batch.
//!
//! The serial kind (CPU adapters) gives each thread one token and [`SerialTuning::group`]
//! query heads of one KV head, so a K/V row is loaded once for all of them; with
//! [`SerialTuning::shared`], 8 lanes whose tokens belong to one sequence load each row together
//! and share it through subgroupBroadcast, and a short decode batch (B = 1 or 2) takes a
//! one-head-per-thread pipeline whose lanes are one token's query heads sharing their KV
//! head's rows. Either way a query head's arithmetic is the same.
//!
//! The split kind (flash-decoding) cuts each (token, head)'s keys into partitions of a fixed
//! `partition` positions: a workgroup per (token, head, partition) leaves the partition's
//! running max, sum of exponentials and unnormalised V accumulator in a scratch buffer, and a
//! second dispatch merges the partitions in order 0, 1, 2, ... (a token with a single
//! partition is finished by the first kernel, and a batch of such tokens needs no second
//! dispatch, so short contexts cost one workgroup per (token, head)). The partition size is fixed
//! per model ([`SplitLimits::partition`]), so a token's partitions, and its result, depend only
//! on its own position. Scratch: (max_tokens, num_heads, part_stride, 2 + head_dim) f32 with
//! part_stride = ceil(max_context / partition) <= [`MAX_PARTITIONS`], shared by every bind group
//! (the dispatches that use it run one after another).
//!
//! Every kind also takes, per dispatch ([`AttentionParams`]), a sliding window and a logit
//! soft-cap. The window follows transformers (`sliding_window_overlay`: `kv_idx > q_idx -
//! sliding_window`) and llama.cpp: a query at position p uses the keys j with p - j < window,
//! i.e. j in [max(0, p + 1 - window), p], `window` keys counting its own (Mistral's 4096,
//! Gemma 2/3's sliding layers). Every kind starts its walk at the window's first key, so keys
//! before it are never read and a token costs O(min(p + 1, window)): the serial kind begins its
//! key loop there (its shared-row workgroups at their tokens' earliest window start), and the
//! split kind numbers a token's partitions from the one holding
//! the window's first key, dispatching at most as many per token as `window` keys can touch,
//! so partitions wholly before the window are neither dispatched nor merged (the combine never
//! sees an empty partition). The soft-cap (Gemma 2) turns each score s = scale * q . k into
//! cap * tanh(s / cap) before the softmax. With neither, every kind computes exactly what it did
//! without them, bit for bit.

use crate::gpu::kernels::quant_texture::{texture_entry, unused_texture};
use crate::gpu::kv_pool::{KvPool, KvStorage};
use crate::gpu::pipeline::{
    ATTENTION_COMBINE, Kernel, PAGED_ATTENTION_SERIAL, PAGED_ATTENTION_SPLIT, grid_2d,
};
use crate::gpu::{GpuContext, GpuError, GpuTensor, WeightDType};

#[derive(Debug, Clone, Copy)]
pub struct AttentionParams {
    pub num_tokens: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Columns of a qkv row (Q heads start at column 0).
    pub row_stride: usize,
    pub block_size: usize,
    /// Columns of the block-table matrix (its row stride).
    pub max_blocks: usize,
    pub scale: f32,
    /// Largest context (positions[t] + 1) of any token in the batch. Only sizes the split
    /// kind's grid (partitions per token); it must not be smaller than any token's context.
    pub max_context_len: usize,
    /// Sliding-window attention: a query at position p uses only the keys at positions j with
    /// p - j < window, i.e. j in [max(0, p + 1 - window), p] (`window` keys counting its own;
    /// transformers' `kv_idx > q_idx - sliding_window`). None: every key j <= p. Must not be
    /// Some(0). A window of at least the context changes nothing, bit for bit.
    pub window: Option<u32>,
    /// Attention logit soft-capping (Gemma 2's attn_logit_softcapping): each score
    /// s = scale * q . k becomes softcap * tanh(s / softcap) before the softmax. None: scores
    /// as they are. Must be finite and positive.
    pub softcap: Option<f32>,
}

impl AttentionParams {
    /// Refuses a window of 0 keys and a soft-cap that is not finite and positive (`encode`
    /// panics on them: check first where they come from a file).
    pub fn check(&self) -> Result<(), GpuError> {
        let bad = |msg: String| {
            Err(GpuError::Shape {
                op: "paged_attention",
                msg,
            })
        };
        if self.window == Some(0) {
            return bad("a sliding window of 0 keys".into());
        }
        if let Some(cap) = self.softcap
            && !(cap.is_finite() && cap > 0.0)
        {
            return bad(format!("soft-cap {cap} must be finite and positive"));
        }
        Ok(())
    }

    /// The window and soft-cap as the kernels take them: 0 for none.
    fn mask_words(&self) -> [u32; 2] {
        if let Err(e) = self.check() {
            panic!("{e}");
        }
        [
            self.window.unwrap_or(0),
            self.softcap.unwrap_or(0.0).to_bits(),
        ]
    }
}

/// Partitions of `partition` keys the split kind dispatches per (token, head) for a batch whose
/// longest context is `max_context_len`: enough for that context and, with a window, no more
/// than `window` consecutive keys can touch (ceil((window - 1) / partition) + 1), since a
/// token's partitions are numbered from the one holding its window's first key.
fn split_parts(max_context_len: usize, partition: usize, window: Option<u32>) -> usize {
    let all = max_context_len.div_ceil(partition);
    match window {
        Some(w) if w > 0 => all.min((w as usize - 1).div_ceil(partition) + 1),
        _ => all,
    }
}

/// How the attention work is spread over threads: the kind [`DeviceProfile`] picks for the
/// kernel forms.
///
/// [`DeviceProfile`]: crate::gpu::DeviceProfile
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// One thread per (token, group of query heads sharing a KV head) walking the keys alone
    /// (CPU adapters: no barriers, and each K/V row loaded once for the group). Tuned by
    /// [`SerialTuning`]: build it with [`PagedAttention::serial`].
    Serial,
    /// A workgroup of 64 threads per (token, head, partition of the keys), then a combine
    /// pass (GPUs: long contexts spread over many workgroups even for a single token).
    /// Needs [`SplitLimits`]: build it with [`PagedAttention::split`].
    Split,
}

/// Threads per workgroup of the serial kernel (llvmpipe's 8 SIMD lanes on 256-bit CPUs).
const SERIAL_WG: usize = 8;
/// Most query heads one thread of the serial kernel serves.
pub const MAX_SERIAL_GROUP: usize = 8;

/// How the serial kind spreads a step over threads (fixed for a wrapper, never per batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialTuning {
    /// Query heads per thread, all of one KV head: 1 ..= [`MAX_SERIAL_GROUP`], dividing the
    /// model's num_heads / num_kv_heads.
    pub group: usize,
    /// Lanes of a workgroup whose tokens all belong to one sequence load each K/V row together
    /// and share it through subgroupBroadcast. Only where the adapter's subgroup is exactly the
    /// 8-lane workgroup (lavapipe on 256-bit CPUs); ignored elsewhere.
    pub shared: bool,
}

impl SerialTuning {
    /// The largest group of at most [`MAX_SERIAL_GROUP`] heads dividing the query heads per KV
    /// head (SmolLM2-135M: 9 / 3 -> 3), rows shared where the adapter allows it.
    pub fn for_heads(num_heads: usize, num_kv_heads: usize) -> SerialTuning {
        let per_kv = if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            1
        } else {
            num_heads / num_kv_heads
        };
        let group = (1..=MAX_SERIAL_GROUP.min(per_kv))
            .rev()
            .find(|g| per_kv % g == 0)
            .unwrap_or(1);
        SerialTuning {
            group,
            shared: true,
        }
    }
}

/// Threads per workgroup of the combine kernel.
const COMBINE_WG: usize = 64;

/// Smallest partition of the split kind, in key positions.
pub const MIN_PARTITION: usize = 256;
/// Most partitions a token has at the model's longest context.
pub const MAX_PARTITIONS: usize = 16;

/// What the split kind's scratch buffer is sized for (fixed for a runner, never per batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLimits {
    /// Most tokens in one step.
    pub max_tokens: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Most positions a sequence may hold (the model's context).
    pub max_context: usize,
}

impl SplitLimits {
    /// The partition size for these limits: [`MIN_PARTITION`] keys, doubled until
    /// `max_context` fits in [`MAX_PARTITIONS`] partitions (2048-token model: 8 partitions
    /// of 256; 8192: 16 of 512). Depends only on the model's context, never on a batch.
    pub fn partition(&self) -> usize {
        let mut partition = MIN_PARTITION;
        while self.max_context.div_ceil(partition) > MAX_PARTITIONS {
            partition *= 2;
        }
        partition
    }
}

/// The split kind's second kernel and the scratch both share.
struct SplitState {
    combine: Kernel,
    scratch: GpuTensor,
    limits: SplitLimits,
    partition: usize,
    /// Partitions per (token, head) in the scratch layout: ceil(max_context / partition).
    part_stride: usize,
}

/// The serial kind's tuning and, where rows are shared and a thread serves several heads, the
/// one-head-per-thread kernel that short batches take (lanes over a token's query heads).
struct SerialState {
    /// As built: shared only where the adapter allows it.
    tuning: SerialTuning,
    /// GROUP = 1, sharing the bind group layout (None: the main kernel has GROUP = 1, or rows
    /// are not shared).
    heads: Option<Kernel>,
    /// Where the K/V pools it reads live (textures: KV_TEXTURE).
    storage: KvStorage,
    /// Bound in place of the storage the pipelines do not read (they still declare it).
    unused_buffer: wgpu::Buffer,
    unused_texture: wgpu::TextureView,
}

/// What the lanes of a serial workgroup serve (`lanes` in paged_attention_serial.wgsl, whose
/// `ITEM_LANES`/`TOKEN_LANES`/`HEAD_LANES` constants these discriminants must match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialLanes {
    /// (token, head group) items: ceil(T * G / 8) workgroups.
    Items = 0,
    /// 8 consecutive tokens, sharing K/V rows where they belong to one sequence.
    Tokens = 1,
    /// The query heads of one (token, KV head), sharing its K/V rows.
    Heads = 2,
}

/// Read-only flags of the serial kernel's buffer bindings (qkv, k, v, tables, token_seq,
/// positions, out), for the layout its two pipelines share (the K and V textures follow).
const SERIAL_READ_ONLY: [bool; 7] = [true, true, true, true, true, true, false];

pub struct PagedAttention {
    kernel: Kernel,
    kind: AttentionKind,
    head_dim: usize,
    split: Option<SplitState>,
    serial: Option<SerialState>,
}

/// Largest head either kind's shaders take (their `HEAD_DIM` limit).
pub const MAX_HEAD_DIM: usize = 256;

/// Binding order of the split kernels' shared layout (bind's arguments plus the scratch),
/// as read-only flags: qkv, k, v, tables, token_seq, positions, scratch, out.
const SPLIT_READ_ONLY: [bool; 8] = [true, true, true, true, true, true, false, false];

impl PagedAttention {
    /// The kind the device profile picks, a split one's scratch sized by `limits`,
    /// a serial one grouped by [`SerialTuning::for_heads`] (`limits.num_heads` query heads over
    /// `num_kv_heads`).
    /// `storage`: where the pools live ([`KvStorage::for_adapter`] gives textures only where
    /// this picks the serial kind; the others read buffers).
    pub fn for_model(
        ctx: &GpuContext,
        head_dim: usize,
        kv_dtype: WeightDType,
        num_kv_heads: usize,
        limits: SplitLimits,
        storage: KvStorage,
    ) -> Result<Self, GpuError> {
        let kind = ctx.profile.attention;
        if storage.is_texture() && kind != AttentionKind::Serial {
            return Err(GpuError::Shape {
                op: "paged_attention",
                msg: format!("the {kind:?} kind reads K/V pools from buffers only"),
            });
        }
        match kind {
            AttentionKind::Split => Self::split(ctx, head_dim, kv_dtype, limits),
            AttentionKind::Serial => Self::serial_with_storage(
                ctx,
                head_dim,
                kv_dtype,
                SerialTuning::for_heads(limits.num_heads, num_kv_heads),
                storage,
            ),
        }
    }

    /// The serial kind with `tuning` (its `shared` switched off where the adapter's subgroup
    /// is not exactly the 8-lane workgroup), reading K/V pools in buffers.
    pub fn serial(
        ctx: &GpuContext,
        head_dim: usize,
        kv_dtype: WeightDType,
        tuning: SerialTuning,
    ) -> Result<Self, GpuError> {
        Self::serial_with_storage(ctx, head_dim, kv_dtype, tuning, KvStorage::Buffer)
    }

    /// [`PagedAttention::serial`] reading pools kept in `storage`.
    pub fn serial_with_storage(
        ctx: &GpuContext,
        head_dim: usize,
        kv_dtype: WeightDType,
        tuning: SerialTuning,
        storage: KvStorage,
    ) -> Result<Self, GpuError> {
        check_head_dim(head_dim)?;
        if !(1..=MAX_SERIAL_GROUP).contains(&tuning.group) {
            return Err(GpuError::Shape {
                op: "paged_attention",
                msg: format!(
                    "serial attention serves 1 to {MAX_SERIAL_GROUP} query heads per thread, not {}",
                    tuning.group
                ),
            });
        }
        let tuning = SerialTuning {
            shared: tuning.shared && ctx.profile.uniform_subgroup == Some(SERIAL_WG as u32),
            ..tuning
        };
        let consts = |group: usize| {
            [
                ("HEAD_DIM", head_dim as f64),
                ("KV_F16", kv_dtype.is_f16()),
                ("WG", SERIAL_WG as f64),
                ("GROUP", group as f64),
                ("SHARED", f64::from(u8::from(tuning.shared))),
                ("KV_TEXTURE", f64::from(u8::from(storage.is_texture()))),
            ]
        };
        let (grouped, single) = (consts(tuning.group), consts(1));
        let mut members = vec![(PAGED_ATTENTION_SERIAL, &grouped[..])];
        if tuning.shared && tuning.group > 1 {
            members.push((PAGED_ATTENTION_SERIAL, &single[..]));
        }
        let mut entries: Vec<wgpu::BindGroupLayoutEntry> = SERIAL_READ_ONLY
            .iter()
            .enumerate()
            .map(|(i, &ro)| Kernel::storage_entry(i as u32, ro))
            .collect();
        entries.extend([texture_entry(7), texture_entry(8)]);
        let mut kernels = Kernel::with_layout(ctx, &entries, &members);
        let heads = (kernels.len() > 1).then(|| kernels.pop().expect("two kernels"));
        Ok(Self {
            kernel: kernels.pop().expect("the grouped kernel"),
            kind: AttentionKind::Serial,
            head_dim,
            split: None,
            serial: Some(SerialState {
                tuning,
                heads,
                storage,
                unused_buffer: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("paged_attention unused KV buffer"),
                    size: 16,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                }),
                unused_texture: unused_texture(ctx),
            }),
        })
    }

    /// The split kind with the partition size [`SplitLimits::partition`] picks; allocates
    /// the scratch buffer every bind group of this wrapper shares.
    pub fn split(
        ctx: &GpuContext,
        head_dim: usize,
        kv_dtype: WeightDType,
        limits: SplitLimits,
    ) -> Result<Self, GpuError> {
        Self::split_with_partition(ctx, head_dim, kv_dtype, limits, limits.partition())
    }

    /// The split kind with an explicit partition size (tests use small ones so that short
    /// contexts span several partitions).
    pub fn split_with_partition(
        ctx: &GpuContext,
        head_dim: usize,
        kv_dtype: WeightDType,
        limits: SplitLimits,
        partition: usize,
    ) -> Result<Self, GpuError> {
        check_head_dim(head_dim)?;
        if partition == 0 || limits.max_tokens == 0 || limits.num_heads == 0 {
            return Err(GpuError::Shape {
                op: "paged_attention",
                msg: format!("split attention with partition {partition} and {limits:?}"),
            });
        }
        let part_stride = limits.max_context.div_ceil(partition).max(1);
        let consts: [(&str, f64); 3] = [
            ("HEAD_DIM", head_dim as f64),
            ("KV_F16", kv_dtype.is_f16()),
            ("PARTITION", partition as f64),
        ];
        let mut kernels = Kernel::sharing_layout(
            ctx,
            &SPLIT_READ_ONLY,
            &[
                (PAGED_ATTENTION_SPLIT, &consts),
                (ATTENTION_COMBINE, &[consts[0], consts[2]]),
            ],
        );
        let scratch = GpuTensor::zeros(
            ctx,
            "attention scratch",
            &[
                limits.max_tokens,
                limits.num_heads,
                part_stride,
                2 + head_dim,
            ],
            WeightDType::F32,
        )?;
        let combine = kernels.pop().expect("two kernels");
        let kernel = kernels.pop().expect("two kernels");
        Ok(Self {
            kernel,
            kind: AttentionKind::Split,
            head_dim,
            split: Some(SplitState {
                combine,
                scratch,
                limits,
                partition,
                part_stride,
            }),
            serial: None,
        })
    }

    pub fn kind(&self) -> AttentionKind {
        self.kind
    }

    /// Keys per partition of the split kind (None for the others).
    pub fn partition(&self) -> Option<usize> {
        self.split.as_ref().map(|s| s.partition)
    }

    /// The serial kind's tuning as built (None for the others).
    pub fn serial_tuning(&self) -> Option<SerialTuning> {
        self.serial.as_ref().map(|s| s.tuning)
    }

    /// Where the pools it reads must live (textures only for the serial kind).
    pub fn kv_storage(&self) -> KvStorage {
        self.serial
            .as_ref()
            .map_or(KvStorage::Buffer, |s| s.storage)
    }

    /// The lane layout the serial kind runs a step of `num_tokens` tokens in, for a model
    /// with `num_heads` query heads (None for the other kinds).
    ///
    /// Where rows can be shared: lanes over tokens when a workgroup's worth of them exist (the
    /// tokens of a prompt chunk share rows), and over each token's query heads when the
    /// batch's (token, head group) items fit in one workgroup (decode at B = 1 or 2: a token's
    /// heads share rows, and its workgroups spread over the cores where one workgroup of
    /// items would run on one). Otherwise lanes over items, so that a short batch fills
    /// workgroups. The choice only moves work between lanes: a query head's arithmetic is the
    /// same in every one.
    pub fn serial_lanes(&self, num_tokens: usize, num_heads: usize) -> Option<SerialLanes> {
        let tuning = self.serial.as_ref()?.tuning;
        let head_groups = num_heads / tuning.group;
        Some(if !tuning.shared {
            SerialLanes::Items
        } else if num_tokens >= SERIAL_WG {
            SerialLanes::Tokens
        } else if num_tokens * head_groups <= SERIAL_WG {
            SerialLanes::Heads
        } else {
            SerialLanes::Items
        })
    }

    /// A bind group over one layer's pools, which must live where [`Self::kv_storage`] says.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        ctx: &GpuContext,
        qkv: &wgpu::Buffer,
        k_cache: &KvPool,
        v_cache: &KvPool,
        block_tables: &wgpu::Buffer,
        token_seq: &wgpu::Buffer,
        positions: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup, GpuError> {
        for pool in [k_cache, v_cache] {
            if !pool.is_in(self.kv_storage()) {
                return Err(GpuError::Shape {
                    op: "paged_attention",
                    msg: format!(
                        "this kernel reads K/V pools as {:?}; a pool lives elsewhere",
                        self.kv_storage()
                    ),
                });
            }
        }
        let Some(serial) = &self.serial else {
            let (KvPool::Buffer(k), KvPool::Buffer(v)) = (k_cache, v_cache) else {
                unreachable!("checked above: buffers for kinds other than serial");
            };
            let mut buffers = vec![qkv, k, v, block_tables, token_seq, positions];
            if let Some(split) = &self.split {
                buffers.push(&split.scratch.buffer);
            }
            buffers.push(out);
            return Ok(self.kernel.bind(ctx, &buffers));
        };
        let unused = &serial.unused_buffer;
        let buffers = [
            qkv,
            k_cache.buffer_or(unused),
            v_cache.buffer_or(unused),
            block_tables,
            token_seq,
            positions,
            out,
        ];
        let mut resources: Vec<wgpu::BindingResource> =
            buffers.iter().map(|b| b.as_entire_binding()).collect();
        for pool in [k_cache, v_cache] {
            let view = pool.view_or(&serial.unused_texture);
            resources.push(wgpu::BindingResource::TextureView(view));
        }
        Ok(self.kernel.bind_resources(ctx, resources))
    }

    /// Records the attention for `p`'s batch: one dispatch, or for the split kind two (split,
    /// then combine; a compute pass orders them with a barrier on the scratch between) when
    /// some token has more than one partition.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        p: &AttentionParams,
    ) {
        assert_eq!(p.head_dim, self.head_dim, "paged_attention: head_dim");
        let mask = p.mask_words();
        let imm = [
            p.num_tokens as u32,
            p.num_heads as u32,
            p.num_kv_heads as u32,
            p.row_stride as u32,
            p.block_size as u32,
            p.max_blocks as u32,
            p.scale.to_bits(),
        ];
        let items = p.num_tokens * p.num_heads;
        match self.kind {
            AttentionKind::Split => {
                let s = self.split.as_ref().expect("the split kind has its state");
                let l = &s.limits;
                assert!(
                    p.num_tokens <= l.max_tokens
                        && p.num_heads <= l.num_heads
                        && p.max_context_len <= l.max_context,
                    "paged_attention: {} tokens, {} heads, context {} over the split limits {l:?}",
                    p.num_tokens,
                    p.num_heads,
                    p.max_context_len
                );
                let parts = split_parts(p.max_context_len, s.partition, p.window);
                let mut split_imm = imm.to_vec();
                split_imm.extend([parts as u32, s.part_stride as u32]);
                split_imm.extend(mask);
                self.kernel
                    .dispatch(pass, bg, &split_imm, grid_2d((items * parts) as u32));
                if parts <= 1 {
                    // Every token's keys fit in one partition: the split kernel wrote `out`
                    // itself.
                    return;
                }
                let combine_imm = [
                    p.num_tokens as u32,
                    p.num_heads as u32,
                    s.part_stride as u32,
                    mask[0],
                ];
                let threads = items * p.head_dim;
                s.combine.dispatch(
                    pass,
                    bg,
                    &combine_imm,
                    grid_2d(threads.div_ceil(COMBINE_WG) as u32),
                );
            }
            AttentionKind::Serial => {
                let serial = self.serial.as_ref().expect("the serial kind has its state");
                let tuning = serial.tuning;
                assert!(
                    p.num_kv_heads > 0
                        && p.num_heads.is_multiple_of(p.num_kv_heads)
                        && (p.num_heads / p.num_kv_heads).is_multiple_of(tuning.group),
                    "paged_attention: {} query heads over {} KV heads in groups of {}",
                    p.num_heads,
                    p.num_kv_heads,
                    tuning.group
                );
                let head_groups = p.num_heads / tuning.group;
                let per_kv = p.num_heads / p.num_kv_heads;
                let lanes = self
                    .serial_lanes(p.num_tokens, p.num_heads)
                    .expect("the serial kind has a lane layout");
                let (kernel, groups) = match lanes {
                    SerialLanes::Tokens => {
                        (&self.kernel, p.num_tokens.div_ceil(SERIAL_WG) * head_groups)
                    }
                    SerialLanes::Items => (
                        &self.kernel,
                        (p.num_tokens * head_groups).div_ceil(SERIAL_WG),
                    ),
                    SerialLanes::Heads => (
                        serial.heads.as_ref().unwrap_or(&self.kernel),
                        p.num_tokens * p.num_kv_heads * per_kv.div_ceil(SERIAL_WG),
                    ),
                };
                let mut serial_imm = [0u32; 11];
                serial_imm[..7].copy_from_slice(&imm);
                serial_imm[7] = lanes as u32;
                serial_imm[8] = serial.storage.row_slots();
                serial_imm[9..].copy_from_slice(&mask);
                kernel.dispatch(pass, bg, &serial_imm, grid_2d(groups as u32));
            }
        }
    }
}

fn check_head_dim(head_dim: usize) -> Result<(), GpuError> {
    if !head_dim.is_multiple_of(2) || head_dim == 0 || head_dim > MAX_HEAD_DIM {
        return Err(GpuError::Shape {
            op: "paged_attention",
            msg: format!("head_dim {head_dim} must be even and at most {MAX_HEAD_DIM}"),
        });
    }
    Ok(())
}

/// Causal attention computed from contiguous per-sequence K/V (`keys[s]`, `values[s]`, each
/// (len, kv_dim)), independent of any block layout: the paged kernel must equal this. In f64,
/// with `p.window` (only the keys j with position - j < window) and `p.softcap`
/// (cap * tanh(score / cap)).
pub fn reference(
    q_rows: &[f32],
    keys: &[Vec<f32>],
    values: &[Vec<f32>],
    token_seq: &[u32],
    positions: &[u32],
    p: &AttentionParams,
) -> Vec<f32> {
    let hd = p.head_dim;
    let kv_dim = p.num_kv_heads * hd;
    let group = p.num_heads / p.num_kv_heads;
    let mut out = vec![0f32; p.num_tokens * p.num_heads * hd];
    for t in 0..p.num_tokens {
        let s = token_seq[t] as usize;
        let ctx = positions[t] as usize + 1;
        // The keys the token uses: lo..ctx.
        let lo = p.window.map_or(0, |w| ctx.saturating_sub(w as usize));
        for h in 0..p.num_heads {
            let kvh = h / group;
            let q = &q_rows[t * p.row_stride + h * hd..t * p.row_stride + (h + 1) * hd];
            let scores: Vec<f64> = (lo..ctx)
                .map(|j| {
                    let k = &keys[s][j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
                    let score = q
                        .iter()
                        .zip(k)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * p.scale as f64;
                    match p.softcap {
                        Some(cap) => cap as f64 * (score / cap as f64).tanh(),
                        None => score,
                    }
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|v| (v - mx).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                let mut a = 0f64;
                for (j, w) in (lo..ctx).zip(&e) {
                    a += w * values[s][j * kv_dim + kvh * hd + d] as f64;
                }
                out[t * p.num_heads * hd + h * hd + d] = (a / sum) as f32;
            }
        }
    }
    out
}
