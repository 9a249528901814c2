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

use crate::model::kernels::rope::{Rope, RopeScaling};
pub use config::{Config, Pooling, MAX_LAYERS};

mod config;

use crate::model::layers::{first_token, mask_fill_value, Activation, LayerNorm, Linear};
use crate::model::{Batch, SequenceClassifier, Task};

/// ModernBERT in the registry ([`super::FAMILIES`]).
pub const FAMILY: super::Family = super::Family {
    name: "ModernBERT",
    decoder: false,
    architectures: &[
        "ModernBertForSequenceClassification",
        "ModernBertForTokenClassification",
    ],
    build: |spec, vb| super::build_checked(spec, vb, Config::check, ModernBert::load),
};

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
        // The attention's 1/√d folded into the query rows of the fused projection.
        let scale = 1.0 / (head_dim as f64).sqrt();
        let wqkv = Linear::load_transformed(h, 3 * h, cfg.attention_bias, attn.pp("Wqkv"), |t| {
            let q = (t.narrow(0, 0, h)? * scale)?;
            Tensor::cat(&[&q, &t.narrow(0, h, 2 * h)?], 0)
        })?;
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
        let qkv = crate::model::layers::contiguous_as(
            &qkv,
            crate::model::layers::attention_dtype(dtype),
        )?;
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
        let ctx = crate::model::layers::merge_heads_as(parts, (b, t, hidden), dtype)?;
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
/// [`crate::model::layers::attention_chunk`]) so that no `[B, H, T, T]` score tensor and no `T × T` band
/// table is ever built: a local layer's chunk sees only the keys inside its window, and its
/// band mask is computed from indices for just those keys.
struct Masks {
    global: Vec<Chunk>,
    /// `None` when the window covers every pair (local layers then use `global`).
    local: Option<Vec<Chunk>>,
}

/// `ModernBertForSequenceClassification`.
pub struct ModernBert {
    tok_embeddings: crate::model::layers::Embedding,
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
                crate::model::layers::attention_dtype(vb.dtype()),
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
            tok_embeddings: crate::model::layers::embedding(
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
                crate::model::layers::head_vb(head.pp("dense")),
            )?,
            head_norm: LayerNorm::load_opt_bias(
                h,
                cfg.norm_eps,
                cfg.norm_bias,
                crate::model::layers::head_vb(head.pp("norm")),
            )?,
            classifier: Linear::load_opt_bias(
                h,
                num_labels,
                classifier_bias,
                crate::model::layers::head_vb(vb.pp("classifier")),
            )?,
            global_rope: rope(global_theta)?,
            local_rope: rope(local_theta)?,
            half_window: cfg.local_window() / 2,
            task,
            cfg,
        })
    }

    /// Additive masks in `dtype`, chunked by query rows. Padding and band are combined as 0/1
    /// "keep" factors first, so a masked score gets the fill value once, never twice (two F16
    /// fills plus a score could overflow to -inf).
    fn masks(&self, attention_mask: &Tensor, dtype: DType, chunk_bytes: usize) -> Result<Masks> {
        let (b, t) = attention_mask.dims2()?;
        let fill = -mask_fill_value(dtype);
        let keep = attention_mask.to_dtype(DType::F32)?.reshape((b, 1, 1, t))?;
        let key_mask = ((&keep - 1.0)? * fill)?.to_dtype(dtype)?;
        let chunk = crate::model::layers::attention_chunk(
            chunk_bytes,
            b,
            self.cfg.num_attention_heads,
            t,
            t,
        );
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
                let band = crate::model::upload::from_vec(
                    band,
                    (1, 1, c, k1 - k0),
                    attention_mask.device(),
                )?;
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
            Pooling::Cls => crate::model::layers::to_head(&first_token(hidden)?),
            Pooling::Mean => {
                // Summed in f32 (F16 sums over thousands of tokens can overflow), and left in
                // f32 for the head (see `crate::model::layers::head_vb`).
                let dtype = crate::model::layers::attention_dtype(hidden.dtype());
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
        let masks = self.masks(
            &batch.attention_mask,
            crate::model::layers::attention_dtype(dtype),
            batch.chunk_bytes,
        )?;
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
            Task::Token => crate::model::layers::to_head(&x)?,
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
    fn attention_bytes(&self, rows: usize, len: usize, chunk_bytes: usize) -> usize {
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
        crate::model::layers::chunked_attention_bytes(chunk_bytes, rows, heads, len)
            .saturating_add(band)
    }
}

#[cfg(test)]
mod tests {
    use super::config::{DEFAULT_GLOBAL_THETA, DEFAULT_LOCAL_THETA};
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
        let m = ModernBert::load(cfg, 2, Task::Sequence, vb).unwrap();
        // 40 tokens against a window of ±4; the second row is padded after 25.
        let t = 40usize;
        let mut batch = crate::model::testing::two_rows(t, 400, 25);
        let logits = |batch: &Batch| -> Vec<Vec<f32>> {
            m.forward(batch).unwrap().to_vec2::<f32>().unwrap()
        };
        let whole = logits(&batch);
        // One query row a chunk, then seven (a chunk boundary inside the window).
        for bytes in [1, 2 * 4 * t * 4 * 7] {
            batch.chunk_bytes = bytes;
            let parts = logits(&batch);
            for (a, b) in whole.iter().flatten().zip(parts.iter().flatten()) {
                assert!((a - b).abs() <= 1e-5, "chunk bytes {bytes}: {a} vs {b}");
            }
        }
    }
}
