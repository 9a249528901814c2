//! The decoder families' config.json ([`RawConfig`], the union of the fields they use) and the one
//! normalized [`Config`] each family file turns it into.

use serde::Deserialize;

pub use crate::model::kernels::rope::RopeScaling;

/// The normalized shape of a decoder classifier, whatever family it came from.
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    /// Biases on the Q/K/V projections (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Qwen3: RMSNorm over each head of Q and K, before RoPE.
    pub qk_norm: bool,
    /// The window of each layer that sees only the last `w` keys (`None`: full causal).
    pub windows: Vec<Option<usize>>,
    pub pad_token_id: u32,
    pub hidden_act: crate::model::layers::Activation,
    /// Scores are multiplied by this: `head_dim^-0.5`, or Gemma's `query_pre_attn_scalar^-0.5`.
    pub attention_scale: f64,
    /// Gemma 2: scores become `cap · tanh(scores / cap)` before the mask.
    pub softcap: Option<f64>,
    /// Gemma: embeddings times √hidden (rounded to the compute dtype, as transformers does).
    pub embed_scale: Option<f64>,
    /// Gemma: RMSNorms scale by `1 + w` (in f32), and the attention and MLP outputs are normed
    /// before their residual adds (`post_attention_layernorm`, `pre_`/`post_feedforward_layernorm`).
    pub gemma_norms: bool,
    /// Gemma 3: the RoPE base and scaling of the sliding-window layers, when they differ.
    pub local_rope: Option<(f32, RopeScaling)>,
}

/// Most layers a decoder config may declare (the largest open models have under 200).
const MAX_LAYERS: usize = 1024;
/// Largest head width (and head count) a decoder config may declare.
const MAX_HEAD_DIM: usize = 4096;

/// Longest RoPE table built at load, and so the longest input a decoder takes: a classifier
/// reads texts, and tables for 131,072 positions of 256-wide heads would be 256 MiB.
pub const MAX_DECODER_POSITIONS: usize = 8192;

/// The config.json fields the Llama-shaped families share, with transformers' defaults where a
/// family's config class has one that matters here.
#[derive(Debug, Clone, Deserialize)]
pub struct RawConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default = "default_act")]
    pub hidden_act: crate::model::layers::Activation,
    /// transformers 5: `{"rope_type": …, "rope_theta": …, …}`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// transformers 4: top-level `rope_theta` and `rope_scaling`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Gemma's name for the MLP activation.
    #[serde(default)]
    pub hidden_activation: Option<crate::model::layers::Activation>,
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}
fn default_act() -> crate::model::layers::Activation {
    crate::model::layers::Activation::Silu
}

impl RawConfig {
    /// The shared part of [`Config`]; `family` adds its own (biases, Q/K norms, windows).
    /// Errors name the config.json field at fault.
    pub fn base(&self, default_theta: f64) -> std::result::Result<Config, String> {
        // Sizes are checked against the weights only as each is read; these bound what is
        // allocated before that (per-layer tables, RoPE tables), whatever config.json says.
        for (field, value, max) in [
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            (
                "num_attention_heads",
                self.num_attention_heads,
                MAX_HEAD_DIM,
            ),
            ("head_dim", self.head_dim.unwrap_or(0), MAX_HEAD_DIM),
        ] {
            if value > max {
                return Err(format!("{field} {value} is more than the {max} supported"));
            }
        }
        let heads = self.num_attention_heads;
        let kv = self.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
            return Err(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if self.hidden_size.is_multiple_of(heads) => self.hidden_size / heads,
            None => {
                return Err(format!(
                    "hidden_size {} is not a multiple of num_attention_heads {heads} and head_dim is not set",
                    self.hidden_size
                ))
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {head_dim} must be even for RoPE"));
        }
        let pad_token_id = match self.pad_token_id {
            Some(p) if p >= 0 && (p as usize) < self.vocab_size => p as u32,
            Some(p) => {
                return Err(format!(
                    "pad_token_id {p} is outside the vocabulary of {}",
                    self.vocab_size
                ))
            }
            None => {
                return Err(
                    "pad_token_id is missing: a decoder classifier reads each text at its \
                            last token that is not the pad id, and transformers refuses batches \
                            without one; set it (often to the eos id)"
                        .into(),
                )
            }
        };
        let (theta, scaling) = self.rope(default_theta, "full_attention")?;
        Ok(Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            max_position_embeddings: self.max_position_embeddings,
            rope_theta: theta as f32,
            rope_scaling: scaling,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            qk_norm: false,
            windows: vec![None; self.num_hidden_layers],
            pad_token_id,
            hidden_act: self.hidden_act,
            attention_scale: 1.0 / (head_dim as f64).sqrt(),
            softcap: None,
            embed_scale: None,
            gemma_norms: false,
            local_rope: None,
        })
    }

