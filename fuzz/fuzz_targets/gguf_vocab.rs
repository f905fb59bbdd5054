//! `cargo fuzz run gguf_vocab`: see fuzz/README.md. The entry code is shared with
//! tests/fuzz_regressions.rs, which replays tests/fixtures/fuzz-regressions/gguf_vocab/.
//! With WLLM_FUZZ_VERBOSE set, each input's result is printed.
#![no_main]

#[path = "../../tests/fuzz_entry/mod.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let r = entry::gguf_vocab(data);
    if entry::verbose() {
        eprintln!("gguf_vocab: {r:?}");
    }
});
