//! Prometheus text-format metrics: the engine's gauges read at scrape time plus counters and
//! histograms the server keeps as requests pass through it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::EngineStats;

/// Seconds from submit to the first generated token.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
/// Seconds between two consecutive tokens of one request.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 20.0,
];

/// A cumulative histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Ok(mut g) = self.inner.lock() {
            let (counts, sum, n) = &mut *g;
            if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
                counts[i] += 1;
            }
            *sum += v;
            *n += 1;
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let Ok(g) = self.inner.lock() else { return };
        let (counts, sum, n) = &*g;
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(counts) {
            acc += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// What the server counts itself.
pub struct Metrics {
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
    /// HTTP responses by status code.
    pub by_status: Mutex<BTreeMap<u16, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            by_status: Mutex::new(BTreeMap::new()),
        }
    }
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

/// One series with a label per value: `name{label="key"} value`.
fn labelled(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// The KV tiers: hits per tier, blocks moved and bytes per tier, the host tier's fill.
fn tier_series(o: &mut String, stats: &EngineStats) {
    let t = &stats.kv_tiers;
    let (h, d) = (&t.host, &t.disk);
    labelled(
        o,
        "wllm_kv_tier_hit_tokens_total",
        "counter",
        "Prompt tokens whose KV was reused, by the tier it came from (disk: loaded into the host tier).",
        &[
            ("tier=\"gpu\"", stats.prefix_hit_tokens),
            ("tier=\"host\"", t.host_hit_tokens),
            ("tier=\"disk\"", t.disk_loaded_tokens),
        ],
    );
    labelled(
        o,
        "wllm_kv_tier_blocks_total",
        "counter",
        "KV blocks moved per tier and operation.",
        &[
            ("tier=\"host\",op=\"offload\"", h.offloads),
            ("tier=\"host\",op=\"offload_failed\"", h.offloads_failed),
            ("tier=\"host\",op=\"offload_skipped\"", h.offloads_skipped),
            ("tier=\"host\",op=\"restore\"", h.restores),
            ("tier=\"host\",op=\"evict\"", h.evictions),
            ("tier=\"disk\",op=\"load\"", d.hits),
            ("tier=\"disk\",op=\"write\"", d.writes),
            ("tier=\"disk\",op=\"reject\"", d.rejected),
            ("tier=\"disk\",op=\"write_error\"", d.write_errors),
            ("tier=\"disk\",op=\"write_dropped\"", d.dropped_writes),
            ("tier=\"disk\",op=\"evict\"", d.evictions),
        ],
    );
    labelled(
        o,
        "wllm_kv_tier_bytes_total",
        "counter",
        "Bytes of KV moved into and out of each tier.",
        &[
            ("tier=\"host\",direction=\"in\"", t.offload_bytes),
            ("tier=\"host\",direction=\"out\"", t.restore_bytes),
            ("tier=\"disk\",direction=\"in\"", d.bytes_written),
            ("tier=\"disk\",direction=\"out\"", d.bytes_read),
        ],
    );
    labelled(
        o,
        "wllm_kv_host_tier_blocks",
        "gauge",
        "Host tier slots: in all, holding a block's KV, being written.",
        &[
            ("state=\"total\"", h.slots as u64),
            ("state=\"ready\"", h.ready as u64),
            ("state=\"writing\"", h.writing as u64),
        ],
    );
    scalar(
        o,
        "wllm_kv_host_tier_resident_bytes",
        "gauge",
        "Host memory the host tier's blocks take now.",
        t.host_resident_bytes,
    );
}

impl Metrics {
    pub fn count_status(&self, status: u16) {
        if let Ok(mut m) = self.by_status.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    /// The whole exposition: engine gauges from `stats`, then the server's own series.
    pub fn render(&self, stats: &EngineStats) -> String {
        let mut o = String::new();
        let g = "gauge";
        let c = "counter";
        scalar(
            &mut o,
            "wllm_kv_blocks_used",
            g,
            "KV-cache blocks in use.",
            stats.blocks_used,
        );
        scalar(
            &mut o,
            "wllm_kv_blocks_total",
            g,
            "KV-cache blocks in the pool.",
            stats.blocks_total,
        );
        scalar(
            &mut o,
            "wllm_kv_waste_percent",
            g,
            "Allocated KV slots not holding a token, in percent.",
            stats.kv_waste_pct,
        );
        scalar(
            &mut o,
            "wllm_requests_waiting",
            g,
            "Requests waiting for admission.",
            stats.requests_waiting,
        );
        scalar(
            &mut o,
            "wllm_requests_running",
            g,
            "Requests running.",
            stats.requests_running,
        );
        scalar(
            &mut o,
            "wllm_preemptions_total",
            c,
            "Sequences preempted for KV blocks.",
            stats.preemptions,
        );
        scalar(
            &mut o,
            "wllm_prefix_cache_query_tokens_total",
            c,
            "Prompt tokens looked up in the prefix cache.",
            stats.prefix_query_tokens,
        );
        scalar(
            &mut o,
            "wllm_prefix_cache_hit_tokens_total",
            c,
            "Prompt tokens whose KV came from the prefix cache.",
            stats.prefix_hit_tokens,
        );
        scalar(
            &mut o,
            "wllm_prefix_cache_blocks",
            g,
            "Blocks holding reusable KV.",
            stats.cached_blocks,
        );
        scalar(
            &mut o,
            "wllm_prefix_cache_evictions_total",
            c,
            "Cached blocks evicted to make room.",
            stats.evictions,
        );
        tier_series(&mut o, stats);
        scalar(
            &mut o,
            "wllm_spec_drafted_tokens_total",
            c,
            "Speculative decoding: tokens drafted and verified.",
            stats.spec_drafted_tokens,
        );
        scalar(
            &mut o,
            "wllm_spec_accepted_tokens_total",
            c,
            "Speculative decoding: drafted tokens the model accepted.",
            stats.spec_accepted_tokens,
        );
        scalar(
            &mut o,
            "wllm_requests_finished_total",
            c,
            "Requests the engine finished.",
            stats.requests_finished,
        );
        scalar(
            &mut o,
            "wllm_engine_steps_total",
            c,
            "Engine steps run.",
            stats.steps,
        );
        scalar(
            &mut o,
            "wllm_prompt_tokens_total",
            c,
            "Prompt tokens of accepted requests.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        scalar(
            &mut o,
            "wllm_generation_tokens_total",
            c,
            "Tokens generated.",
            self.generation_tokens.load(Ordering::Relaxed),
        );
        self.ttft.render(
            &mut o,
            "wllm_time_to_first_token_seconds",
            "Seconds from submit to the first generated token.",
        );
        self.itl.render(
            &mut o,
            "wllm_inter_token_latency_seconds",
            "Seconds between consecutive tokens of a request.",
        );
        let name = "wllm_http_requests_total";
        let _ = writeln!(
            o,
            "# HELP {name} HTTP responses by status code.\n# TYPE {name} counter"
        );
        if let Ok(m) = self.by_status.lock() {
            for (status, n) in m.iter() {
                let _ = writeln!(o, "{name}{{status=\"{status}\"}} {n}");
            }
        }
        o
    }
}
