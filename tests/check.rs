//! `wllm check` as people run it: every kernel against its CPU reference on each adapter CI
//! has, the model-level check, `--perf`, and the support table docs/SUPPORT.md shows.

mod common;

use common::cli::{wllm, wllm_with_env};
use common::smollm2_path;

/// `wllm check --json` on the test adapter: every case passes or is unsupported, the exit
/// status is 0, and the report names the adapter and covers each kernel family in both forms.
#[test]
fn check_reports_every_kernel_passing_on_the_test_adapter() {
    let (ok, out, err) = wllm(&["check", "--json"]);
    assert!(ok, "wllm check failed: {err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    let adapters = v["adapters"].as_array().expect("adapters");
    assert_eq!(adapters.len(), 1);
    let a = &adapters[0];
    assert!(a["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(
        a["limits"]["max_storage_buffer_binding_size"]
            .as_u64()
            .unwrap()
            > 0
    );
    let results = a["results"].as_array().unwrap();
    for r in results {
        let status = r["status"].as_str().unwrap();
        assert!(status == "PASS" || status == "UNSUPPORTED", "{r}");
    }
    for kernel in ["argmax", "sample", "logit_adjust", "rms_norm", "matmul"] {
        assert!(
            results
                .iter()
                .any(|r| r["kernel"] == kernel && r["status"] == "PASS"),
            "{kernel} missing"
        );
    }
    for form in ["cpu forms", "gpu forms"] {
        assert!(
            results
                .iter()
                .any(|r| r["form"].as_str().unwrap().starts_with(form)),
            "{form} missing"
        );
    }
    // The model-level check on the built-in random models: f32 and f16 (lavapipe has
    // shader-f16), every position's top-1 the CPU reference's.
    let models = a["models"].as_array().expect("models");
    assert_eq!(models.len(), 4, "{models:?}");
    for m in models {
        assert_eq!(m["status"], "PASS", "{m}");
        assert_eq!(m["top1_agree"], m["positions"], "{m}");
        assert!(m["positions"].as_u64().unwrap() >= 30, "{m}");
        let (err, scale) = (
            m["max_logit_error"].as_f64().unwrap(),
            m["logit_scale"].as_f64().unwrap(),
        );
        assert!(err.is_finite() && scale > 1.0, "{m}");
    }
    // Unknown adapters are an error, not an empty report.
    let (ok, _, err) = wllm(&["check", "--adapter", "no-such-gpu-anywhere"]);
    assert!(!ok && err.contains("no usable GPU adapter"), "{err}");
}

/// `wllm check --perf --json`: a copy bandwidth, and every kernel timed with a positive,
/// finite time per call, bytes and bandwidth, the decode kernels among them.
#[test]
fn check_perf_times_every_kernel() {
    let (ok, out, err) = wllm(&["check", "--perf", "--json"]);
    assert!(ok, "wllm check --perf failed: {err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    let perf = &v["adapters"][0]["perf"];
    let copy = perf["copy_gb_per_s"].as_f64().expect("copy_gb_per_s");
    assert!(copy > 0.0 && copy.is_finite(), "{perf}");
    assert!(
        perf["timer"].as_str().is_some_and(|t| !t.is_empty()),
        "{perf}"
    );
    let results = perf["results"].as_array().expect("results");
    for r in results {
        let us = r["us_per_call"].as_f64().unwrap();
        assert!(us > 0.0 && us.is_finite(), "{r}");
        assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
        let gb = r["gb_per_s"].as_f64().unwrap();
        assert!(gb > 0.0 && gb.is_finite(), "{r}");
    }
    for kernel in ["matmul", "matmul_quant", "attention", "argmax"] {
        assert!(
            results.iter().any(|r| r["kernel"] == kernel),
            "{kernel} missing: {perf}"
        );
    }
}

/// `wllm check --model` on SmolLM2 (Q4_1 GGUF, f16 KV): the GPU's logits over a greedy
/// continuation against the CPU reference forward of the same quantized weights.
#[test]
fn check_model_compares_smollm2_with_its_cpu_reference() {
    let gguf = smollm2_path().display().to_string();
    let (ok, out, err) = wllm(&["check", "--model", &gguf, "--model-tokens", "6", "--json"]);
    assert!(ok, "wllm check --model failed: {err}\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    let models = v["adapters"][0]["models"].as_array().expect("models");
    assert_eq!(models.len(), 1);
    let m = &models[0];
    assert_eq!(m["status"], "PASS", "{m}");
    assert_eq!(m["dtype"], "f16", "{m}");
    assert_eq!(m["top1_agree"], m["positions"], "{m}");
    assert!(m["max_logit_error"].as_f64().unwrap() <= 2e-3 * m["logit_scale"].as_f64().unwrap());
    // A model that does not load is an error naming it, not a report.
    let (ok, _, err) = wllm(&["check", "--model", "/no/such/model.gguf"]);
    assert!(!ok && err.contains("/no/such/model.gguf"), "{err}");
}

/// The CPU adapters CI has: lavapipe on Vulkan at its native width (subgroups of 8), lavapipe
/// at 128 bits (subgroups of 4), and wgpu's GL backend on llvmpipe (no subgroups, no f16).
const CI_ADAPTERS: [(&str, &[(&str, &str)]); 3] = [
    ("lavapipe", &[]),
    ("lavapipe 128-bit", &[("LP_NATIVE_VECTOR_WIDTH", "128")]),
    ("GL llvmpipe", &[("WLLM_BACKEND", "gl")]),
];

/// `wllm check` passes on every adapter CI has, and SmolLM2's greedy tokens are the same on all
/// of them (the kernels' subgroup-free and f16-free paths compute what the others do).
#[test]
fn every_ci_adapter_passes_the_check_and_agrees_on_greedy_tokens() {
    let gguf = smollm2_path().display().to_string();
    let mut tokens = Vec::new();
    let dir = std::env::temp_dir().join(format!("wllm-support-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut reports = Vec::new();
    for (name, env) in CI_ADAPTERS {
        let (ok, out, err) = wllm_with_env(&["check", "--json"], env);
        assert!(ok, "{name}: wllm check failed: {err}\n{out}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        let results = v["adapters"][0]["results"].as_array().unwrap();
        assert!(results.iter().any(|r| r["status"] == "PASS"), "{name}");
        let report = dir.join(format!("{}.json", reports.len()));
        std::fs::write(&report, &out).unwrap();
        reports.push(report.display().to_string());
        let args = [
            "generate",
            "--model",
            &gguf,
            "--chat",
            "--prompt",
            "Write a short story about a dragon who learns to bake bread.",
            "--max-tokens",
            "24",
            "--json",
        ];
        let (ok, out, err) = wllm_with_env(&args, env);
        assert!(ok, "{name}: generate failed: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        let ids = v["output_ids"].clone();
        assert_eq!(ids.as_array().map(Vec::len), Some(24), "{name}: {v}");
        tokens.push((name, ids));
    }
    for (name, ids) in &tokens[1..] {
        assert_eq!(*ids, tokens[0].1, "{name} vs {}", tokens[0].0);
    }

    // The support table of the three reports: a column each, and the rows docs/SUPPORT.md
    // shows (regenerate it with scripts/support_table.sh when kernels or forms change).
    let mut args = vec!["check", "--table-from"];
    args.extend(reports.iter().map(String::as_str));
    let (ok, table, err) = wllm(&args);
    assert!(ok, "--table-from failed: {err}");
    let _ = std::fs::remove_dir_all(&dir);
    let rows = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| kernel |"))
            .map(String::from)
            .collect()
    };
    let generated = rows(&table);
    assert!(generated.len() > 40, "{table}");
    for row in &generated {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
        assert_eq!(cells.len(), 2 + CI_ADAPTERS.len(), "{row}");
        assert!(
            cells[2..]
                .iter()
                .all(|c| c.trim() == "PASS" || c.trim().starts_with("UNSUPPORTED")),
            "{row}"
        );
    }
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SUPPORT.md")).unwrap();
    assert_eq!(
        rows(&doc),
        generated,
        "docs/SUPPORT.md is out of date: run scripts/support_table.sh"
    );
}
