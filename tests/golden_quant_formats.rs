//! GGUF files in K-quant and IQ4 formats (llama.cpp's `llama-quantize` output, the files
//! people download) against transformers run on gguf-py's dequantization of the same file:
//! tests/fixtures/arch/gguf/NAME.golden.json (see tests/fixtures/arch/README.md). The weights
//! stay in their GGUF blocks on the GPU and the kernels dequantize each one as gguf-py does
//! (bit for bit: tests/kernels_quant_blocks.rs, tests/dequant_formats.rs), so in f32 the only
//! differences are summation orders — within 5e-3 of the reference's logit differences.

mod common;

use common::fixtures;
use common::golden::{Deviation, compare_with_golden, tolerance};
use wllm::WeightDType;

/// f32 tolerance for quantized files (README: "within about 5e-3 (quantized files, summed in
/// another order)").
const F32_TOL: f32 = 5e-3;

fn compare(name: &str, dtype: WeightDType) -> Deviation {
    let dir = fixtures().join("arch/gguf");
    let model = dir.join(format!("{name}.gguf"));
    compare_with_golden(&model, &dir.join(format!("{name}.golden.json")), dtype)
}

/// Every file of `family` in f32, each reported, then all asserted.
fn family(family: &str, quants: &[&str]) {
    let results: Vec<_> = quants
        .iter()
        .map(|q| {
            let name = format!("{family}.{q}");
            let d = compare(&name, WeightDType::F32);
            eprintln!(
                "{name:>20}: worst f32 logit-difference error {:.2e} at {}",
                d.worst, d.worst_at
            );
            (name, d)
        })
        .collect();
    for (name, d) in &results {
        d.assert_within(name, F32_TOL);
    }
}

#[test]
fn llama3_quant_formats_match_reference() {
    family(
        "tiny-llama3",
        &[
            "Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS",
        ],
    );
}

#[test]
fn qwen2_quant_formats_match_reference() {
    family("tiny-qwen2", &["Q4_K_M", "Q5_K_S", "Q6_K"]);
}

/// The default download, with the dequantized weights stored as f16 (one more rounding).
#[test]
fn llama3_q4_k_m_in_f16_matches_reference() {
    let d = compare("tiny-llama3.Q4_K_M", WeightDType::F16);
    eprintln!(
        "tiny-llama3.Q4_K_M f16: worst logit-difference error {:.2e} at {}",
        d.worst, d.worst_at
    );
    d.assert_within("tiny-llama3.Q4_K_M f16", tolerance(WeightDType::F16));
}
