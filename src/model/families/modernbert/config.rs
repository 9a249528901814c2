//! The fields of transformers' `ModernBertConfig` that shape the classifier.

use serde::Deserialize;

use crate::model::layers::Activation;

fn default_vocab() -> usize {
    50368
}
fn default_hidden() -> usize {
    768
}
fn default_intermediate() -> usize {
    1152
}
fn default_layers() -> usize {
    22
}
fn default_heads() -> usize {
    12
}
fn default_gelu() -> Activation {
    Activation::Gelu
}
fn default_max_pos() -> usize {
    8192
}
fn default_eps() -> f64 {
    1e-5
}
fn default_every_n() -> usize {
    3
}

pub(super) const DEFAULT_GLOBAL_THETA: f64 = 160_000.0;
pub(super) const DEFAULT_LOCAL_THETA: f64 = 10_000.0;
const DEFAULT_LOCAL_ATTENTION: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    #[default]
    Cls,
    Mean,
}

/// More layers than any encoder has; see [`Config::sliding_layers`].
pub const MAX_LAYERS: usize = 1 << 12;

/// The fields of `ModernBertConfig` that shape the classifier, with transformers' defaults.
///
/// RoPE and the layer pattern come in two spellings: transformers 5 writes `layer_types` and
/// `rope_parameters` (`{"full_attention": {"rope_theta": ..}, "sliding_attention": {..}}`);
/// 4.x wrote `global_attn_every_n_layers`, `global_rope_theta` and `local_rope_theta`. The new
/// spelling wins where both are present, as in transformers.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_gelu")]
    pub hidden_activation: Activation,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub classifier_bias: bool,
    #[serde(default = "default_gelu")]
    pub classifier_activation: Activation,
    #[serde(default)]
    pub classifier_pooling: Pooling,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Total window of local layers (a key is visible when `|i - j| <= local_attention / 2`).
    #[serde(default)]
    pub local_attention: Option<usize>,
    /// Half window, transformers 5's derived spelling; used only when `local_attention` is absent.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// transformers 5: "full_attention" / "sliding_attention", one per layer.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// transformers 4.x: every n-th layer (from 0) is global.
    #[serde(default = "default_every_n")]
    pub global_attn_every_n_layers: usize,
    /// transformers 5: per layer type `{"rope_type": "default", "rope_theta": ..}`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub global_rope_theta: Option<f64>,
    #[serde(default)]
    pub local_rope_theta: Option<f64>,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    pub fn local_window(&self) -> usize {
        match (self.local_attention, self.sliding_window) {
            (Some(total), _) => total,
            // Saturating: a window wider than any sequence means the same as a huge one, and an
            // absurd config value must not overflow (found by fuzz/ config_json).
            (None, Some(half)) => half.saturating_mul(2),
            (None, None) => DEFAULT_LOCAL_ATTENTION,
        }
    }

    /// Whether each layer is local (sliding-window) attention.
    pub fn sliding_layers(&self) -> std::result::Result<Vec<bool>, String> {
        match &self.layer_types {
            Some(types) => crate::model::layers::sliding_layers(types, self.num_hidden_layers),
            None => {
                let n = self.global_attn_every_n_layers;
                if n == 0 {
                    return Err("global_attn_every_n_layers must be positive".into());
                }
                // The list is built before any layer's weights are looked for, so an absurd
                // layer count would allocate it whole (found by fuzz/ config_json).
                if self.num_hidden_layers > MAX_LAYERS {
                    return Err(format!(
                        "num_hidden_layers {} is more than the {MAX_LAYERS} supported",
                        self.num_hidden_layers
                    ));
                }
                Ok((0..self.num_hidden_layers).map(|i| i % n != 0).collect())
            }
        }
    }

    /// RoPE base of one layer type, from `rope_parameters` or the 4.x fields.
    pub(super) fn rope_theta(&self, sliding: bool) -> std::result::Result<f64, String> {
        let (key, legacy, default) = if sliding {
            (
                "sliding_attention",
                self.local_rope_theta,
                DEFAULT_LOCAL_THETA,
            )
        } else {
            (
                "full_attention",
                self.global_rope_theta,
                DEFAULT_GLOBAL_THETA,
            )
        };
        let params = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.as_object())
            .and_then(|p| p.get(key))
            .and_then(|p| p.as_object());
        if let Some(params) = params {
            if let Some(kind) = params.get("rope_type").and_then(|t| t.as_str()) {
                if kind != "default" {
                    return Err(format!("rope_type {kind:?} ({key}) is not supported"));
                }
            }
            if let Some(theta) = params.get("rope_theta").and_then(|t| t.as_f64()) {
                return Ok(theta);
            }
        }
        Ok(legacy.unwrap_or(default))
    }

    pub fn check(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        crate::model::families::positions_within(self.max_position_embeddings)?;
        self.sliding_layers()?;
        self.rope_theta(true)?;
        self.rope_theta(false)?;
        Ok(())
    }
}
