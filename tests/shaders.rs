//! Every WGSL kernel parses, validates and translates, with no adapter needed.
//!
//! `ALL_SHADERS` is every `.wgsl` file under `shaders/`, each in its family's directory (the
//! kernels both families run in `shaders/`, the CPU and GPU forms in `shaders/cpu/` and
//! `shaders/gpu/`), compiled in as it is on disk.
//!
//! For each shader in `ALL_SHADERS`: naga's WGSL frontend, the validator (all checks, only the
//! capabilities the shader can count on), every combination of the `override` constants the
//! runtime sets, and the SPIR-V, MSL and HLSL backends. A shader that Metal or DX12 would reject
//! fails here on a machine with neither. The resolved workgroup size and workgroup memory are
//! checked against WebGPU's default limits, which wgpu itself does not check for overrides.

use std::collections::BTreeSet;
use std::path::Path;

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use wllm::gpu::KernelForms;
use wllm::gpu::pipeline::{ALL_SHADERS, SUBGROUP_STAND_IN, ShaderSource, without_subgroups};

/// WebGPU's default limits: the smallest any adapter offers.
const MAX_INVOCATIONS: u32 = 256;
const MAX_WORKGROUP_BYTES: u32 = 16384;

/// The values each override takes at runtime (see the wrappers in src/gpu/kernels/).
/// An override missing here fails the test, so a new one gets its values listed.
fn override_values(name: &str) -> Vec<f64> {
    match name {
        "W_F16" | "KV_F16" | "HAS_POS" | "GATHER" | "Q8" | "GLU" | "X_WINDOW" | "X_SHARED"
        | "W_TEXTURE" | "SHARED" | "NORM" | "KV_TEXTURE" => {
            vec![0.0, 1.0]
        }
        // matmul_quant: rows of x and columns per thread, and its workgroup size (QuantTuning);
        // paged_attention_serial's workgroup size is 8; rms_norm's 8 (CPU adapters) or 256.
        "ROWS" => vec![1.0, 4.0, 8.0],
        // (GLU halves COLS: 8 -> 4 on CPU adapters; the tests also use 16 -> 8.)
        "COLS" => vec![1.0, 4.0, 8.0, 16.0],
        "WG" => vec![8.0, 16.0, 64.0, 256.0],
        // paged_attention: the test head sizes, SmolLM2's 64, and the wrapper's maximum.
        "HEAD_DIM" => vec![16.0, 64.0, 128.0, 256.0],
        // split attention's keys per partition: the tests' 16 and 70, the rule's 256 and 512.
        "PARTITION" => vec![16.0, 70.0, 256.0, 512.0],
        // serial attention's query heads per thread: one, SmolLM2's 3, the wrapper's maximum.
        "GROUP" => vec![1.0, 3.0, 8.0],
        // matmul_quant_split's lanes per output column and matmul_split's per column quad: the
        // GPU default 16 and the tests' others.
        "SPLIT" => vec![2.0, 4.0, 16.0],
        // ... and their workgroup size (at most 128: the partial sums fill workgroup memory;
        // matmul_split's 64 (the largest multiple of SPLIT up to 64) holds 8 KiB at 8 rows).
        "SPLIT_WG" => vec![16.0, 64.0, 128.0],
        // quant_blocks.wgsl's ggml type id (0: the kernel's own Q4/Q8 layout). Its `switch`
        // keeps every format's branch in the module whatever the value, so one K-quant id
        // translates them all (a value per format would multiply matmul_quant's combinations
        // tenfold).
        "FORMAT" => vec![0.0, 14.0],
        other => panic!("override `{other}` has no runtime values listed in tests/shaders.rs"),
    }
}

