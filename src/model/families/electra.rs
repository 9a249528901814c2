//! ELECTRA (`ElectraForSequenceClassification`, `ElectraForTokenClassification`): BERT's
//! encoder behind embeddings that may be narrower than the hidden size (then projected up), and
//! a GELU head over `[CLS]` (or a linear one over every token).
//!
//! Mirrors transformers' `modeling_electra.py`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::bert::{Embeddings, Encoder, EncoderConfig};
use crate::model::layers::{Activation, ClsOrTokens, Linear};
use crate::model::{Batch, SequenceClassifier, Task};

/// ELECTRA in the registry ([`super::FAMILIES`]).
pub const FAMILY: super::Family = super::Family {
    name: "ELECTRA",
    decoder: false,
    architectures: &[
        "ElectraForSequenceClassification",
        "ElectraForTokenClassification",
    ],
    build: |spec, vb| super::build_checked(spec, vb, EncoderConfig::check, Electra::load),
};

pub struct Electra {
    embeddings: Embeddings,
    project: Option<Linear>,
    encoder: Encoder,
    head: ClsOrTokens,
    cfg: EncoderConfig,
}

impl Electra {
    pub fn load(cfg: EncoderConfig, num_labels: usize, task: Task, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let e = cfg.embedding_width();
        let body = vb.pp("electra");
        let project = if e != h {
            Some(Linear::load(e, h, body.pp("embeddings_project"))?)
        } else {
            None
        };
        let head = ClsOrTokens::load(task, h, num_labels, Activation::Gelu, vb.clone())?;
        Ok(Self {
            embeddings: Embeddings::load(&cfg, body.pp("embeddings"))?,
            project,
            encoder: Encoder::load(&cfg, body.pp("encoder"))?,
            head,
            cfg,
        })
    }
}

impl SequenceClassifier for Electra {
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let mut x = self.embeddings.forward(batch)?;
        if let Some(p) = &self.project {
            x = p.forward(&x)?;
        }
        let x = self.encoder.forward(&x, batch, self.head.first_only())?;
        self.head.forward(&x)
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
