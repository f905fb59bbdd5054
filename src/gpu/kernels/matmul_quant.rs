//! `shaders/cpu/matmul_quant.wgsl` and `shaders/gpu/matmul_quant_split.wgsl`: activations × a
//! GGUF-quantized linear weight (any quantized type of the loader's table) that stays quantized
//! in GPU memory and is dequantized in registers, with optional bias and a fused residual add; and
//! [`pack_quantized`], GGUF's blocks → the kernels' layout. The first kernel gives each output
//! column one thread (CPU adapters); the second splits a column's k-blocks over lanes (GPUs,
//! [`QuantTuning::k_split`]).
//!
//! Layout of a quantized (N, K) weight, K a multiple of 32 ([`QUANT_BLOCK`]): GGUF stores each
//! row as K/32 blocks of 32 consecutive k. On the GPU the blocks are block-column-major:
//! block (row n, k-block b) starts at word `(b * N + n) * BW`.
//! - [`QuantFormat::Q4`], BW = 5: word 0 = d (f16, low half) | m (f16, high half), words 1..5 =
//!   the 16 `qs` bytes as GGUF stores them (byte j: low nibble element j, high nibble element
//!   j + 16); w = d·q + m. Q4_1 maps directly; Q4_0 (w = d·(q − 8)) gets m = −8·d, exact in f16.
//! - [`QuantFormat::Q8`], BW = 9: word 0 = d (f16, low half, high half zero), words 1..9 = the
//!   32 int8 `qs` (element 4w + i in byte i of word 1 + w); w = d·q.
//! - [`QuantFormat::Blocks`] (Q5_0, Q5_1, IQ4_NL, the K-quants, IQ4_XS): each GGUF block or
//!   256-weight super-block as GGUF stores it, zero-padded to whole words (two zero bytes after
//!   the scale for Q5_0 and IQ4_NL), block-column-major by unit; the kernels still walk k in
//!   32-weight sub-blocks and `shaders/lib/quant_blocks.wgsl` dequantizes each weight exactly as
//!   the loader does (the scale d·sc in f32, then d'·q or fma(d', q, −dmin·m), one rounding),
//!   in both kernels, which then dot the dequantized weights (no d·Σ x·q shortcut). They never
//!   live in textures.
//!
//! The k-split kernel's dequantized weights equal [`crate::loader::dequant`]'s bit for bit: d·q
//! has at most 11 + 8 significant bits, so it is exact in f32 and d·q + m rounds once either
//! way. The one-thread-per-column kernel does not dequantize: per block it takes
//! d·Σ x·q + m·Σ x (one multiply-add per weight instead of two), a different rounding of the
//! same sum that the tests hold to the f64 reference like the other.

use super::quant_texture::{WeightData, texture_entry, unused_texture};
use crate::gpu::pipeline::{Kernel, MATMUL_QUANT, MATMUL_QUANT_SPLIT};
use crate::gpu::{GpuContext, GpuError};
use crate::loader::quant_formats::GpuLayout;
use crate::loader::{TensorDType, dequant};

use super::matmul::MatmulParams;

mod pack;
pub use pack::{dequantize_packed, pack_quantized, row_bytes};

/// Weights per k-block the kernels walk (a GGUF block, or a sub-block of a 256-weight
/// super-block).
pub const QUANT_BLOCK: usize = 32;

/// How a quantized weight is stored on the GPU (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// Q4_0 and Q4_1: 5 words per block, w = d·q + m.
    Q4,
    /// Q8_0: 9 words per block, w = d·q.
    Q8,
    /// Any other GGUF type: its blocks as GGUF stores them (padded to whole words), decoded by
    /// `shaders/lib/quant_blocks.wgsl` ([`GpuLayout::Blocks`]).
    Blocks(TensorDType),
}

impl QuantFormat {
    /// The GPU format a GGUF element type packs into (the table's [`GpuLayout`]); `None` for
    /// float types.
    pub fn of(dtype: TensorDType) -> Option<QuantFormat> {
        match dtype.format().gpu {
            GpuLayout::Dense => None,
            GpuLayout::Q4 => Some(QuantFormat::Q4),
            GpuLayout::Q8 => Some(QuantFormat::Q8),
            GpuLayout::Blocks { .. } => Some(QuantFormat::Blocks(dtype)),
        }
    }

