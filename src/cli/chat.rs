//! `wllm chat`: an interactive terminal chat over the engine, history kept, replies streamed.

use std::io::{BufRead, Write};

use anyhow::{Result, bail};
use futures::StreamExt;
use wllm::tokenizer::ChatMessage;
use wllm::{Event, Prompt, Request, SamplingParams};

use super::EngineArgs;

#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// A system message for the whole conversation
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let engine = super::start_engine(args.engine.config()?)?;
    if engine.tokenizer().is_none() {
        bail!("the model has no tokenizer, so it cannot chat");
    }
    let mut history: Vec<ChatMessage> = args.system.into_iter().map(ChatMessage::system).collect();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!(
        "chatting with {} — an empty line or Ctrl-D ends",
        args.engine.model.display()
    );
    for turn in 0u64.. {
        print!("> ");
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        history.push(ChatMessage::user(line.trim_end()));
        let mut req = Request::new(Prompt::Chat(history.clone()));
        req.max_tokens = args.max_tokens;
        req.sampling = SamplingParams {
            temperature: args.temperature,
            seed: args.seed.wrapping_add(turn),
            ..Default::default()
        };
        let mut handle = match engine.submit(req) {
            Ok(h) => h,
            Err(e) => {
                // Most likely the conversation outgrew the context: say so and keep going.
                eprintln!("error: {e}");
                history.pop();
                continue;
            }
        };
        let mut reply = String::new();
        futures::executor::block_on(async {
            while let Some(ev) = handle.next().await {
                match ev {
                    Event::Delta { text, .. } => {
                        reply.push_str(&text);
                        print!("{text}");
                        let _ = stdout.flush();
                    }
                    Event::Finished { .. } => break,
                    Event::Failed(e) => {
                        eprintln!("\nerror: {e}");
                        break;
                    }
                }
            }
        });
        println!();
        history.push(ChatMessage::assistant(reply));
    }
    Ok(())
}
