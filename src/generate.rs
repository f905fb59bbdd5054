//! Model options, and [`Generator`]: one model on one device for teacher-forced scoring
//! (`wllm score`, the golden tests) over the paged KV cache. Generation goes through the
//! batching engine ([`crate::engine`]).
//!
//! Scoring allocates KV blocks as the sequence grows and feeds the runner step batches
//! (the prompt in chunks), the same inputs the engine builds for many sequences.

use std::path::{Path, PathBuf};

use crate::batch::{LogitRows, StepBatch};
use crate::error::{Error, Result};
use crate::gpu::context::fmt_bytes;
use crate::gpu::{
    GpuContext, GpuError, Logits, Runner, RunnerConfig, StepProfile, StepTicket, WeightDType,
};
use crate::kv::{BlockPool, BlockTable, check_block_size};
use crate::model::{ModelConfig, ModelFiles, ModelWeights, load_weights};
use crate::sampling::{Sampler, SamplingParams, top_k};
use crate::tokenizer::Tokenizer;

mod kv_plan;

pub use kv_plan::{
    CPU_ADAPTER_MAX_KV_BYTES, Companion, DEFAULT_GPU_MEMORY_UTILIZATION, FALLBACK_KV_BYTES,
    KvLimit, KvPlan, KvSizing, KvSource, MIN_KV_BYTES, activation_bytes, kv_bytes_per_token,
    plan_kv, plan_kv_pool, plan_kv_pool_with, weights_gpu_bytes,
};

/// How to load a model. Everything but the path has a default.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// A `.gguf` file or a Hugging Face directory.
    pub path: PathBuf,
    /// Storage of weights and KV cache; f16 by default (packed, so any adapter can hold it).
    pub dtype: WeightDType,
    /// Tokens per KV block: a power of two from 1 to 256.
    pub block_size: usize,
    /// KV pool size in bytes (all layers, K and V); `None`: sized from the device's memory
    /// (see [`plan_kv`]). Ignored when `num_blocks` is set.
    pub kv_memory_bytes: Option<u64>,
    /// KV pool size in blocks.
    pub num_blocks: Option<usize>,
    /// The share of the device's memory to fill (weights, activations, KV pool) when the pool
    /// is sized from it, in (0, 1]; `None`: [`DEFAULT_GPU_MEMORY_UTILIZATION`], and on a CPU
    /// adapter at most [`CPU_ADAPTER_MAX_KV_BYTES`] of KV.
    pub gpu_memory_utilization: Option<f64>,
    /// Most tokens per forward pass (longer prompts are prefilled in chunks).
    pub max_batch_tokens: usize,
    /// Most sequences per step.
    pub max_seqs: usize,
    /// Reuse the KV of full blocks whose tokens (and every token before them) match an earlier
    /// request's (the engine only; `Generator` never shares).
    pub enable_prefix_cache: bool,
    /// The longest sequence (prompt + output) the engine runs with, like vLLM's
    /// `--max-model-len` and llama.cpp's `-c`: `None` is the model's own context; more than
    /// that is an error. It lowers [`ModelConfig::max_context`] everywhere. It also picks
    /// LongRoPE's factors (Phi-3 128k, Phi-3.5, Phi-4-mini), once, at load: the long factors
    /// when this context exceeds the model's `original_max_position_embeddings`, else the
    /// short ones (as llama.cpp does; transformers switches per forward pass on the sequence
    /// length, which would make a sequence's logits depend on how long it has grown). The
    /// attention factor applies either way.
    pub max_model_len: Option<usize>,
}

impl ModelOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            dtype: WeightDType::F16,
            block_size: 16,
            kv_memory_bytes: None,
            num_blocks: None,
            gpu_memory_utilization: None,
            max_batch_tokens: 256,
            max_seqs: 64,
            enable_prefix_cache: true,
            max_model_len: None,
        }
    }
}

/// The model's config with `opts.max_model_len` applied (see [`ModelOptions::max_model_len`]).
pub fn model_config(files: &ModelFiles, opts: &ModelOptions) -> Result<ModelConfig> {
    let mut cfg = files.config()?;
    match opts.max_model_len {
        None => {}
        Some(0) => {
            return Err(Error::InvalidRequest("max_model_len is 0".into()));
        }
        Some(n) if n > cfg.max_context => {
            return Err(Error::InvalidRequest(format!(
                "max_model_len {n} is more than the model's context of {} tokens",
                cfg.max_context
            )));
        }
        Some(n) => cfg.max_context = n,
    }
    Ok(cfg)
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token.
    Stop,
    /// max_tokens reached, or the model's context is full.
    Length,
}