    /// Weights per stored unit along k: 32, or 256 for a K-quant super-block.
    pub fn unit_weights(self) -> usize {
        match self {
            QuantFormat::Q4 | QuantFormat::Q8 => QUANT_BLOCK,
            QuantFormat::Blocks(t) => t.block_len(),
        }
    }

    /// Two zero bytes after the leading f16 scale ([`GpuLayout::Blocks`]'s `scale_pad`).
    fn scale_pad(self) -> usize {
        match self {
            QuantFormat::Blocks(t) => match t.format().gpu {
                GpuLayout::Blocks { scale_pad: true } => 2,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// u32 words per stored unit.
    pub fn block_words(self) -> usize {
        match self {
            QuantFormat::Q4 => 5,
            QuantFormat::Q8 => 9,
            QuantFormat::Blocks(t) => (t.block_bytes() + self.scale_pad()).div_ceil(4),
        }
    }

    /// Words of an (n, k) weight (k a multiple of [`QuantFormat::unit_weights`]).
    pub fn words_for(self, n: usize, k: usize) -> usize {
        n * (k / self.unit_weights()) * self.block_words()
    }

    /// The shaders' `Q8` override constant.
    pub(crate) fn q8_constant(self) -> f64 {
        match self {
            QuantFormat::Q8 => 1.0,
            _ => 0.0,
        }
    }

    /// The shaders' `FORMAT` override constant: the ggml type id for [`QuantFormat::Blocks`],
    /// 0 for the Q4/Q8 layouts.
    pub(crate) fn format_constant(self) -> f64 {
        match self {
            QuantFormat::Blocks(t) => f64::from(t.format().ggml_type),
            _ => 0.0,
        }
    }

    /// Whether [`super::quant_texture`]'s planes can hold it (Q4 and Q8 only: the other
    /// formats stay in storage buffers on every adapter).
    pub fn texture_layout(self) -> bool {
        !matches!(self, QuantFormat::Blocks(_))
    }
}

/// How the quantized matmul spreads work over threads on an adapter. Choices with the same
/// `k_split` give bit-identical results (each output is the same chain of operations); only
/// speed differs. `k_split` sets the order of each output's sum, so a model uses one value
/// for all its calls (batch invariance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantTuning {
    /// Threads per workgroup.
    pub workgroup: usize,
    /// Lanes that share one output column, lane s summing its k-blocks s, s + k_split, ...
    /// (`matmul_quant_split.wgsl`; it must divide `workgroup`, and rules out `x_window` and
    /// `w_texture`). 1: one thread per column (`matmul_quant.wgsl`).
    pub k_split: usize,
    /// Output columns per thread (they share each loaded block of x); with `k_split` > 1 a
    /// workgroup has workgroup / k_split columns and this is unused.
    pub cols: usize,
    /// Rows of x per thread, one of [`MatmulQuant::ROW_CHOICES`]; `None` picks by batch size.
    /// Fixed rows compile that choice's pipelines only (and, with `x_window`, those of the
    /// smaller choices a window of a wide k may fall back to).
    pub fixed_rows: Option<usize>,
    /// Read x through 64 KiB uniform-buffer windows, one dispatch per window of rows (what
    /// llvmpipe loads fastest). x must then be bound as [`MatmulQuant::bind`] says, and k be
    /// at most [`MatmulQuant::MAX_WINDOW_K`].
    pub x_window: bool,
    /// With `x_window`: each lane loads one vec4 of a row block and subgroupBroadcast shares
    /// it, where a subgroup is exactly the workgroup (llvmpipe: 8 lanes); ignored elsewhere.
    pub x_shared: bool,
    /// Read the weight from a texture ([`WeightData::Texture`], what llvmpipe loads fastest)
    /// instead of a storage buffer.
    pub w_texture: bool,
}

impl QuantTuning {
    /// Rows of x per thread for a call over `m` rows.
    fn rows_for(self, m: usize) -> usize {
        if let Some(r) = self.fixed_rows {
            return r;
        }
        match m {
            0..=3 => 1,
            4..=7 => 4,
            _ => 8,
        }
    }
}

/// Which pipeline of a [`MatmulQuant`]: rows of x per thread, GLU (gate, up and SiLU·mul in
/// one pass), NORM (RMSNorm fused in front, k-split kernel only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Variant {
    rows: usize,
    glu: bool,
    norm: bool,
}

/// The quantized matmul for one weight format: one pipeline per rows-per-thread choice the
/// tuning can dispatch and asked-for GLU / NORM variant, all sharing one bind group layout.
pub struct MatmulQuant {
    kernels: Vec<(Variant, Kernel)>,
    tuning: QuantTuning,
    /// The adapter's uniform-buffer offset alignment (x windows start at multiples of it).
    offset_align: u64,
    /// What fills the x-window binding when the tuning reads x from storage.
    unused_window: Option<wgpu::Buffer>,
    /// What fills the weight binding the tuning does not read (buffer or texture).
    unused_buffer: wgpu::Buffer,
    unused_texture: wgpu::TextureView,
}

impl MatmulQuant {
    /// Rows of x per thread the kernel is built for.
    pub const ROW_CHOICES: [usize; 3] = [1, 4, 8];
    /// Bytes of x one window shows the kernel (`x_window` in the shader).
    pub const X_WINDOW_BYTES: u64 = 65536;
    /// The largest k a window holds a row of.
    pub const MAX_WINDOW_K: usize = Self::X_WINDOW_BYTES as usize / 4;

