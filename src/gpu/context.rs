//! The wgpu device wllm runs on: adapter choice, features, limits.
//!
//! Getting a device ([`GpuContext::new`]) is separate from using it (everything else takes
//! `&GpuContext`), so an application that already renders with wgpu can hand over its own
//! `Device`/`Queue` through [`GpuContext::from_device`], and tests share one device.

use std::sync::Arc;

use super::GpuError;

/// Which adapter to use. Defaults come from `WLLM_BACKEND`, `WLLM_ADAPTER` and
/// `WLLM_KERNEL_FORMS`.
#[derive(Debug, Clone, Default)]
pub struct AdapterSelector {
    /// Backends to search (`vulkan`, `gl`, `metal`, `dx12`, `all`); `None` = wgpu's default set.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name.
    pub name_contains: Option<String>,
    /// The kernel forms to build; `None` = the adapter's own ([`KernelForms::for_device_type`]).
    pub kernel_forms: Option<KernelForms>,
}

impl AdapterSelector {
    /// Reads `WLLM_BACKEND`, `WLLM_ADAPTER` and `WLLM_KERNEL_FORMS`, and checks the values of
    /// `WLLM_QUANT_WEIGHTS` and `WLLM_KV_POOL`.
    pub fn from_env() -> Result<Self, GpuError> {
        let set = |name| std::env::var(name).ok().filter(|s| !s.trim().is_empty());
        let backends = set("WLLM_BACKEND")
            .map(|s| parse_backends(&s))
            .transpose()?;
        let kernel_forms = set("WLLM_KERNEL_FORMS")
            .map(|s| KernelForms::parse(&s))
            .transpose()?;
        // Where weights and KV pools live is read where they are made; a value those places
        // would not understand fails here, before a model is loaded.
        placement_from_env("WLLM_QUANT_WEIGHTS")?;
        placement_from_env("WLLM_KV_POOL")?;
        Ok(Self {
            backends,
            name_contains: set("WLLM_ADAPTER"),
            kernel_forms,
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
}

/// Where an override (`WLLM_QUANT_WEIGHTS`, `WLLM_KV_POOL`) asks data to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Buffer,
    Texture,
}

/// The environment variable `name` as a [`Placement`]: `None` unset or empty, an error for
/// anything but `buffer` or `texture`.
pub fn placement_from_env(name: &'static str) -> Result<Option<Placement>, GpuError> {
    let Ok(value) = std::env::var(name) else {
        return Ok(None);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "buffer" => Ok(Some(Placement::Buffer)),
        "texture" => Ok(Some(Placement::Texture)),
        _ => Err(GpuError::BadEnv {
            name,
            value,
            why: "expected buffer or texture".into(),
        }),
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

/// What `wllm info` shows about one adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub shader_f16: bool,
    pub subgroup: bool,
    /// Lanes per subgroup, smallest and largest (equal on CPU adapters: 8 on 256-bit
    /// llvmpipe, 4 on WARP).
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub immediates: bool,
    pub timestamp_query: bool,
    pub max_storage_binding_bytes: u64,
    pub max_buffer_bytes: u64,
    pub max_storage_buffers_per_stage: u32,
    pub max_workgroup_memory_bytes: u32,
    /// Whether wllm can run on it (it needs immediates and 8+ storage buffers per stage).
    pub usable: bool,
    /// The kernel forms wllm builds on it by default (`cpu` or `gpu`; `WLLM_KERNEL_FORMS`
    /// overrides).
    pub kernel_forms: String,
}

fn report(adapter: &wgpu::Adapter) -> AdapterReport {
    let info = adapter.get_info();
    let f = adapter.features();
    let l = adapter.limits();
    let kernel_forms = match KernelForms::for_device_type(info.device_type) {
        KernelForms::Cpu => "cpu",
        KernelForms::Gpu => "gpu",
    };
    AdapterReport {
        name: info.name,
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver,
        driver_info: info.driver_info,
        shader_f16: f.contains(wgpu::Features::SHADER_F16),
        subgroup: f.contains(wgpu::Features::SUBGROUP),
        subgroup_min_size: info.subgroup_min_size,
        subgroup_max_size: info.subgroup_max_size,
        immediates: f.contains(wgpu::Features::IMMEDIATES),
        timestamp_query: f.contains(wgpu::Features::TIMESTAMP_QUERY),
        max_storage_binding_bytes: l.max_storage_buffer_binding_size,
        max_buffer_bytes: l.max_buffer_size,
        max_storage_buffers_per_stage: l.max_storage_buffers_per_shader_stage,
        max_workgroup_memory_bytes: l.max_compute_workgroup_storage_size,
        usable: usable(adapter),
        kernel_forms: kernel_forms.into(),
    }
}

const MIN_IMMEDIATE_BYTES: u32 = 64;
const MIN_STORAGE_BUFFERS: u32 = 8;

fn usable(adapter: &wgpu::Adapter) -> bool {
    adapter.features().contains(wgpu::Features::IMMEDIATES)
        && adapter.limits().max_immediate_size >= MIN_IMMEDIATE_BYTES
        && adapter.limits().max_storage_buffers_per_shader_stage >= MIN_STORAGE_BUFFERS
}

fn instance(backends: Option<wgpu::Backends>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if let Some(b) = backends {
        desc.backends = b;
    }
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu sees on the selected backends (all backends when `backends` is `None`).
pub fn list_adapters(backends: Option<wgpu::Backends>) -> Vec<AdapterReport> {
    let inst = instance(Some(backends.unwrap_or(wgpu::Backends::all())));
    let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    adapters.iter().map(report).collect()
}

/// A device and queue plus the facts about them the kernels depend on.
#[derive(Clone)]
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_info: Arc<AdapterReport>,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// The kernel forms built on this device (set with [`GpuContext::with_kernel_forms`]).
    pub kernel_forms: KernelForms,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter_info.name)
            .field("backend", &self.adapter_info.backend)
            .field("kernel_forms", &self.kernel_forms)
            .finish()
    }
}

impl GpuContext {
    /// Picks an adapter (see [`AdapterSelector`]) and opens a device on it with every limit
    /// the adapter offers (the defaults are far below what real GPUs allow).
    pub fn new(selector: &AdapterSelector) -> Result<Self, GpuError> {
        let inst = instance(selector.backends);
        let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        let mut candidates: Vec<&wgpu::Adapter> = adapters
            .iter()
            .filter(|a| match &selector.name_contains {
                Some(n) => a.get_info().name.to_lowercase().contains(&n.to_lowercase()),
                None => true,
            })
            .filter(|a| usable(a))
            .collect();
        // Prefer real GPUs over software rasterizers, and Vulkan/Metal/DX12 over GL.
        candidates.sort_by_key(|a| {
            let i = a.get_info();
            let ty = match i.device_type {
                wgpu::DeviceType::DiscreteGpu => 0,
                wgpu::DeviceType::IntegratedGpu => 1,
                wgpu::DeviceType::VirtualGpu => 2,
                wgpu::DeviceType::Other => 3,
                wgpu::DeviceType::Cpu => 4,
            };
            let be = if i.backend == wgpu::Backend::Gl { 1 } else { 0 };
            (ty, be)
        });
        let adapter = candidates.first().ok_or_else(|| GpuError::NoAdapter {
            wanted: selector
                .name_contains
                .clone()
                .unwrap_or_else(|| "any".to_string()),
            seen: seen.clone(),
        })?;
        let ctx = Self::open(adapter)?;
        Ok(match selector.kernel_forms {
            Some(forms) => {
                log::info!("building the {forms:?} kernel forms (asked for)");
                ctx.with_kernel_forms(forms)
            }
            None => ctx,
        })
    }

