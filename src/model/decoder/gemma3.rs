//! `Gemma3TextForSequenceClassification`, and `Gemma3ForSequenceClassification` read as text only
//! (its `text_config`, and the weights under `language_model.model`). Mirrors transformers' `Gemma3TextConfig`: Gemma 2's
//! shape without softcapping, with `1 + w` RMSNorms on each head of Q and K, and two RoPE bases:
//! `rope_parameters["full_attention"]` (or `rope_theta`, with its scaling) for the global
//! layers and `rope_parameters["sliding_attention"]` (or `rope_local_base_freq`) for the
//! sliding-window ones, which are five in six by default (`sliding_window_pattern`).

use super::{Config, RawConfig, RopeScaling};

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
