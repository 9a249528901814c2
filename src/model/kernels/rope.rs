//! Rotary position embeddings as transformers computes them: inverse frequencies in f32 from
//! `rope_theta` and a scaling (`ROPE_INIT_FUNCTIONS`), and cos/sin tables for every position a
//! model takes, built once at load so that a pass only takes views of their first rows.
//! ModernBERT and the decoder LLMs share it.

use candle_core::{DType, Device, Result, Tensor};

/// The most entries a rotary table may have (positions × frequencies): 64 MiB of f32 each for
/// cos and sin, past any table a family asks for within its position bounds.
pub const MAX_TABLE_ENTRIES: usize = 1 << 24;

/// How RoPE's inverse frequencies are derived from `rope_theta`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

/// RoPE inverse frequencies in f32, as transformers computes them.
pub fn inv_freq(head_dim: usize, theta: f32, scaling: &RopeScaling) -> Vec<f32> {
    let d = head_dim;
    let base: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| 1.0f32 / theta.powf(i as f32 / d as f32))
        .collect();
    match *scaling {
        RopeScaling::Default => base,
        RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    if wavelen < high_wavelen || wavelen > low_wavelen {
                        scaled
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    }
                })
                .collect()
        }
    }
}

/// cos/sin tables `[positions, head_dim/2]`.
#[derive(Debug, Clone)]
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Rope {
    /// The tables of `positions` positions for one base and scaling, in `dtype` on `device`.
    pub fn new(
        head_dim: usize,
        theta: f32,
        scaling: &RopeScaling,
        positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let freqs = inv_freq(head_dim, theta, scaling);
        let half = freqs.len();
        // Checked: the sizes come from config.json, and an allocation failure aborts.
        let entries = positions
            .checked_mul(half)
            .filter(|&n| n <= MAX_TABLE_ENTRIES)
            .ok_or_else(|| {
                candle_core::Error::msg(format!(
                    "rotary table of {positions} positions × {half} frequencies is too large"
                ))
            })?;
        let mut cos = Vec::with_capacity(entries);
        let mut sin = Vec::with_capacity(entries);
        for p in 0..positions {
            for &f in &freqs {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (positions, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (positions, half), device)?.to_dtype(dtype)?,
        })
    }

    /// The first `t` positions: views, nothing computed or uploaded.
    pub fn first(&self, t: usize) -> Result<Self> {
        Ok(Self {
            cos: self.cos.narrow(0, 0, t)?,
            sin: self.sin.narrow(0, 0, t)?,
        })
    }

    /// `x` (`[B, H, T, D]`, contiguous) rotated, with the first `T` positions of the tables.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::rotary_emb::rope(x, &self.cos, &self.sin)
    }
}