/// The capabilities a shader may use: immediates (the runtime requires them) and
/// `pack2x16float`/`unpack2x16float` (wgpu grants those with the WebGPU baseline downlevel flag
/// `SHADER_F16_IN_F32`) always; f16 arithmetic and subgroups only when the shader asks for them
/// (the f32 fallback must run on a device with neither).
fn capabilities(src: &str) -> Capabilities {
    let mut caps = Capabilities::IMMEDIATES | Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if src.contains("enable f16") {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    if src.contains("subgroup") {
        caps |= Capabilities::SUBGROUP | Capabilities::SUBGROUP_BARRIER;
    }
    caps
}

fn parse_and_validate(s: &ShaderSource) -> (naga::Module, ModuleInfo) {
    let module = naga::front::wgsl::parse_str(s.wgsl)
        .unwrap_or_else(|e| panic!("{}: {}", s.path(), e.emit_to_string(s.wgsl)));
    let info = Validator::new(ValidationFlags::all(), capabilities(s.wgsl))
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", s.path(), e.emit_to_string(s.wgsl)));
    (module, info)
}

/// Every combination of the module's overrides' runtime values.
fn override_combos(module: &naga::Module) -> Vec<Vec<(String, f64)>> {
    let mut combos: Vec<Vec<(String, f64)>> = vec![vec![]];
    for (_, o) in module.overrides.iter() {
        // An unnamed override is one naga made for an array size written as an expression of
        // named ones (`array<f32, WG * 8u>`): it follows them, and nothing sets it.
        let Some(name) = o.name.clone() else {
            assert!(
                o.init.is_some(),
                "an unnamed override without an expression"
            );
            continue;
        };
        let mut next = Vec::new();
        for c in &combos {
            for v in override_values(&name) {
                let mut c = c.clone();
                c.push((name.clone(), v));
                next.push(c);
            }
        }
        combos = next;
    }
    combos
}

fn check_limits(name: &str, combo: &str, module: &naga::Module) {
    let ep = &module.entry_points[0];
    let invocations: u32 = ep.workgroup_size.iter().product();
    assert!(
        invocations <= MAX_INVOCATIONS,
        "{name} [{combo}]: workgroup of {invocations} invocations"
    );
    let bytes: u32 = module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()))
        .sum();
    assert!(
        bytes <= MAX_WORKGROUP_BYTES,
        "{name} [{combo}]: {bytes} bytes of workgroup memory"
    );
}

fn write_spv(name: &str, combo: &str, module: &naga::Module, info: &ModuleInfo) {
    let options = naga::back::spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
    };
    let words = naga::back::spv::write_vec(module, info, &options, Some(&pipeline))
        .unwrap_or_else(|e| panic!("{name} [{combo}] SPIR-V: {e}"));
    assert_eq!(
        words.first(),
        Some(&0x0723_0203),
        "{name}: SPIR-V magic number"
    );
}

/// Bindings of group 0 in declaration order, as (binding, writable, texture).
fn bindings(module: &naga::Module) -> Vec<(u32, bool, bool)> {
    module
        .global_variables
        .iter()
        .filter_map(|(_, g)| {
            let b = g.binding.as_ref()?;
            assert_eq!(b.group, 0, "every kernel binds group 0 only");
            let writable = matches!(
                g.space,
                naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE)
            );
            let texture = matches!(
                module.types[g.ty].inner,
                naga::TypeInner::Image { .. }
            );
            Some((b.binding, writable, texture))
        })
        .collect()
}

fn write_msl(name: &str, combo: &str, module: &naga::Module, info: &ModuleInfo) {
    use naga::back::msl;
    let binds = bindings(module);
    let mut resources = msl::EntryPointResources {
        immediates_buffer: Some(binds.len() as u8),
        sizes_buffer: Some(binds.len() as u8 + 1),
        ..Default::default()
    };
    for (b, writable, texture) in &binds {
        let slot = Some(*b as u8);
        resources.resources.insert(
            naga::ResourceBinding {
                group: 0,
                binding: *b,
            },
            msl::BindTarget {
                buffer: slot.filter(|_| !texture),
                texture: slot.filter(|_| *texture),
                mutable: *writable,
                ..Default::default()
            },
        );
    }
    let options = msl::Options {
        lang_version: (2, 4),
        per_entry_point_map: [("main".to_string(), resources)].into_iter().collect(),
        fake_missing_bindings: false,
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, "main".into())),
        ..Default::default()
    };
    let (text, _) = msl::write_string(module, info, &options, &pipeline)
        .unwrap_or_else(|e| panic!("{name} [{combo}] MSL: {e}"));
    assert!(
        text.contains("kernel void"),
        "{name} [{combo}]: MSL without a kernel"
    );
}

