//! `wllm bench grammar`: what structured output costs the CPU per constrained row and step —
//! computing the allowed-token mask and advancing the matcher — on a model's own vocabulary,
//! next to the cost of the row work every CPU-sampled step does anyway (a greedy pass over
//! the logits row), measured in the same run. No GPU: the mask is host work (its GPU side is
//! one masked write per logit).

use anyhow::{Context, Result};
use serde_json::json;
use wllm::generate::load_tokenizer;
use wllm::model::ModelFiles;
use wllm::sampling::{Grammar, GrammarCompiler, Rng};

#[derive(clap::Args)]
pub struct GrammarArgs {
    /// A .gguf file or a Hugging Face model directory (only its tokenizer is read)
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// A JSON Schema file (default: a nested object with an array, an enum and numbers)
    #[arg(long)]
    pub schema: Option<std::path::PathBuf>,
    /// Constrained sequences to walk, each to the grammar's end or --max-tokens
    #[arg(long, default_value_t = 8)]
    pub sequences: usize,
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Seeds the token picks among the allowed ones
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

fn default_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"enum": ["Paris", "London", "Tokyo"]},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {"street": {"type": "string"}, "zip": {"type": "integer"}},
                "required": ["street", "zip"]
            }
        },
        "required": ["name", "age", "city", "tags", "address"]
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(a: GrammarArgs) -> Result<()> {
    let files = ModelFiles::open(&a.model)?;
    let tok = load_tokenizer(&files)?
        .with_context(|| format!("{} has no tokenizer", a.model.display()))?;
    let schema = match &a.schema {
        Some(p) => serde_json::from_slice(&std::fs::read(p)?)
            .with_context(|| format!("{} is not JSON", p.display()))?,
        None => default_schema(),
    };
    let vocab = tok.vocab_size();
    let t = std::time::Instant::now();
    let compiler =
        GrammarCompiler::new(&tok, vocab, tok.stop_token_ids()).map_err(anyhow::Error::msg)?;
    let trie_ms = t.elapsed().as_secs_f64() * 1e3;
    let grammar = Grammar::JsonSchema(schema);
    let t = std::time::Instant::now();
    let fresh = compiler.compile(&grammar).map_err(anyhow::Error::msg)?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut rng = Rng::new(a.seed);
    let mut mask_us = Vec::new();
    let mut commit_us = Vec::new();
    let mut row_us = Vec::new();
    let mut allowed_sum = 0usize;
    let logits: Vec<f32> = (0..vocab)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
        .collect();
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    for _ in 0..a.sequences {
        let mut g = fresh.clone();
        for _ in 0..a.max_tokens {
            let t = std::time::Instant::now();
            g.fill_mask(&mut mask).map_err(anyhow::Error::msg)?;
            mask_us.push(t.elapsed().as_secs_f64() * 1e6);
            // The baseline: one greedy pass over a row of this vocabulary.
            let t = std::time::Instant::now();
            std::hint::black_box(wllm::sampling::argmax(std::hint::black_box(&logits)));
            row_us.push(t.elapsed().as_secs_f64() * 1e6);
            let allowed: Vec<u32> = (0..vocab as u32)
                .filter(|&v| mask[v as usize / 32] >> (v % 32) & 1 == 1)
                .collect();
            allowed_sum += allowed.len();
            // A walk one or two characters at a time (the lowest ids are single bytes in BPE
            // vocabularies): the parser does work at every row, as it does when a model
            // writes keys, numbers and punctuation, rather than sitting in one long string.
            let near = allowed.len().min(64);
            let pick = allowed[(rng.next_u64() % near as u64) as usize];
            if tok.stop_token_ids().contains(&pick) {
                break;
            }
            let t = std::time::Instant::now();
            g.commit(pick).map_err(anyhow::Error::msg)?;
            commit_us.push(t.elapsed().as_secs_f64() * 1e6);
            if g.is_finished() {
                break;
            }
        }
    }
    for v in [&mut mask_us, &mut commit_us, &mut row_us] {
        v.sort_by(f64::total_cmp);
    }
    let steps = mask_us.len();
    let report = json!({
        "model": a.model.display().to_string(),
        "vocab": vocab,
        "trie_build_ms": trie_ms,
        "grammar_compile_ms": compile_ms,
        "rows": steps,
        "mean_allowed_tokens": allowed_sum as f64 / steps.max(1) as f64,
        "mask_us_mean": mask_us.iter().sum::<f64>() / steps.max(1) as f64,
        "mask_us_p50": percentile(&mask_us, 0.5),
        "mask_us_p90": percentile(&mask_us, 0.9),
        "mask_us_max": percentile(&mask_us, 1.0),
        "commit_us_p50": percentile(&commit_us, 0.5),
        "greedy_row_us_p50": percentile(&row_us, 0.5),
        "mean_mask_over_greedy_row": mask_us.iter().sum::<f64>()
            / steps.max(1) as f64
            / percentile(&row_us, 0.5).max(1e-9),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "vocabulary {vocab}: token trie {trie_ms:.0} ms, schema compiled in {compile_ms:.1} ms"
    );
    println!(
        "{steps} constrained rows over {} sequences (mean {:.0} tokens allowed)",
        a.sequences,
        allowed_sum as f64 / steps.max(1) as f64
    );
    let f = |k: &str| report[k].as_f64().unwrap_or(0.0);
    println!(
        "mask per row: mean {:.1} µs, p50 {:.1} µs, p90 {:.1} µs, max {:.1} µs; matcher advance \
         p50 {:.1} µs",
        f("mask_us_mean"),
        f("mask_us_p50"),
        f("mask_us_p90"),
        f("mask_us_max"),
        f("commit_us_p50")
    );
    println!(
        "baseline, one greedy pass over the row: p50 {:.1} µs (mean mask / baseline {:.2}×)",
        f("greedy_row_us_p50"),
        f("mean_mask_over_greedy_row")
    );
    Ok(())
}
