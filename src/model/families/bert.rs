//! BERT (`BertForSequenceClassification`) and the post-LN encoder that RoBERTa, XLM-RoBERTa and
//! ELECTRA share with it.
//!
//! Mirrors transformers' `modeling_bert.py` / `configuration_bert.py`. Differences between the
//! families are confined to embeddings (position offsets, ELECTRA's embedding projection) and the
//! classification head, which live in their own files.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::layers::Embedding;
use serde::Deserialize;

use crate::model::layers::{
    additive_key_mask, attention_dtype, embedding, first_positions, first_token, head_vb,
    kernel_path, self_attention, to_head, Activation, LayerNorm, Linear, TokenHead,
};
use crate::model::{Batch, SequenceClassifier, Task};

/// BERT in the registry ([`super::FAMILIES`]).
pub const FAMILY: super::Family = super::Family {
    name: "BERT",
    decoder: false,
    architectures: &[
        "BertForSequenceClassification",
        "BertForTokenClassification",
    ],
    build: |spec, vb| super::build_checked(spec, vb, EncoderConfig::check, Bert::load),
};

fn default_act() -> Activation {
    Activation::Gelu
}
fn default_eps() -> f64 {
    1e-12
}
fn default_type_vocab() -> usize {
    2
}
fn default_max_pos() -> usize {
    512
}

/// The fields of `BertConfig` (and RoBERTa's / ELECTRA's, which extend it) that shape the encoder.
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// ELECTRA's embeddings may be narrower than the hidden size.
    #[serde(default)]
    pub embedding_size: Option<usize>,
    /// Only "absolute" is supported; relative_key variants are refused at load.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

