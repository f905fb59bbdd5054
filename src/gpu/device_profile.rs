//! Every device-dependent choice, made once: which adapter ([`AdapterSelector`]), which
//! forms of the kernels, where quantized weights and the KV pool live, the workgroup shapes
//! and the engine's defaults that follow from them ([`DeviceProfile`]).
//!
//! This is the only module that reads `WLLM_*` environment variables (through
//! [`AdapterSelector::from_env`]) and the only one that decides a kernel form or placement;
//! kernel wrappers and the runner read the profile of their [`GpuContext`].
//!
//! [`GpuContext`]: super::GpuContext

use super::GpuError;
use super::kernels::attention::AttentionKind;
use super::kernels::matmul::Matmul;
use super::kernels::matmul_quant::{MatmulQuant, QuantTuning};

/// Which adapter to use and what to override on it. [`AdapterSelector::from_env`] fills it
/// from `WLLM_BACKEND`, `WLLM_ADAPTER`, `WLLM_KERNEL_FORMS`, `WLLM_QUANT_WEIGHTS` and
/// `WLLM_KV_POOL`; `Default` overrides nothing.
#[derive(Debug, Clone, Default)]
pub struct AdapterSelector {
    /// Backends to search (`vulkan`, `gl`, `metal`, `dx12`, `all`); `None` = wgpu's default set.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name.
    pub name_contains: Option<String>,
    /// The kernel forms to build; `None` = the adapter's own ([`KernelForms::for_device_type`]).
    pub kernel_forms: Option<KernelForms>,
    /// Where quantized weights live; `None` = textures with the CPU forms, buffers otherwise.
    pub quant_weights: Option<Placement>,
    /// Where the KV pool lives; `None` = textures where the CPU forms run and the pool fits
    /// one, buffers otherwise. `Texture` where textures cannot be used fails the model load.
    pub kv_pool: Option<Placement>,
}

impl AdapterSelector {
    /// Reads the `WLLM_*` device variables; a value none of them understands is an error
    /// here, before a model is loaded.
    pub fn from_env() -> Result<Self, GpuError> {
        let set = |name| std::env::var(name).ok().filter(|s| !s.trim().is_empty());
        Ok(Self {
            backends: set("WLLM_BACKEND")
                .map(|s| parse_backends(&s))
                .transpose()?,
            name_contains: set("WLLM_ADAPTER"),
            kernel_forms: set("WLLM_KERNEL_FORMS")
                .map(|s| KernelForms::parse(&s))
                .transpose()?,
            quant_weights: set("WLLM_QUANT_WEIGHTS")
                .map(|s| Placement::parse("WLLM_QUANT_WEIGHTS", s))
                .transpose()?,
            kv_pool: set("WLLM_KV_POOL")
                .map(|s| Placement::parse("WLLM_KV_POOL", s))
                .transpose()?,
        })
    }
}

/// Which forms of the kernels a context builds. Each kernel's forms compute the same function;
/// they differ in how work is spread over threads, and where a form changes a sum's order it
/// keeps that order fixed for every batch (so outputs stay batch-invariant within one form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelForms {
    /// For CPU adapters (llvmpipe, WARP): few threads with long serial sums, quantized weights
    /// in textures, activations through uniform windows.
    Cpu,
    /// For GPUs: many threads, reductions split over lanes and workgroups.
    Gpu,
}

impl KernelForms {
    /// CPU adapters get the CPU forms, every other device type the GPU forms.
    pub fn for_device_type(t: wgpu::DeviceType) -> KernelForms {
        if t == wgpu::DeviceType::Cpu {
            KernelForms::Cpu
        } else {
            KernelForms::Gpu
        }
    }

    /// `cpu` or `gpu` (`WLLM_KERNEL_FORMS`).
    pub fn parse(s: &str) -> Result<KernelForms, GpuError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(KernelForms::Cpu),
            "gpu" => Ok(KernelForms::Gpu),
            other => Err(GpuError::BadKernelForms(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelForms::Cpu => "cpu",
            KernelForms::Gpu => "gpu",
        }
    }
}

/// Where data lives: storage buffers or sampled textures (faster to read on CPU adapters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Buffer,
    Texture,
}

impl Placement {
    fn parse(name: &'static str, value: String) -> Result<Placement, GpuError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "buffer" => Ok(Placement::Buffer),
            "texture" => Ok(Placement::Texture),
            _ => Err(GpuError::BadEnv {
                name,
                value,
                why: "expected buffer or texture".into(),
            }),
        }
    }
}

/// Parses `vulkan|gl|metal|dx12|all` (comma-separated lists allowed).
pub fn parse_backends(s: &str) -> Result<wgpu::Backends, GpuError> {
    let mut out = wgpu::Backends::empty();
    for part in s.split(',').map(|p| p.trim().to_ascii_lowercase()) {
        out |= match part.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "gl" | "opengl" | "gles" => wgpu::Backends::GL,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "all" => wgpu::Backends::all(),
            other => {
                return Err(GpuError::BadBackend(other.to_string()));
            }
        };
    }
    Ok(out)
}