fn write_hlsl(module: &naga::Module, info: &ModuleInfo) -> Result<String, String> {
    use naga::back::hlsl;
    let mut binding_map = hlsl::BindingMap::default();
    for (b, _, _) in bindings(module) {
        binding_map.insert(
            naga::ResourceBinding {
                group: 0,
                binding: b,
            },
            hlsl::BindTarget {
                space: 0,
                register: b,
                ..Default::default()
            },
        );
    }
    let options = hlsl::Options {
        shader_model: hlsl::ShaderModel::V6_0,
        binding_map,
        fake_missing_bindings: false,
        immediates_target: Some(hlsl::BindTarget {
            space: 0,
            register: 0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let pipeline = hlsl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, "main".into())),
    };
    let mut text = String::new();
    hlsl::Writer::new(&mut text, &options, &pipeline)
        .write(module, info, None)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// Every `.wgsl` file under `dir`, at any depth, as its path relative to `dir` with `/`
/// separators (`matmul.wgsl`, `cpu/matmul.wgsl`).
fn wgsl_files(dir: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                // shaders/lib/: function libraries appended to kernels, not kernels.
                if path != dir.join("lib") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "wgsl") {
                let rel = path.strip_prefix(dir).expect("under the shader directory");
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                files.insert(parts.join("/"));
            }
        }
    }
    files
}

#[test]
fn one_shader_per_wgsl_file() {
    assert!(!ALL_SHADERS.is_empty(), "ALL_SHADERS is empty");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let on_disk = wgsl_files(&dir);
    assert!(
        !on_disk.is_empty(),
        "no .wgsl files under {}",
        dir.display()
    );
    // Bare names are pipeline and profile labels, and Kernel::with_layout makes one module per
    // name: unique over every family.
    let names: Vec<&str> = ALL_SHADERS.iter().map(|s| s.name).collect();
    let name_set: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        names.len(),
        name_set.len(),
        "ALL_SHADERS lists a name twice: {names:?}"
    );
    for s in ALL_SHADERS {
        assert!(
            !s.name.contains('/') && !s.name.contains('.'),
            "{}: a bare kernel name, without directory or extension",
            s.name
        );
    }
    let listed: BTreeSet<String> = ALL_SHADERS.iter().map(|s| s.path()).collect();
    assert_eq!(listed, on_disk, "ALL_SHADERS vs shaders/**/*.wgsl");
    // The compiled-in text is the file on disk, then any libraries appended to it; every
    // library is appended somewhere.
    let libs: Vec<String> = std::fs::read_dir(dir.join("lib"))
        .expect("shaders/lib")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("a library"))
        .collect();
    for s in ALL_SHADERS {
        let path = dir.join(s.path());
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let rest = s
            .wgsl
            .strip_prefix(&text)
            .unwrap_or_else(|| panic!("shaders/{} differs from the compiled-in source", s.path()));
        assert!(
            rest.is_empty() || libs.iter().any(|l| rest == format!("\n{l}")),
            "shaders/{}: the compiled-in text adds more than one library",
            s.path()
        );
    }
    for lib in &libs {
        assert!(
            ALL_SHADERS.iter().any(|s| s.wgsl.ends_with(lib.as_str())),
            "a library in shaders/lib/ that no kernel includes"
        );
    }
}

