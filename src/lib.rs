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
//! - [`error`]: typed errors for each stage; [`heap`]: a retired model's memory back to the kernel.
//!
//! The daemon, in the order a request travels (socket → frame → queue → batch → model → reply):
//! - [`transport`]: Unix-socket and QUIC listeners; [`frame`]: the length prefix.
//! - [`protocol`]: protobuf messages and their validation; [`service`]: one request end to end,
//!   tokenized on [`tokenize_pool`]'s threads, never on an I/O thread.
//! - [`queue`], [`batcher`], [`worker`]: admission, batch selection, the engine thread.
//! - [`server`]: start, ready, drain; [`systemd`]: readiness, watchdog and socket activation
//!   under systemd; [`metrics`]: Prometheus metrics and health probes. [`client`]: the same protocol from the other side.
//! - [`cli`]: the `classifyd` binary's subcommands; [`bench`]: its load generator; [`config`]: the `serve --config` file;
//!   [`cert`]: a development PKI for QUIC.

pub mod bench;
pub mod cli;
pub mod client;
pub mod engine;
pub mod model;
pub mod sched;
pub mod serve;
pub mod service;
pub mod settings;
pub mod wire;
