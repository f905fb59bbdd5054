//! The wgpu device wllm runs on: adapter choice, features, limits.
//!
//! Getting a device ([`GpuContext::new`]) is separate from using it (everything else takes
//! `&GpuContext`), so an application that already renders with wgpu can hand over its own
//! `Device`/`Queue` through [`GpuContext::from_device`], and tests share one device.

use std::sync::Arc;

use super::GpuError;
use super::device_profile::{AdapterSelector, DeviceProfile, KernelForms};

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
    let kernel_forms = KernelForms::for_device_type(info.device_type).name();
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

/// The subgroup size where the adapter has subgroups and all of them are that size.
fn uniform_subgroup(adapter: &wgpu::Adapter) -> Option<u32> {
    let info = adapter.get_info();
    (adapter.features().contains(wgpu::Features::SUBGROUP)
        && info.subgroup_min_size == info.subgroup_max_size)
        .then_some(info.subgroup_min_size)
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
    /// Kernel forms, placements and defaults on this device (the kernel forms can be changed
    /// with [`GpuContext::with_kernel_forms`] before a model is built).
    pub profile: DeviceProfile,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter_info.name)
            .field("backend", &self.adapter_info.backend)
            .field("profile", &self.profile)
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
        let forms = match selector.kernel_forms {
            Some(forms) => {
                log::info!("building the {forms:?} kernel forms (asked for)");
                forms
            }
            None => KernelForms::for_device_type(adapter.get_info().device_type),
        };
        Self::open(
            adapter,
            DeviceProfile::new(forms, selector, uniform_subgroup(adapter)),
        )
    }

    fn open(adapter: &wgpu::Adapter, profile: DeviceProfile) -> Result<Self, GpuError> {
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
            profile,
        })
    }

    /// Wraps a device the application already has. It must have been created with
    /// `Features::IMMEDIATES` and a `max_immediate_size` of at least 64 bytes. The profile is
    /// the adapter's default (no `WLLM_*` variable is read).
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
            profile: DeviceProfile::new(
                KernelForms::for_device_type(adapter.get_info().device_type),
                &AdapterSelector::default(),
                uniform_subgroup(adapter),
            ),
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
        self.profile = self.profile.with_kernel_forms(forms);
        self
    }
}
