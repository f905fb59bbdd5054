//! Compute pipelines built from the WGSL files in `shaders/`.
//!
//! Every kernel is a single WGSL file with one entry point `main`, its tuning and element-type
//! choices given as `override` constants. Pipelines use the layout naga derives from the shader,
//! so a wrapper only names its buffers in binding order.
//!
//! Kernels that both kernel families run sit in `shaders/`; the forms only one family's
//! [`DeviceProfile`] picks sit in `shaders/cpu/` ([`KernelForms::Cpu`]: lavapipe, llvmpipe) and
//! `shaders/gpu/` ([`KernelForms::Gpu`]), each named by [`ShaderSource::family`].
//!
//! [`DeviceProfile`]: super::DeviceProfile

use super::GpuContext;
use super::device_profile::KernelForms;

/// A WGSL file compiled into the crate: `shaders/<name>.wgsl`, or for a family's own form
/// `shaders/<family>/<name>.wgsl`.
#[derive(Debug, Clone, Copy)]
pub struct ShaderSource {
    /// The bare kernel name (no directory): the label of its pipelines and of its rows in
    /// `wllm bench --profile`, unique over every family.
    pub name: &'static str,
    /// The kernel family whose form this is (its subdirectory, [`KernelForms::name`]); `None`
    /// for a kernel both families run.
    pub family: Option<KernelForms>,
    pub wgsl: &'static str,
}

impl ShaderSource {
    /// The file's path under `shaders/`: `<name>.wgsl` or `<family>/<name>.wgsl`.
    pub fn path(&self) -> String {
        match self.family {
            Some(f) => format!("{}/{}.wgsl", f.name(), self.name),
            None => format!("{}.wgsl", self.name),
        }
    }

    /// The text to compile on `ctx`: as it is, or on adapters without subgroups with its
    /// `subgroupBroadcast` calls renamed to the stand-in [`SUBGROUP_STAND_IN`] the shader
    /// defines (naga rejects a module that names a subgroup builtin on such a device even
    /// where an override switches the call off, and those shaders switch it off there).
    ///
    /// For kernels that append `shaders/lib/quant_blocks.wgsl`, the library's `quant_vec4`
    /// dispatch over every format is swapped for a direct call to the decoder of the `FORMAT`
    /// constant's format, or for a stub where `FORMAT` is 0 (the Q4/Q8 layouts, which never
    /// call it) ([`specialize_quant`]): the one-thread-per-column matmul inlines it 128 times,
    /// and drivers inline before they drop dead branches (llvmpipe compiled it ~5x faster with
    /// one format's code than with all).
    pub fn wgsl_for(
        &self,
        ctx: &GpuContext,
        constants: &[(&str, f64)],
    ) -> std::borrow::Cow<'static, str> {
        let text: std::borrow::Cow<'static, str> =
            if ctx.features.contains(wgpu::Features::SUBGROUP) {
                self.wgsl.into()
            } else {
                without_subgroups(self.wgsl)
            };
        if !text.contains(DISPATCH_BEGIN) {
            return text;
        }
        let id = constants
            .iter()
            .find(|(name, _)| *name == "FORMAT")
            .map_or(0, |&(_, id)| id as u32);
        specialize_quant(&text, id).into()
    }
}

const DISPATCH_BEGIN: &str = "// BEGIN quant_vec4 dispatch\n";
const DISPATCH_END: &str = "// END quant_vec4 dispatch\n";

