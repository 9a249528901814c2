//! Multi-head self-attention from a fused Q/K/V projection, and the chunking that bounds its
//! working set.

use candle_core::{DType, Result, Tensor};

use super::{attention_dtype, contiguous_as};
use crate::model::kernels::attend;

/// Bytes the scores of one query chunk may take on the CPU in [`self_attention`], ModernBERT's
/// and the decoders' attention: queries are processed in chunks so that no `[batch, heads, T,
/// T]` tensor exists, and the working set stays this size (times the three tensors a chunk
/// lives as) whatever `T` is. A GPU has the memory for larger chunks and pays per kernel
/// launch, so there the budget is sized from its free memory (`engine::budget`); each
/// [`crate::model::Batch`] carries the budget its pass runs with.
pub const ATTENTION_CHUNK_BYTES: usize = 32 << 20;

/// Query rows per attention chunk of at most `budget` bytes of scores, for `rows × heads`
/// score rows over `keys` keys (f32, the worst case): at least one, at most `len`.
pub fn attention_chunk(budget: usize, rows: usize, heads: usize, keys: usize, len: usize) -> usize {
    let per_query = rows
        .saturating_mul(heads)
        .saturating_mul(keys)
        .saturating_mul(4);
    (budget / per_query.max(1)).clamp(1, len.max(1))
}

/// [`SequenceClassifier::attention_bytes`] for query-chunked attention: three tensors
/// (scores, the masked scores, probabilities) of one chunk of `[rows, heads, chunk, len]` f32,
/// chunks of `chunk_bytes` of scores.
pub fn chunked_attention_bytes(chunk_bytes: usize, rows: usize, heads: usize, len: usize) -> usize {
    let chunk = attention_chunk(chunk_bytes, rows, heads, len, len);
    3usize
        .saturating_mul(rows)
        .saturating_mul(heads)
        .saturating_mul(chunk)
        .saturating_mul(len)
        .saturating_mul(4)
}

/// Multi-head scaled dot-product attention straight from a fused `[batch, seq, 3·hidden]` Q/K/V
/// projection. `mask` is additive, broadcastable to `[batch, heads, seq, seq]`, in
/// [`attention_dtype`]. `prescaled`: the query projection already carries 1/√d
/// ([`Linear::load_scaled`]), as it does everywhere but on the [`kernel_path`]. Only the first
/// `q_len` positions query (all `seq` keys are read): `[batch, q_len, hidden]` comes back, so
/// a last layer read only at `[CLS]` attends for it alone. Scores are computed `chunk_bytes`
/// at a time ([`crate::model::Batch::chunk_bytes`]).
///
/// On the CPU in f32 this is the one-pass kernel ([`attend`]). Otherwise, candle ops: one
/// reshape and permute into `[3, batch, heads, seq, head_dim]` and one copy that also casts
/// F16/BF16 to f32 (a single kernel on a GPU, where splitting q, k and v apart took three),
/// the scores and softmax in f32, and the merge of the heads and the cast back as one more copy.
pub fn self_attention(
    qkv: &Tensor,
    heads: usize,
    mask: &Tensor,
    prescaled: bool,
    q_len: usize,
    chunk_bytes: usize,
) -> Result<Tensor> {
    let (b, t, three) = qkv.dims3()?;
    let hidden = three / 3;
    if hidden * 3 != three || heads == 0 || !hidden.is_multiple_of(heads) {
        candle_core::bail!("attention: {three} fused features do not split into 3 × {heads} heads");
    }
    if q_len > t {
        candle_core::bail!("attention: {q_len} queries from {t} positions");
    }
    let hd = hidden / heads;
    let scale = if prescaled {
        1.0
    } else {
        1.0 / (hd as f64).sqrt()
    };
    if !prescaled {
        let (q, k, v) = (
            qkv.narrow(2, 0, hidden)?.narrow(1, 0, q_len)?,
            qkv.narrow(2, hidden, hidden)?,
            qkv.narrow(2, 2 * hidden, hidden)?,
        );
        if let Some(ctx) = attend::attend(&q, &k, &v, heads, mask)? {
            return Ok(ctx);
        }
    }
    let chunk = attention_chunk(chunk_bytes, b, heads, t, q_len);
    attention_ops(qkv, heads, mask, scale, chunk, q_len)
}