    pub fn new(ctx: &GpuContext, format: QuantFormat, tuning: QuantTuning) -> Self {
        Self::with_variants(ctx, format, tuning, false, false)
    }

    /// Also compiles the GLU pipelines ([`MatmulQuant::encode_glu`]).
    pub fn with_glu(ctx: &GpuContext, format: QuantFormat, tuning: QuantTuning) -> Self {
        Self::with_variants(ctx, format, tuning, true, false)
    }

    /// Also compiles the GLU pipelines when `glu`, and with `norm` the RMSNorm-fused form of
    /// each ([`MatmulQuant::encode_normed`]; k-split tunings only, see
    /// [`MatmulQuant::fuses_norm`]).
    pub fn with_variants(
        ctx: &GpuContext,
        format: QuantFormat,
        tuning: QuantTuning,
        glu: bool,
        norm: bool,
    ) -> Self {
        let split = tuning.k_split > 1;
        assert!(
            !norm || split,
            "MatmulQuant: the RMSNorm-fused form needs a k-split tuning: {tuning:?}"
        );
        let tuning = QuantTuning {
            // Only the Q4/Q8 layouts have texture planes; the others read storage everywhere.
            w_texture: tuning.w_texture && format.texture_layout(),
            x_shared: tuning.x_shared
                && !split
                && tuning.x_window
                && ctx.profile.uniform_subgroup == Some(tuning.workgroup as u32)
                && tuning.workgroup == 8,
            ..tuning
        };
        assert!(
            (1..=16).contains(&tuning.cols)
                && tuning.workgroup >= 1
                && tuning
                    .fixed_rows
                    .is_none_or(|r| Self::ROW_CHOICES.contains(&r)),
            "MatmulQuant tuning out of range: {tuning:?}"
        );
        assert!(
            tuning.k_split >= 1
                && (!split
                    || (tuning.workgroup.is_multiple_of(tuning.k_split)
                        && tuning.workgroup <= 128
                        && !tuning.x_window
                        && !tuning.w_texture)),
            "MatmulQuant: k_split must divide a workgroup of at most 128 and rules out x windows and textures: {tuning:?}"
        );
        // A GLU thread reads two weight rows per output column: half the columns keep its
        // loads per block where the plain kernel has them.
        let glu_cols = Self::glu_cols(tuning);
        let consts = |v: Variant| -> Vec<(&str, f64)> {
            let (rows, glu) = (v.rows, v.glu);
            if split {
                return vec![
                    ("Q8", format.q8_constant()),
                    ("FORMAT", format.format_constant()),
                    ("GLU", f64::from(u8::from(glu))),
                    ("NORM", f64::from(u8::from(v.norm))),
                    ("ROWS", rows as f64),
                    ("SPLIT", tuning.k_split as f64),
                    ("SPLIT_WG", tuning.workgroup as f64),
                ];
            }
            vec![
                ("Q8", format.q8_constant()),
                ("FORMAT", format.format_constant()),
                ("GLU", f64::from(u8::from(glu))),
                ("ROWS", rows as f64),
                ("COLS", if glu { glu_cols } else { tuning.cols } as f64),
                ("WG", tuning.workgroup as f64),
                ("X_WINDOW", f64::from(u8::from(tuning.x_window))),
                ("X_SHARED", f64::from(u8::from(tuning.x_shared))),
                ("W_TEXTURE", f64::from(u8::from(tuning.w_texture))),
            ]
        };
        let rows = Self::dispatchable_rows(tuning);
        let mut variants = Vec::new();
        for v_glu in [false, true] {
            for v_norm in [false, true] {
                if (v_glu && !glu) || (v_norm && !norm) {
                    continue;
                }
                variants.extend(rows.iter().map(|&rows| Variant {
                    rows,
                    glu: v_glu,
                    norm: v_norm,
                }));
            }
        }
        let sets: Vec<Vec<(&str, f64)>> = variants.iter().map(|&v| consts(v)).collect();
        // x, w, bias read-only; y read-write; the x window, a uniform buffer at a dynamic
        // offset. Pipelines without windows still declare it (naga counts the binding as used
        // even in the branch their constants switch off), so they get a zero buffer there.
        let mut entries: Vec<wgpu::BindGroupLayoutEntry> = [true, true, true, false]
            .into_iter()
            .enumerate()
            .map(|(i, ro)| Kernel::storage_entry(i as u32, ro))
            .collect();
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: 4,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: tuning.x_window,
                min_binding_size: wgpu::BufferSize::new(Self::X_WINDOW_BYTES),
            },
            count: None,
        });
        entries.push(texture_entry(5));
        entries.push(Kernel::storage_entry(6, true));
        let unused_window = (!tuning.x_window).then(|| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("matmul_quant unused x window"),
                size: Self::X_WINDOW_BYTES,
                usage: wgpu::BufferUsages::UNIFORM,
                mapped_at_creation: false,
            })
        });
        // The split kernel declares bindings 0..3 and 6, the plain one 0..5; each binding the
        // other kernel lacks is bound to an unused buffer or texture, so both take the same
        // bind groups.
        let source = if split {
            MATMUL_QUANT_SPLIT
        } else {
            MATMUL_QUANT
        };
        let members: Vec<_> = sets.iter().map(|c| (source, &c[..])).collect();
        let family = Kernel::with_layout(ctx, &entries, &members);
        Self {
            kernels: variants.into_iter().zip(family).collect(),
            tuning,
            offset_align: u64::from(ctx.limits.min_uniform_buffer_offset_alignment.max(1)),
            unused_window,
            unused_buffer: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("matmul_quant unused weight buffer"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            }),
            unused_texture: unused_texture(ctx),
        }
    }

    /// The rows-per-thread choices [`MatmulQuant::dispatch`] can pick with `tuning`, the
    /// pipelines [`MatmulQuant::with_variants`] compiles (llvmpipe JIT-compiles each for a
    /// fraction of a second): every choice when the batch size picks
    /// ([`QuantTuning::rows_for`]); with fixed rows r, r alone, or with `x_window` r and every
    /// smaller choice, which a window too narrow for r rows of a wide k falls to.
    fn dispatchable_rows(tuning: QuantTuning) -> Vec<usize> {
        match tuning.fixed_rows {
            None => Self::ROW_CHOICES.to_vec(),
            Some(r) if tuning.x_window => {
                Self::ROW_CHOICES.into_iter().filter(|&c| c <= r).collect()
            }
            Some(r) => vec![r],
        }
    }

    /// `w` holds [`pack_quantized`]'s words in a buffer, or [`super::quant_texture`]'s planes
    /// when the tuning has `w_texture`; `bias` may be any buffer when the call has no bias.
    /// With `x_window` x also needs `UNIFORM` usage and [`MatmulQuant::X_WINDOW_BYTES`] of
    /// room past its last row ([`MatmulQuant::x_buffer_bytes`]): each window binds that many
    /// bytes from the window's first row.
    pub fn bind(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        w: &WeightData,
        bias: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup, GpuError> {
        self.bind_with_norm(ctx, x, w, &self.unused_buffer, bias, y)
    }

    /// [`MatmulQuant::bind`] for [`MatmulQuant::encode_normed`]: x is the un-normed input and
    /// `norm_weight` the RMSNorm weight (k f32). Fails when the RMSNorm-fused pipelines were
    /// not built (`norm` in [`MatmulQuant::with_variants`]).
    pub fn bind_normed(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        w: &WeightData,
        norm_weight: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup, GpuError> {
        if !self.kernels.iter().any(|(v, _)| v.norm) {
            return Err(GpuError::Shape {
                op: "matmul_quant",
                msg: "built without the RMSNorm-fused form (with_variants(.., norm: true))".into(),
            });
        }
        self.bind_with_norm(ctx, x, w, norm_weight, bias, y)
    }

    fn bind_with_norm(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        w: &WeightData,
        norm_weight: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<wgpu::BindGroup, GpuError> {
        let kernel = &self.kernels[0].1;
        let (w_buffer, w_texture) = match w {
            WeightData::Buffer(b) if !self.tuning.w_texture => (b, &self.unused_texture),
            WeightData::Texture(t) if self.tuning.w_texture => (&self.unused_buffer, t),
            _ => {
                return Err(GpuError::Shape {
                    op: "matmul_quant",
                    msg: "the weight's storage (buffer or texture) is not the tuning's".into(),
                });
            }
        };
        let window = match &self.unused_window {
            Some(unused) => unused,
            None => {
                assert!(
                    x.usage().contains(wgpu::BufferUsages::UNIFORM)
                        && x.size() >= Self::X_WINDOW_BYTES,
                    "matmul_quant with x windows: x needs UNIFORM usage and room for a window"
                );
                x
            }
        };
        let mut entries: Vec<wgpu::BindGroupEntry> = [x, w_buffer, bias, y]
            .into_iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: 4,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: window,
                offset: 0,
                size: wgpu::BufferSize::new(Self::X_WINDOW_BYTES),
            }),
        });
        entries.push(wgpu::BindGroupEntry {
            binding: 5,
            resource: wgpu::BindingResource::TextureView(w_texture),
        });
        entries.push(wgpu::BindGroupEntry {
            binding: 6,
            resource: norm_weight.as_entire_binding(),
        });
        Ok(ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("matmul_quant"),
            layout: &kernel.layout,
            entries: &entries,
        }))
    }

    /// Bytes an x buffer of `rows` rows of `k` needs to be bound with any tuning: the rows,
    /// then room for the window a call starting at the last row binds.
    pub fn x_buffer_bytes(rows: usize, k: usize) -> u64 {
        (rows * k * 4) as u64 + Self::X_WINDOW_BYTES
    }

    /// Checks the shape contract the shader relies on.
    pub fn check(p: &MatmulParams) -> Result<(), GpuError> {
        let err = |msg| GpuError::Shape {
            op: "matmul_quant",
            msg,
        };
        if !p.k.is_multiple_of(QUANT_BLOCK) {
            return Err(err(format!(
                "k = {} is not a multiple of {QUANT_BLOCK}",
                p.k
            )));
        }
        if p.y_col + p.n > p.y_stride {
            return Err(err(format!(
                "columns {}..{} exceed the output width {}",
                p.y_col,
                p.y_col + p.n,
                p.y_stride
            )));
        }
        Ok(())
    }

    /// The tuning as built (`x_shared` off where the adapter cannot share).
    pub fn tuning(&self) -> QuantTuning {
        self.tuning
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, bg: &wgpu::BindGroup, p: &MatmulParams) {
        let flags = (p.bias as u32) | ((p.accumulate as u32) << 1);
        self.dispatch(false, None, self.tuning.cols, pass, bg, p, flags);
    }

    /// Whether this tuning has the RMSNorm-fused form (the k-split kernel's NORM).
    pub fn fuses_norm(tuning: QuantTuning) -> bool {
        tuning.k_split > 1
    }

    /// RMSNorm(x) · g, then the matmul, in one pass: y = RMSNorm(x, g, eps) · Wᵀ (+ bias)
    /// (+ y), with x and g bound by [`MatmulQuant::bind_normed`]. Needs `norm` in
    /// [`MatmulQuant::with_variants`].
    pub fn encode_normed(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        p: &MatmulParams,
        eps: f32,
    ) {
        let flags = (p.bias as u32) | ((p.accumulate as u32) << 1);
        self.dispatch(false, Some(eps), self.tuning.cols, pass, bg, p, flags);
    }

    /// SwiGLU's first half in one pass: the bound weight is the stacked (2·n, k) gate|up
    /// matrix, and y's columns y_col..y_col + n get silu(x·gateᵀ) · (x·upᵀ). `p.bias` and
    /// `p.accumulate` must be off. Needs [`MatmulQuant::with_glu`].
    pub fn encode_glu(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        p: &MatmulParams,
    ) {
        self.encode_glu_with(pass, bg, p, None);
    }

    /// [`MatmulQuant::encode_glu`] with RMSNorm fused in front, as in
    /// [`MatmulQuant::encode_normed`].
    pub fn encode_glu_normed(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        p: &MatmulParams,
        eps: f32,
    ) {
        self.encode_glu_with(pass, bg, p, Some(eps));
    }

    fn encode_glu_with(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        p: &MatmulParams,
        norm_eps: Option<f32>,
    ) {
        assert!(
            !p.bias && !p.accumulate,
            "encode_glu takes no bias or accumulate"
        );
        let cols = Self::glu_cols(self.tuning);
        self.dispatch(true, norm_eps, cols, pass, bg, p, 0);
    }

    /// Output columns per GLU thread: half the plain kernel's (each takes two weight rows), at
    /// most 8 (the shader keeps the up sums in the upper half of its accumulators).
    fn glu_cols(tuning: QuantTuning) -> usize {
        tuning.cols.div_ceil(2).min(8)
    }

    /// `norm_eps`: the NORM variant with that eps.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        glu: bool,
        norm_eps: Option<f32>,
        cols: usize,
        pass: &mut wgpu::ComputePass<'_>,
        bg: &wgpu::BindGroup,
        p: &MatmulParams,
        flags: u32,
    ) {
        let mut rows = self.tuning.rows_for(p.m);
        // Rows one call covers: all of them, or as many as a window holds in whole threads'
        // worth whose byte size keeps the next window's offset aligned.
        let mut span = p.m;
        if self.tuning.x_window {
            let fit = Self::MAX_WINDOW_K / p.k.max(1);
            let row_bytes = (p.k * 4) as u64;
            let step = (self.offset_align / gcd(self.offset_align, row_bytes)) as usize;
            let mut unit = rows * step / gcd(rows as u64, step as u64) as usize;
            while unit > fit && rows > 1 {
                rows = Self::ROW_CHOICES
                    .into_iter()
                    .rev()
                    .find(|&r| r < rows)
                    .unwrap_or(1);
                unit = rows * step / gcd(rows as u64, step as u64) as usize;
            }
            assert!(
                unit <= fit,
                "matmul_quant: k = {} is past the x window",
                p.k
            );
            span = fit / unit * unit;
        }
        let want = Variant {
            rows,
            glu,
            norm: norm_eps.is_some(),
        };
        // Never another pipeline in its place: a missing one is a bug of
        // `dispatchable_rows` (or a call of a variant that was not asked for).
        let kernel = self
            .kernels
            .iter()
            .find(|(v, _)| *v == want)
            .unwrap_or_else(|| {
                panic!(
                    "MatmulQuant was built without the {want:?} pipeline (tuning {:?})",
                    self.tuning
                )
            });
        let cols_per_group = if self.tuning.k_split > 1 {
            self.tuning.workgroup / self.tuning.k_split
        } else {
            self.tuning.workgroup * cols
        };
        let col_groups = p.n.div_ceil(cols_per_group) as u32;
        let mut row0 = 0;
        while row0 < p.m {
            let end = p.m.min(row0 + span);
            let imm = [
                end as u32,
                p.n as u32,
                p.k as u32,
                p.y_stride as u32,
                p.y_col as u32,
                flags,
                row0 as u32,
                norm_eps.unwrap_or(0.0).to_bits(),
            ];
            // The k-split kernel continues past the 65,535-workgroup limit along z (4 columns
            // a group: a 262k-column lm_head would pass it); the plain kernel's 64+ columns
            // a group stay far below it.
            let (gx, gz) = if self.tuning.k_split > 1 {
                let gz = col_groups.div_ceil(65535);
                (col_groups.div_ceil(gz), gz)
            } else {
                (col_groups, 1)
            };
            let groups = [gx, (end - row0).div_ceil(rows) as u32, gz];
            if self.tuning.x_window {
                let offset = (row0 * p.k * 4) as u32;
                kernel.1.dispatch_at(pass, bg, &[offset], &imm, groups);
            } else {
                kernel.1.dispatch(pass, bg, &imm, groups);
            }
            row0 = end;
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// y (m, y_stride): columns y_col.. get x·Wᵀ (+ bias) (+ previous y) in f64, W being the
/// (n, k) GGUF `dtype` blocks in `raw` dequantized by [`crate::loader::dequant`].
pub fn reference(
    x: &[f32],
    raw: &[u8],
    dtype: TensorDType,
    bias: Option<&[f32]>,
    y: &mut [f32],
    p: &MatmulParams,
) -> Result<(), GpuError> {
    let w = dequant::to_f32(dtype, raw, p.n * p.k).map_err(|msg| GpuError::Shape {
        op: "matmul_quant reference",
        msg,
    })?;
    super::matmul::reference(x, &w, bias, y, p);
    Ok(())
}