impl EncoderConfig {
    /// [`SequenceClassifier::attention_bytes`] of the encoders built on this config (BERT,
    /// RoBERTa, ELECTRA): query-chunked attention.
    pub fn attention_bytes(&self, rows: usize, len: usize, chunk_bytes: usize) -> usize {
        crate::model::layers::chunked_attention_bytes(
            chunk_bytes,
            rows,
            self.num_attention_heads,
            len,
        )
    }

    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    pub fn check(&self) -> std::result::Result<(), String> {
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return Err(format!("position_embedding_type {p:?} is not supported"));
            }
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// Word + position + segment embeddings, then LayerNorm. Width is `embedding_width()`.
pub struct Embeddings {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    norm: LayerNorm,
}

impl Embeddings {
    pub fn load(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let e = cfg.embedding_width();
        Ok(Self {
            words: embedding(cfg.vocab_size, e, vb.pp("word_embeddings"))?,
            positions: embedding(cfg.max_position_embeddings, e, vb.pp("position_embeddings"))?,
            token_types: embedding(cfg.type_vocab_size, e, vb.pp("token_type_embeddings"))?,
            norm: LayerNorm::load(e, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        // transformers' order (words + segments, then positions): at F16/BF16 each sum rounds,
        // and the other order measurably moved logits near an attention tie (bert-hot).
        let x = self.words.forward(&batch.input_ids)?;
        let x = (x + self.token_types.forward(&batch.token_type_ids)?)?;
        let x = (x + self.positions.forward(&batch.position_ids)?)?;
        self.norm.forward(&x)
    }
}

/// One post-LN transformer layer: fused Q/K/V, attention, output projection, residual and norm,
/// then the feed-forward, residual and norm. BERT's layer; DistilBERT's is the same under other
/// names and builds this one.
pub(super) struct Layer {
    pub(super) qkv: Linear,
    pub(super) attn_out: Linear,
    pub(super) attn_norm: LayerNorm,
    pub(super) up: Linear,
    pub(super) down: Linear,
    pub(super) out_norm: LayerNorm,
    pub(super) heads: usize,
    /// The query projection carries 1/√head_dim (off the CPU kernels: see
    /// [`Linear::load_scaled`]).
    pub(super) prescaled: bool,
    pub(super) act: Activation,
}

impl Layer {
    fn load(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let att = vb.pp("attention");
        let scale = 1.0 / ((h / cfg.num_attention_heads) as f64).sqrt();
        let q = Linear::load_scaled(h, h, scale, att.pp("self").pp("query"))?;
        let k = Linear::load(h, h, att.pp("self").pp("key"))?;
        let v = Linear::load(h, h, att.pp("self").pp("value"))?;
        Ok(Self {
            qkv: Linear::fused(&[q, k, v])?,
            attn_out: Linear::load(h, h, att.pp("output").pp("dense"))?,
            attn_norm: LayerNorm::load(h, cfg.layer_norm_eps, att.pp("output").pp("LayerNorm"))?,
            up: Linear::load(h, cfg.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            down: Linear::load(cfg.intermediate_size, h, vb.pp("output").pp("dense"))?,
            out_norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            prescaled: !kernel_path(&vb),
            act: cfg.hidden_act,
        })
    }

    /// The layer for the first `q_len` positions of `x` (all of them are keys and values).
    pub(super) fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        q_len: usize,
        chunk_bytes: usize,
    ) -> Result<Tensor> {
        let ctx = self_attention(
            &self.qkv.forward(x)?,
            self.heads,
            mask,
            self.prescaled,
            q_len,
            chunk_bytes,
        )?;
        let x = first_positions(x, q_len)?;
        let x = self
            .attn_norm
            .forward(&self.attn_out.forward_add(&ctx, &x)?)?;
        let inner = self.up.forward_act(&x, self.act)?;
        self.out_norm.forward(&self.down.forward_add(&inner, &x)?)
    }
}

/// The stack of post-LN transformer layers (`encoder.layer.N`; DistilBERT's
/// `transformer.layer.N`).
pub struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    /// A stack of layers loaded under another family's names.
    pub(super) fn of(layers: Vec<Layer>) -> Self {
        Self { layers }
    }

    pub fn load(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(cfg, vb.pp("layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// The hidden states after the last layer: of every position, or with `first_only` of the
    /// first alone (`[batch, 1, hidden]`), for a head that reads nothing else. The last layer
    /// then still projects keys and values for every position, but its queries, output
    /// projection, norms and feed-forward run for one row: ~3/4 of a layer's multiply-adds
    /// saved (a sixth of a pass's for a six-layer model).
    pub fn forward(&self, x: &Tensor, batch: &Batch, first_only: bool) -> Result<Tensor> {
        let mask = additive_key_mask(&batch.attention_mask, attention_dtype(x.dtype()))?;
        let t = x.dim(1)?;
        let last = self.layers.len().saturating_sub(1);
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let q_len = if i == last && first_only { t.min(1) } else { t };
            x = layer.forward(&x, &mask, q_len, batch.chunk_bytes)?;
        }
        Ok(x)
    }
}

/// `BertForSequenceClassification` (tanh pooler over `[CLS]`, linear classifier) and
/// `BertForTokenClassification` (no pooler; a linear classifier on every token).
pub struct Bert {
    embeddings: Embeddings,
    encoder: Encoder,
    head: Head,
    cfg: EncoderConfig,
}

enum Head {
    Pooled { pooler: Linear, classifier: Linear },
    Tokens(TokenHead),
}

impl Bert {
    pub fn load(cfg: EncoderConfig, num_labels: usize, task: Task, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let body = vb.pp("bert");
        let head = match task {
            Task::Sequence => {
                let head = head_vb(vb.clone());
                Head::Pooled {
                    pooler: Linear::load(h, h, head.pp("bert").pp("pooler").pp("dense"))?,
                    classifier: Linear::load(h, num_labels, head.pp("classifier"))?,
                }
            }
            Task::Token => Head::Tokens(TokenHead::load(h, num_labels, vb.clone())?),
        };
        Ok(Self {
            embeddings: Embeddings::load(&cfg, body.pp("embeddings"))?,
            encoder: Encoder::load(&cfg, body.pp("encoder"))?,
            head,
            cfg,
        })
    }
}

impl SequenceClassifier for Bert {
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let x = self.embeddings.forward(batch)?;
        let pooled = matches!(self.head, Head::Pooled { .. });
        let x = self.encoder.forward(&x, batch, pooled)?;
        match &self.head {
            Head::Pooled { pooler, classifier } => {
                let pooled = pooler.forward(&to_head(&first_token(&x)?)?)?.tanh()?;
                classifier.forward(&pooled)
            }
            Head::Tokens(head) => head.forward(&x),
        }
    }
    fn uses_token_types(&self) -> bool {
        self.cfg.type_vocab_size > 1
    }
    fn token_types(&self) -> usize {
        self.cfg.type_vocab_size
    }
    fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn attention_bytes(&self, rows: usize, len: usize, chunk_bytes: usize) -> usize {
        self.cfg.attention_bytes(rows, len, chunk_bytes)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn an_encoder_read_at_cls_alone_gives_that_row_of_the_whole() {
        let dev = Device::Cpu;
        let cfg: EncoderConfig = serde_json::from_str(
            r#"{"vocab_size": 10, "hidden_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2, "intermediate_size": 32}"#,
        )
        .unwrap();
        let mut weights = HashMap::new();
        for i in 0..cfg.num_hidden_layers {
            let at = |name: &str| format!("layer.{i}.{name}");
            for (name, n, k) in [
                ("attention.self.query", 16, 16),
                ("attention.self.key", 16, 16),
                ("attention.self.value", 16, 16),
                ("attention.output.dense", 16, 16),
                ("intermediate.dense", 32, 16),
                ("output.dense", 16, 32),
            ] {
                let w = Tensor::randn(0f32, 0.3, (n, k), &dev).unwrap();
                weights.insert(at(&format!("{name}.weight")), w);
                let b = Tensor::randn(0f32, 0.1, n, &dev).unwrap();
                weights.insert(at(&format!("{name}.bias")), b);
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                let w = (Tensor::randn(0f32, 0.1, 16, &dev).unwrap() + 1.0).unwrap();
                weights.insert(at(&format!("{name}.weight")), w);
                let b = Tensor::randn(0f32, 0.1, 16, &dev).unwrap();
                weights.insert(at(&format!("{name}.bias")), b);
            }
        }
        let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
        let encoder = Encoder::load(&cfg, vb).unwrap();
        // Two rows of 7, the second padded after 4.
        let keep = Tensor::new(&[[1u32; 7], [1, 1, 1, 1, 0, 0, 0]], &dev).unwrap();
        let zeros = keep.zeros_like().unwrap();
        let batch = Batch {
            input_ids: zeros.clone(),
            attention_mask: keep,
            token_type_ids: zeros.clone(),
            position_ids: zeros,
            chunk_bytes: crate::model::layers::ATTENTION_CHUNK_BYTES,
        };
        let x = Tensor::randn(0f32, 1.0, (2, 7, 16), &dev).unwrap();
        let whole = encoder.forward(&x, &batch, false).unwrap();
        let first = encoder.forward(&x, &batch, true).unwrap();
        assert_eq!(whole.dims(), [2, 7, 16]);
        assert_eq!(first.dims(), [2, 1, 16]);
        let diff = crate::model::testing::max_abs_diff(&whole.narrow(1, 0, 1).unwrap(), &first);
        assert!(diff < 1e-6, "max |Δ| {diff}");
    }
}