/// [`self_attention`] in candle ops, for every device and dtype, `chunk` query rows at a time.
fn attention_ops(
    qkv: &Tensor,
    heads: usize,
    mask: &Tensor,
    scale: f64,
    chunk: usize,
    q_len: usize,
) -> Result<Tensor> {
    let (b, t, three) = qkv.dims3()?;
    let hidden = three / 3;
    let dtype = qkv.dtype();
    let split = contiguous_as(
        &qkv.reshape((b, t, 3, heads, hidden / heads))?
            .permute((2, 0, 3, 1, 4))?,
        attention_dtype(dtype),
    )?;
    let (q, k, v) = (split.get(0)?, split.get(1)?, split.get(2)?);
    let q = if q_len == t {
        q
    } else {
        q.narrow(2, 0, q_len)?
    };
    let parts = attention_heads(&q, &k, &v, mask, scale, chunk)?;
    merge_heads_as(parts, (b, q_len, hidden), dtype)
}

/// Attention over heads already split, `[B, H, T, D]` each, `chunk` query rows at a time, so
/// that the scores never take more than the chunk budget (about) whatever the length;
/// short sequences are one chunk. Returns each chunk's `[B, H, c, D]` context.
fn attention_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    chunk: usize,
) -> Result<Vec<Tensor>> {
    let t = q.dim(2)?;
    let kt = k.t()?;
    let chunk = chunk.clamp(1, t.max(1));
    let per_query_mask = mask.rank() == 4 && mask.dim(2)? == t && t > 1;
    let mut parts = Vec::with_capacity(t.div_ceil(chunk));
    for i0 in (0..t).step_by(chunk) {
        let c = chunk.min(t - i0);
        let (qc, mc) = if c == t {
            (q.clone(), mask.clone())
        } else {
            let m = if per_query_mask {
                mask.narrow(2, i0, c)?
            } else {
                mask.clone()
            };
            (q.narrow(2, i0, c)?, m)
        };
        let mut scores = qc.matmul(&kt)?;
        if scale != 1.0 {
            scores = (scores * scale)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mc)?)?;
        parts.push(probs.matmul(v)?);
    }
    Ok(parts)
}

/// The per-chunk contexts `[B, H, c, D]` of a chunked attention as one `[B, T, H·D]` tensor in
/// `dtype`: the merge of the heads and the cast are one copy.
pub(crate) fn merge_heads_as(
    mut parts: Vec<Tensor>,
    (b, t, hidden): (usize, usize, usize),
    dtype: DType,
) -> Result<Tensor> {
    let ctx = if parts.len() == 1 {
        parts.remove(0)
    } else {
        Tensor::cat(&parts, 2)?
    };
    contiguous_as(&ctx.transpose(1, 2)?, dtype)?.reshape((b, t, hidden))
}

/// The first `n` positions of `[batch, seq, hidden]`, contiguous (the residual of a layer that
/// computes only those); `x` itself when that is all of it.
pub fn first_positions(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == x.dim(1)? {
        Ok(x.clone())
    } else {
        x.narrow(1, 0, n)?.contiguous()
    }
}

