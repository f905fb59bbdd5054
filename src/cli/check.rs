//! `wllm check`: the kernels' conformance on each adapter (see `wllm::check`).

use anyhow::{Context, Result, bail};
use wllm::check::{
    AdapterCheck, PerfReport, Status, check_adapter, check_models, perf_adapter, support_table,
};
use wllm::gpu::{AdapterSelector, GpuContext, list_adapters, parse_backends};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Check the adapter whose name contains this (case-insensitive); default: the one wllm
    /// picks (WLLM_ADAPTER / WLLM_BACKEND apply)
    #[arg(long, conflicts_with = "all_adapters")]
    pub adapter: Option<String>,
    /// Check every usable adapter wgpu sees
    #[arg(long)]
    pub all_adapters: bool,
    /// The model of the model-level check (a GGUF file or a Hugging Face directory): the GPU's
    /// logits against a CPU forward of the same weights over a greedy continuation; default:
    /// built-in tiny random models, so nothing needs downloading
    #[arg(long, value_name = "PATH")]
    pub model: Option<std::path::PathBuf>,
    /// Greedy tokens the model-level check generates after its prompt
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub model_tokens: u32,
    /// Print the support table (Markdown, a row per kernel and form, a column per adapter)
    /// instead of each case
    #[arg(long, conflicts_with = "json")]
    pub markdown: bool,
    /// Also time each kernel at model-like shapes: µs per call and GB/s against the adapter's
    /// measured copy bandwidth
    #[arg(long)]
    pub perf: bool,
    /// Check nothing: merge these `wllm check --json` reports (from any machines) into the
    /// support table
    #[arg(long, value_name = "REPORT.json", num_args = 1.., conflicts_with_all = ["json", "adapter", "all_adapters", "model", "perf"])]
    pub table_from: Vec<std::path::PathBuf>,
    /// One JSON object: {"adapters": [{"name", "backend", "driver", "limits", "results": [...]}]}
    #[arg(long)]
    pub json: bool,
}

fn print_table(a: &AdapterCheck) {
    println!(
        "{} [{}] driver {} {}",
        a.name, a.backend, a.driver, a.driver_info
    );
    let width =
        |f: fn(&wllm::check::CaseResult) -> usize| a.results.iter().map(f).max().unwrap_or(0);
    let (wk, wf, wc) = (
        width(|r| r.kernel.len()),
        width(|r| r.form.len()),
        width(|r| r.case.len()),
    );
    for r in &a.results {
        let status = match (r.status, r.expected_failure) {
            (Status::Pass, false) => "PASS",
            (Status::Pass, true) => "PASS (expected to fail: stale entry)",
            (Status::Fail, false) => "FAIL",
            (Status::Fail, true) => "FAIL (expected)",
            (Status::Unsupported, _) => "UNSUPPORTED",
        };
        let error = r.error.map_or(String::new(), |e| format!("{e:.2e}"));
        let detail = r.detail.as_deref().unwrap_or("");
        println!(
            "  {:wk$}  {:wf$}  {:wc$}  {status:<11}  {error:>9}  {detail}",
            r.kernel, r.form, r.case
        );
    }
    for m in &a.models {
        let status = match m.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Unsupported => {
                let why = m.detail.as_deref().unwrap_or("");
                println!("  model {} [{}]: UNSUPPORTED ({why})", m.model, m.dtype);
                continue;
            }
        };
        println!(
            "  model {} [{}]: {status}, top-1 {}/{} positions, max logit error {:.2e} of scale {:.2} (limit {:.0e} of it), CPU reference {:.1} s{}",
            m.model,
            m.dtype,
            m.top1_agree,
            m.positions,
            m.max_logit_error,
            m.logit_scale,
            m.limit,
            m.cpu_seconds,
            m.detail
                .as_deref()
                .map_or(String::new(), |d| format!(": {d}"))
        );
    }
    let count = |s: Status| a.results.iter().filter(|r| r.status == s).count();
    println!(
        "  {} passed, {} failed, {} unsupported, {} problem(s)",
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Unsupported),
        a.problems()
    );
}

/// `--perf`: each kernel's time per call and bandwidth, against the copy bandwidth.
fn print_perf(p: &PerfReport) {
    println!(
        "  perf: copy bandwidth {:.2} GB/s (copy_buffer_to_buffer, read + write); kernels timed by {}",
        p.copy_gb_per_s, p.timer
    );
    let width =
        |f: fn(&wllm::check::PerfResult) -> usize| p.results.iter().map(f).max().unwrap_or(0);
    let (wk, wf, wc) = (
        width(|r| r.kernel.len()).max("kernel".len()),
        width(|r| r.form.len()).max("form".len()),
        width(|r| r.case.chars().count()).max("case".len()),
    );
    println!(
        "  {:wk$}  {:wf$}  {:wc$}  {:>10}  {:>8}  {:>9}",
        "kernel", "form", "case", "µs/call", "GB/s", "% of copy"
    );
    for r in &p.results {
        // `{:wc$}` pads by chars, and the cases hold `×`.
        println!(
            "  {:wk$}  {:wf$}  {:wc$}  {:>10.1}  {:>8.2}  {:>8.1}%",
            r.kernel,
            r.form,
            r.case,
            r.us_per_call,
            r.gb_per_s,
            100.0 * r.of_copy
        );
    }
}

/// `--table-from`: the support table of saved reports.
fn table_from(files: &[std::path::PathBuf]) -> Result<()> {
    let mut reports = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?;
        reports.push(v);
    }
    let table = support_table(&reports).map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{table}");
    Ok(())
}

pub fn run(args: CheckArgs) -> Result<()> {
    if !args.table_from.is_empty() {
        return table_from(&args.table_from);
    }
    let env = AdapterSelector::from_env()?;
    let contexts: Vec<GpuContext> = if args.all_adapters {
        let mut v = Vec::new();
        for a in list_adapters(env.backends).into_iter().filter(|a| a.usable) {
            let sel = AdapterSelector {
                backends: Some(parse_backends(&a.backend.to_lowercase())?),
                name_contains: Some(a.name.clone()),
                ..env.clone()
            };
            match GpuContext::new(&sel) {
                Ok(c) => v.push(c),
                Err(e) => eprintln!("wllm check: skipping {} [{}]: {e}", a.name, a.backend),
            }
        }
        v
    } else {
        let sel = AdapterSelector {
            name_contains: args.adapter.clone().or(env.name_contains.clone()),
            ..env.clone()
        };
        vec![GpuContext::new(&sel)?]
    };
    if contexts.is_empty() {
        bail!("no usable adapter to check (on Debian: apt-get install mesa-vulkan-drivers)");
    }
    let mut reports = Vec::new();
    for ctx in &contexts {
        let mut r = check_adapter(ctx)?;
        if args.perf {
            r.perf = Some(perf_adapter(ctx)?);
        }
        r.models = check_models(ctx, args.model.as_deref(), args.model_tokens as usize)?;
        if !args.json && !args.markdown {
            print_table(&r);
            if let Some(p) = &r.perf {
                print_perf(p);
            }
        }
        reports.push(r);
    }
    let report = serde_json::json!({ "adapters": reports });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if args.markdown {
        print!(
            "{}",
            support_table(&[report]).map_err(|e| anyhow::anyhow!("{e}"))?
        );
    }
    let problems: usize = reports.iter().map(AdapterCheck::problems).sum();
    if problems > 0 {
        bail!("{problems} case(s) failed (or were expected to fail and passed)");
    }
    Ok(())
}
