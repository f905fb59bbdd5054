//! The wgpu device wllm runs on: adapter choice, features, limits.
//!
//! Getting a device ([`GpuContext::new`]) is separate from using it (everything else takes
//! `&GpuContext`), so an application that already renders with wgpu can hand over its own
//! `Device`/`Queue` through [`GpuContext::from_device`], and tests share one device.

use std::sync::Arc;

use super::GpuError;
use super::device_profile::{AdapterSelector, DeviceProfile, KernelForms};

/// What `wllm info` shows about one adapter.
#[derive(Debug, Clone, Default, serde::Serialize)]
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
    /// The memory the KV budget is planned against, where the backend can tell
    /// ([`DeviceMemory::query`]); `None` elsewhere.
    pub memory: Option<DeviceMemory>,
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
        memory: DeviceMemory::query(adapter),
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
    /// A storage-binding size below the device's, set by [`GpuContext::with_max_binding_bytes`]
    /// (tests of the row splits).
    binding_cap: Option<u64>,
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
            "using adapter {} ({}, {}), f16={} subgroup={} max binding {} MiB, memory: {}",
            info.name,
            info.backend,
            info.device_type,
            info.shader_f16,
            info.subgroup,
            info.max_storage_binding_bytes >> 20,
            info.memory
                .map_or_else(|| "unknown on this backend".to_string(), |m| m.to_string())
        );
        Ok(Self {
            device,
            queue,
            adapter_info: Arc::new(info),
            limits,
            features,
            profile,
            binding_cap: None,
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
            binding_cap: None,
        })
    }

    /// Largest buffer that can be bound as one storage binding (or the lower figure set with
    /// [`GpuContext::with_max_binding_bytes`]). Everything that splits a tensor or caps the
    /// KV pool for the binding limit asks here.
    pub fn max_binding_bytes(&self) -> u64 {
        let device = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        self.binding_cap.map_or(device, |cap| cap.min(device))
    }

    /// The same device with a storage-binding limit of at most `bytes` as far as wllm is
    /// concerned (the device keeps its own): matrices split into more row parts, the KV pool
    /// holds fewer blocks per layer. For tests of those splits on an adapter whose real limit
    /// the tiny test models never reach. Set it before building a model on the context; it
    /// is rounded down to a multiple of 4 bytes and is at least 4.
    pub fn with_max_binding_bytes(mut self, bytes: u64) -> Self {
        self.binding_cap = Some((bytes & !3).max(4));
        self
    }

    /// The device's memory as the backend reports it (see [`DeviceMemory::query`]); `None`
    /// where it cannot tell.
    pub fn memory(&self) -> Option<DeviceMemory> {
        self.adapter_info.memory
    }

    /// The same device building the other kernel forms: on a CPU adapter, the GPU forms run
    /// (slowly) on lavapipe, which is how the tests check them on a machine without a GPU.
    /// Set it before building a model on the context.
    pub fn with_kernel_forms(mut self, forms: KernelForms) -> Self {
        self.profile = self.profile.with_kernel_forms(forms);
        self
    }
}

/// Where a [`DeviceMemory`] figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    /// `VK_EXT_memory_budget`'s budget for the largest device-local heap: what this process
    /// may still allocate there (the heap less what other processes hold).
    VulkanHeapBudget,
    /// The size of the largest device-local Vulkan heap (no `VK_EXT_memory_budget`).
    VulkanHeapSize,
    /// Host memory available for new allocations without swapping (Linux `MemAvailable`):
    /// a CPU adapter's (lavapipe's) memory is the host's.
    HostAvailable,
}

/// How much memory the device offers wllm, read once when the adapter is reported.
///
/// wgpu has no portable query, so this asks the backend where it can: on Vulkan the
/// physical device's memory heaps (through wgpu-hal); on a CPU adapter, on any backend, the
/// host's available memory. Metal, DX12 and GL GPUs report nothing (`None`), and the KV
/// budget falls back to a fixed size there (see `crate::generate::KvBudget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeviceMemory {
    pub bytes: u64,
    pub source: MemorySource,
}

