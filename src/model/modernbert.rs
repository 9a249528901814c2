//! ModernBERT (`ModernBertForSequenceClassification`).
//!
//! Mirrors transformers' `modeling_modernbert.py` / `configuration_modernbert.py` (5.x, eager/sdpa
//! path; 4.x checkpoints load too): token embeddings + LayerNorm (no position table), pre-LN layers
//! with a fused `Wqkv`, rotary position embeddings whose base differs between global
//! ("full_attention") and local ("sliding_attention") layers, a bidirectional sliding window of
//! `|i - j| <= local_attention / 2` on local layers, a GeGLU MLP, a final norm, then `cls` or
//! `mean` pooling and the `dense → act → norm → classifier` head. Returns logits, not
//! probabilities.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::rope::{Rope, RopeScaling};

use super::{
    first_token, mask_fill_value, Activation, Batch, LayerNorm, Linear, SequenceClassifier, Task,
};

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

const DEFAULT_GLOBAL_THETA: f64 = 160_000.0;
const DEFAULT_LOCAL_THETA: f64 = 10_000.0;
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
            Some(types) => super::sliding_layers(types, self.num_hidden_layers),
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
    fn rope_theta(&self, sliding: bool) -> std::result::Result<f64, String> {
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
        self.sliding_layers()?;
        self.rope_theta(true)?;
        self.rope_theta(false)?;
        Ok(())
    }
}

struct Layer {
    attn_norm: Option<LayerNorm>,
    /// Fused Q/K/V; the Q columns are pre-scaled by `1/sqrt(head_dim)` so the F16 score matmul
    /// never sees an unscaled product (RoPE is linear, so scaling before it is exact).
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    /// GeGLU: `[input | gate]`, `2 * intermediate` wide.
    wi: Linear,
    mlp_out: Linear,
    sliding: bool,
    heads: usize,
    head_dim: usize,
    intermediate: usize,
    act: Activation,
}

impl Layer {
    fn load(cfg: &Config, index: usize, sliding: bool, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let head_dim = cfg.head_dim();
        let attn = vb.pp("attn");
        let wqkv = {
            let qkv = attn.pp("Wqkv");
            let w = qkv.get((3 * h, h), "weight")?;
            let b = if cfg.attention_bias {
                Some(qkv.get(3 * h, "bias")?)
            } else {
                None
            };
            let scale = 1.0 / (head_dim as f64).sqrt();
            let scale_q = |t: &Tensor| -> Result<Tensor> {
                let dtype = t.dtype();
                let t = t.to_dtype(DType::F32)?;
                let q = (t.narrow(0, 0, h)? * scale)?;
                let rest = t.narrow(0, h, 2 * h)?;
                Tensor::cat(&[&q, &rest], 0)?.to_dtype(dtype)
            };
            let b = b.as_ref().map(scale_q).transpose()?;
            Linear::from_weights(scale_q(&w)?, b)?
        };
        let mlp = vb.pp("mlp");
        Ok(Self {
            attn_norm: if index == 0 {
                None
            } else {
                Some(LayerNorm::load_opt_bias(
                    h,
                    cfg.norm_eps,
                    cfg.norm_bias,
                    vb.pp("attn_norm"),
                )?)
            },
            wqkv,
            wo: Linear::load_opt_bias(h, h, cfg.attention_bias, attn.pp("Wo"))?,
            mlp_norm: LayerNorm::load_opt_bias(h, cfg.norm_eps, cfg.norm_bias, vb.pp("mlp_norm"))?,
            wi: Linear::load_opt_bias(h, 2 * cfg.intermediate_size, cfg.mlp_bias, mlp.pp("Wi"))?,
            mlp_out: Linear::load_opt_bias(cfg.intermediate_size, h, cfg.mlp_bias, mlp.pp("Wo"))?,
            sliding,
            heads: cfg.num_attention_heads,
            head_dim,
            intermediate: cfg.intermediate_size,
            act: cfg.hidden_activation,
        })
    }

