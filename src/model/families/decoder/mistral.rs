//! `MistralForSequenceClassification`. Mirrors transformers' `MistralConfig`: no biases, and
//! every layer attends within `sliding_window` when the config sets one.

use super::{Config, RawConfig};

/// Mistral in the registry ([`crate::model::families::FAMILIES`]).
pub const FAMILY: crate::model::families::Family = crate::model::families::Family {
    name: "Mistral",
    decoder: true,
    architectures: &[
        "MistralForSequenceClassification",
        "MistralForTokenClassification",
    ],
    build: |spec, vb| super::build(spec, vb, config),
};

pub fn config(raw: &RawConfig) -> Result<Config, String> {
    let mut c = raw.base(10_000.0)?;
    c.qkv_bias = false;
    c.o_bias = false;
    c.windows = vec![raw.sliding_window; raw.num_hidden_layers];
    Ok(c)
}
