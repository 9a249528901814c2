//! Log-bucketed relative positions, as transformers' `make_log_bucket_position` and
//! `build_relative_position` compute them, turned into gather indices for c2p and p2c.

/// transformers' `make_log_bucket_position` for one relative distance, in f32 like torch.
pub(super) fn log_bucket(rel: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    let abs_pos = if rel < mid && rel > -mid {
        mid - 1
    } else {
        rel.abs()
    };
    if abs_pos <= mid {
        return rel;
    }
    let denom = (((max_position - 1) as f64 / mid as f64) as f32).ln();
    let log_pos =
        ((abs_pos as f32 / mid as f32).ln() / denom * (mid - 1) as f32).ceil() + mid as f32;
    (log_pos * rel.signum() as f32) as i64
}

/// One pass's gather indices for c2p and p2c, `q_len` query rows over `t` keys, row-major,
/// over only the relative-embedding columns the pass uses.
///
/// * c2p: `score[i, j] = c2p_att[i, clamp(rel(i, j) + span)]`;
/// * p2c: `score[i, j] = p2c_att[j, clamp(span - rel(j, i))]`.
///
/// `rel` depends on `i - j` alone and is monotone in it, so the columns a pass reads are one
/// range of at most `2t - 1` of the `2span`: `c2p_cols` and `p2c_cols` are `(first, width)`,
/// and the attention products are computed for that range alone (23 of 512 columns for a
/// 12-token text on DeBERTa-v3, where the full products were most of the layer's attention).
/// An index is `row * width + column - first`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PassIndices {
    pub c2p: Vec<u32>,
    pub c2p_cols: (usize, usize),
    pub p2c: Vec<u32>,
    pub p2c_cols: (usize, usize),
}

/// Refuses a span or a length whose indices would not fit in u32: checked at load for the
/// longest input, so that sizes from config.json are an error there, not a wrapped index.
pub(super) fn check_sizes(t: usize, span: i64) -> Result<(), String> {
    span.checked_mul(2)
        .and_then(|w| u64::try_from(w).ok())
        .filter(|&w| w > 0 && w <= u64::from(u32::MAX))
        .ok_or_else(|| format!("relative attention span {span} is out of range"))?;
    let cols = max_cols(t, span).max(1) as u64;
    if (t as u64).saturating_mul(cols) > u64::from(u32::MAX) {
        return Err(format!(
            "relative positions: {t} positions × {cols} relative embeddings overflow the indices"
        ));
    }
    Ok(())
}

/// The most relative-embedding columns a pass of `t` keys reads from each table: `2t - 1`
/// distances, and never more than the `2span` there are.
pub(super) fn max_cols(t: usize, span: i64) -> usize {
    let span2 = usize::try_from(span.max(0))
        .unwrap_or(usize::MAX)
        .saturating_mul(2);
    t.saturating_mul(2).saturating_sub(1).min(span2)
}

pub(super) fn pass_indices(
    q_len: usize,
    t: usize,
    span: i64,
    buckets: i64,
    max_rel: i64,
) -> Result<PassIndices, String> {
    check_sizes(t, span)?;
    if q_len > t || t == 0 {
        return Err(format!("relative positions: {q_len} queries over {t} keys"));
    }
    let t_i = t as i64;
    // rel(i, j) depends on i - j only: one value per distance in -(t-1)..=(t-1).
    let rel: Vec<i64> = (-(t_i - 1)..t_i)
        .map(|d| {
            if buckets > 0 && max_rel > 0 {
                log_bucket(d, buckets, max_rel)
            } else {
                d
            }
        })
        .collect();
    let rel_of = |i: usize, j: usize| rel[(i as i64 - j as i64 + t_i - 1) as usize];
    let clamp = |x: i64| x.clamp(0, 2 * span - 1) as usize;
    let c2p_col = |i: usize, j: usize| clamp(rel_of(i, j) + span);
    let p2c_col = |i: usize, j: usize| clamp(span - rel_of(j, i));
    // Monotone in i - j: the extremes are at the corners.
    let range = |a: usize, b: usize| (a.min(b), a.max(b) - a.min(b) + 1);
    let c2p_cols = range(c2p_col(0, t - 1), c2p_col(q_len - 1, 0));
    let p2c_cols = range(p2c_col(0, t - 1), p2c_col(q_len - 1, 0));
    let mut c2p = Vec::with_capacity(q_len * t);
    let mut p2c = Vec::with_capacity(q_len * t);
    for i in 0..q_len {
        for j in 0..t {
            c2p.push((i * c2p_cols.1 + c2p_col(i, j) - c2p_cols.0) as u32);
            p2c.push((j * p2c_cols.1 + p2c_col(i, j) - p2c_cols.0) as u32);
        }
    }
    Ok(PassIndices {
        c2p,
        c2p_cols,
        p2c,
        p2c_cols,
    })
}
