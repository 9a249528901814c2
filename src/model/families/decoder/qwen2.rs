//! `Qwen2ForSequenceClassification`. Mirrors transformers' `Qwen2Config`: biases on Q/K/V (not
//! O), and sliding-window layers from `layer_types` or `use_sliding_window` +
//! `max_window_layers`.

use super::{Config, RawConfig};

/// Qwen2 in the registry ([`crate::model::families::FAMILIES`]).
pub const FAMILY: crate::model::families::Family = crate::model::families::Family {
    name: "Qwen2",
    decoder: true,
    architectures: &[
        "Qwen2ForSequenceClassification",
        "Qwen2ForTokenClassification",
    ],
    build: |spec, vb| super::build(spec, vb, config),
};

pub fn config(raw: &RawConfig) -> Result<Config, String> {
    let mut c = raw.base(10_000.0)?;
    c.qkv_bias = true;
    c.o_bias = false;
    c.windows = raw.qwen_windows()?;
    Ok(c)
}