/// The hidden state of the first token of every row (`[CLS]` / `<s>`).
pub fn first_token(hidden: &Tensor) -> Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::additive_key_mask;
    use crate::model::testing::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn fused_cpu_attention_matches_candle_ops_with_padding() {
        let dev = Device::Cpu;
        let (b, t, heads, hd) = (2, 7, 3, 8);
        let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * heads * hd), &dev).unwrap();
        // The second row is padded after 4 tokens.
        let keep = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]], &dev).unwrap();
        let mask = additive_key_mask(&keep, DType::F32).unwrap();
        let fast = self_attention(&qkv, heads, &mask, false, t, ATTENTION_CHUNK_BYTES).unwrap();
        let scale = 1.0 / (hd as f64).sqrt();
        let slow = attention_ops(&qkv, heads, &mask, scale, t, t).unwrap();
        let diff = max_abs_diff(&fast, &slow);
        assert!(diff < 1e-5, "max |Δ| {diff}");
        // A query projection that carries the scale gives the same context.
        let h = heads * hd;
        let pre = Tensor::cat(
            &[
                qkv.narrow(2, 0, h).unwrap().affine(scale, 0.0).unwrap(),
                qkv.narrow(2, h, 2 * h).unwrap(),
            ],
            2,
        )
        .unwrap();
        let diff = max_abs_diff(
            &self_attention(&pre, heads, &mask, true, t, ATTENTION_CHUNK_BYTES).unwrap(),
            &slow,
        );
        assert!(diff < 1e-5, "prescaled: max |Δ| {diff}");
        // F16 takes candle's path, scores in f32, and comes back in F16.
        let half = self_attention(
            &pre.to_dtype(DType::F16).unwrap(),
            heads,
            &mask,
            true,
            t,
            ATTENTION_CHUNK_BYTES,
        )
        .unwrap();
        assert_eq!(half.dtype(), DType::F16);
        let diff = max_abs_diff(&half, &slow);
        assert!(diff < 1e-2, "f16: max |Δ| {diff}");
    }

    #[test]
    fn attention_for_the_first_queries_is_those_rows_of_the_whole() {
        let dev = Device::Cpu;
        let (b, t, heads, hd) = (2, 9, 3, 8);
        let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * heads * hd), &dev).unwrap();
        let keep = Tensor::new(&[[1u32; 9], [1, 1, 1, 1, 1, 0, 0, 0, 0]], &dev).unwrap();
        let mask = additive_key_mask(&keep, DType::F32).unwrap();
        let whole = self_attention(&qkv, heads, &mask, false, t, ATTENTION_CHUNK_BYTES).unwrap();
        for q_len in [1, 4] {
            let want = whole.narrow(1, 0, q_len).unwrap();
            // The one-pass kernel computes each row alone: the same bits.
            let fast =
                self_attention(&qkv, heads, &mask, false, q_len, ATTENTION_CHUNK_BYTES).unwrap();
            assert_eq!(fast.dims(), [b, q_len, heads * hd]);
            assert_eq!(max_abs_diff(&fast, &want), 0.0, "q_len {q_len}");
            // candle's ops (every other device and dtype), chunked or not.
            for chunk in [1, q_len] {
                let scale = 1.0 / (hd as f64).sqrt();
                let ops = attention_ops(&qkv, heads, &mask, scale, chunk, q_len).unwrap();
                assert_eq!(ops.dims(), [b, q_len, heads * hd]);
                let diff = max_abs_diff(&ops, &want);
                assert!(diff < 1e-5, "q_len {q_len}, chunk {chunk}: max |Δ| {diff}");
            }
        }
        assert!(self_attention(&qkv, heads, &mask, false, t + 1, ATTENTION_CHUNK_BYTES).is_err());
    }

    #[test]
    fn unscaled_scores_that_overflow_f16_stay_finite() {
        let dev = Device::Cpu;
        let (b, t, heads, hd) = (1, 5, 2, 16);
        // q·k ≈ 16 × 80 × 80 = 102,400 before scaling: past f16's 65,504.
        let qkv = (Tensor::ones((b, t, 3 * heads * hd), DType::F32, &dev).unwrap() * 80.0)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let keep = Tensor::ones((b, t), DType::U32, &dev).unwrap();
        let mask = additive_key_mask(&keep, DType::F32).unwrap();
        let ctx = self_attention(&qkv, heads, &mask, false, t, ATTENTION_CHUNK_BYTES).unwrap();
        let v: Vec<f32> = ctx
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(v.iter().all(|x| (x - 80.0).abs() < 1e-3), "{v:?}");
    }

    #[test]
    fn chunked_attention_equals_one_chunk_and_its_bound_holds_for_any_length() {
        let dev = Device::Cpu;
        let (b, t, heads, hd) = (2, 11, 2, 4);
        let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * heads * hd), &dev).unwrap();
        let keep = Tensor::new(
            &[
                [1u32, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
            ],
            &dev,
        )
        .unwrap();
        let mask = additive_key_mask(&keep, DType::F32).unwrap();
        let whole = attention_ops(&qkv, heads, &mask, 0.5, t, t).unwrap();
        for chunk in [1, 3, 4, 10] {
            let parts = attention_ops(&qkv, heads, &mask, 0.5, chunk, t).unwrap();
            let diff = max_abs_diff(&whole, &parts);
            assert!(diff < 1e-6, "chunk {chunk}: max |Δ| {diff}");
        }
        // The working set stops growing with T² once chunks are needed.
        let small = chunked_attention_bytes(ATTENTION_CHUNK_BYTES, 1, 12, 512);
        assert_eq!(small, 3 * 12 * 512 * 512 * 4);
        for t in [4096, 8192, 1 << 16] {
            let bytes = chunked_attention_bytes(ATTENTION_CHUNK_BYTES, 1, 12, t);
            assert!(bytes <= 3 * ATTENTION_CHUNK_BYTES, "{t}: {bytes}");
        }
        assert_eq!(attention_chunk(100, 1, 1, 1000, 7), 1);
        assert_eq!(attention_chunk(usize::MAX, 1, 1, 1, 7), 7);
    }
}
