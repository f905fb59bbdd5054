//! Embedding wllm in an application with one blocking call, the way a desktop app would.
//!
//!     cargo run --release --example embed_blocking -- [MODEL] ["your question"]

use wllm::tokenizer::ChatMessage;
use wllm::{Engine, EngineConfig, Prompt, Request};

fn main() -> Result<(), wllm::Error> {
    env_logger::init();
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let question = args
        .next()
        .unwrap_or_else(|| "Give me three tips for writing clear code.".into());

    // Everything but the model path has a default; the engine picks the best adapter.
    let engine = Engine::new(EngineConfig::new(model))?;

    let mut request = Request::new(Prompt::Chat(vec![ChatMessage::user(question)]));
    request.max_tokens = 96;
    let done = engine.generate(request)?;

    println!("{}", done.text);
    println!(
        "[{:?}: {} prompt tokens, {} generated, first token after {:?}, total {:?}]",
        done.finish_reason,
        done.usage.prompt_tokens,
        done.usage.completion_tokens,
        done.usage.time_to_first_token.unwrap_or_default(),
        done.usage.total_time
    );
    Ok(())
}
