//! `LlamaForSequenceClassification` (Llama 2/3/3.1/3.2 and the many fine-tunes that keep its
//! shape). Mirrors transformers' `LlamaConfig`: `attention_bias` on Q/K/V and O, `mlp_bias`,
//! RoPE `default`, `linear` or `llama3`, no sliding window.

use super::{Config, RawConfig};

/// Llama in the registry ([`crate::model::families::FAMILIES`]).
pub const FAMILY: crate::model::families::Family = crate::model::families::Family {
    name: "Llama",
    decoder: true,
    architectures: &[
        "LlamaForSequenceClassification",
        "LlamaForTokenClassification",
    ],
    build: |spec, vb| super::build(spec, vb, config),
};

pub fn config(raw: &RawConfig) -> Result<Config, String> {
    raw.base(10_000.0)
}
