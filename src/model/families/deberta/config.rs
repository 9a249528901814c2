//! `DebertaV2Config` as transformers' `configuration_deberta_v2.py` reads it, with its defaults.

use serde::{Deserialize, Deserializer};

use crate::model::layers::Activation;

fn default_act() -> Activation {
    Activation::Gelu
}
fn default_conv_act() -> Activation {
    Activation::Tanh
}
fn default_eps() -> f64 {
    1e-7
}
fn default_max_pos() -> usize {
    512
}
fn default_minus_one() -> i64 {
    -1
}
fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_pad() -> Option<u32> {
    Some(0)
}

/// `pos_att_type` is a list (`["p2c", "c2p"]`), a legacy `"p2c|c2p"` string, or null.
fn de_pos_att_type<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let norm = |s: &str| s.trim().to_lowercase();
    Ok(match Option::<Raw>::deserialize(d)? {
        None => Vec::new(),
        Some(Raw::One(s)) => s.to_lowercase().split('|').map(norm).collect(),
        Some(Raw::Many(v)) => v.iter().map(|s| norm(s)).collect(),
    })
}

/// The fields of `DebertaV2Config` (plus the `getattr` extras the model reads) with
/// transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub relative_attention: bool,
    /// Values below 1 mean "use `max_position_embeddings`".
    #[serde(default = "default_minus_one")]
    pub max_relative_positions: i64,
    /// Values below 1 disable log bucketing.
    #[serde(default = "default_minus_one")]
    pub position_buckets: i64,
    #[serde(default, deserialize_with = "de_pos_att_type")]
    pub pos_att_type: Vec<String>,
    #[serde(default)]
    pub share_att_key: bool,
    /// `"none"` or `"layer_norm"` (a `|`-separated list in general).
    #[serde(default)]
    pub norm_rel_ebd: Option<String>,
    #[serde(default = "default_true")]
    pub position_biased_input: bool,
    #[serde(default)]
    pub embedding_size: Option<usize>,
    #[serde(default = "default_pad")]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub attention_head_size: Option<usize>,
    /// 0 disables the convolution layer (DeBERTa-v2 xlarge/xxlarge use 3).
    #[serde(default)]
    pub conv_kernel_size: usize,
    #[serde(default = "default_one")]
    pub conv_groups: usize,
    #[serde(default = "default_conv_act")]
    pub conv_act: Activation,
    #[serde(default)]
    pub pooler_hidden_size: Option<usize>,
    #[serde(default = "default_act")]
    pub pooler_hidden_act: Activation,
}

/// The longest sequence a DeBERTa with relative attention serves: its c2p and p2c index tables
/// take `2 × T² × 4` bytes (32 MiB at 2,048; 2 MiB at DeBERTa-v3's 512).
pub const MAX_RELATIVE_POSITIONS: usize = 2048;

impl Config {
    fn has(&self, kind: &str) -> bool {
        self.pos_att_type.iter().any(|p| p == kind)
    }

    pub(super) fn c2p(&self) -> bool {
        self.has("c2p")
    }

    pub(super) fn p2c(&self) -> bool {
        self.has("p2c")
    }

    /// `1 + [c2p] + [p2c]`, counted whether or not relative attention is on (as transformers does).
    pub(super) fn scale_factor(&self) -> usize {
        1 + self.c2p() as usize + self.p2c() as usize
    }

    /// `max_relative_positions`, falling back to `max_position_embeddings`.
    pub(super) fn max_relative(&self) -> i64 {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings as i64
        } else {
            self.max_relative_positions
        }
    }

    /// Half the number of relative embeddings (`att_span` / `pos_ebd_size`).
    pub(super) fn att_span(&self) -> i64 {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative()
        }
    }

    pub(super) fn norm_rel(&self) -> bool {
        self.norm_rel_ebd
            .as_deref()
            .unwrap_or("none")
            .to_lowercase()
            .split('|')
            .any(|s| s.trim() == "layer_norm")
    }

    pub(super) fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// The positions served: `max_position_embeddings`, but with relative attention no more
    /// than [`MAX_RELATIVE_POSITIONS`], since its gather indices are built at load for every
    /// pair of positions (`T × T`).
    pub(super) fn positions(&self) -> usize {
        if self.relative_attention {
            self.max_position_embeddings.min(MAX_RELATIVE_POSITIONS)
        } else {
            self.max_position_embeddings
        }
    }

    pub fn check(&self) -> std::result::Result<(), String> {
        crate::model::families::positions_within(self.max_position_embeddings)?;
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if let Some(d) = self.attention_head_size {
            // Checked: a huge size must be refused, not overflow (found by fuzz/ config_json).
            if d.checked_mul(self.num_attention_heads) != Some(self.hidden_size) {
                return Err(format!(
                    "attention_head_size {d} × {} heads != hidden_size {} is not supported",
                    self.num_attention_heads, self.hidden_size
                ));
            }
        }
        if let Some(p) = self.pooler_hidden_size {
            if p != self.hidden_size {
                return Err(format!(
                    "pooler_hidden_size {p} != hidden_size {} is not supported",
                    self.hidden_size
                ));
            }
        }
        for p in &self.pos_att_type {
            if p != "c2p" && p != "p2c" {
                return Err(format!(
                    "pos_att_type {p:?} is not supported (only c2p, p2c)"
                ));
            }
        }
        if self.relative_attention && self.position_buckets > 0 && self.position_buckets / 2 < 2 {
            return Err(format!(
                "position_buckets {} is too small",
                self.position_buckets
            ));
        }
        if self.conv_kernel_size > 0 {
            if self.conv_kernel_size.is_multiple_of(2) {
                return Err(format!(
                    "conv_kernel_size {} must be odd (transformers fails on even sizes too)",
                    self.conv_kernel_size
                ));
            }
            if self.conv_groups == 0 || !self.hidden_size.is_multiple_of(self.conv_groups) {
                return Err(format!(
                    "hidden_size {} is not a multiple of conv_groups {}",
                    self.hidden_size, self.conv_groups
                ));
            }
        }
        Ok(())
    }
}