    fn open(adapter: &wgpu::Adapter) -> Result<Self, GpuError> {
        let wanted = wgpu::Features::IMMEDIATES
            | wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY;
        let features = adapter.features() & wanted;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wllm"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| GpuError::RequestDevice(e.to_string()))?;
        let info = report(adapter);
        log::info!(
            "using adapter {} ({}, {}), f16={} subgroup={} max binding {} MiB",
            info.name,
            info.backend,
            info.device_type,
            info.shader_f16,
            info.subgroup,
            info.max_storage_binding_bytes >> 20
        );
        Ok(Self {
            device,
            queue,
            adapter_info: Arc::new(info),
            limits,
            features,
            kernel_forms: KernelForms::for_device_type(adapter.get_info().device_type),
        })
    }

    /// Wraps a device the application already has. It must have been created with
    /// `Features::IMMEDIATES` and a `max_immediate_size` of at least 64 bytes.
    pub fn from_device(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<Self, GpuError> {
        let features = device.features();
        let limits = device.limits();
        if !features.contains(wgpu::Features::IMMEDIATES)
            || limits.max_immediate_size < MIN_IMMEDIATE_BYTES
        {
            return Err(GpuError::MissingFeature(
                "the device needs Features::IMMEDIATES with max_immediate_size >= 64".into(),
            ));
        }
        Ok(Self {
            device,
            queue,
            adapter_info: Arc::new(report(adapter)),
            limits,
            features,
            kernel_forms: KernelForms::for_device_type(adapter.get_info().device_type),
        })
    }

    /// Largest buffer that can be bound as one storage binding.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// The same device building the other kernel forms: on a CPU adapter, the GPU forms run
    /// (slowly) on lavapipe, which is how the tests check them on a machine without a GPU.
    /// Set it before building a model on the context.
    pub fn with_kernel_forms(mut self, forms: KernelForms) -> Self {
        self.kernel_forms = forms;
        self
    }

    /// Whether kernels build their CPU-adapter forms ([`KernelForms::Cpu`]).
    pub fn wants_cpu_kernels(&self) -> bool {
        self.kernel_forms == KernelForms::Cpu
    }
}
