//! Speculative decoding: proposing tokens a sequence will likely generate next, so one step
//! verifies several (see the scheduler's spec.rs for their KV, the engine for acceptance).
//! wllm's kernels give a row the same bits whatever else is in its step, so verifying k
//! drafts yields exactly the logits k plain steps would: greedy output is unchanged token
//! for token, and seeded sampling too (each row draws the key the plain step would have).

mod ngram;

pub use ngram::ngram_draft;

/// How drafts are proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecMethod {
    /// Prompt lookup: the tokens that followed the latest earlier occurrence of the
    /// sequence's last n tokens in its own prompt and output ([`ngram_draft`]).
    Ngram {
        /// Longest and shortest suffix matched (the longest that occurs wins).
        max_n: usize,
        min_n: usize,
    },
    /// A second, smaller model with the same tokenizer (a GGUF file or a Hugging Face
    /// directory) drafts greedily from its own paged KV.
    Draft { path: std::path::PathBuf },
}

/// Speculative decoding's settings (`EngineConfig::speculative`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpecConfig {
    pub method: SpecMethod,
    /// Most tokens drafted per sequence per step (k).
    pub num_tokens: usize,
    /// A request stops drafting once, over at least `min_drafted` drafted tokens, fewer than
    /// this fraction were accepted (verifying rejected drafts costs compute for nothing).
    pub min_acceptance: f64,
    pub min_drafted: usize,
    /// No drafts in a step where more sequences decode than this: a large batch is no
    /// longer memory-bound, so verifying drafts costs what it saves.
    pub max_batch: usize,
}

impl SpecConfig {
    /// n-gram drafting of `num_tokens` tokens with suffixes of 4 down to 2 tokens.
    pub fn ngram(num_tokens: usize) -> SpecConfig {
        SpecConfig {
            method: SpecMethod::Ngram { max_n: 4, min_n: 2 },
            num_tokens,
            min_acceptance: 0.1,
            min_drafted: 32,
            max_batch: 32,
        }
    }

    /// Drafting of `num_tokens` tokens by the model at `path`.
    pub fn draft_model(path: impl Into<std::path::PathBuf>, num_tokens: usize) -> SpecConfig {
        SpecConfig {
            method: SpecMethod::Draft { path: path.into() },
            ..SpecConfig::ngram(num_tokens)
        }
    }

    /// Checks the settings a caller may have written.
    pub fn validate(&self) -> Result<(), String> {
        if let SpecMethod::Ngram { max_n, min_n } = self.method
            && (min_n == 0 || min_n > max_n)
        {
            return Err(format!(
                "n-gram sizes must be 1 ≤ min ({min_n}) ≤ max ({max_n})"
            ));
        }
        if self.num_tokens == 0 || self.num_tokens > MAX_SPEC_TOKENS {
            return Err(format!(
                "speculative tokens must be 1..={MAX_SPEC_TOKENS}, not {}",
                self.num_tokens
            ));
        }
        if !(0.0..=1.0).contains(&self.min_acceptance) {
            return Err(format!(
                "min_acceptance must be in [0, 1], not {}",
                self.min_acceptance
            ));
        }
        Ok(())
    }
}

/// Most tokens one step may draft for a sequence.
pub const MAX_SPEC_TOKENS: usize = 16;
