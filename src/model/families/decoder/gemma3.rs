//! `Gemma3TextForSequenceClassification`, and `Gemma3ForSequenceClassification` read as text only
//! (its `text_config`, and the weights under `language_model.model`). Mirrors transformers' `Gemma3TextConfig`: Gemma 2's
//! shape without softcapping, with `1 + w` RMSNorms on each head of Q and K, and two RoPE bases:
//! `rope_parameters["full_attention"]` (or `rope_theta`, with its scaling) for the global
//! layers and `rope_parameters["sliding_attention"]` (or `rope_local_base_freq`) for the
//! sliding-window ones, which are five in six by default (`sliding_window_pattern`).

use super::{Config, RawConfig, RopeScaling};

/// Gemma 3 in the registry ([`crate::model::families::FAMILIES`]): the text model, and the
/// multimodal wrapper read as text only.
pub const FAMILY: crate::model::families::Family = crate::model::families::Family {
    name: "Gemma3",
    decoder: true,
    architectures: &[
        "Gemma3TextForSequenceClassification",
        "Gemma3ForSequenceClassification",
    ],
    build: |spec, vb| {
        if spec.architecture == "Gemma3ForSequenceClassification" {
            build_multimodal(spec, vb)
        } else {
            super::build(spec, vb, config)
        }
    },
};

/// `Gemma3ForSequenceClassification`: the text model is read from `text_config`, and its
/// weights from under `language_model.model` (as transformers saves them) or
/// `model.language_model` (its in-memory names).
fn build_multimodal(
    spec: &crate::model::families::Spec<'_>,
    vb: candle_nn::VarBuilder<'_>,
) -> crate::model::families::Built {
    use crate::model::families::BuildError;
    let text = spec.config.get("text_config").ok_or_else(|| {
        BuildError::Config("text_config is missing (Gemma 3's text model is read from it)".into())
    })?;
    let raw = <RawConfig as serde::Deserialize>::deserialize(text)
        .map_err(|e| BuildError::Config(format!("text_config: {e}")))?;
    let cfg = config(&raw).map_err(|m| BuildError::Config(format!("text_config: {m}")))?;
    let body = if vb.contains_tensor("language_model.model.embed_tokens.weight") {
        "language_model.model"
    } else {
        "model.language_model"
    };
    Ok(Box::new(super::Decoder::load_at(
        cfg,
        spec.num_labels,
        spec.task,
        vb,
        body,
    )?))
}

pub fn config(raw: &RawConfig) -> Result<Config, String> {
    let mut base = raw.base(1_000_000.0)?;
    base.qk_norm = true;
    let mut c = raw.gemma(base)?;
    let (theta, scaling) = raw.rope(
        raw.rope_local_base_freq.unwrap_or(10_000.0),
        "sliding_attention",
    )?;
    let local_theta = match (&raw.rope_parameters, raw.rope_local_base_freq) {
        (Some(p), _) if p.get("sliding_attention").is_some() => theta,
        (_, Some(f)) => f,
        _ => 10_000.0,
    };
    let local_scaling = if raw
        .rope_parameters
        .as_ref()
        .is_some_and(|p| p.get("sliding_attention").is_some())
    {
        scaling
    } else {
        RopeScaling::Default
    };
    c.local_rope = Some((local_theta as f32, local_scaling));
    let window = raw.sliding_window;
    c.windows = raw.windows_or(|i| window.filter(|_| (i + 1) % 6 != 0))?;
    Ok(c)
}
