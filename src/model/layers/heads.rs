//! The classification heads the encoder families share, and the f32 rule for heads.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::first_token;
use super::{attention_dtype, is_half, Activation, Linear};
use crate::model::Task;

/// The head every `*ForTokenClassification` of these families shares: one linear layer
/// (`classifier`) over each token's final hidden state, dropout being the identity at
/// inference. In f32 off F32, as [`head_vb`] says why.
#[derive(Debug, Clone)]
pub struct TokenHead(Linear);

impl TokenHead {
    pub fn load(hidden: usize, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Linear::load(
            hidden,
            num_labels,
            head_vb(vb.pp("classifier")),
        )?))
    }
    /// `[batch, tokens, hidden]` → `[batch, tokens, num_labels]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.0.forward(&to_head(hidden)?)
    }
}

/// `RobertaClassificationHead` and `ElectraClassificationHead`: dense and an activation over
/// the first token (tanh for RoBERTa; exact GELU for ELECTRA, whatever `hidden_act` says), then
/// `out_proj`. In f32 off F32, as [`head_vb`] says why.
pub struct ClsHead {
    dense: Linear,
    out_proj: Linear,
    act: Activation,
}

impl ClsHead {
    /// `vb` at the head (`classifier`).
    pub fn load(hidden: usize, num_labels: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        let vb = head_vb(vb);
        Ok(Self {
            dense: Linear::load(hidden, hidden, vb.pp("dense"))?,
            out_proj: Linear::load(hidden, num_labels, vb.pp("out_proj"))?,
            act,
        })
    }
    /// `[batch, tokens, hidden]` → `[batch, num_labels]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = self.dense.forward(&to_head(&first_token(hidden)?)?)?;
        self.out_proj.forward(&self.act.apply(&x)?)
    }
}

/// The head of a family whose sequence head is a [`ClsHead`] (RoBERTa, ELECTRA): that, or the
/// shared [`TokenHead`] for `*ForTokenClassification`.
pub enum ClsOrTokens {
    Cls(ClsHead),
    Tokens(TokenHead),
}

impl ClsOrTokens {
    /// `act`: the [`ClsHead`]'s activation. Its weights are under `classifier` either way.
    pub fn load(
        task: Task,
        hidden: usize,
        num_labels: usize,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(match task {
            Task::Sequence => {
                Self::Cls(ClsHead::load(hidden, num_labels, act, vb.pp("classifier"))?)
            }
            Task::Token => Self::Tokens(TokenHead::load(hidden, num_labels, vb)?),
        })
    }
    /// Whether the head reads the first position alone (so the last layer need compute no other).
    pub fn first_only(&self) -> bool {
        matches!(self, Self::Cls(_))
    }
    /// `[batch, tokens, hidden]` → the task's logits.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        match self {
            Self::Cls(h) => h.forward(hidden),
            Self::Tokens(h) => h.forward(hidden),
        }
    }
}

/// The classification head's builder: f32 when the body runs in F16/BF16, so the pooler and
/// classifier read the checkpoint's weights unrounded and add up in f32 (a few `[batch, hidden]`
/// rows: nothing to save by doing them in half).
pub fn head_vb(vb: VarBuilder) -> VarBuilder {
    let dtype = vb.dtype();
    if is_half(dtype) {
        vb.set_dtype(DType::F32)
    } else {
        vb
    }
}

/// A row of hidden states entering the head, in the head's dtype (see [`head_vb`]).
pub fn to_head(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(attention_dtype(x.dtype()))
}
