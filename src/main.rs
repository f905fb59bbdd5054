//! The `wllm` command line: info, generate, tokenize, score.

use std::io::Write;
use std::path::PathBuf;

mod cli;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::json;
use wllm::generate::load_tokenizer;
use wllm::model::ModelFiles;
use wllm::tokenizer::{ChatMessage, Tokenizer};
use wllm::{AdapterSelector, Event, Generator, GpuContext, Prompt, Request};

#[derive(Parser)]
#[command(
    name = "wllm",
    version,
    about = "Portable LLM inference on any GPU through wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter wgpu sees (WLLM_BACKEND picks backends)
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Generate text, streamed token by token
    Generate {
        #[command(flatten)]
        model: cli::EngineArgs,
        /// Prompt text
        #[arg(long, conflicts_with = "prompt_ids")]
        prompt: Option<String>,
        /// Prompt as comma-separated token ids
        #[arg(long, value_delimiter = ',')]
        prompt_ids: Option<Vec<u32>>,
        /// Render the prompt as a user message with the model's chat template
        #[arg(long)]
        chat: bool,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        #[command(flatten)]
        sampling: cli::SamplingArgs,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        grammar: cli::GrammarArgs,
        /// Print one JSON object at the end instead of streaming text
        #[arg(long)]
        json: bool,
    },
    /// Print the token ids of TEXT as a JSON array
    Tokenize {
        #[arg(long)]
        model: PathBuf,
        /// Render TEXT as a user message with the chat template (generation prompt added)
        #[arg(long, conflicts_with = "no_special")]
        chat: bool,
        /// No BOS, and special-token text (`<|im_start|>`) encoded as ordinary text, as
        /// llama.cpp's tokenizer tests expect
        #[arg(long)]
        no_special: bool,
        text: String,
    },
    /// Interactive chat in the terminal (history kept, replies streamed)
    Chat(cli::chat::ChatArgs),
    /// Offline batch inference over a JSONL file
    Batch(cli::batch::BatchArgs),
    /// How many sequences a KV memory budget holds, preallocated versus paged
    Plan(cli::plan::PlanArgs),
    /// Every kernel on this adapter (or all of them) against its CPU reference: PASS / FAIL /
    /// UNSUPPORTED per kernel, form and shape
    Check(cli::check::CheckArgs),
    /// Benchmarks
    Bench {
        #[command(subcommand)]
        command: cli::bench::BenchCommand,
    },
    /// OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/responses,
    /// /v1/models, /metrics) with a chat page at /
    #[cfg(feature = "server")]
    Serve(ServeArgs),
    /// Teacher-forced top-K logits after each prefix of the prompt
    Score {
        #[command(flatten)]
        model: cli::EngineArgs,
        #[arg(long, value_delimiter = ',', required = true)]
        prompt_ids: Vec<u32>,
        #[arg(long, default_value_t = 8)]
        top_k: usize,
    },
}

#[cfg(feature = "server")]
#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    engine: cli::EngineArgs,
    /// Address to bind (use 0.0.0.0 to accept other machines)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Sequences that may wait for a running slot; a request that finds every slot and the
    /// queue full gets 429
    #[arg(long)]
    max_waiting: Option<usize>,
    /// Require `Authorization: Bearer KEY` on /v1 routes and /metrics (default: env WLLM_API_KEY)
    #[arg(long)]
    api_key: Option<String>,
    /// Serve /metrics without the API key
    #[arg(long)]
    metrics_without_key: bool,
    /// The model name clients send (default: the model file or directory name)
    #[arg(long)]
    served_model_name: Option<String>,
    /// Seconds a request head may take to arrive; also how long an idle kept-alive connection
    /// stays open
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a request body may take to arrive (408 beyond)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
    /// Connections served at once; more wait to be accepted. Keep it under the open-file
    /// limit (ulimit -n), and raise both with --max-num-seqs + --max-waiting
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Largest request body in bytes (413 beyond)
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Largest prompt in bytes, refused (400) before tokenizing; chat counts roles and contents
    #[arg(long, default_value_t = 1 << 20)]
    max_prompt_bytes: usize,
    /// Largest request head (request line and headers) in bytes (431 beyond)
    #[arg(long, default_value_t = 16 << 10)]
    max_header_bytes: usize,
    /// Let browsers on ORIGIN call the API (CORS); repeat it or separate origins with commas,
    /// `*` for any (default: no CORS headers)
    #[arg(long, value_name = "ORIGIN", value_delimiter = ',')]
    cors_origin: Vec<String>,
    /// Seconds requests in flight may take to finish after SIGTERM or SIGINT before the server
    /// exits anyway
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    shutdown_grace: u64,
}

