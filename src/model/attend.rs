//! Multi-head attention for f32 on the CPU in one pass, straight from the fused QKV projection.
//!
//! Done with candle ops, attention at batch 1 is a dozen small ops per layer (split heads,
//! transpose, copy, two batched matmuls, scale, mask, softmax, merge heads), each allocating and
//! dispatching for a few thousand multiply-adds: at 18 tokens the bookkeeping cost more than the
//! arithmetic. Here each output row is computed directly: scores against every key, a max-shifted
//! softmax with the additive mask, and the weighted sum of values, reading q, k and v where the
//! projection left them (any row stride, features contiguous).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Multiply-adds below which rows are computed on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// The output's base pointer, shared by the threads that write disjoint rows of it.
#[derive(Clone, Copy)]
struct RowsPtr(*mut f32);
// SAFETY: each thread given a RowsPtr writes rows no other thread writes (see `cpu_fwd`).
unsafe impl Send for RowsPtr {}
unsafe impl Sync for RowsPtr {}
impl RowsPtr {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the allocation.
        unsafe { self.0.add(offset) }
    }
}

struct Attend {
    heads: usize,
    /// `[batch, seq]` additive key mask.
    mask: Vec<f32>,
}

/// Where row `(b, i)` of a `[batch, seq, hidden]` view starts, or an error if its features are
/// not contiguous.
fn rows(layout: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    let dims = layout.dims();
    let strides = layout.stride();
    if dims.len() != 3 || strides[2] != 1 {
        candle_core::bail!("attend: {what} must be [batch, seq, hidden] with contiguous features");
    }
    Ok((layout.start_offset(), strides[0], strides[1], dims[2]))
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums over exact chunks: no bounds checks, one vector FMA a step.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// What every output row reads: q, k and v with each one's offset and batch/row strides, the
/// mask, and the shape.
struct Views<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: &'a [f32],
    at: [(usize, usize, usize); 3],
    t: usize,
    heads: usize,
    hd: usize,
    scale: f32,
}

/// Output row `r` (batch `r / t`, token `r % t`): for each head, scores against every key, a
/// max-shifted softmax with the additive mask, and the weighted sum of values.
#[inline(always)]
fn attend_row(w: &Views<'_>, r: usize, out_row: &mut [f32]) {
    let [(q0, qb, qt), (k0, kb, kt), (v0, vb, vt)] = w.at;
    let (t, hd) = (w.t, w.hd);
    let (bi, i) = (r / t, r % t);
    let mask = &w.mask[bi * t..(bi + 1) * t];
    let mut p = vec![0f32; t];
    for h in 0..w.heads {
        let qi = &w.q[q0 + bi * qb + i * qt + h * hd..][..hd];
        let mut max = f32::NEG_INFINITY;
        for (j, pj) in p.iter_mut().enumerate() {
            let kj = &w.k[k0 + bi * kb + j * kt + h * hd..][..hd];
            *pj = dot(qi, kj) * w.scale + mask[j];
            max = max.max(*pj);
        }
        let mut sum = 0f32;
        for pj in p.iter_mut() {
            *pj = (*pj - max).exp();
            sum += *pj;
        }
        let inv = 1.0 / sum;
        let o = &mut out_row[h * hd..(h + 1) * hd];
        for (j, pj) in p.iter().enumerate() {
            let wj = pj * inv;
            let vj = &w.v[v0 + bi * vb + j * vt + h * hd..][..hd];
            for (od, vd) in o.iter_mut().zip(vj) {
                *od += wj * vd;
            }
        }
    }
}