    fn attention(&self, x: &Tensor, rope: &Rope, masks: &Masks) -> Result<Tensor> {
        let (b, t, hidden) = x.dims3()?;
        let (nh, hd) = (self.heads, self.head_dim);
        let dtype = x.dtype();
        // [B, T, 3, H, D] -> [3, B, H, T, D] in the attention's dtype, one copy.
        let qkv = self
            .wqkv
            .forward(x)?
            .reshape((b, t, 3, nh, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let qkv = super::contiguous_as(&qkv, super::attention_dtype(dtype))?;
        // Rotate Q and K together: [2B, H, T, D].
        let qk = qkv.narrow(0, 0, 2)?.reshape((2 * b, nh, t, hd))?;
        let qk = rope.apply(&qk)?;
        let q = qk.narrow(0, 0, b)?;
        let k = qk.narrow(0, b, b)?;
        let v = qkv.get(2)?;
        let chunks = match (&masks.local, self.sliding) {
            (Some(local), true) => local,
            _ => &masks.global,
        };
        let mut parts = Vec::with_capacity(chunks.len());
        for ch in chunks {
            let keys = ch.k1 - ch.k0;
            let qc = if ch.c == t {
                q.clone()
            } else {
                q.narrow(2, ch.i0, ch.c)?.contiguous()?
            };
            let (kc, vc) = if keys == t {
                (k.clone(), v.clone())
            } else {
                (
                    k.narrow(2, ch.k0, keys)?.contiguous()?,
                    v.narrow(2, ch.k0, keys)?.contiguous()?,
                )
            };
            let scores = qc.matmul(&kc.t()?)?.broadcast_add(&ch.mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            parts.push(probs.matmul(&vc)?);
        }
        let ctx = super::merge_heads_as(parts, (b, t, hidden), dtype)?;
        self.wo.forward(&ctx)
    }

    fn forward(&self, x: &Tensor, rope: &Rope, masks: &Masks) -> Result<Tensor> {
        let normed = match &self.attn_norm {
            Some(norm) => norm.forward(x)?,
            None => x.clone(),
        };
        let x = (x + self.attention(&normed, rope, masks)?)?;
        let up = self.wi.forward(&self.mlp_norm.forward(&x)?)?;
        let input = up.narrow(D::Minus1, 0, self.intermediate)?;
        let gate = up.narrow(D::Minus1, self.intermediate, self.intermediate)?;
        let inner = (self.act.apply(&input)? * gate)?;
        x + self.mlp_out.forward(&inner)?
    }
}

/// Queries `i0 .. i0 + c` attend to keys `k0 .. k1` with the additive `mask`
/// (`[B, 1, 1 or c, k1 - k0]`).
struct Chunk {
    i0: usize,
    c: usize,
    k0: usize,
    k1: usize,
    mask: Tensor,
}

/// The attention masks of one forward pass, cut by query rows (see
/// [`super::attention_chunk`]) so that no `[B, H, T, T]` score tensor and no `T × T` band
/// table is ever built: a local layer's chunk sees only the keys inside its window, and its
/// band mask is computed from indices for just those keys.
struct Masks {
    global: Vec<Chunk>,
    /// `None` when the window covers every pair (local layers then use `global`).
    local: Option<Vec<Chunk>>,
}

/// `ModernBertForSequenceClassification`.
pub struct ModernBert {
    tok_embeddings: super::Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    head_dense: Linear,
    head_norm: LayerNorm,
    classifier: Linear,
    /// `ForTokenClassification`: the head runs on every token, not on the pooled text.
    task: Task,
    /// cos/sin tables of every position for the global and the local layers' RoPE bases, in
    /// the attention's dtype, built once at load (they were rebuilt on the host and uploaded
    /// every pass).
    global_rope: Rope,
    local_rope: Rope,
    /// Half window: key j is visible from query i on local layers when `|i - j| <= half_window`.
    half_window: usize,
    /// Bytes of scores per attention chunk ([`super::ATTENTION_CHUNK_BYTES`]; tests lower it).
    chunk_bytes: usize,
    cfg: Config,
}

impl ModernBert {
    pub fn load(cfg: Config, num_labels: usize, task: Task, vb: VarBuilder) -> Result<Self> {
        cfg.check().map_err(candle_core::Error::msg)?;
        let h = cfg.hidden_size;
        let sliding = cfg.sliding_layers().map_err(candle_core::Error::msg)?;
        let global_theta = cfg.rope_theta(false).map_err(candle_core::Error::msg)?;
        let local_theta = cfg.rope_theta(true).map_err(candle_core::Error::msg)?;
        let rope = |theta: f64| {
            Rope::new(
                cfg.head_dim(),
                theta as f32,
                &RopeScaling::Default,
                cfg.max_position_embeddings,
                super::attention_dtype(vb.dtype()),
                vb.device(),
            )
        };
        let body = vb.pp("model");
        let layers = sliding
            .iter()
            .enumerate()
            .map(|(i, &s)| Layer::load(&cfg, i, s, body.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let head = vb.pp("head");
        // transformers' classifier is a plain nn.Linear: always biased, whatever classifier_bias
        // says (that flag is head.dense's).
        let classifier_bias = vb.pp("classifier").contains_tensor("bias");
        Ok(Self {
            tok_embeddings: super::embedding(
                cfg.vocab_size,
                h,
                body.pp("embeddings").pp("tok_embeddings"),
            )?,
            emb_norm: LayerNorm::load_opt_bias(
                h,
                cfg.norm_eps,
                cfg.norm_bias,
                body.pp("embeddings").pp("norm"),
            )?,
            layers,
            final_norm: LayerNorm::load_opt_bias(
                h,
                cfg.norm_eps,
                cfg.norm_bias,
                body.pp("final_norm"),
            )?,
            head_dense: Linear::load_opt_bias(
                h,
                h,
                cfg.classifier_bias,
                super::head_vb(head.pp("dense")),
            )?,
            head_norm: LayerNorm::load_opt_bias(
                h,
                cfg.norm_eps,
                cfg.norm_bias,
                super::head_vb(head.pp("norm")),
            )?,
            classifier: Linear::load_opt_bias(
                h,
                num_labels,
                classifier_bias,
                super::head_vb(vb.pp("classifier")),
            )?,
            global_rope: rope(global_theta)?,
            local_rope: rope(local_theta)?,
            half_window: cfg.local_window() / 2,
            chunk_bytes: super::ATTENTION_CHUNK_BYTES,
            task,
            cfg,
        })
    }

    /// Additive masks in `dtype`, chunked by query rows. Padding and band are combined as 0/1
    /// "keep" factors first, so a masked score gets the fill value once, never twice (two F16
    /// fills plus a score could overflow to -inf).
    fn masks(&self, attention_mask: &Tensor, dtype: DType) -> Result<Masks> {
        let (b, t) = attention_mask.dims2()?;
        let fill = -mask_fill_value(dtype);
        let keep = attention_mask.to_dtype(DType::F32)?.reshape((b, 1, 1, t))?;
        let key_mask = ((&keep - 1.0)? * fill)?.to_dtype(dtype)?;
        let chunk = super::attention_chunk(self.chunk_bytes, b, self.cfg.num_attention_heads, t, t);
        let global = (0..t)
            .step_by(chunk)
            .map(|i0| Chunk {
                i0,
                c: chunk.min(t - i0),
                k0: 0,
                k1: t,
                mask: key_mask.clone(),
            })
            .collect();
        if t <= self.half_window + 1 {
            // Every pair is within the window.
            return Ok(Masks {
                global,
                local: None,
            });
        }
        let w = self.half_window;
        let local = (0..t)
            .step_by(chunk)
            .map(|i0| {
                let c = chunk.min(t - i0);
                let k0 = i0.saturating_sub(w);
                let k1 = (i0 + c).saturating_add(w).min(t);
                let band: Vec<f32> = (i0..i0 + c)
                    .flat_map(|i| (k0..k1).map(move |j| f32::from(u8::from(i.abs_diff(j) <= w))))
                    .collect();
                let band = Tensor::from_vec(band, (1, 1, c, k1 - k0), attention_mask.device())?;
                let keep = keep.narrow(3, k0, k1 - k0)?;
                let mask = ((keep.broadcast_mul(&band)? - 1.0)? * fill)?.to_dtype(dtype)?;
                Ok(Chunk {
                    i0,
                    c,
                    k0,
                    k1,
                    mask,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Masks {
            global,
            local: Some(local),
        })
    }

    fn pool(&self, hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        match self.cfg.classifier_pooling {
            Pooling::Cls => super::to_head(&first_token(hidden)?),
            Pooling::Mean => {
                // Summed in f32 (F16 sums over thousands of tokens can overflow), and left in
                // f32 for the head (see `super::head_vb`).
                let dtype = super::attention_dtype(hidden.dtype());
                let keep = attention_mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
                let sum = hidden.to_dtype(DType::F32)?.broadcast_mul(&keep)?.sum(1)?;
                let count = keep.sum(1)?;
                sum.broadcast_div(&count)?.to_dtype(dtype)
            }
        }
    }
}

impl SequenceClassifier for ModernBert {
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let x = self.tok_embeddings.forward(&batch.input_ids)?;
        let mut x = self.emb_norm.forward(&x)?;
        let dtype = x.dtype();
        let t = x.dim(1)?;
        let masks = self.masks(&batch.attention_mask, super::attention_dtype(dtype))?;
        let global_rope = self.global_rope.first(t)?;
        let local_rope = self.local_rope.first(t)?;
        for layer in &self.layers {
            let rope = if layer.sliding {
                &local_rope
            } else {
                &global_rope
            };
            x = layer.forward(&x, rope, &masks)?;
        }
        let x = self.final_norm.forward(&x)?;
        // transformers' ModernBertForTokenClassification runs the same head (dense, activation,
        // norm), then the classifier, on every token.
        let pooled = match self.task {
            Task::Sequence => self.pool(&x, &batch.attention_mask)?,
            Task::Token => super::to_head(&x)?,
        };
        let pooled = self.head_dense.forward(&pooled)?;
        let pooled = self
            .head_norm
            .forward(&self.cfg.classifier_activation.apply(&pooled)?)?;
        self.classifier.forward(&pooled)
    }
    fn pooling(&self) -> String {
        match self.cfg.classifier_pooling {
            Pooling::Cls => "first token".into(),
            Pooling::Mean => "mean of the real tokens".into(),
        }
    }
    fn attention_pattern(&self) -> String {
        format!(
            "bidirectional; a local window of ±{} tokens on layers between the global ones",
            self.half_window
        )
    }
    fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn attention_bytes(&self, rows: usize, len: usize) -> usize {
        // Global layers see every key; local ones fewer. Plus the local layers' band masks,
        // one [rows, chunk, keys] f32 table per chunk, kept for the pass.
        let heads = self.cfg.num_attention_heads;
        let band = if len > self.half_window + 1 {
            rows.saturating_mul(len)
                .saturating_mul(self.half_window.saturating_mul(2).saturating_add(1))
                .saturating_mul(4)
        } else {
            0
        };
        super::chunked_attention_bytes(rows, heads, len).saturating_add(band)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_layer_count_is_refused() {
        let c: Config =
            serde_json::from_str(r#"{"num_hidden_layers": 18446744073709551607}"#).unwrap();
        assert!(c.check().unwrap_err().contains("num_hidden_layers"));
    }

    #[test]
    fn huge_sliding_window_saturates() {
        let c: Config = serde_json::from_str(r#"{"sliding_window": 9223372036854775808}"#).unwrap();
        assert_eq!(c.local_window(), usize::MAX);
    }

    #[test]
    fn config_spellings() {
        // transformers 4.x (e.g. answerdotai/ModernBERT-base).
        let old: Config = serde_json::from_str(
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 7,
                "global_rope_theta": 160000.0, "local_rope_theta": 10000.0,
                "global_attn_every_n_layers": 3, "local_attention": 128}"#,
        )
        .unwrap();
        old.check().unwrap();
        assert_eq!(
            old.sliding_layers().unwrap(),
            vec![false, true, true, false, true, true, false]
        );
        assert_eq!(old.rope_theta(false).unwrap(), 160_000.0);
        assert_eq!(old.rope_theta(true).unwrap(), 10_000.0);
        assert_eq!(old.local_window() / 2, 64);
        assert_eq!(old.hidden_activation, Activation::Gelu);
        assert_eq!(old.classifier_pooling, Pooling::Cls);

        // transformers 5: layer_types / rope_parameters win over the legacy fields.
        let new: Config = serde_json::from_str(
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3,
                "layer_types": ["full_attention", "sliding_attention", "full_attention"],
                "global_attn_every_n_layers": 3, "local_rope_theta": 1.0,
                "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 80000.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}},
                "local_attention": 8, "classifier_pooling": "mean"}"#,
        )
        .unwrap();
        new.check().unwrap();
        assert_eq!(new.sliding_layers().unwrap(), vec![false, true, false]);
        assert_eq!(new.rope_theta(false).unwrap(), 80_000.0);
        assert_eq!(new.rope_theta(true).unwrap(), 500.0);
        assert_eq!(new.local_window() / 2, 4);

        // Nothing given: transformers' defaults.
        let bare: Config = serde_json::from_str(r#"{"num_hidden_layers": 4}"#).unwrap();
        assert_eq!(
            bare.sliding_layers().unwrap(),
            vec![false, true, true, false]
        );
        assert_eq!(bare.rope_theta(false).unwrap(), DEFAULT_GLOBAL_THETA);
        assert_eq!(bare.rope_theta(true).unwrap(), DEFAULT_LOCAL_THETA);
        assert_eq!(bare.local_window(), 128);

        let scaled: Config = serde_json::from_str(
            r#"{"num_hidden_layers": 1,
                "rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}}"#,
        )
        .unwrap();
        assert!(scaled.check().is_err());
    }

    #[test]
    fn chunked_attention_and_windowed_keys_give_the_logits_of_one_chunk() {
        let (cfg, vb) = crate::model::testing::fixture::<Config>("modernbert");
        let mut m = ModernBert::load(cfg, 2, Task::Sequence, vb).unwrap();
        // 40 tokens against a window of ±4; the second row is padded after 25.
        let t = 40usize;
        let batch = crate::model::testing::two_rows(t, 400, 25);
        let logits = |m: &ModernBert| -> Vec<Vec<f32>> {
            m.forward(&batch).unwrap().to_vec2::<f32>().unwrap()
        };
        let whole = logits(&m);
        // One query row a chunk, then seven (a chunk boundary inside the window).
        for bytes in [1, 2 * 4 * t * 4 * 7] {
            m.chunk_bytes = bytes;
            let parts = logits(&m);
            for (a, b) in whole.iter().flatten().zip(parts.iter().flatten()) {
                assert!((a - b).abs() <= 1e-5, "chunk bytes {bytes}: {a} vs {b}");
            }
        }
    }
}
