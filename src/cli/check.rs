//! `wllm check`: the kernels' conformance on each adapter (see `wllm::check`).

use anyhow::{Result, bail};
use wllm::check::{AdapterCheck, Status, check_adapter};
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
    let count = |s: Status| a.results.iter().filter(|r| r.status == s).count();
    println!(
        "  {} passed, {} failed, {} unsupported, {} problem(s)",
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Unsupported),
        a.problems()
    );
}

pub fn run(args: CheckArgs) -> Result<()> {
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
        let r = check_adapter(ctx)?;
        if !args.json {
            print_table(&r);
        }
        reports.push(r);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "adapters": reports }))?
        );
    }
    let problems: usize = reports.iter().map(AdapterCheck::problems).sum();
    if problems > 0 {
        bail!("{problems} case(s) failed (or were expected to fail and passed)");
    }
    Ok(())
}
