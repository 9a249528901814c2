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

/// Flattened gather indices for c2p and p2c at sequence length `t`, ordered query-major so the
/// first `q*t` entries serve a layer that only computes the first `q` query rows.
///
/// * c2p: `score[i, j] = c2p_att[i, clamp(rel(i, j) + span)]`, flat `i * 2span + ...`.
/// * p2c: `score[i, j] = p2c_att[j, clamp(span - rel(j, i))]`, flat `j * 2span + ...`.
pub(super) fn relative_indices(
    t: usize,
    span: i64,
    buckets: i64,
    max_rel: i64,
) -> Result<(Vec<u32>, Vec<u32>), String> {
    // Every index is below `t × 2span`; both tables hold `t²`. Checked, so that a span from
    // config.json cannot wrap the u32 indices or size a table past memory.
    let width = span
        .checked_mul(2)
        .and_then(|w| u32::try_from(w).ok())
        .filter(|&w| w > 0)
        .ok_or_else(|| format!("relative attention span {span} is out of range"))?;
    let entries = t
        .checked_mul(t)
        .filter(|_| (t as u64) * u64::from(width) <= u64::from(u32::MAX));
    let entries = entries.ok_or_else(|| {
        format!(
            "relative positions: {t} positions × {width} relative embeddings overflow the indices"
        )
    })?;
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
    let clamp = |x: i64| x.clamp(0, 2 * span - 1) as u32;
    let mut c2p = Vec::with_capacity(entries);
    let mut p2c = Vec::with_capacity(entries);
    for i in 0..t {
        for j in 0..t {
            c2p.push(i as u32 * width + clamp(rel_of(i, j) + span));
            p2c.push(j as u32 * width + clamp(span - rel_of(j, i)));
        }
    }
    Ok((c2p, p2c))
}