/// `wgsl` with the `quant_vec4` dispatch of `shaders/lib/quant_blocks.wgsl` (the text from
/// its BEGIN to its END marker, a `switch FORMAT` whose cases each return one decoder's call)
/// replaced by a `quant_vec4` that calls the decoder of ggml type `id` directly, or returns
/// zeros for id 0 (the Q4/Q8 layouts, which do not call it). Text without the markers, or an
/// id no case names, is returned as it is (the switch then decides).
pub fn specialize_quant(wgsl: &str, id: u32) -> String {
    let Some(begin) = wgsl.find(DISPATCH_BEGIN) else {
        return wgsl.to_string();
    };
    let Some(len) = wgsl[begin..].find(DISPATCH_END) else {
        return wgsl.to_string();
    };
    let end = begin + len + DISPATCH_END.len();
    let label = format!("{id}u");
    let stub = (id == 0).then(|| "vec4<f32>".to_string());
    let decoder = stub.or_else(|| {
        wgsl[begin..end].lines().find_map(|line| {
            let (cases, body) = line.trim().strip_prefix("case ")?.split_once(':')?;
            cases.split(',').any(|c| c.trim() == label).then_some(())?;
            let call = body.split("return ").nth(1)?;
            Some(call.split('(').next()?.trim().to_string())
        })
    });
    let Some(decoder) = decoder else {
        return wgsl.to_string();
    };
    let args = if id == 0 { "" } else { "base, sub, c" };
    format!(
        "{}fn quant_vec4(base: u32, sub: u32, c: u32) -> vec4<f32> {{\n    return {decoder}({args});\n}}\n{}",
        &wgsl[..begin],
        &wgsl[end..]
    )
}

/// The function a shader that calls `subgroupBroadcast` defines for adapters without
/// subgroups (same signature; it is never run there).
pub const SUBGROUP_STAND_IN: &str = "subgroup_broadcast_unavailable";

/// `wgsl` with its `subgroupBroadcast(` calls renamed to [`SUBGROUP_STAND_IN`].
pub fn without_subgroups(wgsl: &'static str) -> std::borrow::Cow<'static, str> {
    const CALL: &str = "subgroupBroadcast(";
    if wgsl.contains(CALL) {
        wgsl.replace(CALL, &format!("{SUBGROUP_STAND_IN}(")).into()
    } else {
        wgsl.into()
    }
}

/// `shader!("name")`: `shaders/name.wgsl`, run by both families; `shader!(cpu "name")` and
/// `shader!(gpu "name")`: `shaders/cpu/name.wgsl` and `shaders/gpu/name.wgsl`, one family's form.
/// `... with "lib"` appends the function library `shaders/lib/lib.wgsl` (not a kernel: no entry
/// point; it names functions the kernel defines) to the kernel's text.
macro_rules! shader {
    ($name:literal) => {
        shader!(@ None, "", $name)
    };
    (cpu $name:literal) => {
        shader!(@ Some(KernelForms::Cpu), "cpu/", $name)
    };
    (gpu $name:literal) => {
        shader!(@ Some(KernelForms::Gpu), "gpu/", $name)
    };
    ($name:literal with $lib:literal) => {
        shader!(@lib None, "", $name, $lib)
    };
    (cpu $name:literal with $lib:literal) => {
        shader!(@lib Some(KernelForms::Cpu), "cpu/", $name, $lib)
    };
    (gpu $name:literal with $lib:literal) => {
        shader!(@lib Some(KernelForms::Gpu), "gpu/", $name, $lib)
    };
    (@lib $family:expr, $dir:literal, $name:literal, $lib:literal) => {
        ShaderSource {
            name: $name,
            family: $family,
            wgsl: concat!(
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/shaders/",
                    $dir,
                    $name,
                    ".wgsl"
                )),
                "\n",
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/shaders/lib/",
                    $lib,
                    ".wgsl"
                ))
            ),
        }
    };
    (@ $family:expr, $dir:literal, $name:literal) => {
        ShaderSource {
            name: $name,
            family: $family,
            wgsl: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/shaders/",
                $dir,
                $name,
                ".wgsl"
            )),
        }
    };
}