    /// `rope_theta` and the scaling, from transformers 5's `rope_parameters` (flat, or keyed by
    /// layer type as Gemma 3 writes it: `layer_type` picks) or 4's `rope_theta`/`rope_scaling`.
    pub fn rope(
        &self,
        default_theta: f64,
        layer_type: &str,
    ) -> std::result::Result<(f64, RopeScaling), String> {
        let params = self
            .rope_parameters
            .as_ref()
            .or(self.rope_scaling.as_ref())
            .filter(|v| !v.is_null());
        let params = match params.and_then(|p| p.get(layer_type)) {
            Some(per_type) => Some(per_type),
            None => params,
        };
        let theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(default_theta);
        let Some(p) = params else {
            return Ok((theta, RopeScaling::Default));
        };
        let kind = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("default");
        let num = |key: &str| -> std::result::Result<f32, String> {
            p.get(key)
                .and_then(serde_json::Value::as_f64)
                .map(|x| x as f32)
                .ok_or_else(|| format!("rope {kind:?} needs a numeric {key:?}"))
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: num("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            other => {
                return Err(format!(
                    "rope_type {other:?} is not supported (default, linear and llama3 are)"
                ))
            }
        };
        Ok((theta, scaling))
    }

    /// Windows from `layer_types` when the config lists them, else from `sliding_window` for
    /// layers from `max_window_layers` on, when `use_sliding_window` (Qwen2's and Qwen3's rule).
    pub fn qwen_windows(&self) -> std::result::Result<Vec<Option<usize>>, String> {
        let window = self.sliding_window.filter(|_| self.use_sliding_window);
        let from = self.max_window_layers.unwrap_or(self.num_hidden_layers);
        self.windows_or(|i| window.filter(|_| i >= from))
    }

    /// Windows from `layer_types` when the config lists them, else `default(layer)`.
    pub fn windows_or(
        &self,
        default: impl Fn(usize) -> Option<usize>,
    ) -> std::result::Result<Vec<Option<usize>>, String> {
        let Some(types) = &self.layer_types else {
            return Ok((0..self.num_hidden_layers).map(default).collect());
        };
        crate::model::layers::sliding_layers(types, self.num_hidden_layers)?
            .into_iter()
            .map(|sliding| match (sliding, self.sliding_window) {
                (false, _) => Ok(None),
                (true, Some(w)) => Ok(Some(w)),
                (true, None) => Err("sliding_attention layers need sliding_window".into()),
            })
            .collect()
    }

    /// What Gemma 2 and Gemma 3 share on top of [`Self::base`].
    pub fn gemma(&self, mut c: Config) -> std::result::Result<Config, String> {
        if self.use_bidirectional_attention == Some(true) {
            return Err(
                "use_bidirectional_attention is not supported (causal decoders only)".into(),
            );
        }
        if let Some(act) = self.hidden_activation {
            c.hidden_act = act;
        }
        let scalar = self.query_pre_attn_scalar.unwrap_or(c.head_dim as f64);
        if scalar <= 0.0 {
            return Err(format!("query_pre_attn_scalar {scalar} must be positive"));
        }
        c.attention_scale = 1.0 / scalar.sqrt();
        c.embed_scale = Some((c.hidden_size as f64).sqrt());
        c.gemma_norms = true;
        c.o_bias = c.qkv_bias;
        Ok(c)
    }
}
