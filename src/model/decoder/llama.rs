//! `LlamaForSequenceClassification` (Llama 2/3/3.1/3.2 and the many fine-tunes that keep its
//! shape). Mirrors transformers' `LlamaConfig`: `attention_bias` on Q/K/V and O, `mlp_bias`,
//! RoPE `default`, `linear` or `llama3`, no sliding window.

use super::{Config, RawConfig};

pub fn config(raw: &RawConfig) -> Result<Config, String> {
    raw.base(10_000.0)
}
