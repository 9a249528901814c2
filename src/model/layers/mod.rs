//! The building blocks the families assemble: each runs one of [`super::kernels`] where the
//! model is f32 on the CPU, and candle's ops elsewhere (every GPU build, F16/BF16).
//!
//! Masks are built once per batch, in the compute dtype, with a finite "minus a lot" value so
//! that F16/BF16 never see `0 × -inf` (the candle-transformers BERT bug) and never overflow to
//! infinity when the score is added.

pub mod activation;
pub mod attention;
pub mod embedding;
pub mod heads;
pub mod linear;
pub mod mask;
pub mod norm;

pub use activation::Activation;
pub(crate) use attention::merge_heads_as;
pub use attention::{
    attention_chunk, chunked_attention_bytes, first_positions, first_token, self_attention,
    ATTENTION_CHUNK_BYTES,
};
pub use embedding::{embedding, Embedding};
pub use heads::{head_vb, to_head, ClsHead, ClsOrTokens, TokenHead};
pub use linear::Linear;
pub use mask::{additive_key_mask, mask_fill_value, sliding_layers};
pub use norm::LayerNorm;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// Whether a build at `vb` runs the hand-written CPU kernels (f32 on the CPU: packed matmuls,
/// one-pass attention) rather than candle's ops (every GPU build, and F16/BF16 on the CPU).
pub fn kernel_path(vb: &VarBuilder) -> bool {
    crate::model::kernels::own_f32(vb.device(), vb.dtype())
}

/// Whether `dtype` is a reduced precision whose attention, norms and head we keep in f32.
pub fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// The dtype attention scores and softmax are computed in: f32 for F16/BF16 (as PyTorch's
/// attention kernels accumulate them), else the compute dtype. Rounding scores to F16/BF16
/// before the softmax was the largest part of our reduced-precision error (tests/engine/half.rs).
pub fn attention_dtype(dtype: DType) -> DType {
    if is_half(dtype) {
        DType::F32
    } else {
        dtype
    }
}

/// `x` contiguous and in `dtype`, in one copy: a cast of a strided view writes it contiguous, so
/// a permute followed by a cast costs one kernel, not two.
pub fn contiguous_as(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        x.contiguous()
    } else {
        x.to_dtype(dtype)
    }
}