/// The choices made for one device: derived from the kernel forms and the selector's
/// overrides when the context opens, never changed after a model is built on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceProfile {
    pub kernel_forms: KernelForms,
    /// Quantized weights in textures (CPU forms: the texture path caches better on llvmpipe)
    /// or storage buffers.
    pub quant_weights: Placement,
    /// The KV pool's placement when asked for one; `None` lets the pool take textures where
    /// the serial attention runs and the pool fits one.
    pub kv_pool: Option<Placement>,
    /// Paged attention: serial (CPU forms) or split over key partitions (GPUs).
    pub attention: AttentionKind,
    /// Lanes sharing one output column of the dense matmul (1: matmul.wgsl; more: the
    /// k-split kernel). One model uses one value at every batch size.
    pub dense_k_split: usize,
    /// Threads per row of the norms: 256 on GPUs, one 8-lane SIMD group on CPU adapters.
    pub norm_workgroup: usize,
    /// Threads per row of the sampler (the picks do not depend on it).
    pub sample_workgroup: usize,
    /// Lanes of every subgroup where the adapter has subgroups of one fixed size (llvmpipe: 8
    /// on 256-bit CPUs); the CPU forms share loads through `subgroupBroadcast` only then.
    pub uniform_subgroup: Option<u32>,
    /// Engine default: sample on the GPU (on CPU adapters the CPU sampler is faster).
    pub gpu_sampling: bool,
    /// Engine default: schedule the next step while the GPU runs this one (CPU adapters run a
    /// step inside its submit, so overlapping gains nothing there).
    pub overlap_steps: bool,
    /// The selector's quantized-weight override, kept for [`DeviceProfile::with_kernel_forms`].
    asked_quant_weights: Option<Placement>,
}

impl DeviceProfile {
    /// The choices for `forms` on an adapter with `uniform_subgroup` (see the field), with the
    /// selector's placement overrides.
    pub fn new(
        forms: KernelForms,
        selector: &AdapterSelector,
        uniform_subgroup: Option<u32>,
    ) -> DeviceProfile {
        let cpu = forms == KernelForms::Cpu;
        DeviceProfile {
            kernel_forms: forms,
            quant_weights: selector.quant_weights.unwrap_or(if cpu {
                Placement::Texture
            } else {
                Placement::Buffer
            }),
            kv_pool: selector.kv_pool,
            attention: if cpu {
                AttentionKind::Serial
            } else {
                AttentionKind::Split
            },
            dense_k_split: if cpu { 1 } else { Matmul::GPU_K_SPLIT },
            norm_workgroup: if cpu { 8 } else { 256 },
            sample_workgroup: if cpu {
                64
            } else {
                crate::gpu::kernels::sample::WG
            },
            uniform_subgroup,
            gpu_sampling: !cpu,
            overlap_steps: !cpu,
            asked_quant_weights: selector.quant_weights,
        }
    }

    /// The same overrides with the other kernel forms.
    pub fn with_kernel_forms(&self, forms: KernelForms) -> DeviceProfile {
        DeviceProfile::new(
            forms,
            &AdapterSelector {
                quant_weights: self.asked_quant_weights,
                kv_pool: self.kv_pool,
                ..AdapterSelector::default()
            },
            self.uniform_subgroup,
        )
    }

    /// The quantized matmul's shape for a model whose widest input is `max_k`.
    ///
    /// CPU adapters (llvmpipe) pay per loaded word and lane, so a thread takes many columns to
    /// reuse x, and x comes through uniform windows when every call's k fits one (`max_k`);
    /// a workgroup is one 8-lane SIMD group, so that a 576-column matmul still makes 9
    /// workgroups to spread over the cores (16 × 16 made 3, and decode ran ~1.4× slower).
    /// GPUs want many threads: 16 lanes per column, each taking every 16th k-block, so that
    /// a decode step's matvec has N · 16 threads instead of N walking all of K alone.
    /// Weights in textures ([`DeviceProfile::quant_weights`]) take the one-thread-per-column
    /// kernel, the only one that reads textures.
    pub fn quant_tuning(&self, max_k: usize) -> QuantTuning {
        let w_texture = self.quant_weights == Placement::Texture;
        if self.cpu_forms() {
            QuantTuning {
                workgroup: 8,
                k_split: 1,
                cols: 8,
                fixed_rows: None,
                x_window: max_k <= MatmulQuant::MAX_WINDOW_K,
                x_shared: true,
                w_texture,
            }
        } else {
            QuantTuning {
                workgroup: 64,
                k_split: if w_texture { 1 } else { 16 },
                cols: 1,
                fixed_rows: None,
                x_window: false,
                x_shared: false,
                w_texture,
            }
        }
    }

    /// Whether the CPU-adapter forms are built.
    pub fn cpu_forms(&self) -> bool {
        self.kernel_forms == KernelForms::Cpu
    }
}
