//! `Gemma2ForSequenceClassification`. Mirrors transformers' `Gemma2Config`: `1 + w` RMSNorms
//! around both blocks, embeddings scaled by √hidden, scores scaled by
//! `query_pre_attn_scalar^-0.5` and soft-capped at `attn_logit_softcapping`, sliding-window
//! layers from `layer_types` (by default every other layer, starting with the first), and a
//! `gelu_pytorch_tanh` MLP. (`final_logit_softcapping` caps the LM head's logits only, not a
//! classifier's.)

use super::{Config, RawConfig};

/// Gemma2 in the registry ([`crate::model::families::FAMILIES`]).
pub const FAMILY: crate::model::families::Family = crate::model::families::Family {
    name: "Gemma2",
    decoder: true,
    architectures: &[
        "Gemma2ForSequenceClassification",
        "Gemma2ForTokenClassification",
    ],
    build: |spec, vb| super::build(spec, vb, config),
};

pub fn config(raw: &RawConfig) -> Result<Config, String> {
    let mut c = raw.gemma(raw.base(10_000.0)?)?;
    c.softcap = raw.attn_logit_softcapping;
    if let Some(cap) = c.softcap {
        if cap <= 0.0 {
            return Err(format!("attn_logit_softcapping {cap} must be positive"));
        }
    }
    let window = raw.sliding_window;
    c.windows = raw.windows_or(|i| window.filter(|_| i % 2 == 0))?;
    Ok(c)
}
