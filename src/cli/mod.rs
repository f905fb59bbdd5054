//! Subcommands beyond the basics in main.rs: batch, plan, bench.

pub mod batch;
pub mod bench;
pub mod bench_grammar;
pub mod bench_model;
pub mod bench_spec;
pub mod bench_tiers;
pub mod chat;
pub mod check;
pub mod plan;

use std::path::PathBuf;

use anyhow::{Context, Result};
use wllm::engine::{Engine, EngineConfig};
use wllm::{AdapterSelector, GpuContext, SamplingParams, WeightDType};

/// Structured output for `generate`: the text must follow one grammar.
#[derive(clap::Args, Clone, Debug, Default)]
#[group(multiple = false)]
pub struct GrammarArgs {
    /// A JSON Schema (inline JSON, or @FILE) the output must validate against
    #[arg(long, value_name = "SCHEMA")]
    pub json_schema: Option<String>,
    /// Output any JSON object
    #[arg(long)]
    pub json_object: bool,
    /// A regular expression the whole output must match
    #[arg(long)]
    pub regex: Option<String>,
    /// A grammar in llguidance's Lark syntax (inline, or @FILE); GBNF is not supported
    #[arg(long, value_name = "LARK")]
    pub grammar: Option<String>,
}

/// `@FILE`'s contents, or the text itself.
fn inline_or_file(s: &str) -> anyhow::Result<String> {
    match s.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))
        }
        None => Ok(s.to_string()),
    }
}

impl GrammarArgs {
    pub fn grammar(&self) -> anyhow::Result<Option<wllm::Grammar>> {
        use wllm::Grammar;
        Ok(if let Some(s) = &self.json_schema {
            let text = inline_or_file(s)?;
            let v = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("--json-schema is not JSON: {e}"))?;
            Some(Grammar::JsonSchema(v))
        } else if self.json_object {
            Some(Grammar::JsonObject)
        } else if let Some(r) = &self.regex {
            Some(Grammar::Regex(r.clone()))
        } else if let Some(g) = &self.grammar {
            let text = inline_or_file(g)?;
            if text.contains("::=") {
                anyhow::bail!(
                    "--grammar takes llguidance's Lark syntax (`rule: ...`); GBNF (`::=`) is not supported"
                );
            }
            Some(Grammar::Lark(text))
        } else {
            None
        })
    }
}

/// The sampling options shared by `generate` and the benches.
#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature (0 = greedy)
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens reaching this probability (1 = off)
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off)
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
}

impl SamplingArgs {
    /// The parameters with `seed`; an error names a value no sampler can apply.
    pub fn params(&self, seed: u64) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed,
            ..SamplingParams::default()
        };
        p.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(p)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k })
    }
}