impl std::fmt::Display for DeviceMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.source {
            MemorySource::VulkanHeapBudget => "device-local memory budget",
            MemorySource::VulkanHeapSize => "device-local memory",
            MemorySource::HostAvailable => "available host memory",
        };
        write!(f, "{} {what}", fmt_bytes(self.bytes))
    }
}

/// `bytes` in GiB above one GiB, else in MiB (one decimal).
pub fn fmt_bytes(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / GIB)
    } else {
        format!("{:.0} MiB", bytes as f64 / MIB)
    }
}

impl DeviceMemory {
    /// The memory `adapter` offers: a CPU adapter's is the host's available memory (its
    /// Vulkan heap, if any, is the host's total, most of it possibly in use); a Vulkan GPU's
    /// is its largest device-local heap (its budget where `VK_EXT_memory_budget` says it).
    pub fn query(adapter: &wgpu::Adapter) -> Option<DeviceMemory> {
        if adapter.get_info().device_type == wgpu::DeviceType::Cpu {
            if let Some(bytes) = host_available_bytes() {
                return Some(DeviceMemory {
                    bytes,
                    source: MemorySource::HostAvailable,
                });
            }
        }
        vulkan_memory(adapter)
    }
}

/// `MemAvailable` from /proc/meminfo (Linux); `None` elsewhere or when unreadable. (A cgroup
/// memory limit below it is not seen.)
fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

/// The `MemAvailable:` line of a /proc/meminfo text, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line["MemAvailable:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// `VkPhysicalDeviceMemoryBudgetPropertiesEXT` as the Vulkan headers lay it out (ash, which
/// declares it, is wgpu-hal's dependency and not re-exported).
#[cfg(not(target_arch = "wasm32"))]
#[repr(C)]
struct VkMemoryBudget {
    s_type: i32,
    p_next: *mut std::ffi::c_void,
    heap_budget: [u64; VK_MAX_MEMORY_HEAPS],
    heap_usage: [u64; VK_MAX_MEMORY_HEAPS],
}

#[cfg(not(target_arch = "wasm32"))]
const VK_MAX_MEMORY_HEAPS: usize = 16;
/// `VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT`
#[cfg(not(target_arch = "wasm32"))]
const VK_STRUCTURE_TYPE_MEMORY_BUDGET: i32 = 1_000_237_000;
/// `VK_MEMORY_HEAP_DEVICE_LOCAL_BIT`
#[cfg(not(target_arch = "wasm32"))]
const VK_HEAP_DEVICE_LOCAL: u32 = 0x1;
/// `VK_API_VERSION_1_1` (vkGetPhysicalDeviceMemoryProperties2 is core from 1.1)
#[cfg(not(target_arch = "wasm32"))]
const VK_API_VERSION_1_1: u32 = (1 << 22) | (1 << 12);

