//! `wllm plan`: how many sequences a KV budget holds, preallocated versus paged
//! (the memory arithmetic of the PagedAttention paper), from the model's KV bytes per token.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::json;
use wllm::generate::kv_bytes_per_token;
use wllm::model::ModelFiles;

#[derive(clap::Args)]
pub struct PlanArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// KV memory budget, e.g. 2GiB, 512MiB, 1000000000
    #[arg(long)]
    pub kv_memory: String,
    /// Context each sequence may reach (default: the model's)
    #[arg(long)]
    pub context: Option<usize>,
    /// Tokens a sequence actually holds on average (default: half the context)
    #[arg(long)]
    pub avg_tokens: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// f16 or f32 KV cache (default f16)
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// "2GiB", "512 MiB", "1.5GB", "1000" (bytes).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("`{s}` is not a size"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        other => bail!("unknown size unit `{other}` in `{s}`"),
    };
    if !(n >= 0.0 && n.is_finite()) {
        bail!("`{s}` is not a size");
    }
    Ok((n * mult) as u64)
}

pub fn run(args: PlanArgs) -> Result<()> {
    wllm::kv::check_block_size(args.block_size)?;
    let files = ModelFiles::open(&args.model)?;
    let cfg = files.config()?;
    let dtype = super::parse_dtype(&args.dtype)?;
    let budget = parse_bytes(&args.kv_memory)?;
    let context = args.context.unwrap_or(cfg.max_context).max(1);
    let avg = args.avg_tokens.unwrap_or(context / 2).clamp(1, context);
    let per_token = kv_bytes_per_token(&cfg, dtype);
    let weights = files.gpu_weight_bytes(dtype);
    let bs = args.block_size as u64;
    let prealloc = budget / (per_token * context as u64);
    // Paged: each sequence holds ceil(avg / block) blocks; only its last block is partly empty.
    let blocks_per_seq = (avg as u64).div_ceil(bs);
    let paged = budget / (per_token * bs * blocks_per_seq);
    let waste = 1.0 - avg as f64 / (blocks_per_seq * bs) as f64;
    let ratio = if prealloc == 0 {
        f64::INFINITY
    } else {
        paged as f64 / prealloc as f64
    };
    if args.json {
        println!(
            "{}",
            json!({
                "weights_bytes": weights,
                "kv_bytes_per_token": per_token,
                "kv_bytes_per_block": per_token * bs,
                "kv_memory_bytes": budget,
                "context": context,
                "avg_tokens": avg,
                "block_size": bs,
                "preallocated_seqs": prealloc,
                "paged_seqs": paged,
                "paged_waste_pct": waste * 100.0,
                "ratio": ratio,
            })
        );
    } else {
        println!(
            "weights on the GPU: about {:.1} MiB",
            weights as f64 / (1u64 << 20) as f64
        );
        println!(
            "KV bytes per token: {per_token} ({} layers × 2 × {} KV dims × {} bytes)",
            cfg.num_layers,
            cfg.kv_dim(),
            dtype.bytes_per_elem()
        );
        println!(
            "budget {budget} bytes, context {context}, average sequence {avg} tokens, block {bs}"
        );
        println!("preallocating the full context: {prealloc} sequences");
        println!(
            "paged blocks:                   {paged} sequences ({:.1}% of allocated slots unused)",
            waste * 100.0
        );
        println!("ratio: {ratio:.1}×");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }
}