pub const EMBEDDING: ShaderSource = shader!("embedding");
pub const RMS_NORM: ShaderSource = shader!("rms_norm");
pub const LAYER_NORM: ShaderSource = shader!("layer_norm");
pub const MATMUL: ShaderSource = shader!(cpu "matmul");
pub const MATMUL_SPLIT: ShaderSource = shader!(gpu "matmul_split");
/// The CPU forms' quantized matmul, and the GPU forms' too where quantized weights live in
/// textures (the only quantized matmul that reads them).
pub const MATMUL_QUANT: ShaderSource = shader!(cpu "matmul_quant" with "quant_blocks");
pub const MATMUL_QUANT_SPLIT: ShaderSource = shader!(gpu "matmul_quant_split" with "quant_blocks");
pub const EMBEDDING_QUANT: ShaderSource = shader!("embedding_quant" with "quant_blocks");
pub const KV_WRITE: ShaderSource = shader!("kv_write");
pub const PAGED_ATTENTION_SERIAL: ShaderSource = shader!(cpu "paged_attention_serial");
pub const PAGED_ATTENTION_SPLIT: ShaderSource = shader!(gpu "paged_attention_split");
pub const ATTENTION_COMBINE: ShaderSource = shader!(gpu "attention_combine");
pub const SILU_MUL: ShaderSource = shader!("silu_mul");
pub const GELU: ShaderSource = shader!("gelu");
pub const COPY_BLOCKS: ShaderSource = shader!("copy_blocks");
pub const ARGMAX: ShaderSource = shader!("argmax");
pub const SAMPLE: ShaderSource = shader!("sample");
pub const LOGIT_ADJUST: ShaderSource = shader!("logit_adjust");
pub const ROPE_KV_WRITE: ShaderSource = shader!("rope_kv_write");
pub const FEED_TOKENS: ShaderSource = shader!("feed_tokens");
pub const QK_NORM: ShaderSource = shader!("qk_norm");
pub const SOFTCAP: ShaderSource = shader!("softcap");
pub const SCALE: ShaderSource = shader!("scale");

/// Every shader, for the validation test.
pub const ALL_SHADERS: &[ShaderSource] = &[
    EMBEDDING,
    RMS_NORM,
    LAYER_NORM,
    MATMUL,
    MATMUL_SPLIT,
    MATMUL_QUANT,
    MATMUL_QUANT_SPLIT,
    EMBEDDING_QUANT,
    KV_WRITE,
    PAGED_ATTENTION_SERIAL,
    PAGED_ATTENTION_SPLIT,
    ATTENTION_COMBINE,
    SILU_MUL,
    GELU,
    COPY_BLOCKS,
    ARGMAX,
    SAMPLE,
    LOGIT_ADJUST,
    ROPE_KV_WRITE,
    FEED_TOKENS,
    QK_NORM,
    SOFTCAP,
    SCALE,
];

