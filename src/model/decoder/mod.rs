//! Decoder-LLM sequence classifiers: the Llama-shaped stack that Llama, Mistral, Qwen2 and Qwen3
//! share (transformers' `GenericForSequenceClassification` over `*Model`), with a `score` head
//! read at each text's last token.
//!
//! The family files ([`llama`], [`mistral`], [`qwen2`], [`qwen3`], [`gemma2`], [`gemma3`]) turn
//! their config.json into one [`Config`]; everything that differs between them is a field of
//! it: biases on Q/K/V (Qwen2), RMSNorm on each head of Q and K (Qwen3, Gemma 3), which layers
//! see only a sliding window (Mistral; Qwen and Gemma `layer_types`), the RoPE frequencies
//! (`default`, `linear`, `llama3`; Gemma 3 has one base for local and one for global layers),
//! and Gemma's ways: `1 + w` RMSNorms around both blocks, embeddings scaled by √hidden,
//! `query_pre_attn_scalar` and Gemma 2's attention-logit softcapping.
//!
//! What transformers does that we do too:
//! - causal attention with grouped-query heads: K/V heads are not repeated, the query heads of a
//!   group are stacked against their one K/V head instead;
//! - pooling at `argmax(index × (id ≠ pad_token_id))` of each row: the rightmost token that is
//!   not the pad id (0 if none), so a text whose own last tokens are the pad id is read before
//!   them, as transformers reads it;
//! - RMSNorm statistics in f32.
//!
//! At F16/BF16 the attention (RoPE included), its softmax and the head run in f32, as for the
//! encoders (see [`super::attention_dtype`]).

pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod mistral;
pub mod qwen2;
pub mod qwen3;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::rope::Rope;
pub use super::rope::RopeScaling;
use super::{
    attention_dtype, contiguous_as, head_vb, mask_fill_value, to_head, Batch, Linear,
    SequenceClassifier, Task,
};

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
    pub hidden_act: super::Activation,
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
    pub hidden_act: super::Activation,
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
    pub hidden_activation: Option<super::Activation>,
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
fn default_act() -> super::Activation {
    super::Activation::Silu
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
        super::sliding_layers(types, self.num_hidden_layers)?
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

/// RMSNorm as transformers' `LlamaRMSNorm`: statistics in f32 (candle's fused kernel). Gemma's
/// scales by `1 + w` and multiplies in f32 before the one rounding (`Gemma2RMSNorm`); that
/// weight is kept in f32 and the norm runs in f32.
struct RmsNorm {
    weight: Tensor,
    eps: f32,
    in_f32: bool,
}

impl RmsNorm {
    fn load(dim: usize, eps: f64, plus_one: bool, vb: VarBuilder) -> Result<Self> {
        let weight = if plus_one {
            (vb.set_dtype(DType::F32).get(dim, "weight")? + 1.0)?
        } else {
            vb.get(dim, "weight")?
        };
        Ok(Self {
            weight,
            eps: eps as f32,
            in_f32: plus_one,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.in_f32 && x.dtype() != DType::F32 {
            let y = candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?, &self.weight, self.eps)?;
            return y.to_dtype(x.dtype());
        }
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

struct Layer {
    input_norm: RmsNorm,
    /// Gemma: the attention output normed before its residual add.
    post_attn_norm: Option<RmsNorm>,
    /// Gemma: the MLP output normed before its residual add.
    post_ff_norm: Option<RmsNorm>,
    /// Q, K and V in one matmul: `[q: heads·d | k: kv·d | v: kv·d]`.
    qkv: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    o_proj: Linear,
    /// The norm before the MLP (Llama's `post_attention_layernorm`, Gemma's
    /// `pre_feedforward_layernorm`).
    pre_ff_norm: RmsNorm,
    /// Gate and up in one matmul: `[gate | up]`.
    gate_up: Linear,
    down: Linear,
    window: Option<usize>,
}

impl Layer {
    fn load(cfg: &Config, window: Option<usize>, vb: VarBuilder) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let att = vb.pp("self_attn");
        let proj =
            |n: usize, bias: bool, name: &str| Linear::load_opt_bias(h, n, bias, att.pp(name));
        let qkv = Linear::fused(&[
            proj(qd, cfg.qkv_bias, "q_proj")?,
            proj(kvd, cfg.qkv_bias, "k_proj")?,
            proj(kvd, cfg.qkv_bias, "v_proj")?,
        ])?;
        let g = cfg.gemma_norms;
        let norm = |name: &str| RmsNorm::load(d, cfg.rms_norm_eps, g, att.pp(name));
        let wide = |name: &str| RmsNorm::load(h, cfg.rms_norm_eps, g, vb.pp(name));
        let mlp = vb.pp("mlp");
        let i = cfg.intermediate_size;
        Ok(Self {
            input_norm: wide("input_layernorm")?,
            post_attn_norm: g.then(|| wide("post_attention_layernorm")).transpose()?,
            post_ff_norm: g.then(|| wide("post_feedforward_layernorm")).transpose()?,
            pre_ff_norm: wide(if g {
                "pre_feedforward_layernorm"
            } else {
                "post_attention_layernorm"
            })?,
            qkv,
            q_norm: cfg.qk_norm.then(|| norm("q_norm")).transpose()?,
            k_norm: cfg.qk_norm.then(|| norm("k_norm")).transpose()?,
            o_proj: Linear::load_opt_bias(qd, h, cfg.o_bias, att.pp("o_proj"))?,
            gate_up: Linear::fused(&[
                Linear::load_opt_bias(h, i, cfg.mlp_bias, mlp.pp("gate_proj"))?,
                Linear::load_opt_bias(h, i, cfg.mlp_bias, mlp.pp("up_proj"))?,
            ])?,
            down: Linear::load_opt_bias(i, h, cfg.mlp_bias, mlp.pp("down_proj"))?,
            window,
        })
    }
}

/// Per-pass tables: RoPE for the pass's length and the additive masks, in the attention dtype.
struct Pass {
    rope: Rope,
    /// The sliding layers' RoPE, when it differs (Gemma 3).
    local: Option<Rope>,
    /// `[B, 1, 1, 1, T]` padded keys.
    keys: Tensor,
    /// Query rows per attention chunk (the whole length for all but long inputs).
    chunk: usize,
    /// With a single chunk, the `[1, 1, 1, T, T]` causal mask of each window (`None` first),
    /// built once for all layers; longer inputs build each chunk's rows as they need them, so
    /// no `T × T` table ever exists.
    whole: Vec<(Option<usize>, Tensor)>,
    len: usize,
    fill: f32,
    dtype: DType,
    device: candle_core::Device,
}

impl Pass {
    /// The causal (and, with `window`, banded) additive mask of query rows `i0 .. i0 + c`,
    /// `[1, 1, 1, c, T]`.
    fn mask(&self, window: Option<usize>, i0: usize, c: usize) -> Result<Tensor> {
        let window = window.filter(|&w| w < self.len);
        if let Some((_, m)) = self.whole.iter().find(|(w, _)| *w == window) {
            return Ok(m.clone());
        }
        causal_rows(window, i0, c, self.len, self.fill, self.dtype, &self.device)
    }
}

/// Rows `i0 .. i0 + c` of the causal mask over `t` keys (a key is seen when it is not after
/// the query and, with a window `w`, less than `w` before it), `[1, 1, 1, c, t]`.
fn causal_rows(
    window: Option<usize>,
    i0: usize,
    c: usize,
    t: usize,
    fill: f32,
    dtype: DType,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let v: Vec<f32> = (i0..i0 + c)
        .flat_map(|i| {
            (0..t).map(move |j| {
                if j <= i && window.is_none_or(|w| i - j < w) {
                    0.0
                } else {
                    fill
                }
            })
        })
        .collect();
    Tensor::from_vec(v, (1, 1, 1, c, t), dev)?.to_dtype(dtype)
}

/// A Llama-shaped decoder with a `score` head, for every family in this module.
pub struct Decoder {
    embed: super::Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    score: Linear,
    /// `*ForTokenClassification` (transformers' `GenericForTokenClassification`): the head
    /// scores every token instead of the last real one.
    task: Task,
    /// RoPE tables in the attention dtype, built at load; and the sliding layers' own, when
    /// they differ.
    rope: Rope,
    local: Option<Rope>,
    /// [`super::ATTENTION_CHUNK_BYTES`]; smaller in tests, to force chunks.
    chunk_bytes: usize,
    cfg: Config,
}

impl Decoder {
    pub fn load(cfg: Config, num_labels: usize, task: Task, vb: VarBuilder) -> Result<Self> {
        Self::load_at(cfg, num_labels, task, vb, "model")
    }

    /// [`Self::load`] with the decoder's weights under `body` (Gemma 3's multimodal checkpoints
    /// keep the text model at `language_model.model`; its vision tower is never read).
    pub fn load_at(
        cfg: Config,
        num_labels: usize,
        task: Task,
        vb: VarBuilder,
        body: &str,
    ) -> Result<Self> {
        // The sequence head is bias-free; the generic token head has one unless
        // `token_classification_bias` turned it off.
        let score = match task {
            Task::Sequence => {
                Linear::load_no_bias(cfg.hidden_size, num_labels, head_vb(vb.pp("score")))?
            }
            Task::Token => Linear::load_opt_bias(
                cfg.hidden_size,
                num_labels,
                vb.pp("score").contains_tensor("bias"),
                head_vb(vb.pp("score")),
            )?,
        };
        let body = vb.pp(body);
        let layers = cfg
            .windows
            .iter()
            .enumerate()
            .map(|(i, w)| Layer::load(&cfg, *w, body.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let positions = cfg.max_position_embeddings.min(MAX_DECODER_POSITIONS);
        let adt = attention_dtype(vb.dtype());
        let dev = vb.device().clone();
        let rope = |theta: f32, scaling: &RopeScaling| {
            Rope::new(cfg.head_dim, theta, scaling, positions, adt, &dev)
        };
        let local = match &cfg.local_rope {
            Some((theta, scaling)) => Some(rope(*theta, scaling)?),
            None => None,
        };
        let global = rope(cfg.rope_theta, &cfg.rope_scaling)?;
        Ok(Self {
            embed: super::embedding(cfg.vocab_size, cfg.hidden_size, body.pp("embed_tokens"))?,
            layers,
            norm: RmsNorm::load(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                cfg.gemma_norms,
                body.pp("norm"),
            )?,
            score,
            task,
            rope: global,
            local,
            chunk_bytes: super::ATTENTION_CHUNK_BYTES,
            cfg,
        })
    }

    fn pass(&self, batch: &Batch, adt: DType) -> Result<Pass> {
        let (b, t) = batch.input_ids.dims2()?;
        let dev = batch.input_ids.device();
        let fill = mask_fill_value(adt) as f32;
        let chunk = super::attention_chunk(self.chunk_bytes, b, self.cfg.num_attention_heads, t, t);
        let mut whole = Vec::new();
        if chunk >= t {
            let windows = std::iter::once(None)
                .chain(self.layers.iter().map(|l| l.window.filter(|&w| w < t)));
            for w in windows {
                if !whole.iter().any(|(x, _)| *x == w) {
                    whole.push((w, causal_rows(w, 0, t, t, fill, adt, dev)?));
                }
            }
        }
        let keep = batch.attention_mask.to_dtype(DType::F32)?;
        let keys = ((keep - 1.0)? * -f64::from(fill))?
            .to_dtype(adt)?
            .reshape((b, 1, 1, 1, t))?;
        Ok(Pass {
            rope: self.rope.first(t)?,
            local: self.local.as_ref().map(|r| r.first(t)).transpose()?,
            keys,
            chunk: chunk.min(t).max(1),
            whole,
            len: t,
            fill,
            dtype: adt,
            device: dev.clone(),
        })
    }

    fn attention(&self, layer: &Layer, x: &Tensor, pass: &Pass) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let cfg = &self.cfg;
        let (nh, nkv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let dtype = x.dtype();
        let adt = attention_dtype(dtype);
        let qkv = layer.qkv.forward(x)?;
        let split = |at: usize, heads: usize| -> Result<Tensor> {
            qkv.narrow(2, at * d, heads * d)?.reshape((b, t, heads, d))
        };
        let (mut q, mut k) = (split(0, nh)?, split(nh, nkv)?);
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        // [B, heads, T, D] in the attention dtype: the permute and the cast are one copy.
        let heads_first = |x: Tensor| contiguous_as(&x.transpose(1, 2)?, adt);
        let rope = match (&pass.local, layer.window) {
            (Some(local), Some(_)) => local,
            _ => &pass.rope,
        };
        let q = rope.apply(&heads_first(q)?)?;
        let k = rope.apply(&heads_first(k)?)?;
        let v = heads_first(split(nh + nkv, nkv)?)?;
        // Grouped-query attention without repeating K/V: the `rep` query heads of a group are
        // stacked as rows against their one K/V head. Queries go in chunks of `pass.chunk` rows
        // (one chunk unless the input is long), so the scores never exceed
        // ATTENTION_CHUNK_BYTES, about, whatever the length.
        let rep = nh / nkv;
        let q = (q * cfg.attention_scale)?.reshape((b, nkv, rep, t, d))?;
        let kt = k.t()?;
        let mut parts = Vec::with_capacity(t.div_ceil(pass.chunk));
        for i0 in (0..t).step_by(pass.chunk) {
            let c = pass.chunk.min(t - i0);
            let qc = if c == t {
                q.clone()
            } else {
                q.narrow(3, i0, c)?.contiguous()?
            };
            let mut scores = qc
                .reshape((b, nkv, rep * c, d))?
                .matmul(&kt)?
                .reshape((b, nkv, rep, c, t))?;
            if let Some(cap) = cfg.softcap {
                scores = ((scores / cap)?.tanh()? * cap)?;
            }
            let scores = scores
                .broadcast_add(&pass.mask(layer.window, i0, c)?)?
                .broadcast_add(&pass.keys)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, nkv, rep * c, t))?;
            parts.push(probs.matmul(&v)?.reshape((b, nkv, rep, c, d))?);
        }
        let ctx = if parts.len() == 1 {
            parts.remove(0)
        } else {
            Tensor::cat(&parts, 3)?
        };
        let ctx = contiguous_as(&ctx.reshape((b, nh, t, d))?.transpose(1, 2)?, dtype)?;
        layer.o_proj.forward(&ctx.reshape((b, t, nh * d))?)
    }

    /// `[B]` index of the token each row is read at, as transformers picks it: the rightmost
    /// token whose id is not the pad id (among the row's real tokens), else 0.
    fn last_tokens(&self, batch: &Batch) -> Result<Tensor> {
        let (_, t) = batch.input_ids.dims2()?;
        let dev = batch.input_ids.device();
        let not_pad = batch
            .input_ids
            .ne(self.cfg.pad_token_id)?
            .to_dtype(DType::U32)?
            .mul(&batch.attention_mask)?;
        let index = Tensor::arange(0u32, t as u32, dev)?.unsqueeze(0)?;
        not_pad.broadcast_mul(&index)?.argmax(D::Minus1)
    }
}

impl SequenceClassifier for Decoder {
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let mut x = self.embed.forward(&batch.input_ids)?;
        if let Some(scale) = self.cfg.embed_scale {
            // transformers multiplies by √hidden rounded to the weights' dtype.
            x = x.affine(rounded_to(scale, x.dtype()), 0.0)?;
        }
        let adt = attention_dtype(x.dtype());
        let pass = self.pass(batch, adt)?;
        for layer in &self.layers {
            let mut a = self.attention(layer, &layer.input_norm.forward(&x)?, &pass)?;
            if let Some(n) = &layer.post_attn_norm {
                a = n.forward(&a)?;
            }
            x = (x + a)?;
            let gu = layer.gate_up.forward(&layer.pre_ff_norm.forward(&x)?)?;
            let i = self.cfg.intermediate_size;
            let gate = self.cfg.hidden_act.apply(&gu.narrow(D::Minus1, 0, i)?)?;
            let inner = (gate * gu.narrow(D::Minus1, i, i)?)?;
            let mut m = layer.down.forward(&inner)?;
            if let Some(n) = &layer.post_ff_norm {
                m = n.forward(&m)?;
            }
            x = (x + m)?;
        }
        if self.task == Task::Token {
            return self.score.forward(&to_head(&self.norm.forward(&x)?)?);
        }
        let (b, t, h) = x.dims3()?;
        // Only the rows read by the head are normed and scored.
        let last = self.last_tokens(batch)?;
        let rows = Tensor::arange_step(0u32, (b * t) as u32, t as u32, x.device())?.add(&last)?;
        let picked = x.reshape((b * t, h))?.index_select(&rows, 0)?;
        let picked = self.norm.forward(&picked)?;
        self.score.forward(&to_head(&picked)?)
    }
    fn pooling(&self) -> String {
        format!(
            "last token that is not pad_token_id {}",
            self.cfg.pad_token_id
        )
    }
    fn attention_pattern(&self) -> String {
        let c = &self.cfg;
        let mut s = format!(
            "causal, {} query heads over {} key/value heads of {}",
            c.num_attention_heads, c.num_key_value_heads, c.head_dim
        );
        let windowed: Vec<usize> = c.windows.iter().flatten().copied().collect();
        if let Some(w) = windowed.first() {
            s += &format!(
                ", a sliding window of {w} on {} of {} layers",
                windowed.len(),
                c.windows.len()
            );
        }
        if let Some(cap) = c.softcap {
            s += &format!(", scores soft-capped at {cap}");
        }
        s
    }
    fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings.min(MAX_DECODER_POSITIONS)
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn attention_bytes(&self, rows: usize, len: usize) -> usize {
        // Query-chunked as the encoders' (scores, masked scores, probabilities of one chunk),
        // plus the masks: whole `T × T` tables (one per window size) when one chunk holds the
        // input, else one chunk's rows at a time.
        let heads = self.cfg.num_attention_heads;
        let chunk = super::attention_chunk(super::ATTENTION_CHUNK_BYTES, rows, heads, len, len);
        let masks = if chunk >= len {
            let windows = 1 + self.cfg.windows.iter().flatten().count().min(1);
            len.saturating_mul(len).saturating_mul(4 * windows)
        } else {
            chunk.saturating_mul(len).saturating_mul(4)
        };
        super::chunked_attention_bytes(rows, heads, len).saturating_add(masks)
    }
}

/// `x` as the nearest value of `dtype`, back in f64.
fn rounded_to(x: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F16 => half::f16::from_f64(x).to_f64(),
        DType::BF16 => half::bf16::from_f64(x).to_f64(),
        DType::F32 => f64::from(x as f32),
        _ => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoder of a committed fixture, in f32 on the CPU.
    fn fixture(name: &str) -> Decoder {
        let (raw, vb) = crate::model::testing::fixture::<RawConfig>(name);
        let cfg = match name {
            "qwen3" => qwen3::config(&raw),
            "gemma2" => gemma2::config(&raw),
            _ => llama::config(&raw),
        }
        .unwrap();
        let labels = if name == "qwen3" { 3 } else { 2 };
        Decoder::load(cfg, labels, Task::Sequence, vb).unwrap()
    }

    #[test]
    fn query_chunks_give_the_logits_of_one_chunk_across_windows_and_padding() {
        // 40 tokens against windows of 5 (qwen3) and 5 with softcapping (gemma2); the second
        // row is padded after 25.
        let t = 40usize;
        let batch = crate::model::testing::two_rows(t, 300, 25);
        for name in ["qwen3", "gemma2", "llama"] {
            let mut m = fixture(name);
            let logits = |m: &Decoder| -> Vec<Vec<f32>> {
                m.forward(&batch).unwrap().to_vec2::<f32>().unwrap()
            };
            let whole = logits(&m);
            // One query row a chunk, then seven (a boundary inside a window).
            for bytes in [1, 2 * m.cfg.num_attention_heads * t * 4 * 7] {
                m.chunk_bytes = bytes;
                let parts = logits(&m);
                for (a, b) in whole.iter().flatten().zip(parts.iter().flatten()) {
                    assert!(
                        (a - b).abs() <= 1e-5,
                        "{name}, chunk bytes {bytes}: {a} vs {b}"
                    );
                }
            }
            // The attention memory estimate stops growing with T² once chunks are needed.
            let long = m.attention_bytes(1, 1 << 15);
            assert!(
                long <= 4 * super::super::ATTENTION_CHUNK_BYTES,
                "{name}: {long}"
            );
        }
    }
}
