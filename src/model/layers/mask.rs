//! Attention masks and the per-layer attention pattern.

use candle_core::{DType, Result, Tensor};

/// The value added to attention scores of padded keys: large enough to zero the key after
/// softmax, small enough that score + mask stays finite in the dtype.
pub fn mask_fill_value(dtype: DType) -> f64 {
    match dtype {
        // f16 tops out at 65504; half of it leaves room for any realistic score.
        DType::F16 => -32_000.0,
        _ => -1.0e30,
    }
}

/// `[batch, 1, 1, seq]` additive mask in `dtype`: 0 for real keys, a large negative for padding.
pub fn additive_key_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = attention_mask.dims2()?;
    let keep = attention_mask.to_dtype(DType::F32)?;
    let masked = ((keep - 1.0)? * -mask_fill_value(dtype))?;
    // (keep - 1) is 0 or -1; multiplying by -fill gives 0 or fill. Done in f32, then cast once.
    masked.to_dtype(dtype)?.reshape((b, 1, 1, t))
}

/// `layer_types` as transformers 5 writes it, one entry a layer: whether each layer attends
/// within a sliding window (`"sliding_attention"`) or to every key (`"full_attention"`).
pub fn sliding_layers(types: &[String], layers: usize) -> std::result::Result<Vec<bool>, String> {
    if types.len() != layers {
        return Err(format!(
            "layer_types has {} entries for {layers} layers",
            types.len()
        ));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "sliding_attention" => Ok(true),
            "full_attention" => Ok(false),
            other => Err(format!("layer_types: {other:?} is not supported")),
        })
        .collect()
}
