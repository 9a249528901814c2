//! # classifyd
//!
//! A daemon that memory-maps a fine-tuned transformer sequence classifier and answers text
//! classification with low tail latency.
//!
//! ## Layout
//! The engine, in the order a text travels through it:
//! - [`loader`]: the model directory (config.json, safetensors, tokenizer files), validated.
//! - [`tokenize`]: text or text pair → token ids, truncated as transformers does.
//! - [`engine`]: padding into a batch, the forward pass, logits → labels and scores.
//! - [`model`]: one file per architecture family, all behind
//!   [`model::SequenceClassifier`].
//! - [`error`]: typed errors for each stage.
//! - [`cli`]: the `classifyd` binary's subcommands.

pub mod cli;
pub mod engine;
pub mod error;
pub mod loader;
pub mod model;
pub mod tokenize;
