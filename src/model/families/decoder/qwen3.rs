//! `Qwen3ForSequenceClassification` (and the Qwen3-Reranker `-seq-cls` conversions). Mirrors
//! transformers' `Qwen3Config`: RMSNorm over each head of Q and K before RoPE, an explicit
//! `head_dim`, `attention_bias` on Q/K/V and O, and sliding-window layers as Qwen2 has them.

use super::{Config, RawConfig};

/// Qwen3 in the registry ([`crate::model::families::FAMILIES`]).
pub const FAMILY: crate::model::families::Family = crate::model::families::Family {
    name: "Qwen3",
    decoder: true,
    architectures: &[
        "Qwen3ForSequenceClassification",
        "Qwen3ForTokenClassification",
    ],
    build: |spec, vb| super::build(spec, vb, config),
};

pub fn config(raw: &RawConfig) -> Result<Config, String> {
    let mut c = raw.base(10_000.0)?;
    c.qk_norm = true;
    c.windows = raw.qwen_windows()?;
    Ok(c)
}