/// A compiled pipeline and the layout of its bind group 0.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// Compiles `src` with the given override constants.
    pub fn new(ctx: &GpuContext, src: ShaderSource, constants: &[(&str, f64)]) -> Kernel {
        let module = ctx
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(src.name),
                source: wgpu::ShaderSource::Wgsl(src.wgsl_for(ctx, constants)),
            });
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(src.name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let layout = pipeline.get_bind_group_layout(0);
        Kernel {
            name: src.name,
            pipeline,
            layout,
        }
    }

    /// Pipelines of `src`, one per set of override constants, sharing one explicit bind group
    /// layout (derived layouts are exclusive to their pipeline), so one bind group serves all.
    /// Binding i is a storage buffer, read-only where `read_only[i]`.
    pub fn family(
        ctx: &GpuContext,
        src: ShaderSource,
        read_only: &[bool],
        variants: &[&[(&str, f64)]],
    ) -> Vec<Kernel> {
        let members: Vec<(ShaderSource, &[(&str, f64)])> =
            variants.iter().map(|c| (src, *c)).collect();
        Self::sharing_layout(ctx, read_only, &members)
    }

    /// Pipelines of several shaders, each with its own override constants, sharing one explicit
    /// bind group layout (binding i a storage buffer, read-only where `read_only[i]`), so one
    /// bind group serves all of them. Each shader declares the bindings it uses, with exactly
    /// the access the layout gives them, and may leave the others out.
    pub fn sharing_layout(
        ctx: &GpuContext,
        read_only: &[bool],
        members: &[(ShaderSource, &[(&str, f64)])],
    ) -> Vec<Kernel> {
        let entries: Vec<wgpu::BindGroupLayoutEntry> = read_only
            .iter()
            .enumerate()
            .map(|(i, ro)| Self::storage_entry(i as u32, *ro))
            .collect();
        Self::with_layout(ctx, &entries, members)
    }

    /// A storage-buffer binding of a compute shader, read-only or read-write.
    pub fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
        wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }
    }

    /// [`Kernel::sharing_layout`] with the layout's entries given as they are (uniform
    /// buffers, dynamic offsets).
    pub fn with_layout(
        ctx: &GpuContext,
        entries: &[wgpu::BindGroupLayoutEntry],
        members: &[(ShaderSource, &[(&str, f64)])],
    ) -> Vec<Kernel> {
        let Some((first, _)) = members.first() else {
            return Vec::new();
        };
        let layout = ctx
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(first.name),
                entries,
            });
        let pipeline_layout = ctx
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(first.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: ctx.device.limits().max_immediate_size,
            });
        // One module per distinct text, however many constant sets it comes with.
        let texts: Vec<_> = members
            .iter()
            .map(|(src, c)| src.wgsl_for(ctx, c))
            .collect();
        let mut modules: Vec<(&str, wgpu::ShaderModule)> = Vec::new();
        for ((src, _), text) in members.iter().zip(&texts) {
            if !modules.iter().any(|(t, _)| *t == text.as_ref()) {
                let module = ctx
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(src.name),
                        source: wgpu::ShaderSource::Wgsl(text.clone()),
                    });
                modules.push((text.as_ref(), module));
            }
        }
        let build = |(member, text): (&Member<'_>, &std::borrow::Cow<'static, str>)| {
            let (src, constants) = member;
            let module = &modules
                .iter()
                .find(|(t, _)| *t == text.as_ref())
                .expect("a module was made for every member")
                .1;
            let pipeline = ctx
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(src.name),
                    layout: Some(&pipeline_layout),
                    module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                });
            Kernel {
                name: src.name,
                pipeline,
                layout: layout.clone(),
            }
        };
        // Pipelines compile on their own threads: a driver that compiles on the CPU (llvmpipe
        // JIT-compiles each variant for a fraction of a second) builds a family at the speed
        // of its slowest member rather than of their sum.
        std::thread::scope(|scope| {
            let handles: Vec<_> = members
                .iter()
                .zip(&texts)
                .map(|m| scope.spawn(move || build(m)))
                .collect();
            handles.into_iter().map(join_scoped).collect()
        })
    }

    /// A bind group with `buffers` at bindings 0, 1, 2, ... (whole buffers).
    pub fn bind(&self, ctx: &GpuContext, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let resources = buffers.iter().map(|b| b.as_entire_binding()).collect();
        self.bind_resources(ctx, resources)
    }

    /// A bind group with `resources` at bindings 0, 1, 2, ... (a mix of buffers and textures,
    /// for a layout made by [`Kernel::with_layout`]).
    pub fn bind_resources(
        &self,
        ctx: &GpuContext,
        resources: Vec<wgpu::BindingResource<'_>>,
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .into_iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.layout,
            entries: &entries,
        })
    }

    /// Records one dispatch: bind group 0, the immediates, and the workgroup grid.
    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        immediates: &[u32],
        groups: [u32; 3],
    ) {
        self.dispatch_at(pass, bind_group, &[], immediates, groups);
    }

    /// [`Kernel::dispatch`] with the bind group's dynamic offsets.
    pub fn dispatch_at(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        dynamic_offsets: &[u32],
        immediates: &[u32],
        groups: [u32; 3],
    ) {
        if groups.contains(&0) {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, dynamic_offsets);
        if !immediates.is_empty() {
            pass.set_immediates(0, bytemuck::cast_slice(immediates));
        }
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }
}

/// A shader and the override constants of one of its pipelines.
type Member<'a> = (ShaderSource, &'a [(&'a str, f64)]);

/// The result of a scoped thread that builds kernels; its panic, should it panic, is raised
/// again on the caller's thread with its own message.
pub(crate) fn join_scoped<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Splits `n` workgroups over x and y so neither exceeds the 65535 per-dimension limit.
pub fn grid_2d(n: u32) -> [u32; 3] {
    const MAX: u32 = 65535;
    if n <= MAX {
        [n, 1, 1]
    } else {
        [MAX, n.div_ceil(MAX), 1]
    }
}