/// A loaded model ready to score.
pub struct Generator {
    cfg: ModelConfig,
    runner: Runner,
    pool: BlockPool,
    tokenizer: Option<Tokenizer>,
    path: PathBuf,
    kv_plan: KvPlan,
    /// Lockstep decode submits step k+1 (its tokens fed from step k on the GPU) before
    /// reading step k back; see [`Generator::set_overlap`].
    overlap: bool,
}

/// Loads the weights and sizes the KV pool: a pool that cannot be (an explicit request
/// beyond the binding limit) fails before the upload; a memory-derived one is sized after
/// it, from the weights' measured GPU bytes. Logs the choice.
pub(crate) fn load_weights_and_plan(
    ctx: &GpuContext,
    files: &ModelFiles,
    cfg: &ModelConfig,
    opts: &ModelOptions,
    companion: Companion,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(ModelWeights, KvPlan)> {
    plan_kv_pool_with(ctx, cfg, opts, 0, companion)?;
    // wgpu stages every upload in host memory until the next submit, and frees the staging
    // once that submit has run: submitting (nothing) and waiting every STAGING_FLUSH_BYTES
    // keeps the staged bytes that low, instead of the whole model (a second host copy of the
    // weights until the first step).
    let mut flushed = 0usize;
    let mut flushing = |done: usize, total: usize| {
        if done >= flushed.saturating_add(STAGING_FLUSH_BYTES) {
            flushed = done;
            ctx.queue.submit([]);
            if let Err(e) = ctx.device.poll(wgpu::PollType::wait_indefinitely()) {
                log::debug!("waiting for the uploads: {e}");
            }
        }
        progress(done, total)
    };
    let weights = load_weights(ctx, files, cfg, opts.dtype, &mut flushing)?;
    if let Some(rss) = host_rss() {
        log::debug!("weights loaded; host memory: {rss}");
    }
    let plan = plan_kv_pool_with(ctx, cfg, opts, weights_gpu_bytes(&weights), companion)?;
    log::info!("KV pool: {plan}");
    if plan.limit == Some(KvLimit::Minimum) {
        log::warn!(
            "the weights leave less than {} of the device's memory for the KV cache; \
             the pool may not fit (set its size with --kv-memory or --kv-blocks)",
            fmt_bytes(MIN_KV_BYTES)
        );
    }
    Ok((weights, plan))
}

/// Bytes of the file loaded between two flushes of wgpu's upload staging (see
/// [`load_weights_and_plan`]).
const STAGING_FLUSH_BYTES: usize = 64 << 20;

/// This process's resident memory from /proc/self/status (Linux), for the load's debug log.
fn host_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(fmt_bytes(kib * 1024))
    };
    Some(format!(
        "RSS {} (anonymous {}, file-backed {}), peak {}",
        field("VmRSS:")?,
        field("RssAnon:")?,
        field("RssFile:")?,
        field("VmHWM:")?
    ))
}

