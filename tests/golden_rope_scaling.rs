//! RoPE scaling (YaRN, LongRoPE) against transformers 5.25: tests/fixtures/arch/tiny-*-{yarn,
//! longrope}/ hold a config.json and golden.stored.json (scripts/make_rope_scaling_goldens.py);
//! the weights are the base checkpoint's (`base_checkpoint`), linked into a temporary directory
//! next to the new config. Compared as tests/golden_arch.rs does: teacher-forced logits, every
//! difference `logit[top1] − logit[id]` over the reference top-8 within 5e-4 (f32) / 0.05 (f16).
//!
//! LongRoPE: transformers picks short or long factors per forward from the sequence length;
//! wllm picks once at load from the context it runs with (`max_model_len`). So the golden's
//! "short" cases (sequences of at most the original 32 tokens) are compared with a model loaded
//! with `max_model_len` ≤ 32, the "long" ones with a larger context. The GGUF tests build
//! files the way llama.cpp's converter writes these scalings (from the f16 GGUFs its converter
//! made of the same checkpoints) and compare them with the same goldens.

mod common;
#[path = "common/gguf_writer.rs"]
mod gguf_writer;

use std::path::{Path, PathBuf};

use common::golden::{Deviation, assert_batch_invariant, teacher_forced, tolerance};
use common::temp_dir::TempDir;
use common::{fixtures, floats, gpu, ids, read_json};
use gguf_writer::GgufBuilder;
use wllm::loader::MetaValue;
use wllm::loader::gguf::GgufFile;
use wllm::model::{ModelConfig, ModelFiles, RopeScaling};
use wllm::{Engine, EngineConfig, Error, Generator, ModelOptions, Prompt, Request, WeightDType};

fn arch_dir(name: &str) -> PathBuf {
    fixtures().join("arch").join(name)
}

/// A checkpoint directory: the base checkpoint's weights and tokenizer (symlinked) with
/// `config` as its config.json.
fn checkpoint(base: &str, config: &serde_json::Value) -> TempDir {
    let dir = TempDir::new(base);
    let src = arch_dir(base);
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let from = src.join(f).canonicalize().unwrap();
        std::os::unix::fs::symlink(from, dir.0.join(f)).unwrap();
    }
    std::fs::write(
        dir.0.join("config.json"),
        serde_json::to_vec_pretty(config).unwrap(),
    )
    .unwrap();
    dir
}

/// Fixture `name`: its checkpoint directory and golden.
fn fixture(name: &str) -> (TempDir, serde_json::Value) {
    let golden = read_json(&arch_dir(name).join("golden.stored.json"));
    let config = read_json(&arch_dir(name).join("config.json"));
    let dir = checkpoint(golden["base_checkpoint"].as_str().unwrap(), &config);
    (dir, golden)
}

fn load(model: &Path, dtype: WeightDType, max_model_len: Option<usize>) -> Generator {
    let mut opts = ModelOptions::new(model);
    opts.dtype = dtype;
    opts.max_batch_tokens = 48;
    opts.max_seqs = 16;
    opts.max_model_len = max_model_len;
    Generator::load(gpu(), &opts, &mut |_, _| {}).unwrap()
}

/// The golden cases whose LongRoPE `factors` are `which` (every case when `None`).
fn cases<'a>(golden: &'a serde_json::Value, which: Option<&str>) -> Vec<&'a serde_json::Value> {
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| which.is_none_or(|w| c["factors"] == w))
        .collect()
}

/// Compares `model` with the golden `cases` within the tolerance; returns the worst
/// logit-difference error.
fn check(
    model: &Path,
    what: &str,
    cases: &[&serde_json::Value],
    dtype: WeightDType,
    max_model_len: Option<usize>,
) -> f32 {
    let d = compare(model, what, cases, dtype, max_model_len);
    d.assert_within(&format!("{what} {dtype:?}"), tolerance(dtype));
    d.worst
}

/// How far `model` is from the golden `cases` (asserting nothing but that no block leaks).
fn compare(
    model: &Path,
    what: &str,
    cases: &[&serde_json::Value],
    dtype: WeightDType,
    max_model_len: Option<usize>,
) -> Deviation {
    assert!(!cases.is_empty(), "{what}: no cases");
    let mut g = load(model, dtype, max_model_len);
    let d = teacher_forced(&mut g, cases);
    assert_eq!(g.pool().num_used(), 0, "KV blocks leaked");
    eprintln!(
        "{what} {dtype:?} (max_model_len {max_model_len:?}, {} cases): worst logit-difference \
         error {:.2e}",
        cases.len(),
        d.worst
    );
    d
}

