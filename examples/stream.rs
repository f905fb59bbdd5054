//! Several requests streaming at once: the engine batches them into one forward pass per
//! step, and each request's tokens are printed as they arrive.
//!
//!     cargo run --release --example stream -- [MODEL]

use futures::StreamExt;
use wllm::tokenizer::ChatMessage;
use wllm::{Engine, EngineConfig, Event, Prompt, Request, SamplingParams};

fn main() -> Result<(), wllm::Error> {
    env_logger::init();
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let engine = Engine::new(EngineConfig::new(model))?;

    let questions = [
        "What is the capital of France?",
        "Name a prime number larger than 10.",
        "Write a haiku about the sea.",
    ];
    let mut streams = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        let mut r = Request::new(Prompt::Chat(vec![ChatMessage::user(*q)]));
        r.max_tokens = 48;
        r.sampling = SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            seed: i as u64,
            ..Default::default()
        };
        // submit() returns at once; the handle is a futures::Stream of events.
        streams.push(engine.submit(r)?.map(move |ev| (i, ev)).boxed());
    }

    let mut texts = vec![String::new(); questions.len()];
    let mut all = futures::stream::select_all(streams);
    futures::executor::block_on(async {
        while let Some((i, ev)) = all.next().await {
            match ev {
                Event::Delta { text, .. } => {
                    texts[i].push_str(&text);
                    if !text.is_empty() {
                        println!("[{i}] {text:?}");
                    }
                }
                Event::Finished { reason, usage } => println!(
                    "[{i}] finished ({reason:?}, {} tokens, first after {:?})",
                    usage.completion_tokens,
                    usage.time_to_first_token.unwrap_or_default()
                ),
                Event::Failed(e) => println!("[{i}] failed: {e}"),
            }
        }
    });
    for (q, t) in questions.iter().zip(&texts) {
        println!("\n> {q}\n{t}");
    }
    Ok(())
}