impl Generator {
    /// Opens the model files, builds the tokenizer (when the files have one) and uploads the
    /// weights. `progress(done, total)` is called as tensors load, in bytes of the file.
    pub fn load(
        ctx: &GpuContext,
        opts: &ModelOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Generator> {
        check_block_size(opts.block_size)?;
        let files = ModelFiles::open(&opts.path)?;
        let cfg = model_config(&files, opts)?;
        let tokenizer = load_tokenizer(&files)?;
        let (weights, kv_plan) =
            load_weights_and_plan(ctx, &files, &cfg, opts, Companion::default(), progress)?;
        let num_blocks = kv_plan.num_blocks;
        let bs = opts.block_size;
        let rc = RunnerConfig {
            kv_dtype: opts.dtype,
            block_size: bs,
            num_blocks,
            max_batch_tokens: opts.max_batch_tokens.max(1),
            max_seqs: opts.max_seqs.max(1),
        };
        let runner = Runner::new(ctx, crate::model::forward(&cfg, weights)?, rc)?;
        let pool = BlockPool::new(num_blocks, bs)?;
        log::info!(
            "loaded {} ({:?}, {} layers, {} KV blocks of {} tokens)",
            opts.path.display(),
            cfg.arch,
            cfg.num_layers,
            num_blocks,
            bs
        );
        Ok(Generator {
            cfg,
            runner,
            pool,
            tokenizer,
            path: opts.path.clone(),
            kv_plan,
            overlap: ctx.profile.overlap_steps,
        })
    }

    /// How the KV pool was sized, and the weights' GPU bytes.
    pub fn kv_plan(&self) -> &KvPlan {
        &self.kv_plan
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The runner, for stepping batches directly (the KV slots they name are the caller's to
    /// keep apart from this generator's pool).
    pub fn runner_mut(&mut self) -> &mut Runner {
        &mut self.runner
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// The runner and the pool, for stepping batches over tables the caller keeps in it.
    pub(crate) fn parts_mut(&mut self) -> (&mut Runner, &mut BlockPool) {
        (&mut self.runner, &mut self.pool)
    }

    fn check_prompt(&self, ids: &[u32]) -> Result<()> {
        let cfg = self.config();
        if ids.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if ids.len() > cfg.max_context {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {} tokens, more than the model's context of {}",
                ids.len(),
                cfg.max_context
            )));
        }
        if let Some(id) = ids.iter().find(|id| **id as usize >= cfg.vocab_size) {
            return Err(Error::InvalidRequest(format!(
                "token id {id} is outside the vocabulary of {}",
                cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// Runs `tokens` (at positions `start..`) through the model in chunks, growing `table`
    /// as needed; returns the logits the last chunk asked for (`logits`), or of every token.
    fn run_tokens(
        &mut self,
        table: &mut BlockTable,
        tokens: &[u32],
        start: usize,
        logits: LogitRows,
        mut on_logits: impl FnMut(&Logits) -> Result<()>,
    ) -> Result<()> {
        let bs = self.pool.block_size();
        let chunk_len = match logits {
            LogitRows::All => self
                .runner
                .runner_config()
                .max_batch_tokens
                .min(self.runner.max_logit_rows()),
            _ => self.runner.runner_config().max_batch_tokens,
        };
        let mut pos = start;
        for chunk in tokens.chunks(chunk_len) {
            table.grow_to(&mut self.pool, pos + chunk.len())?;
            let last = pos + chunk.len() == start + tokens.len();
            let rows = match logits {
                LogitRows::Last if !last => LogitRows::None,
                r => r,
            };
            let mut batch = StepBatch::new(self.runner.max_blocks());
            batch
                .push_sequence(chunk, pos, table, bs, rows)
                .ok_or_else(|| {
                    Error::InvalidRequest("sequence longer than the block table".into())
                })?;
            let out = self.runner.forward(&batch)?;
            if rows != LogitRows::None {
                on_logits(&out)?;
            }
            pos += chunk.len();
        }
        Ok(())
    }

    /// Teacher-forced top-`k` logits after each prefix `ids[..=i]` (like prompt_logprobs).
    pub fn score(&mut self, ids: &[u32], k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        self.check_prompt(ids)?;
        let mut table = BlockTable::new();
        let mut out = Vec::with_capacity(ids.len());
        let res = self.run_tokens(&mut table, ids, 0, LogitRows::All, |l| {
            for r in 0..l.rows {
                out.push(top_k(full_row(l, r)?, k));
            }
            Ok(())
        });
        table.release(&mut self.pool)?;
        res.map(|_| out)
    }

    /// Full logits after each prefix `ids[..=i]` (for tests and debugging).
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check_prompt(ids)?;
        let mut table = BlockTable::new();
        let mut out = Vec::with_capacity(ids.len());
        let res = self.run_tokens(&mut table, ids, 0, LogitRows::All, |l| {
            for r in 0..l.rows {
                out.push(full_row(l, r)?.to_vec());
            }
            Ok(())
        });
        table.release(&mut self.pool)?;
        res.map(|_| out)
    }
}

/// Timings of one [`Generator::lockstep`] run.
#[derive(Debug, Clone, Default)]
pub struct LockstepRun {
    /// Seconds to prefill every prompt.
    pub prefill_s: f64,
    /// Seconds of the decode steps (each advances every sequence by one token).
    pub decode_s: f64,
    pub decode_steps: usize,
    /// Mean CPU µs per decode step spent writing metadata and recording dispatches before the
    /// submit (the step's critical path on the CPU).
    pub decode_encode_us: f64,
    /// Decode steps whose commands were recorded while the GPU ran the step before.
    pub decode_prerecorded_steps: usize,
    /// Decode steps submitted before the step ahead of them was read back.
    pub decode_overlapped_steps: usize,
    /// Per-kernel GPU time summed over the decode steps (when profiling is on).
    pub decode_profile: Option<StepProfile>,
    /// The same for the prefill steps.
    pub prefill_profile: Option<StepProfile>,
    /// Per sequence, the tokens picked: the prefill's, then one per decode step.
    pub outputs: Vec<Vec<u32>>,
}

impl Generator {
    /// Times every kernel call of the following steps (adapters with timestamp queries),
    /// or stops doing so.
    pub fn set_profiling(&mut self, on: bool) -> Result<()> {
        Ok(self.runner.set_profiling(on)?)
    }

    /// Whether lockstep decode overlaps its steps (the engine's
    /// `EngineConfig::overlap_steps`; default: on the GPU kernel forms): step k+1 is built
    /// and submitted while the GPU runs step k, taking its tokens from step k's picks on the
    /// GPU, and step k is read back after that. Profiled runs step one at a time. The tokens
    /// are the same either way.
    pub fn set_overlap(&mut self, on: bool) {
        self.overlap = on;
    }

    pub fn overlap(&self) -> bool {
        self.overlap
    }

    /// llama-batched-bench's workload: prefills every prompt (packed into steps of at most
    /// `max_batch_tokens`), then runs `gen_len` decode steps in which every sequence advances
    /// by one greedy token. All blocks are released at the end, also on error.
    pub fn lockstep(&mut self, prompts: &[Vec<u32>], gen_len: usize) -> Result<LockstepRun> {
        self.lockstep_sampled(prompts, gen_len, &SamplingParams::default())
    }

    /// [`Generator::lockstep`] with every token sampled on the GPU per `sampling` (sequence i
    /// seeded with `sampling.seed + i`). Penalties are refused: they need the CPU sampler.
    pub fn lockstep_sampled(
        &mut self,
        prompts: &[Vec<u32>],
        gen_len: usize,
        sampling: &SamplingParams,
    ) -> Result<LockstepRun> {
        sampling.validate().map_err(Error::InvalidRequest)?;
        if sampling.has_penalties() {
            return Err(Error::InvalidRequest(
                "lockstep runs sample on the GPU, which takes no penalties".into(),
            ));
        }
        let mut samplers: Vec<Sampler> = (0..prompts.len())
            .map(|i| {
                Sampler::new(SamplingParams {
                    seed: sampling.seed.wrapping_add(i as u64),
                    ..sampling.clone()
                })
            })
            .collect();
        let rc = *self.runner.runner_config();
        if prompts.is_empty() || prompts.len() > rc.max_seqs || prompts.len() > rc.max_batch_tokens
        {
            return Err(Error::InvalidRequest(format!(
                "{} sequences: this model was loaded for 1..={} per step",
                prompts.len(),
                rc.max_seqs.min(rc.max_batch_tokens)
            )));
        }
        for p in prompts {
            self.check_prompt(p)?;
            if p.len() + gen_len > self.config().max_context {
                return Err(Error::InvalidRequest(
                    "prompt + generated tokens exceed the context".into(),
                ));
            }
        }
        let mut tables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::new()).collect();
        let res = self.lockstep_inner(prompts, gen_len, &mut tables, &mut samplers);
        for t in &mut tables {
            t.release(&mut self.pool)?;
        }
        res
    }

    fn lockstep_inner(
        &mut self,
        prompts: &[Vec<u32>],
        gen_len: usize,
        tables: &mut [BlockTable],
        samplers: &mut [Sampler],
    ) -> Result<LockstepRun> {
        let bs = self.pool.block_size();
        let budget = self.runner.runner_config().max_batch_tokens;
        let mut run = LockstepRun::default();
        let add = |acc: &mut Option<StepProfile>, p: Option<&StepProfile>| {
            if let Some(p) = p {
                acc.get_or_insert_with(StepProfile::default).add(p);
            }
        };
        // One block-table width for the whole run (as wide as the longest sequence gets).
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) + gen_len;
        let columns = self
            .runner
            .block_columns(BlockTable::blocks_needed(longest, bs));
        // Prefill: (sequence, next position) chunks packed into steps.
        let mut next = vec![0usize; prompts.len()];
        let mut last = vec![0u32; prompts.len()];
        let t0 = std::time::Instant::now();
        let mut s = 0;
        while s < prompts.len() {
            let mut batch = StepBatch::new(columns);
            let mut members = Vec::new();
            while s < prompts.len() && batch.num_tokens() < budget {
                let take = (prompts[s].len() - next[s]).min(budget - batch.num_tokens());
                let pos = next[s];
                tables[s].grow_to(&mut self.pool, pos + take)?;
                let done = pos + take == prompts[s].len();
                let rows = if done {
                    LogitRows::Last
                } else {
                    LogitRows::None
                };
                batch
                    .push_sequence(&prompts[s][pos..pos + take], pos, &tables[s], bs, rows)
                    .ok_or_else(|| {
                        Error::InvalidRequest("sequence longer than the block table".into())
                    })?;
                next[s] += take;
                if done {
                    members.push(s);
                    s += 1;
                }
            }
            for (row, &seq) in members.iter().enumerate() {
                pick_on_gpu(&mut batch, row, &mut samplers[seq]);
            }
            let out = self.runner.forward(&batch)?;
            add(&mut run.prefill_profile, self.runner.last_profile());
            for (row, &seq) in members.iter().enumerate() {
                last[seq] = out.token(row);
            }
            run.outputs.resize(prompts.len(), Vec::new());
            for (row, &seq) in members.iter().enumerate() {
                run.outputs[seq].push(out.token(row));
            }
        }
        run.prefill_s = t0.elapsed().as_secs_f64();
        // Decode in lockstep. Overlapped, step k+1 takes its tokens from step k's picks on
        // the GPU and is submitted before step k is read back.
        let overlap = self.overlap && !self.runner.is_profiling();
        let t1 = std::time::Instant::now();
        let mut encode_us = 0.0;
        let mut in_flight: Option<StepTicket> = None;
        for step in 0..gen_len {
            let mut batch = StepBatch::new(columns);
            for (i, p) in prompts.iter().enumerate() {
                let pos = p.len() + step;
                tables[i].grow_to(&mut self.pool, pos + 1)?;
                batch
                    .push_sequence(&[last[i]], pos, &tables[i], bs, LogitRows::Last)
                    .ok_or_else(|| {
                        Error::InvalidRequest("sequence longer than the block table".into())
                    })?;
                if in_flight.is_some() {
                    batch.feed_from_previous_step(i, i as u32);
                }
            }
            for (row, sampler) in samplers.iter_mut().enumerate() {
                pick_on_gpu(&mut batch, row, sampler);
            }
            let out = if overlap {
                let ticket = self.runner.submit(&batch, true)?;
                run.decode_overlapped_steps += usize::from(in_flight.is_some());
                let prev = in_flight.replace(ticket);
                prev.map(|t| self.runner.wait(t)).transpose()?
            } else {
                let out = self.runner.forward(&batch)?;
                add(&mut run.decode_profile, self.runner.last_profile());
                Some(out)
            };
            encode_us += self.runner.last_timing().encode_us;
            run.decode_prerecorded_steps += usize::from(self.runner.last_timing().prerecorded);
            if let Some(out) = out {
                for (i, l) in last.iter_mut().enumerate() {
                    *l = out.token(i);
                    run.outputs[i].push(*l);
                }
            }
        }
        if let Some(t) = in_flight {
            let out = self.runner.wait(t)?;
            for (i, o) in run.outputs.iter_mut().enumerate() {
                o.push(out.token(i));
            }
        }
        run.decode_s = t1.elapsed().as_secs_f64();
        run.decode_steps = gen_len;
        run.decode_encode_us = encode_us / gen_len.max(1) as f64;
        Ok(run)
    }
}

/// Row `r` of a step that kept every row's logits (a broken promise is an error, not a panic).
fn full_row(l: &Logits, r: usize) -> Result<&[f32]> {
    l.row(r).ok_or_else(|| {
        Error::Gpu(GpuError::Readback(format!(
            "logits row {r} was not read back"
        )))
    })
}

/// The tokenizer the model files carry: GGUF metadata, or tokenizer.json in an HF directory.
/// `None` when there is none (random-weight test checkpoints). Every id it can produce must
/// have an embedding row; a chat template that cannot render is replaced by ChatML
/// ([`Tokenizer::with_renderable_chat_template`]).
pub fn load_tokenizer(files: &ModelFiles) -> Result<Option<Tokenizer>> {
    let tokenizer = match files {
        ModelFiles::Gguf(g) => Tokenizer::from_gguf_metadata(&g.metadata)?,
        ModelFiles::Hf(h) => match h.tokenizer_json() {
            Some(tj) => Tokenizer::from_hf_files(&tj, h.tokenizer_config().as_deref())?,
            None => return Ok(None),
        },
    };
    tokenizer.check_fits(files.config()?.vocab_size)?;
    Ok(Some(tokenizer.with_renderable_chat_template()))
}

/// Has the GPU pick logits row `row` with `sampler`'s next draw (which takes no penalties:
/// [`Generator::lockstep_sampled`] checks).
fn pick_on_gpu(batch: &mut StepBatch, row: usize, sampler: &mut Sampler) {
    let rs = sampler.row_sampling().unwrap_or_default();
    batch.sample_on_gpu(row, rs);
}
