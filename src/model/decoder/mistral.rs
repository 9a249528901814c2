//! `MistralForSequenceClassification`. Mirrors transformers' `MistralConfig`: no biases, and
//! every layer attends within `sliding_window` when the config sets one.

use super::{Config, RawConfig};

pub fn config(raw: &RawConfig) -> Result<Config, String> {
    let mut c = raw.base(10_000.0)?;
    c.qkv_bias = false;
    c.o_bias = false;
    c.windows = vec![raw.sliding_window; raw.num_hidden_layers];
    Ok(c)
}
