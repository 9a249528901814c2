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
//! encoders (see [`crate::model::layers::attention_dtype`]).

pub mod config;
pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod mistral;
pub mod qwen2;
pub mod qwen3;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::model::families::{self, BuildError, Built, Spec};
use crate::model::kernels::rope::Rope;
use crate::model::layers::{
    attention_dtype, contiguous_as, head_vb, mask_fill_value, to_head, Linear,
};
use crate::model::{Batch, SequenceClassifier, Task};
pub use config::{Config, RawConfig, RopeScaling, MAX_DECODER_POSITIONS};

/// Builds a decoder classifier of the family whose config.json reading is `config`.
pub fn build(
    spec: &Spec<'_>,
    vb: VarBuilder<'_>,
    config: fn(&RawConfig) -> std::result::Result<Config, String>,
) -> Built {
    let mut raw: RawConfig = families::parse(spec)?;
    if spec.task == Task::Token && raw.pad_token_id.is_none() {
        // Only the sequence head reads at the pad id; a token head scores every token, and
        // padding is masked whatever id it has.
        raw.pad_token_id = Some(0);
    }
    let cfg = config(&raw).map_err(BuildError::Config)?;
    Ok(Box::new(Decoder::load(
        cfg,
        spec.num_labels,
        spec.task,
        vb,
    )?))
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
    crate::model::upload::from_vec(v, (1, 1, 1, c, t), dev)?.to_dtype(dtype)
}

/// A Llama-shaped decoder with a `score` head, for every family in this module.
pub struct Decoder {
    embed: crate::model::layers::Embedding,
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
            embed: crate::model::layers::embedding(
                cfg.vocab_size,
                cfg.hidden_size,
                body.pp("embed_tokens"),
            )?,
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
            cfg,
        })
    }

    fn pass(&self, batch: &Batch, adt: DType) -> Result<Pass> {
        let (b, t) = batch.input_ids.dims2()?;
        let dev = batch.input_ids.device();
        let fill = mask_fill_value(adt) as f32;
        let chunk = crate::model::layers::attention_chunk(
            batch.chunk_bytes,
            b,
            self.cfg.num_attention_heads,
            t,
            t,
        );
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
        let not_pad = batch
            .input_ids
            .ne(self.cfg.pad_token_id)?
            .to_dtype(DType::U32)?
            .mul(&batch.attention_mask)?;
        // A decoder's positions count from zero in every row (its position scheme), so they
        // are the column index, already on the device.
        not_pad.mul(&batch.position_ids)?.argmax(D::Minus1)
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
        let rows = crate::model::upload::arange_step(0u32, (b * t) as u32, t as u32, x.device())?
            .add(&last)?;
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
    fn attention_bytes(&self, rows: usize, len: usize, chunk_bytes: usize) -> usize {
        // Query-chunked as the encoders' (scores, masked scores, probabilities of one chunk),
        // plus the masks: whole `T × T` tables (one per window size) when one chunk holds the
        // input, else one chunk's rows at a time.
        let heads = self.cfg.num_attention_heads;
        let chunk = crate::model::layers::attention_chunk(chunk_bytes, rows, heads, len, len);
        let masks = if chunk >= len {
            let windows = 1 + self.cfg.windows.iter().flatten().count().min(1);
            len.saturating_mul(len).saturating_mul(4 * windows)
        } else {
            chunk.saturating_mul(len).saturating_mul(4)
        };
        crate::model::layers::chunked_attention_bytes(chunk_bytes, rows, heads, len)
            .saturating_add(masks)
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
        for name in ["qwen3", "gemma2", "llama"] {
            let mut batch = crate::model::testing::two_rows(t, 300, 25);
            let m = fixture(name);
            let logits = |batch: &Batch| -> Vec<Vec<f32>> {
                m.forward(batch).unwrap().to_vec2::<f32>().unwrap()
            };
            let whole = logits(&batch);
            // One query row a chunk, then seven (a boundary inside a window).
            for bytes in [1, 2 * m.cfg.num_attention_heads * t * 4 * 7] {
                batch.chunk_bytes = bytes;
                let parts = logits(&batch);
                for (a, b) in whole.iter().flatten().zip(parts.iter().flatten()) {
                    assert!(
                        (a - b).abs() <= 1e-5,
                        "{name}, chunk bytes {bytes}: {a} vs {b}"
                    );
                }
            }
            // The attention memory estimate stops growing with T² once chunks are needed.
            let chunk = crate::model::layers::ATTENTION_CHUNK_BYTES;
            let long = m.attention_bytes(1, 1 << 15, chunk);
            assert!(long <= 4 * chunk, "{name}: {long}");
        }
    }
}