/// The forms one kernel family runs sit in that family's directory (`shaders/cpu/`,
/// `shaders/gpu/`: [`KernelForms::name`]), the kernels both run in `shaders/` itself, and
/// there is no other directory of shaders.
#[test]
fn every_shader_sits_in_the_directory_of_its_family() {
    let dir_of = |family: Option<KernelForms>| family.map_or("", KernelForms::name);
    let families = [None, Some(KernelForms::Cpu), Some(KernelForms::Gpu)];
    for family in families {
        let n = ALL_SHADERS.iter().filter(|s| s.family == family).count();
        assert!(n > 0, "no shader in shaders/{}", dir_of(family));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let allowed: BTreeSet<&str> = families.iter().map(|&f| dir_of(f)).collect();
    for file in wgsl_files(&dir) {
        let (sub, name) = file.rsplit_once('/').unwrap_or(("", &file));
        assert!(
            allowed.contains(sub),
            "shaders/{file}: shaders go in shaders/, shaders/cpu/ or shaders/gpu/"
        );
        let name = name.strip_suffix(".wgsl").expect("a .wgsl file");
        let s = ALL_SHADERS
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("shaders/{file} is not in ALL_SHADERS"));
        assert_eq!(
            sub,
            dir_of(s.family),
            "shaders/{file}: {} belongs in shaders/{}",
            s.name,
            dir_of(s.family)
        );
    }
}

#[test]
fn every_shader_starts_with_a_header_comment() {
    for s in ALL_SHADERS {
        assert!(
            s.wgsl.starts_with("//"),
            "{} must start with a `//` header: what it computes, bindings, dispatch",
            s.path()
        );
        for word in ["Bindings", "Dispatch"] {
            assert!(
                s.wgsl.contains(word),
                "{} header has no `{word}:` section",
                s.path()
            );
        }
    }
}

#[test]
fn every_shader_validates_and_translates_for_every_override_combination() {
    let mut translated = 0;
    for s in ALL_SHADERS {
        let (module, info) = parse_and_validate(s);
        assert_eq!(module.entry_points.len(), 1, "{}: one entry point", s.name);
        let ep = &module.entry_points[0];
        assert_eq!(ep.name, "main", "{}: entry point is `main`", s.name);
        assert_eq!(
            ep.stage,
            naga::ShaderStage::Compute,
            "{}: a compute shader",
            s.name
        );
        for combo in override_combos(&module) {
            let label = combo
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            let mut constants = PipelineConstants::default();
            for (k, v) in &combo {
                constants.insert(k.clone(), *v);
            }
            let (resolved, resolved_info) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((naga::ShaderStage::Compute, "main")),
                &constants,
            )
            .unwrap_or_else(|e| panic!("{} [{label}]: overrides: {e}", s.name));
            // The resolved module must itself be valid (e.g. array sizes from overrides).
            Validator::new(ValidationFlags::all(), capabilities(s.wgsl))
                .validate(&resolved)
                .unwrap_or_else(|e| panic!("{} [{label}]: {}", s.name, e.emit_to_string(s.wgsl)));
            check_limits(s.name, &label, &resolved);
            write_spv(s.name, &label, &resolved, &resolved_info);
            write_msl(s.name, &label, &resolved, &resolved_info);
            let hlsl = write_hlsl(&resolved, &resolved_info)
                .unwrap_or_else(|e| panic!("{} [{label}] HLSL: {e}", s.name));
            assert!(
                hlsl.contains("numthreads"),
                "{} [{label}]: HLSL without numthreads",
                s.name
            );
            translated += 1;
        }
    }
    // 9 shaders; matmul, embedding, kv_write, the norms: 2-4 combos; paged attention: 8.
    assert!(
        translated >= 2 * ALL_SHADERS.len(),
        "translated only {translated} modules"
    );
}

