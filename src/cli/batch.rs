//! `wllm batch`: offline inference over a JSONL file, every request through one engine.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::{Value, json};
use wllm::engine::{Event, Prompt, Request};
use wllm::sampling::SamplingParams;
use wllm::tokenizer::ChatMessage;

use super::EngineArgs;

#[derive(clap::Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// JSONL requests: {"id":..,"prompt":".."} or {"id":..,"prompt_ids":[..]}, optional
    /// max_tokens, temperature, top_p, top_k, min_p, seed, stop, chat, speculative, cache
    /// ("persist": keep the prompt's KV in --kv-cache-dir)
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL results, in input order: {"id","output_ids","text","finish_reason"} or {"id","error"}
    #[arg(long)]
    pub output: PathBuf,
    /// Print the final engine stats as one JSON object on stderr's last line
    #[arg(long)]
    pub stats: bool,
}

/// One input line turned into a request, or why it can't be.
fn parse_line(line: &str, default_max_tokens: usize) -> (Value, Result<Request, String>) {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return (Value::Null, Err(format!("malformed JSON: {e}"))),
    };
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let req = (|| {
        let chat = v.get("chat").and_then(Value::as_bool).unwrap_or(false);
        let prompt = match (v.get("prompt"), v.get("prompt_ids")) {
            (Some(Value::String(s)), None) if chat => {
                Prompt::Chat(vec![ChatMessage::user(s.clone())])
            }
            (Some(Value::String(s)), None) => Prompt::Text(s.clone()),
            (None, Some(Value::Array(a))) => Prompt::Ids(
                a.iter()
                    .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or("prompt_ids must be an array of token ids")?,
            ),
            _ => {
                return Err(
                    "give exactly one of \"prompt\" (a string) or \"prompt_ids\" (an array)"
                        .to_string(),
                );
            }
        };
        let num = |k: &str| v.get(k).and_then(Value::as_f64);
        let mut req = Request::new(prompt);
        req.max_tokens = match v.get("max_tokens") {
            None => default_max_tokens,
            Some(x) => {
                x.as_u64()
                    .ok_or("max_tokens must be a non-negative integer")? as usize
            }
        };
        let d = SamplingParams::default();
        req.sampling = SamplingParams {
            temperature: num("temperature").map_or(d.temperature, |x| x as f32),
            top_p: num("top_p").map_or(d.top_p, |x| x as f32),
            top_k: num("top_k").map_or(d.top_k, |x| x as usize),
            min_p: num("min_p").map_or(d.min_p, |x| x as f32),
            seed: v.get("seed").and_then(Value::as_u64).unwrap_or(d.seed),
            ..d
        };
        req.stop = match v.get("stop") {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or("stop must be a string or an array of strings")?,
            Some(_) => return Err("stop must be a string or an array of strings".into()),
        };
        req.speculative = match v.get("speculative") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err("speculative must be true or false".into()),
        };
        req.persist = match v.get("cache").and_then(Value::as_str) {
            None if v.get("cache").is_none_or(Value::is_null) => false,
            Some("persist") => true,
            Some("default") => false,
            _ => return Err("cache must be \"persist\" or \"default\"".into()),
        };
        Ok(req)
    })();
    (id, req)
}

pub fn run(args: BatchArgs) -> Result<()> {
    let file = std::fs::File::open(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", args.input.display()))?;
    let lines: Vec<&String> = lines.iter().filter(|l| !l.trim().is_empty()).collect();
    let mut cfg = args.engine.config()?;
    cfg.max_waiting = cfg.max_waiting.max(lines.len());
    let engine = super::start_engine(cfg)?;

    let mut results: Vec<Option<Value>> = vec![None; lines.len()];
    let mut streams = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let (id, req) = parse_line(line, 128);
        match req
            .map_err(anyhow::Error::msg)
            .and_then(|r| Ok(engine.submit(r)?))
        {
            Ok(h) => streams.push(h.map(move |ev| (i, ev)).boxed()),
            Err(e) => results[i] = Some(json!({ "id": id, "error": format!("{e:#}") })),
        }
    }
    let bar = super::progress_bar(lines.len() as u64, "requests");
    bar.inc(results.iter().filter(|r| r.is_some()).count() as u64);
    let mut texts = vec![String::new(); lines.len()];
    let mut ids: Vec<Vec<u32>> = vec![Vec::new(); lines.len()];
    let mut all = futures::stream::select_all(streams);
    futures::executor::block_on(async {
        while let Some((i, ev)) = all.next().await {
            let id = parse_line(lines[i], 0).0;
            match ev {
                Event::Delta {
                    text, token_ids, ..
                } => {
                    texts[i].push_str(&text);
                    ids[i].extend(token_ids);
                }
                Event::Finished { reason, .. } => {
                    results[i] = Some(json!({
                        "id": id,
                        "output_ids": ids[i],
                        "text": texts[i],
                        "finish_reason": reason,
                    }));
                    bar.inc(1);
                }
                Event::Failed(e) => {
                    results[i] = Some(json!({ "id": id, "error": e }));
                    bar.inc(1);
                }
            }
        }
    });
    bar.finish_and_clear();
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.output)
            .with_context(|| format!("creating {}", args.output.display()))?,
    );
    for r in &results {
        let r = r
            .clone()
            .unwrap_or_else(|| json!({ "error": "the engine stopped" }));
        writeln!(out, "{r}")?;
    }
    out.flush()?;
    if args.stats {
        eprintln!("{}", serde_json::to_string(&engine.stats())?);
    }
    Ok(())
}
