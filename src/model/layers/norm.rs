//! LayerNorm as one op.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::kernels::norm;

/// LayerNorm in one op: f32 on the CPU through [`norm`] (vector lane sums, the variance taken
/// around the mean), otherwise candle's fused kernel, which accumulates in f32 whatever the
/// compute dtype (F16 variance over a few hundred features would overflow or lose the mean
/// otherwise). Either makes one op instead of the eight tensor ops of the textbook formula.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    /// Zeros when the checkpoint has no bias, so one kernel serves both.
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Self::load_opt_bias(dim, eps, true, vb)
    }

    pub fn load_opt_bias(dim: usize, eps: f64, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let bias = if bias {
            vb.get(dim, "bias")?
        } else {
            weight.zeros_like()?
        };
        Ok(Self {
            weight,
            bias,
            eps: eps as f32,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(y) = norm::layer_norm(xs, &self.weight, &self.bias, self.eps)? {
            return Ok(y);
        }
        candle_nn::ops::layer_norm(&xs.contiguous()?, &self.weight, &self.bias, self.eps)
    }
}