/// Model and engine options shared by the engine-driven commands.
#[derive(clap::Args, Clone)]
pub struct EngineArgs {
    /// A .gguf file or a Hugging Face model directory
    #[arg(long)]
    pub model: PathBuf,
    /// Weight and KV-cache storage: f16 or f32 (default f16)
    #[arg(long)]
    pub dtype: Option<String>,
    /// Tokens per KV-cache block: a power of two from 1 to 256
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV pool size in blocks (default: as many as --kv-memory holds)
    #[arg(long, conflicts_with_all = ["kv_memory", "gpu_memory_utilization"])]
    pub kv_blocks: Option<usize>,
    /// KV pool size in bytes, e.g. 4GiB, 512MiB, 1.5GB (default: what the device's memory
    /// leaves, see --gpu-memory-utilization)
    #[arg(long, conflicts_with = "gpu_memory_utilization")]
    pub kv_memory: Option<String>,
    /// Share of the device's memory (Vulkan's device-local heap; a CPU adapter's available
    /// host memory) for weights, activations and the KV pool, in (0, 1] (default 0.9; on a CPU
    /// adapter the KV pool is then also kept within 1 GiB). Where the backend reports no
    /// memory size the pool is 256 MiB
    #[arg(long)]
    pub gpu_memory_utilization: Option<f64>,
    /// Most sequences per step
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Most tokens per step (prompts longer than this are prefilled in chunks)
    #[arg(long, default_value_t = 256)]
    pub max_num_batched_tokens: usize,
    /// Compute every prompt in full instead of reusing cached KV of common prefixes
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Longest sequence (prompt + output) to run, at most the model's context (default: the
    /// model's). LongRoPE models (Phi-3.5, Phi-4-mini) use their long factors iff this
    /// exceeds their original context
    #[arg(long, visible_alias = "ctx-size")]
    pub max_model_len: Option<usize>,
    /// on: schedule and submit the next step while the GPU runs this one (whenever every
    /// token of the step is picked on the GPU); off: read each step back first. Default: on
    /// GPUs, off on CPU adapters (which run a step inside its submit). The tokens are the same
    #[arg(long, value_parser = ["on", "off"])]
    pub overlap: Option<String>,
    /// Speculative decoding for every request (a request may turn it off): `ngram` drafts
    /// tokens by matching the text's last tokens against its earlier ones (prompt lookup),
    /// `draft` with a smaller model of the same tokenizer (--draft-model); verified in the
    /// same step. The output is exactly what it is without; requests with a grammar run
    /// without it
    #[arg(long, value_parser = ["ngram", "draft"])]
    pub speculative: Option<String>,
    /// The draft model of --speculative draft (a .gguf file or a Hugging Face directory)
    #[arg(long, value_name = "PATH")]
    pub draft_model: Option<PathBuf>,
    /// Tokens drafted per sequence per step with --speculative
    #[arg(long, default_value_t = wllm::engine::DEFAULT_SPEC_TOKENS, requires = "speculative")]
    pub spec_tokens: usize,
    /// Host memory for prefix blocks evicted from the GPU's KV cache, e.g. 8GiB (0: none):
    /// a later request with that prefix gets them copied back instead of recomputed.
    /// Default: a quarter of the available memory, at most 8 GiB (taken as blocks are
    /// evicted, not up front)
    #[arg(long, value_name = "SIZE")]
    pub kv_host_memory: Option<String>,
    /// Keep the KV of persistent prefixes in files under PATH (requests ask with the API's
    /// `"cache": "persist"`, or see --kv-persist-min-tokens), reused after a restart. Entries
    /// are keyed by the model's header, the KV dtype, the block size and the adapter's kernels,
    /// and checked against their tokens and a checksum on load
    #[arg(long, value_name = "PATH")]
    pub kv_cache_dir: Option<PathBuf>,
    /// With --kv-cache-dir: every prompt of at least N tokens persists its prefix
    #[arg(long, value_name = "N", requires = "kv_cache_dir")]
    pub kv_persist_min_tokens: Option<usize>,
    /// With --kv-cache-dir: most bytes of block files kept for this model and adapter (least
    /// recently used first, a prefix's end before its start); default 16GiB
    #[arg(long, value_name = "SIZE", requires = "kv_cache_dir")]
    pub kv_cache_max: Option<String>,
}

pub fn parse_dtype(s: &Option<String>) -> Result<WeightDType> {
    match s {
        None => Ok(WeightDType::F16),
        Some(s) => {
            WeightDType::parse(s).with_context(|| format!("--dtype {s}: expected f16 or f32"))
        }
    }
}

