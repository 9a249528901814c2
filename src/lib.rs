//! # classifyd
//!
//! A daemon that memory-maps a fine-tuned transformer sequence classifier and answers text
//! classification with low tail latency.
//!
//! ## Layout, in the order a request travels
//! socket → frame → queue → batch → model → reply. Dependencies point down this list and
//! never back up it (unit tests aside):
//!
//! - [`cli`]: the `classifyd` subcommands (`serve`, `check-config`, `classify`, `inspect`,
//!   `bench`, `cert`), one file each.
//! - [`serve`]: start, bind, serve and drain, warm-up and reload; the [`serve::handler::Handler`]
//!   both listeners answer with, the Unix-socket and QUIC listeners ([`serve::unix`],
//!   [`serve::quic`]), the metrics/health HTTP endpoint ([`serve::http`]),
//!   systemd readiness, watchdog and socket activation ([`serve::systemd`]); [`serve::config`]
//!   turns the settings into what each part runs with (listeners, request limits, scheduler,
//!   threads), so nothing below `serve` reads them.
//! - [`settings`]: every `serve` setting written once (flag, TOML key, default, doc, range),
//!   merged flags over file over defaults, with where each value came from; the engine's rows
//!   are also the flags of `classify`, `inspect` and `bench`.
//! - [`service`]: one request end to end (decode, then admit, tokenize on
//!   [`service::tokenize_pool`], submit and answer, each failing with a
//!   [`service::error::ServiceError`]), protobuf ↔ engine types ([`service::convert`]), the
//!   model hot-swap, and the Prometheus [`service::metrics`] it records.
//! - [`sched`]: admission into a bounded queue with lanes, priorities and deadlines
//!   ([`sched::queue`]), batch selection ([`sched::batch`]), each lane's engine loop
//!   ([`sched::worker`]) and its threads: how many, where, how long awake ([`sched::hot`]).
//! - [`engine`]: the model directory ([`engine::loader`]), the device and dtype choice
//!   ([`engine::device`]), the model built through the family registry with its weights private
//!   or in the weights cache file ([`engine::build`], [`engine::cache`]), tokenization
//!   ([`engine::tokenize`]), cutting a batch into forward passes ([`engine::passes`]), logits →
//!   labels, scores, entities and redaction ([`engine::predict`], [`engine::entities`]), typed
//!   errors ([`engine::error`]), the heap ([`engine::heap`]) and op counts ([`engine::opcount`]).
//! - [`model`] in three layers: [`model::kernels`], the hand-written CPU kernels (f32 and int8
//!   matmuls, attention, LayerNorm, GELU, RoPE tables), the thread team they split across and
//!   the weights recorded for the cache or viewed in its mapping, with no model knowledge;
//!   [`model::layers`], Linear, LayerNorm, embeddings, heads, masks and attention blocks; and
//!   [`model::families`], one file or folder per architecture behind
//!   [`model::SequenceClassifier`], and the registry that is the one list of architecture names.
//! - [`wire`]: what both ends share, with no engine or settings in it: the length prefix, the
//!   protobuf messages, QUIC's stream and close codes, TLS and the development PKI.
//! - [`client`] and [`mod@bench`]: the same protocol from the other side (over [`wire`] alone),
//!   and the load generator.
//! - `fuzzing` (feature `fuzzing`): the fuzz targets' bodies, which `fuzz/` wraps and the tests
//!   replay every committed seed through.

pub mod bench;
pub mod cli;
pub mod client;
pub mod engine;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod model;
pub mod sched;
pub mod serve;
pub mod service;
pub mod settings;
pub mod wire;