/// The largest device-local heap of a Vulkan adapter: its budget where the device has
/// `VK_EXT_memory_budget` (and Vulkan 1.1), else its size. `None` on other backends.
#[cfg(not(target_arch = "wasm32"))]
fn vulkan_memory(adapter: &wgpu::Adapter) -> Option<DeviceMemory> {
    // SAFETY: the hal adapter is only read (two property queries on its physical device);
    // nothing is created or destroyed through it, and the guard is dropped here.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let instance = hal.shared_instance().raw_instance();
    let phd = hal.raw_physical_device();
    // SAFETY: `phd` is a physical device of `instance` (wgpu-hal enumerated it there).
    let props = unsafe { instance.get_physical_device_memory_properties(phd) };
    let count = (props.memory_heap_count as usize).min(VK_MAX_MEMORY_HEAPS);
    let (heap, size) = props.memory_heaps[..count]
        .iter()
        .enumerate()
        .filter(|(_, h)| h.flags.as_raw() & VK_HEAP_DEVICE_LOCAL != 0)
        .map(|(i, h)| (i, h.size))
        .max_by_key(|&(_, size)| size)?;
    let version_ok = hal.shared_instance().instance_api_version() >= VK_API_VERSION_1_1
        && hal.physical_device_capabilities().properties().api_version >= VK_API_VERSION_1_1;
    let has_budget = hal
        .physical_device_capabilities()
        .supports_extension(c"VK_EXT_memory_budget");
    if version_ok && has_budget {
        let mut budget = VkMemoryBudget {
            s_type: VK_STRUCTURE_TYPE_MEMORY_BUDGET,
            p_next: std::ptr::null_mut(),
            heap_budget: [0; VK_MAX_MEMORY_HEAPS],
            heap_usage: [0; VK_MAX_MEMORY_HEAPS],
        };
        // SAFETY: Vulkan 1.1 on both instance and device (checked above), so the core
        // entry point is loaded; the chained struct is the extension's, which the physical
        // device supports, laid out as the spec declares it, and outlives the call.
        let query = |p: &mut _| unsafe { instance.get_physical_device_memory_properties2(phd, p) };
        let mut props2 = default_arg(&query);
        props2.p_next = (&mut budget as *mut VkMemoryBudget).cast();
        query(&mut props2);
        let b = budget.heap_budget[heap];
        if b > 0 {
            return Some(DeviceMemory {
                bytes: b.min(size),
                source: MemorySource::VulkanHeapBudget,
            });
        }
    }
    Some(DeviceMemory {
        bytes: size,
        source: MemorySource::VulkanHeapSize,
    })
}

/// A default value of the type `f` takes by reference (so a Vulkan struct from ash, which
/// this crate does not name, can be filled before `f` is called with it).
#[cfg(not(target_arch = "wasm32"))]
fn default_arg<P: Default>(_f: &impl Fn(&mut P)) -> P {
    P::default()
}

#[cfg(target_arch = "wasm32")]
fn vulkan_memory(_adapter: &wgpu::Adapter) -> Option<DeviceMemory> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24683792 kB\nMemFree:  100 kB\nMemAvailable:   24094756 kB\n";
        assert_eq!(parse_mem_available(text), Some(24_094_756 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
    }

    #[test]
    fn the_budget_struct_has_the_vulkan_layout() {
        // sType (4) + padding (4) + pNext (8) + 2 × 16 × VkDeviceSize on 64-bit targets.
        if std::mem::size_of::<usize>() == 8 {
            assert_eq!(std::mem::size_of::<VkMemoryBudget>(), 8 + 8 + 2 * 16 * 8);
        }
    }

    /// The Vulkan heap query on every Vulkan adapter present (lavapipe in CI, whose memory
    /// the KV budget otherwise takes from the host: this is the path real GPUs take). A
    /// machine without one fails here, as the GPU tests do.
    #[test]
    fn vulkan_adapters_report_a_device_local_heap() {
        let inst = instance(Some(wgpu::Backends::VULKAN));
        let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::VULKAN));
        assert!(
            !adapters.is_empty(),
            "no Vulkan adapter (install mesa-vulkan-drivers)"
        );
        for a in &adapters {
            let m = vulkan_memory(a).expect("a Vulkan adapter without a device-local heap");
            assert!(m.bytes >= 1 << 20, "{}: {m}", a.get_info().name);
            assert!(matches!(
                m.source,
                MemorySource::VulkanHeapSize | MemorySource::VulkanHeapBudget
            ));
            eprintln!("{}: {m}", a.get_info().name);
        }
    }

    #[test]
    fn bytes_print_in_mib_or_gib() {
        assert_eq!(fmt_bytes(270 << 20), "270 MiB");
        assert_eq!(fmt_bytes(16 << 30), "16.0 GiB");
        assert_eq!(fmt_bytes(3 << 29), "1.5 GiB");
    }
}
