//! The activations config.json names.

use candle_core::{Result, Tensor};
use serde::Deserialize;

use crate::model::kernels::gelu;

/// Hidden activations named in config.json (`hidden_act`, `classifier_activation`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU (erf), what transformers calls "gelu".
    Gelu,
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    Relu,
    #[serde(alias = "swish")]
    Silu,
    Tanh,
    Linear,
}

impl Activation {
    pub fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => gelu::gelu_erf(xs),
            Activation::GeluNew => xs.gelu(),
            Activation::Relu => xs.relu(),
            Activation::Silu => candle_nn::ops::silu(xs),
            Activation::Tanh => xs.tanh(),
            Activation::Linear => Ok(xs.clone()),
        }
    }
}
