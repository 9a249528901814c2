//! RoBERTa and XLM-RoBERTa (`RobertaForSequenceClassification`, `…ForTokenClassification`,
//! `XLMRobertaForSequenceClassification`): BERT's encoder with positions that start after the
//! padding id, no segments, and a two-layer tanh head over `<s>`.
//!
//! Mirrors transformers' `modeling_roberta.py`; XLM-R's checkpoint layout is identical.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::bert::{Embeddings, Encoder, EncoderConfig};
use crate::model::layers::{Activation, ClsOrTokens};
use crate::model::{Batch, PositionScheme, SequenceClassifier, Task};

/// RoBERTa / XLM-RoBERTa in the registry ([`super::FAMILIES`]).
pub const FAMILY: super::Family = super::Family {
    name: "RoBERTa / XLM-RoBERTa",
    decoder: false,
    architectures: &[
        "RobertaForSequenceClassification",
        "XLMRobertaForSequenceClassification",
        "RobertaForTokenClassification",
        "XLMRobertaForTokenClassification",
    ],
    build: |spec, vb| super::build_checked(spec, vb, EncoderConfig::check, Roberta::load),
};

pub struct Roberta {
    embeddings: Embeddings,
    encoder: Encoder,
    head: ClsOrTokens,
    cfg: EncoderConfig,
    pad_token_id: u32,
}

impl Roberta {
    pub fn load(cfg: EncoderConfig, num_labels: usize, task: Task, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let body = vb.pp("roberta");
        let head = ClsOrTokens::load(task, h, num_labels, Activation::Tanh, vb.clone())?;
        Ok(Self {
            embeddings: Embeddings::load(&cfg, body.pp("embeddings"))?,
            encoder: Encoder::load(&cfg, body.pp("encoder"))?,
            head,
            pad_token_id: cfg.pad_token_id.unwrap_or(1),
            cfg,
        })
    }
}

impl SequenceClassifier for Roberta {
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let x = self.embeddings.forward(batch)?;
        let x = self.encoder.forward(&x, batch, self.head.first_only())?;
        self.head.forward(&x)
    }
    fn position_scheme(&self) -> PositionScheme {
        PositionScheme::AfterPadding {
            pad_token_id: self.pad_token_id,
        }
    }
    fn uses_token_types(&self) -> bool {
        self.cfg.type_vocab_size > 1
    }
    fn token_types(&self) -> usize {
        self.cfg.type_vocab_size
    }
    fn max_positions(&self) -> usize {
        self.cfg
            .max_position_embeddings
            .saturating_sub(self.position_scheme().offset())
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn attention_bytes(&self, rows: usize, len: usize, chunk_bytes: usize) -> usize {
        self.cfg.attention_bytes(rows, len, chunk_bytes)
    }
}