#[cfg(feature = "server")]
fn serve(args: ServeArgs) -> Result<()> {
    let mut cfg = args.engine.config()?;
    if let Some(w) = args.max_waiting {
        cfg.max_waiting = w;
    }
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        let p = &args.engine.model;
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    });
    let mut opts = wllm::server::ServerOptions::new(name);
    opts.api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("WLLM_API_KEY").ok())
        .filter(|k| !k.is_empty());
    opts.metrics_without_key = args.metrics_without_key;
    opts.header_timeout = std::time::Duration::from_secs(args.header_timeout);
    opts.body_timeout = std::time::Duration::from_secs(args.body_timeout);
    opts.max_connections = usize::try_from(args.max_connections).unwrap_or(usize::MAX);
    opts.max_body_bytes = args.max_body_bytes;
    opts.max_prompt_bytes = args.max_prompt_bytes;
    opts.max_header_bytes = args.max_header_bytes;
    opts.cors_origins = args
        .cors_origin
        .iter()
        .map(|o| o.trim().to_string())
        .filter(|o| !o.is_empty())
        .collect();
    for o in &opts.cors_origins {
        wllm::server::check_cors_origin(o)?;
    }
    opts.shutdown_grace = std::time::Duration::from_secs(args.shutdown_grace);
    let addr = format!("{}:{}", args.host, args.port);
    // The port answers (/health: loading) while the model loads.
    let load = || cli::start_engine(cfg).map(std::sync::Arc::new);
    match wllm::server::run_loading(opts, &addr, load) {
        Ok(()) => Ok(()),
        Err(wllm::server::ServeError::Load(e)) => Err(e),
        Err(wllm::server::ServeError::Io(e)) => {
            Err(e).with_context(|| format!("serving on {addr}"))
        }
    }
}

/// Loads the model for teacher-forced scoring, with the same progress bar as the engine.
fn load(args: &cli::EngineArgs) -> Result<Generator> {
    let cfg = args.config()?;
    let ctx = GpuContext::new(&cfg.adapter)?;
    let bar = cli::load_bar(&args.model);
    let g = Generator::load(&ctx, &cfg.model, &mut cli::load_progress(&bar));
    bar.finish_and_clear();
    g.with_context(|| format!("loading {}", args.model.display()))
}

fn tokenizer_for(path: &std::path::Path) -> Result<Tokenizer> {
    let files = ModelFiles::open(path)?;
    load_tokenizer(&files)?.with_context(|| format!("{} has no tokenizer", path.display()))
}

