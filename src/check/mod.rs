//! `wllm check`: every kernel the adapter can build, on awkward shapes, against its CPU
//! reference (which lives in the library beside the kernel), so anyone with a GPU can ask
//! "does wllm compute the right thing here" without a checkout.
//!
//! Each case reports PASS (within its limit), FAIL (with the error) or UNSUPPORTED (with the
//! missing feature). Float outputs are compared by normalized mean squared error
//! (Σ(got − want)² / Σ want², llama.cpp's `test-backend-ops` measure) against a limit written
//! next to each kernel family here; integer outputs (picked token ids, masked logits' bits) must
//! match exactly. Known driver problems are listed in `expected_failures.json` by backend,
//! vendor, adapter or driver: a FAIL there is expected, and a PASS there is reported, since the
//! entry is then stale.

mod cases;
mod cases_attention;
mod cases_layers;
mod cases_quant;
mod cpu_forward;
mod expected;
mod model;
mod perf;
mod properties;
mod table;
mod tiny_model;

use serde::Serialize;

use crate::gpu::{AdapterReport, GpuContext, GpuError, KernelForms};

pub use expected::{ExpectedFailure, expected_failures};
pub use model::{CpuReference, ModelCheck, check_models};
pub use perf::{PerfReport, PerfResult, perf_adapter};
pub use table::support_table;

/// How one case came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pass,
    Fail,
    Unsupported,
}

/// One kernel, in one form, on one shape.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub kernel: String,
    /// Which build of the kernel: its family (`cpu` / `gpu` forms), storage type, variant.
    pub form: String,
    /// The shape, e.g. `rows 3 × 49157`.
    pub case: String,
    pub status: Status,
    /// The NMSE (or mismatch count for exact kernels); `None` when nothing ran.
    pub error: Option<f64>,
    pub limit: f64,
    /// Why it failed or is unsupported; for an expected failure, the listed reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The case is listed in `expected_failures.json`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub expected_failure: bool,
}

impl CaseResult {
    /// A FAIL that is not expected, or an expected failure that passed.
    pub fn is_problem(&self) -> bool {
        match self.status {
            Status::Fail => !self.expected_failure,
            Status::Pass => self.expected_failure,
            Status::Unsupported => false,
        }
    }
}

/// Everything checked on one adapter.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterCheck {
    pub name: String,
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    pub limits: serde_json::Value,
    pub results: Vec<CaseResult>,
    /// The model-level checks ([`check_models`]), when asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelCheck>,
    /// Each kernel's speed at model-like shapes ([`perf_adapter`]), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf: Option<PerfReport>,
}

impl AdapterCheck {
    pub fn problems(&self) -> usize {
        let models = self.models.iter().filter(|m| m.status == Status::Fail);
        self.results.iter().filter(|r| r.is_problem()).count() + models.count()
    }
}

/// Normalized mean squared error of `got` against `want`: Σ(g − w)² / Σ w² (Σ(g − w)² when
/// `want` is all zeros). Any non-finite value where `want` has a finite one, or a NaN/inf
/// mismatch, is infinitely wrong.
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        if !w.is_finite() || !g.is_finite() {
            let same = (g.is_nan() && w.is_nan()) || g == w;
            if !same {
                return f64::INFINITY;
            }
            continue;
        }
        err += (g as f64 - w as f64).powi(2);
        norm += (w as f64).powi(2);
    }
    if norm > 0.0 { err / norm } else { err }
}

/// Context shared by the cases of one adapter: the device opened once per kernel family.
pub(crate) struct Target<'a> {
    pub ctx: &'a GpuContext,
    /// The same adapter building the other kernel family.
    pub other: &'a GpuContext,
}

/// Runs every case on `ctx` (and, where the adapter can build them, the other kernel forms),
/// and marks the expected failures.
pub fn check_adapter(ctx: &GpuContext) -> Result<AdapterCheck, GpuError> {
    let other_forms = match ctx.profile.kernel_forms {
        KernelForms::Cpu => KernelForms::Gpu,
        KernelForms::Gpu => KernelForms::Cpu,
    };
    let other = ctx.clone().with_kernel_forms(other_forms);
    let target = Target { ctx, other: &other };
    let mut results = cases::run_all(&target);
    let info: &AdapterReport = &ctx.adapter_info;
    let expected = expected_failures();
    for r in &mut results {
        if let Some(e) = expected
            .iter()
            .find(|e| e.matches(info, &r.kernel, &r.form))
        {
            r.expected_failure = true;
            let why = format!("expected failure: {}", e.reason);
            r.detail = Some(match r.detail.take() {
                Some(d) => format!("{d}; {why}"),
                None => why,
            });
        }
    }
    let l = &ctx.limits;
    Ok(AdapterCheck {
        name: info.name.clone(),
        backend: info.backend.clone(),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        limits: serde_json::json!({
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
            "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
            "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
            "shader_f16": info.shader_f16,
            "subgroup": info.subgroup,
            "subgroup_size": [info.subgroup_min_size, info.subgroup_max_size],
        }),
        results,
        models: Vec::new(),
        perf: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmse_is_zero_for_equal_and_grows_with_the_error() {
        let w = [1.0f32, -2.0, 3.0];
        assert_eq!(nmse(&w, &w), 0.0);
        let g = [1.0f32, -2.0, 3.1];
        let e = nmse(&g, &w);
        assert!((e / (0.01 / 14.0) - 1.0).abs() < 1e-5, "{e}");
        assert_eq!(nmse(&[f32::NAN, -2.0, 3.0], &w), f64::INFINITY);
        assert_eq!(nmse(&[f32::NEG_INFINITY], &[f32::NEG_INFINITY]), 0.0);
        assert_eq!(nmse(&[0.0], &[f32::NEG_INFINITY]), f64::INFINITY);
        assert_eq!(nmse(&[1.0, 2.0], &[1.0]), f64::INFINITY);
    }

    #[test]
    fn problems_are_unexpected_failures_and_unexpected_passes() {
        let r = |status, expected_failure| CaseResult {
            kernel: "k".into(),
            form: "f".into(),
            case: "c".into(),
            status,
            error: None,
            limit: 0.0,
            detail: None,
            expected_failure,
        };
        assert!(r(Status::Fail, false).is_problem());
        assert!(!r(Status::Fail, true).is_problem());
        assert!(r(Status::Pass, true).is_problem());
        assert!(!r(Status::Pass, false).is_problem());
        assert!(!r(Status::Unsupported, false).is_problem());
    }
}