/// [`attend_row`] compiled for AVX2: its eight-lane dot products and value sums become one ymm
/// each instead of two SSE registers (the x86-64 baseline). The same operations lane for lane
/// (Rust never fuses a multiply and an add on its own), so the same floats.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_row_avx2(w: &Views<'_>, r: usize, out_row: &mut [f32]) {
    attend_row(w, r, out_row)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl CustomOp3 for Attend {
    fn name(&self) -> &'static str {
        "classifyd-attend-f32"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (q, k, v) else {
            candle_core::bail!("attend: q, k and v must be f32");
        };
        let (b, t, hidden) = lq.shape().dims3()?;
        if lk.dims() != lq.dims() || lv.dims() != lq.dims() || self.mask.len() != b * t {
            candle_core::bail!("attend: q, k, v and mask shapes disagree");
        }
        let heads = self.heads;
        if heads == 0 || hidden % heads != 0 {
            candle_core::bail!("attend: {hidden} features do not split into {heads} heads");
        }
        let hd = hidden / heads;
        let (q0, qb, qt, _) = rows(lq, "q")?;
        let (k0, kb, kt, _) = rows(lk, "k")?;
        let (v0, vb, vt, _) = rows(lv, "v")?;
        // The furthest element each view reads must lie inside its storage.
        let last = |o: usize, sb: usize, st: usize| o + (b - 1) * sb + (t - 1) * st + hidden;
        if b == 0 || t == 0 {
            return Ok((CpuStorage::F32(Vec::new()), lq.shape().clone()));
        }
        if last(q0, qb, qt) > q.len() || last(k0, kb, kt) > k.len() || last(v0, vb, vt) > v.len() {
            candle_core::bail!("attend: a view reaches past its storage");
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; b * t * hidden];
        let view = Views {
            q,
            k,
            v,
            mask: &self.mask,
            at: [(q0, qb, qt), (k0, kb, kt), (v0, vb, vt)],
            t,
            heads,
            hd,
            scale,
        };
        let avx2 = has_avx2();
        let row = |(r, out_row): (usize, &mut [f32])| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 and FMA were detected at run time.
                return unsafe { attend_row_avx2(&view, r, out_row) };
            }
            let _ = avx2;
            attend_row(&view, r, out_row)
        };
        if b * t * t * hidden >= PARALLEL_MIN_MACS && super::team::current_threads() > 1 {
            let base = RowsPtr(out.as_mut_ptr());
            super::team::for_each(b * t, |r| {
                // SAFETY: row r is `hidden` floats of `out` that no other index touches, and
                // `out` outlives `for_each`.
                let out_row =
                    unsafe { std::slice::from_raw_parts_mut(base.at(r * hidden), hidden) };
                row((r, out_row));
            });
        } else {
            out.chunks_mut(hidden).enumerate().for_each(row);
        }
        Ok((CpuStorage::F32(out), lq.shape().clone()))
    }
}

/// Attention for `[batch, seq, hidden]` f32 CPU views with a `[batch, 1, 1, seq]` additive mask,
/// or `None` when the inputs are not of that kind (the caller then uses candle's ops).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: &Tensor,
) -> Result<Option<Tensor>> {
    let cpu_f32 = |x: &Tensor| x.device().is_cpu() && x.dtype() == candle_core::DType::F32;
    if !(cpu_f32(q) && cpu_f32(k) && cpu_f32(v) && cpu_f32(mask)) {
        return Ok(None);
    }
    let (b, t, _) = q.dims3()?;
    if mask.dims() != [b, 1, 1, t] {
        return Ok(None);
    }
    let mask: Vec<f32> = mask.flatten_all()?.to_vec1()?;
    Ok(Some(q.apply_op3_no_bwd(k, v, &Attend { heads, mask })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_build_of_a_row_is_bit_identical() {
        if !has_avx2() {
            return;
        }
        // Two rows of 7 tokens, 3 heads of 13 (a ragged head size), q/k/v interleaved as the
        // fused projection leaves them, the second row's last two keys masked.
        let (b, t, heads, hd) = (2, 7, 3, 13);
        let hidden = heads * hd;
        let qkv: Vec<f32> = (0..b * t * 3 * hidden)
            .map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0)
            .collect();
        let mut mask = vec![0f32; b * t];
        mask[2 * t - 2..].fill(-1e9);
        let view = Views {
            q: &qkv,
            k: &qkv,
            v: &qkv,
            mask: &mask,
            at: [
                (0, t * 3 * hidden, 3 * hidden),
                (hidden, t * 3 * hidden, 3 * hidden),
                (2 * hidden, t * 3 * hidden, 3 * hidden),
            ],
            t,
            heads,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        for r in 0..b * t {
            let mut want = vec![0f32; hidden];
            let mut got = vec![0f32; hidden];
            attend_row(&view, r, &mut want);
            // SAFETY: detected above.
            unsafe { attend_row_avx2(&view, r, &mut got) };
            assert!(
                want.iter()
                    .zip(&got)
                    .all(|(a, c)| a.to_bits() == c.to_bits()),
                "row {r}"
            );
        }
    }
}