fn both_dtypes(model: &Path, what: &str, cases: &[&serde_json::Value], len: Option<usize>) {
    check(model, what, cases, WeightDType::F32, len);
    check(model, what, cases, WeightDType::F16, len);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face checkpoints.

#[test]
fn qwen3_yarn_hf_matches_transformers() {
    let (dir, golden) = fixture("tiny-qwen3-yarn");
    both_dtypes(&dir.0, "tiny-qwen3-yarn", &cases(&golden, None), None);
}

#[test]
fn qwen2_yarn_every_knob_hf_matches_transformers() {
    let (dir, golden) = fixture("tiny-qwen2-yarn");
    both_dtypes(&dir.0, "tiny-qwen2-yarn", &cases(&golden, None), None);
}

#[test]
fn phi3_longrope_short_factors_within_the_original_context() {
    let (dir, golden) = fixture("tiny-phi3-longrope");
    let short = cases(&golden, Some("short"));
    assert_eq!(short.len(), 3);
    // 32 = original_max_position_embeddings: still the short factors.
    both_dtypes(&dir.0, "tiny-phi3-longrope", &short, Some(32));
    let within_31: Vec<_> = short
        .iter()
        .copied()
        .filter(|c| c["name"] != "rand_len17_at_original")
        .collect();
    check(
        &dir.0,
        "tiny-phi3-longrope",
        &within_31,
        WeightDType::F32,
        Some(31),
    );
}

#[test]
fn phi3_longrope_long_factors_past_the_original_context() {
    let (dir, golden) = fixture("tiny-phi3-longrope");
    let long = cases(&golden, Some("long"));
    assert_eq!(long.len(), 5);
    // The model's own context (512).
    both_dtypes(&dir.0, "tiny-phi3-longrope", &long, None);
    // One token past the original context already means the long factors: the 33-token case.
    let past: Vec<_> = long
        .iter()
        .copied()
        .filter(|c| c["name"] == "rand_len17_past_original")
        .collect();
    check(
        &dir.0,
        "tiny-phi3-longrope",
        &past,
        WeightDType::F32,
        Some(33),
    );
}

#[test]
fn phi3_longrope_factors_do_not_follow_the_sequence_length() {
    // Loaded for a long context, a short sequence still uses the long factors (batch
    // invariance), so it does not match transformers' short-factor logits.
    let (dir, golden) = fixture("tiny-phi3-longrope");
    let short = cases(&golden, Some("short"));
    let worst = compare(
        &dir.0,
        "tiny-phi3-longrope (long factors vs short goldens)",
        &short,
        WeightDType::F32,
        None,
    )
    .worst;
    assert!(
        worst > 0.1,
        "short-factor goldens matched a long-context model ({worst})"
    );
}

#[test]
fn max_model_len_caps_the_context_and_is_checked() {
    let (dir, _) = fixture("tiny-phi3-longrope");
    let mut g = load(&dir.0, WeightDType::F32, Some(32));
    assert_eq!(g.config().max_context, 32);
    let err = g.logits(&[1; 33]).unwrap_err();
    assert!(err.to_string().contains("context of 32"), "{err}");
    drop(g);
    for bad in [0, 513] {
        let mut opts = ModelOptions::new(&dir.0);
        opts.max_model_len = Some(bad);
        let err = Generator::load(gpu(), &opts, &mut |_, _| {})
            .err()
            .expect("an out-of-range max_model_len must be refused");
        assert!(
            matches!(err, Error::InvalidRequest(ref m) if m.contains("max_model_len")),
            "{bad}: {err}"
        );
    }
    // The engine honours it too: a prompt needs room for one generated token.
    let mut cfg = EngineConfig::new(&dir.0);
    cfg.model.dtype = WeightDType::F32;
    cfg.model.max_model_len = Some(32);
    let e = Engine::with_context(gpu(), cfg, &mut |_, _| {}).unwrap();
    assert_eq!(e.model_config().max_context, 32);
    let mut req = Request::new(Prompt::Ids(vec![1; 32]));
    req.max_tokens = 1;
    assert!(
        e.generate(req).is_err(),
        "a 32-token prompt fits no output in 32"
    );
    let mut req = Request::new(Prompt::Ids(vec![1; 31]));
    req.max_tokens = 4;
    let out = e.generate(req).unwrap();
    assert_eq!(out.output_ids.len(), 1, "stopped at the 32-token context");
}

/// Greedy continuations alone and batched (small steps, a tight pool): identical, with the
/// LongRoPE factors fixed at load.
#[test]
fn phi3_longrope_engine_is_batch_invariant() {
    let (dir, golden) = fixture("tiny-phi3-longrope");
    let prompts: Vec<Vec<u32>> = cases(&golden, None)
        .iter()
        .map(|c| ids(&c["prompt_ids"]))
        .collect();
    assert_batch_invariant(&dir.0, &prompts, |_| {});
}

// ---------------------------------------------------------------------------------------------
// GGUF files, written as llama.cpp's converter writes these scalings.

/// `base` (a GGUF of tests/fixtures/arch/gguf) with metadata `set` (replacing entries of the
/// same key), entries `drop` removed and `tensors` (f32 vectors) added.
fn gguf_variant(
    base: &str,
    set: &[(String, MetaValue)],
    drop: &[String],
    tensors: &[(&str, &[f32])],
) -> (TempDir, PathBuf) {
    let file = GgufFile::open(fixtures().join("arch/gguf").join(base)).unwrap();
    let mut b = GgufBuilder::new();
    for (k, v) in &file.metadata.entries {
        if !drop.contains(k) && !set.iter().any(|(s, _)| s == k) {
            b.kv(k, v.clone());
        }
    }
    for (k, v) in set {
        b.kv(k, v.clone());
    }
    for t in &file.tensors {
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        let bytes = file.tensor_bytes(&t.name).unwrap().to_vec();
        b.tensor(&t.name, &shape, t.ggml_type, bytes);
    }
    for (name, v) in tensors {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        b.tensor(name, &[v.len() as u64], 0, bytes);
    }
    let dir = TempDir::new("gguf");
    let path = dir.0.join(base);
    std::fs::write(&path, b.build().bytes).unwrap();
    (dir, path)
}

fn f32_list(v: &serde_json::Value) -> Vec<f32> {
    floats(v)
}

/// tiny-phi3.f16.gguf with the LongRoPE tensors and metadata of tiny-phi3-longrope's config.
fn phi3_longrope_gguf(attn_factor: bool, tensors: Option<(&[f32], &[f32])>) -> (TempDir, PathBuf) {
    let cfg = read_json(&arch_dir("tiny-phi3-longrope").join("config.json"));
    let short = f32_list(&cfg["rope_scaling"]["short_factor"]);
    let long = f32_list(&cfg["rope_scaling"]["long_factor"]);
    let (short, long) = tensors.unwrap_or((&short, &long));
    let original = cfg["original_max_position_embeddings"].as_u64().unwrap();
    let context = cfg["max_position_embeddings"].as_u64().unwrap();
    let mut set = vec![
        (
            "phi3.context_length".to_string(),
            MetaValue::U32(context as u32),
        ),
        (
            "phi3.rope.scaling.original_context_length".into(),
            MetaValue::U32(original as u32),
        ),
        ("phi3.rope.freq_base".into(), MetaValue::F32(10000.0)),
    ];
    if attn_factor {
        // The converter's value: sqrt(1 + ln(512 / 32) / ln(32)), as f32.
        let s = context as f64 / original as f64;
        let a = (1.0 + s.ln() / (original as f64).ln()).sqrt();
        set.push((
            "phi3.rope.scaling.attn_factor".into(),
            MetaValue::F32(a as f32),
        ));
    }
    gguf_variant(
        "tiny-phi3.f16.gguf",
        &set,
        &[],
        &[
            ("rope_factors_long.weight", long),
            ("rope_factors_short.weight", short),
        ],
    )
}

#[test]
fn phi3_longrope_gguf_matches_transformers() {
    let (_, golden) = fixture("tiny-phi3-longrope");
    for attn_factor in [true, false] {
        let (_dir, path) = phi3_longrope_gguf(attn_factor, None);
        let cfg = ModelFiles::open(&path).unwrap().config().unwrap();
        let rope = cfg.rope.unwrap();
        assert_eq!(rope.rotary_dim, 12);
        assert!(matches!(
            rope.scaling,
            RopeScaling::LongRope { factors: None, original_context: 32, attention_factor }
                if attention_factor == 1.3416408
        ));
        let what = format!("tiny-phi3-longrope.gguf (attn_factor key: {attn_factor})");
        both_dtypes(&path, &what, &cases(&golden, Some("short")), Some(32));
        both_dtypes(&path, &what, &cases(&golden, Some("long")), None);
    }
}

#[test]
fn qwen3_yarn_gguf_matches_transformers() {
    let (_, golden) = fixture("tiny-qwen3-yarn");
    let set = [
        ("qwen3.context_length".to_string(), MetaValue::U32(256)),
        (
            "qwen3.rope.scaling.type".into(),
            MetaValue::String("yarn".into()),
        ),
        ("qwen3.rope.scaling.factor".into(), MetaValue::F32(4.0)),
        (
            "qwen3.rope.scaling.original_context_length".into(),
            MetaValue::U32(64),
        ),
    ];
    let (_dir, path) = gguf_variant("tiny-qwen3.f16.gguf", &set, &[], &[]);
    both_dtypes(&path, "tiny-qwen3-yarn.gguf", &cases(&golden, None), None);
}

// ---------------------------------------------------------------------------------------------
// Refusals: a scaling wllm cannot compute as the references do is refused by name.

fn hf_config_err(base: &str, config: serde_json::Value) -> String {
    let dir = checkpoint(base, &config);
    let files = ModelFiles::open(&dir.0).unwrap();
    match files.config() {
        Ok(c) => panic!("accepted: {:?}", c.rope),
        Err(e) => e.to_string(),
    }
}

fn gguf_config_err(path: &Path) -> String {
    match ModelFiles::open(path).and_then(|f| f.config()) {
        Ok(c) => panic!("accepted: {:?}", c.rope),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hf_rope_scalings_that_cannot_be_computed_are_refused() {
    let longrope = read_json(&arch_dir("tiny-phi3-longrope").join("config.json"));
    let yarn = read_json(&arch_dir("tiny-qwen2-yarn").join("config.json"));
    let edit = |base: &serde_json::Value, f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = base.clone();
        f(&mut c["rope_scaling"]);
        c
    };
    for (what, base, cfg, needles) in [
        (
            "unknown type",
            "tiny-qwen2",
            edit(&yarn, &|s| s["type"] = "dynamic".into()),
            &["dynamic", "not supported"][..],
        ),
        (
            "longrope without long factors",
            "tiny-phi3",
            edit(&longrope, &|s| {
                s.as_object_mut().unwrap().remove("long_factor");
            }),
            &["long_factor"],
        ),
        (
            "short factors of the wrong length",
            "tiny-phi3",
            edit(&longrope, &|s| {
                s["short_factor"] = serde_json::json!([1.0, 1.0])
            }),
            &["short_factor", "2 entries", "need 6"],
        ),
        (
            "a zero long factor",
            "tiny-phi3",
            edit(&longrope, &|s| s["long_factor"][3] = 0.0.into()),
            &["long_factor", "not a positive number"],
        ),
        (
            "a factor that is not a number",
            "tiny-phi3",
            edit(&longrope, &|s| s["long_factor"][0] = "2".into()),
            &["long_factor", "not a number"],
        ),
        (
            "yarn with truncate that is not a bool",
            "tiny-qwen2",
            edit(&yarn, &|s| s["truncate"] = "no".into()),
            &["truncate"],
        ),
        (
            "yarn with a negative factor",
            "tiny-qwen2",
            edit(&yarn, &|s| s["factor"] = (-2.0).into()),
            &["factor", "not a positive number"],
        ),
    ] {
        let err = hf_config_err(base, cfg);
        for n in needles {
            assert!(err.contains(n), "{what}: {err:?} lacks {n:?}");
        }
    }
}

#[test]
fn hf_rope_parameter_forms_resolve_as_transformers_does() {
    let longrope = read_json(&arch_dir("tiny-phi3-longrope").join("config.json"));
    let config_of = |base: &str, c: &serde_json::Value| {
        let dir = checkpoint(base, c);
        ModelFiles::open(&dir.0).unwrap().config().unwrap()
    };
    let scaling = |c: &ModelConfig| c.rope.as_ref().unwrap().scaling.clone();
    // Phi3Config reads the old type names `su` and `yarn` as LongRoPE.
    let want = scaling(&config_of("tiny-phi3", &longrope));
    for old in ["su", "yarn"] {
        let mut c = longrope.clone();
        c["rope_scaling"]["type"] = old.into();
        assert_eq!(scaling(&config_of("tiny-phi3", &c)), want, "{old}");
    }
    // Phi-3's original context is the top-level key (4096 when absent), never the scaling's.
    let mut c = longrope.clone();
    c["rope_scaling"]["original_max_position_embeddings"] = 64.into();
    assert_eq!(scaling(&config_of("tiny-phi3", &c)), want);
    c.as_object_mut()
        .unwrap()
        .remove("original_max_position_embeddings");
    assert!(matches!(
        scaling(&config_of("tiny-phi3", &c)),
        RopeScaling::LongRope {
            original_context: 4096,
            attention_factor: 1.0,
            ..
        }
    ));
    // Legacy `rope_scaling` replaces `rope_parameters` wholesale (its θ too).
    let yarn = read_json(&arch_dir("tiny-qwen3-yarn").join("config.json"));
    let mut c = yarn.clone();
    c["rope_scaling"] = c["rope_parameters"].clone();
    c["rope_scaling"]
        .as_object_mut()
        .unwrap()
        .remove("rope_theta");
    c["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 1e6});
    let cfg = config_of("tiny-qwen3", &c);
    assert_eq!(cfg.rope.as_ref().unwrap().theta, 10000.0);
    assert!(matches!(
        scaling(&cfg),
        RopeScaling::Yarn {
            original_context: 64,
            ..
        }
    ));
}

#[test]
fn gguf_rope_scalings_that_cannot_be_computed_are_refused() {
    // LongRoPE with one factor set, or sets of the wrong length.
    let six = [1.0f32; 6];
    let five = [1.0f32; 5];
    let (_d, path) = phi3_longrope_gguf(true, Some((&six, &five)));
    let files = ModelFiles::open(&path).unwrap();
    let cfg = files.config().unwrap();
    let err = match wllm::model::load_weights(gpu(), &files, &cfg, WeightDType::F32, &mut |_, _| {})
    {
        Ok(_) => panic!("five long factors for six pairs were accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("rope_factors_long.weight"), "{err}");
    let zero = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
    let (_d, path) = phi3_longrope_gguf(true, Some((&zero, &six)));
    let mut opts = ModelOptions::new(&path);
    opts.max_model_len = Some(32);
    let err = Generator::load(gpu(), &opts, &mut |_, _| {}).err().unwrap();
    assert!(err.to_string().contains("must be positive"), "{err}");

    let (_d, path) = gguf_variant(
        "tiny-phi3.f16.gguf",
        &[],
        &[],
        &[("rope_factors_long.weight", &six)],
    );
    assert!(gguf_config_err(&path).contains("rope_factors_short.weight"));

    // YaRN keys on which llama.cpp and transformers disagree, and unknown types.
    let qwen3 = |extra: &[(&str, MetaValue)]| {
        let mut set = vec![
            (
                "qwen3.rope.scaling.type".to_string(),
                MetaValue::String("yarn".into()),
            ),
            ("qwen3.rope.scaling.factor".into(), MetaValue::F32(4.0)),
        ];
        set.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        gguf_variant("tiny-qwen3.f16.gguf", &set, &[], &[])
    };
    for (key, v) in [
        ("qwen3.rope.scaling.yarn_attn_factor", MetaValue::F32(1.5)),
        ("qwen3.rope.scaling.yarn_beta_fast", MetaValue::F32(8.0)),
        ("qwen3.rope.scaling.yarn_beta_slow", MetaValue::F32(2.0)),
        ("qwen3.rope.scaling.yarn_ext_factor", MetaValue::F32(0.5)),
        (
            "qwen3.rope.scaling.yarn_log_multiplier",
            MetaValue::F32(0.1),
        ),
        (
            "qwen3.rope.scaling.type",
            MetaValue::String("dynamic".into()),
        ),
    ] {
        let (_d, path) = qwen3(&[(key, v)]);
        let err = gguf_config_err(&path);
        assert!(err.contains(key), "{key}: {err}");
    }
    // Values that agree with both references load.
    let (_d, path) = qwen3(&[
        ("qwen3.rope.scaling.yarn_beta_fast", MetaValue::F32(32.0)),
        (
            "qwen3.rope.scaling.yarn_attn_factor",
            MetaValue::F32((0.1 * 4f64.ln() + 1.0) as f32),
        ),
    ]);
    ModelFiles::open(&path).unwrap().config().unwrap();
    let (_d, path) = gguf_variant(
        "tiny-qwen3.f16.gguf",
        &[(
            "qwen3.rope.scaling.type".into(),
            MetaValue::String("yarn".into()),
        )],
        &[],
        &[],
    );
    assert!(gguf_config_err(&path).contains("qwen3.rope.scaling.factor"));
}
