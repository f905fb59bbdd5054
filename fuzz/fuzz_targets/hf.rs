//! `cargo fuzz run hf`: see fuzz/README.md. The entry code is shared with
//! tests/fuzz_regressions.rs, which replays tests/fixtures/fuzz-regressions/hf/.
//! With WLLM_FUZZ_VERBOSE set, each input's result is printed.
#![no_main]

#[path = "../../tests/fuzz_entry/mod.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let r = entry::hf(data);
    if entry::verbose() {
        eprintln!("hf: {r:?}");
    }
});
