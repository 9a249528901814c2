//! DistilBERT (`DistilBertForSequenceClassification`): a BERT without segments or pooler, with
//! its own weight names and a ReLU head over `[CLS]`.
//!
//! Mirrors transformers' `modeling_distilbert.py`. Unlike candle-transformers' version, the mask
//! here has Hugging Face's meaning (1 = real token).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::bert::{Encoder, Layer};
use crate::model::layers::Embedding;
use serde::Deserialize;

use crate::model::layers::{
    embedding, first_token, head_vb, kernel_path, to_head, Activation, LayerNorm, Linear, TokenHead,
};
use crate::model::{Batch, SequenceClassifier, Task};

/// DistilBERT in the registry ([`super::FAMILIES`]).
pub const FAMILY: super::Family = super::Family {
    name: "DistilBERT",
    decoder: false,
    architectures: &[
        "DistilBertForSequenceClassification",
        "DistilBertForTokenClassification",
    ],
    build: |spec, vb| super::build_checked(spec, vb, DistilBertConfig::check, DistilBert::load),
};

// DistilBERT's LayerNorms are built with a fixed eps.
const EPS: f64 = 1e-12;

fn default_act() -> Activation {
    Activation::Gelu
}
fn default_max_pos() -> usize {
    512
}

/// The fields of transformers' `DistilBertConfig` that shape the network.
#[derive(Debug, Clone, Deserialize)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub hidden_dim: usize,
    #[serde(default = "default_act")]
    pub activation: Activation,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
}

impl DistilBertConfig {
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.n_heads == 0 || !self.dim.is_multiple_of(self.n_heads) {
            return Err(format!(
                "dim {} is not a multiple of n_heads {}",
                self.dim, self.n_heads
            ));
        }
        Ok(())
    }
}

/// DistilBERT's layer is BERT's under other names.
fn load_layer(cfg: &DistilBertConfig, vb: VarBuilder) -> Result<Layer> {
    let d = cfg.dim;
    let att = vb.pp("attention");
    let scale = 1.0 / ((d / cfg.n_heads) as f64).sqrt();
    let q = Linear::load_scaled(d, d, scale, att.pp("q_lin"))?;
    let k = Linear::load(d, d, att.pp("k_lin"))?;
    let v = Linear::load(d, d, att.pp("v_lin"))?;
    Ok(Layer {
        qkv: Linear::fused(&[q, k, v])?,
        attn_out: Linear::load(d, d, att.pp("out_lin"))?,
        attn_norm: LayerNorm::load(d, EPS, vb.pp("sa_layer_norm"))?,
        up: Linear::load(d, cfg.hidden_dim, vb.pp("ffn").pp("lin1"))?,
        down: Linear::load(cfg.hidden_dim, d, vb.pp("ffn").pp("lin2"))?,
        out_norm: LayerNorm::load(d, EPS, vb.pp("output_layer_norm"))?,
        heads: cfg.n_heads,
        prescaled: !kernel_path(&vb),
        act: cfg.activation,
    })
}

pub struct DistilBert {
    words: Embedding,
    positions: Embedding,
    norm: LayerNorm,
    encoder: Encoder,
    head: Head,
    cfg: DistilBertConfig,
}

enum Head {
    /// `pre_classifier` + ReLU over `[CLS]`, then `classifier`.
    Cls {
        pre_classifier: Linear,
        classifier: Linear,
    },
    Tokens(TokenHead),
}

impl DistilBert {
    pub fn load(
        cfg: DistilBertConfig,
        num_labels: usize,
        task: Task,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = cfg.dim;
        let emb = vb.pp("distilbert").pp("embeddings");
        let layers = (0..cfg.n_layers)
            .map(|i| load_layer(&cfg, vb.pp("distilbert.transformer.layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        // Sinusoidal tables are also stored in the checkpoint, so both variants load the same way.
        Ok(Self {
            words: embedding(cfg.vocab_size, d, emb.pp("word_embeddings"))?,
            positions: embedding(
                cfg.max_position_embeddings,
                d,
                emb.pp("position_embeddings"),
            )?,
            norm: LayerNorm::load(d, EPS, emb.pp("LayerNorm"))?,
            encoder: Encoder::of(layers),
            head: match task {
                Task::Sequence => Head::Cls {
                    pre_classifier: Linear::load(d, d, head_vb(vb.pp("pre_classifier")))?,
                    classifier: Linear::load(d, num_labels, head_vb(vb.pp("classifier")))?,
                },
                Task::Token => Head::Tokens(TokenHead::load(d, num_labels, vb.clone())?),
            },
            cfg,
        })
    }
}

impl SequenceClassifier for DistilBert {
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let x = (self.words.forward(&batch.input_ids)?
            + self.positions.forward(&batch.position_ids)?)?;
        let x = self.norm.forward(&x)?;
        let first_only = matches!(self.head, Head::Cls { .. });
        let x = self.encoder.forward(&x, batch, first_only)?;
        match &self.head {
            Head::Cls {
                pre_classifier,
                classifier,
            } => {
                let x = pre_classifier
                    .forward(&to_head(&first_token(&x)?)?)?
                    .relu()?;
                classifier.forward(&x)
            }
            Head::Tokens(head) => head.forward(&x),
        }
    }
    fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn attention_bytes(&self, rows: usize, len: usize, chunk_bytes: usize) -> usize {
        crate::model::layers::chunked_attention_bytes(chunk_bytes, rows, self.cfg.n_heads, len)
    }
}
