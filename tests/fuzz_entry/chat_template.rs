//! The `chat_template` target: a chat template rendered through the project's renderer.

use wllm::tokenizer::ChatMessage;

/// A chat template (the whole input, if it is UTF-8) rendered with a fixed conversation through
/// the project's renderer, with and without the generation prompt.
pub fn chat_template(data: &[u8]) -> Result<(), String> {
    let Ok(template) = std::str::from_utf8(data) else {
        return Ok(());
    };
    let messages = [
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("What is the capital of France?"),
        ChatMessage::assistant("Paris."),
        ChatMessage::user("And of Italy? {{ not a template }} <|im_end|>"),
    ];
    wllm::tokenizer::chat::render_template(
        template,
        &messages,
        true,
        Some("<|im_start|>"),
        Some("<|im_end|>"),
    )
    .map_err(|e| format!("render: {e}"))?;
    Ok(())
}