fn render(tok: &Tokenizer, text: &str, chat: bool) -> Result<String> {
    Ok(if chat {
        tok.render_chat(&[ChatMessage::user(text)], true)?
    } else {
        text.to_string()
    })
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // One line per cause, skipping causes whose text the line above already shows.
        let mut shown = format!("{e}");
        eprintln!("error: {shown}");
        for cause in e.chain().skip(1) {
            let text = cause.to_string();
            if !shown.contains(&text) {
                eprintln!("  caused by: {text}");
            }
            shown = text;
        }
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Batch(args) => cli::batch::run(args)?,
        Command::Chat(args) => cli::chat::run(args)?,
        Command::Plan(args) => cli::plan::run(args)?,
        Command::Check(args) => cli::check::run(args)?,
        Command::Bench { command } => cli::bench::run(command)?,
        #[cfg(feature = "server")]
        Command::Serve(args) => serve(args)?,
        Command::Info { json } => {
            let adapters = wllm::gpu::list_adapters(AdapterSelector::from_env()?.backends);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "adapters": adapters }))?
                );
            } else if adapters.is_empty() {
                println!("no adapters found (on Debian: apt-get install mesa-vulkan-drivers)");
            } else {
                for a in &adapters {
                    println!(
                        "{} [{} {}] f16={} subgroup={} immediates={} kernels={} max binding {} MiB{}",
                        a.name,
                        a.backend,
                        a.device_type,
                        a.shader_f16,
                        a.subgroup,
                        a.immediates,
                        a.kernel_forms,
                        a.max_storage_binding_bytes >> 20,
                        if a.usable {
                            ""
                        } else {
                            " (not usable by wllm)"
                        }
                    );
                }
            }
        }
        Command::Tokenize {
            model,
            chat,
            no_special,
            text,
        } => {
            let tok = tokenizer_for(&model)?;
            let ids = if no_special {
                tok.encode_plain(&text)?
            } else {
                tok.encode(&render(&tok, &text, chat)?)?
            };
            println!("{}", serde_json::to_string(&ids)?);
        }
        Command::Score {
            model,
            prompt_ids,
            top_k,
        } => {
            let mut g = load(&model)?;
            let rows = g.score(&prompt_ids, top_k)?;
            let positions: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({
                        "ids": r.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                        "logits": r.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", json!({ "positions": positions }));
        }
        Command::Generate {
            model,
            prompt,
            prompt_ids,
            chat,
            max_tokens,
            sampling,
            seed,
            grammar,
            json,
        } => {
            let grammar = grammar.grammar()?;
            let engine = cli::start_engine(model.config()?)?;
            let prompt = match (prompt, prompt_ids) {
                (Some(text), None) if chat => Prompt::Chat(vec![ChatMessage::user(text)]),
                (Some(text), None) => Prompt::Text(text),
                (None, Some(ids)) => Prompt::Ids(ids),
                _ => bail!("give --prompt TEXT or --prompt-ids 1,2,3"),
            };
            let mut req = Request::new(prompt);
            req.max_tokens = max_tokens;
            req.sampling = sampling.params(seed)?;
            req.grammar = grammar;
            let mut handle = engine.submit(req)?;
            let prompt_ids = handle.prompt_ids().to_vec();
            let (mut text, mut output_ids, mut finish) = (String::new(), Vec::new(), None);
            let mut cached_tokens = 0;
            let mut stdout = std::io::stdout();
            let has_tokenizer = engine.tokenizer().is_some();
            futures::executor::block_on(async {
                while let Some(ev) = handle.next().await {
                    match ev {
                        Event::Delta {
                            text: t, token_ids, ..
                        } => {
                            if !json {
                                // Random-weight checkpoints have no tokenizer: stream the ids.
                                let shown = if has_tokenizer {
                                    t.clone()
                                } else {
                                    token_ids.iter().map(|i| format!("{i} ")).collect()
                                };
                                let _ = stdout.write_all(shown.as_bytes());
                                let _ = stdout.flush();
                            }
                            text.push_str(&t);
                            output_ids.extend(token_ids);
                        }
                        Event::Finished { reason, usage } => {
                            cached_tokens = usage.cached_tokens;
                            finish = Some(Ok(reason));
                        }
                        Event::Failed(e) => finish = Some(Err(e)),
                    }
                }
            });
            let reason = match finish {
                Some(Ok(r)) => r,
                Some(Err(e)) => bail!("generation failed: {e}"),
                None => bail!("the engine stopped"),
            };
            if json {
                println!(
                    "{}",
                    json!({
                        "prompt_ids": prompt_ids,
                        "output_ids": output_ids,
                        "text": text,
                        "finish_reason": reason,
                        "cached_tokens": cached_tokens,
                    })
                );
            } else {
                println!();
            }
        }
    }
    Ok(())
}