/// A shader that calls subgroupBroadcast also compiles on adapters without subgroups: with
/// the calls renamed to the stand-in it defines, it validates without the capability.
#[test]
fn shaders_using_subgroups_build_without_them() {
    let mut checked = 0;
    for s in ALL_SHADERS {
        if !s.wgsl.contains("subgroupBroadcast(") {
            continue;
        }
        let text = without_subgroups(s.wgsl);
        assert!(
            !text.contains("subgroup") || text.contains(SUBGROUP_STAND_IN),
            "{}: defines no {SUBGROUP_STAND_IN}",
            s.name
        );
        let module = naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| {
            panic!("{} without subgroups: {}", s.name, e.emit_to_string(&text))
        });
        let caps = Capabilities::IMMEDIATES | Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| {
                panic!("{} without subgroups: {}", s.name, e.emit_to_string(&text))
            });
        // And the original does need the capability (the rename is what makes it portable).
        let original = naga::front::wgsl::parse_str(s.wgsl).expect("parses");
        assert!(
            Validator::new(ValidationFlags::all(), caps)
                .validate(&original)
                .is_err(),
            "{}: validates without subgroups as it is",
            s.name
        );
        checked += 1;
    }
    assert!(checked >= 1, "no shader uses subgroupBroadcast");
}

#[test]
fn the_backends_do_reject_what_they_cannot_express() {
    // Guards the harness itself: DX12 needs immediates in a struct (wgpu issue 5683), so a
    // bare scalar must fail the HLSL step above rather than pass unnoticed.
    let src = "var<immediate> n: u32;\n\
               @group(0) @binding(0) var<storage, read_write> x: array<f32>;\n\
               @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {\n\
                   if g.x < n { x[g.x] = 1.0; }\n\
               }";
    let module = naga::front::wgsl::parse_str(src).expect("parses");
    let info = Validator::new(ValidationFlags::all(), capabilities(src))
        .validate(&module)
        .expect("valid WGSL");
    assert!(
        write_hlsl(&module, &info).is_err(),
        "HLSL accepted a non-struct immediate"
    );
}

#[test]
fn unknown_override_values_are_rejected() {
    // The test above relies on process_overrides rejecting names the shader does not have,
    // which is also what catches a wrapper setting a misspelled constant.
    let s = ALL_SHADERS
        .iter()
        .find(|s| s.name == "matmul")
        .expect("matmul shader");
    let (module, info) = parse_and_validate(s);
    let mut constants = PipelineConstants::default();
    constants.insert("NOT_A_CONSTANT".into(), 1.0);
    let r = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, "main")),
        &constants,
    );
    assert!(r.is_err(), "an unknown override name was accepted");
}

/// Each format the kernels keep in GGUF blocks has its own decoder in
/// shaders/lib/quant_blocks.wgsl: specializing a kernel that appends it for the format's
/// ggml id replaces the dispatch over all formats by a direct call, and the text validates.
#[test]
fn quant_kernels_specialize_for_every_block_format() {
    use wllm::gpu::pipeline::specialize_quant;
    use wllm::loader::quant_formats::{FORMATS, GpuLayout};
    let kernels: Vec<&ShaderSource> = ALL_SHADERS
        .iter()
        .filter(|s| s.wgsl.contains("// BEGIN quant_vec4 dispatch"))
        .collect();
    assert_eq!(kernels.len(), 3, "the quantized matmuls and embedding");
    for f in FORMATS {
        if !matches!(f.gpu, GpuLayout::Blocks { .. }) {
            continue;
        }
        for s in &kernels {
            let text = specialize_quant(s.wgsl, f.ggml_type);
            assert!(
                !text.contains("BEGIN quant_vec4 dispatch") && text.len() < s.wgsl.len(),
                "{} for {}: not specialized",
                s.name,
                f.name
            );
            let module = naga::front::wgsl::parse_str(&text)
                .unwrap_or_else(|e| panic!("{} {}: {}", s.name, f.name, e.emit_to_string(&text)));
            Validator::new(ValidationFlags::all(), capabilities(&text))
                .validate(&module)
                .unwrap_or_else(|e| panic!("{} {}: {}", s.name, f.name, e.emit_to_string(&text)));
        }
    }
    // An id no case names leaves the dispatch in place; id 0 (the Q4/Q8 layouts) gets a stub.
    assert_eq!(specialize_quant(kernels[0].wgsl, 99), kernels[0].wgsl);
    let stub = specialize_quant(kernels[0].wgsl, 0);
    assert!(!stub.contains("BEGIN quant_vec4 dispatch") && stub.contains("return vec4<f32>();"));
}