impl EngineArgs {
    pub fn config(&self) -> Result<EngineConfig> {
        let mut cfg = EngineConfig::new(&self.model);
        cfg.model.dtype = parse_dtype(&self.dtype)?;
        cfg.model.block_size = self.block_size;
        cfg.model.num_blocks = self.kv_blocks;
        if let Some(s) = &self.kv_memory {
            let bytes = plan::parse_bytes(s).with_context(|| format!("--kv-memory {s}"))?;
            if bytes == 0 {
                anyhow::bail!("--kv-memory {s}: the KV pool needs at least one block");
            }
            cfg.model.kv_memory_bytes = Some(bytes);
        }
        if let Some(u) = self.gpu_memory_utilization {
            if !(u > 0.0 && u <= 1.0) {
                anyhow::bail!("--gpu-memory-utilization {u}: expected a share in (0, 1]");
            }
            cfg.model.gpu_memory_utilization = Some(u);
        }
        cfg.model.max_seqs = self.max_num_seqs;
        cfg.model.max_batch_tokens = self.max_num_batched_tokens;
        cfg.model.enable_prefix_cache = !self.no_prefix_cache;
        cfg.model.max_model_len = self.max_model_len;
        cfg.overlap_steps = self.overlap.as_deref().map(|o| o == "on");
        if let Some(s) = &self.kv_host_memory {
            let bytes = plan::parse_bytes(s).with_context(|| format!("--kv-host-memory {s}"))?;
            cfg.kv_tiers.host_bytes = Some(bytes);
        }
        cfg.kv_tiers.disk_dir = self.kv_cache_dir.clone();
        cfg.kv_tiers.persist_min_tokens = self.kv_persist_min_tokens;
        if let Some(s) = &self.kv_cache_max {
            let bytes = plan::parse_bytes(s).with_context(|| format!("--kv-cache-max {s}"))?;
            cfg.kv_tiers.disk_max_bytes = Some(bytes);
        }
        if let Some(method) = &self.speculative {
            let spec = match (method.as_str(), &self.draft_model) {
                ("draft", Some(p)) => wllm::SpecConfig::draft_model(p, self.spec_tokens),
                ("draft", None) => anyhow::bail!("--speculative draft needs --draft-model PATH"),
                (_, Some(_)) => anyhow::bail!("--draft-model goes with --speculative draft"),
                _ => wllm::SpecConfig::ngram(self.spec_tokens),
            };
            spec.validate()
                .map_err(|e| anyhow::anyhow!("--spec-tokens {}: {e}", self.spec_tokens))?;
            cfg.speculative = Some(spec);
        }
        cfg.adapter = AdapterSelector::from_env()?;
        Ok(cfg)
    }
}

pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {what}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    )
}

/// A bar for loading a model: the bytes of its tensors, then the kernels compiling.
pub fn load_bar(path: &std::path::Path) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("loading {}", path.display()));
    bar
}

/// The load callback driving a [`load_bar`]: bytes, then "compiling kernels" once every
/// weight is on the GPU (the loader reports done = total then).
pub fn load_progress(bar: &indicatif::ProgressBar) -> impl FnMut(usize, usize) + '_ {
    move |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        if done >= total {
            bar.set_message("compiling kernels");
            // Nothing moves the bar while the kernels compile: redraw it on a timer.
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
        }
    }
}

/// Opens the adapter and loads the model with a progress bar.
pub fn start_engine(cfg: EngineConfig) -> Result<Engine> {
    let ctx = GpuContext::new(&cfg.adapter)?;
    start_engine_on(&ctx, cfg)
}

pub fn start_engine_on(ctx: &GpuContext, cfg: EngineConfig) -> Result<Engine> {
    let bar = load_bar(&cfg.model.path);
    let path = cfg.model.path.clone();
    let e = Engine::with_context(ctx, cfg, &mut load_progress(&bar));
    bar.finish_and_clear();
    let e = e.with_context(|| format!("loading {}", path.display()))?;
    eprintln!("{}", startup_line(&e));
    Ok(e)
}

/// "KV pool: 1234 blocks of 16 tokens (19744 tokens, 308.0 MiB; 90% of 16.0 GiB device-local
/// memory − 270 MiB weights − 93 MiB activations); weights 270 MiB on the GPU; longest
/// sequence 8192 tokens"
pub fn startup_line(e: &Engine) -> String {
    let st = e.stats();
    let plan = e.kv_plan();
    let why = plan.reason();
    format!(
        "KV pool: {} blocks of {} tokens ({} tokens, {:.1} MiB; {why}); weights {} on the GPU; \
         longest sequence {} tokens",
        st.blocks_total,
        st.block_size,
        st.blocks_total * st.block_size,
        (st.blocks_total as u64 * st.kv_bytes_per_block) as f64 / (1u64 << 20) as f64,
        wllm::gpu::context::fmt_bytes(plan.weights_bytes),
        e.max_seq_tokens()
    )
}
