//! Error types of the engine. One enum per stage; the binary turns them into one line and an
//! exit code, the daemon (later) into a typed status.

use std::path::PathBuf;

/// Why a model directory could not be loaded. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: missing ({what})")]
    Missing { path: PathBuf, what: &'static str },
    #[error("{path}: not a directory: a model is the directory that holds config.json, model.safetensors and tokenizer.json")]
    NotADirectory { path: PathBuf },
    #[error("{path}: only PyTorch pickle weights ({found}); classifyd reads safetensors: save the model with transformers' `save_pretrained(dir)` (safetensors by default), or convert it with `safetensors.torch.save_file`")]
    PickleOnly { path: PathBuf, found: &'static str },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: unsupported architecture {architecture:?} (supported: {supported})")]
    UnknownArchitecture {
        path: PathBuf,
        architecture: String,
        supported: String,
    },
    #[error("{path}: invalid weights: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{path}: invalid tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("{path}: tokenizer has {tokenizer} ids but the model's embedding table has only {model} rows")]
    VocabTooLarge {
        path: PathBuf,
        tokenizer: usize,
        model: usize,
    },
    #[error("device {device}: {message}")]
    Device { device: String, message: String },
}

/// Why one input could not be classified. The input is at fault, not the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("input is {tokens} tokens long but the model accepts at most {max}, and truncation is off (no_truncate, or redact: a redacted text is never cut, since its tail would go unredacted)")]
    TooLong { tokens: usize, max: usize },
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
    #[error("token id {id} is outside the model's vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("pre-tokenized input is empty")]
    EmptyIds,
    /// A tokenizer that adds no special tokens (most decoder LLMs') gives none for "" or for
    /// text it drops entirely; there is no token to read a label at.
    #[error("the input tokenizes to no tokens")]
    NoTokens,
    /// Entities are spans of a text; a token-classification model takes single texts.
    #[error("a token-classification model takes a text, not a text pair or token ids")]
    NeedsText,
    #[error("token type id {id} is outside the model's {types} token types")]
    TokenTypeOutOfRange { id: u32, types: usize },
    /// The forward pass gave a NaN or an infinity for this input (F16 overflow, a model with
    /// NaN weights, an int8 row with an infinity): no label, entity or redaction read from such
    /// scores can be trusted, so the input is refused instead of answered unchecked.
    #[error("the model's scores for this input are not finite ({0} of them NaN or infinite): refused rather than answered unchecked")]
    NotFinite(usize),
}

/// A failure of the forward pass. Cloneable so one failure can answer a whole batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("inference failed: {0}")]
pub struct EngineError(pub String);

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError(one_line(&e))
    }
}

/// A candle error as one line: candle appends a multi-line backtrace when RUST_BACKTRACE is set
/// and repeats the path we already name, neither of which belongs in an operator's error line.
pub fn one_line(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } | E::WithPath { inner, .. } => one_line(inner),
        E::Context { inner, context } => format!("{context}: {}", one_line(inner)),
        other => other.to_string().replace('\n', "; "),
    }
}
