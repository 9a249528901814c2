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
        let row = |(r, out_row): (usize, &mut [f32])| {
            let (bi, i) = (r / t, r % t);
            let mask = &self.mask[bi * t..(bi + 1) * t];
            let mut p = vec![0f32; t];
            for h in 0..heads {
                let qi = &q[q0 + bi * qb + i * qt + h * hd..][..hd];
                let mut max = f32::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate() {
                    let kj = &k[k0 + bi * kb + j * kt + h * hd..][..hd];
                    *pj = dot(qi, kj) * scale + mask[j];
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
                    let w = pj * inv;
                    let vj = &v[v0 + bi * vb + j * vt + h * hd..][..hd];
                    for (od, vd) in o.iter_mut().zip(vj) {
                        *od += w * vd;
                    }
                }
            }
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
