//! The library's top-level error: every failure a caller can meet, typed.

/// Any error from wllm's public API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error(transparent)]
    Kv(#[from] crate::kv::KvError),
    #[error("KV disk tier: {0}")]
    Disk(#[from] crate::tier::disk::DiskError),
    /// A request that can never run (empty prompt, too long for the context, bad ids...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The waiting queue is full: the request was refused, not queued (HTTP 429).
    #[error("the engine's queue is full ({0} requests waiting); try again later")]
    QueueFull(usize),
    /// The engine thread has stopped.
    #[error("the engine has stopped")]
    EngineStopped,
    /// `wllm check` could not run a check (its temporary model, its CPU reference).
    #[error("check: {0}")]
    Check(String),
    /// An option the engine does not support, rather than silently ignoring it.
    #[error("unsupported option: {0}")]
    Unsupported(String),
}

impl From<crate::model::ModelError> for Error {
    fn from(e: crate::model::ModelError) -> Self {
        match e {
            crate::model::ModelError::Load(e) => Error::Load(e),
            crate::model::ModelError::Gpu(e) => Error::Gpu(e),
        }
    }
}

impl From<crate::scheduler::SchedError> for Error {
    fn from(e: crate::scheduler::SchedError) -> Self {
        use crate::scheduler::SchedError;
        match e {
            SchedError::QueueFull { cap } => Error::QueueFull(cap),
            SchedError::Kv(e) => Error::Kv(e),
            other => Error::InvalidRequest(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
