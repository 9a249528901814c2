//! Multi-head attention for f32 on the CPU in one pass, straight from the fused QKV projection.
//!
//! Done with candle ops, attention at batch 1 is a dozen small ops per layer (split heads,
//! transpose, copy, two batched matmuls, scale, mask, softmax, merge heads), each allocating and
//! dispatching for a few thousand multiply-adds: at 18 tokens the bookkeeping cost more than the
//! arithmetic. Here each output row is computed directly: scores against every key, a max-shifted
//! softmax with the additive mask, and the weighted sum of values, reading q, k and v where the
//! projection left them (any row stride, features contiguous).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::gemm::OutPtr;
use super::has_avx2;

/// Multiply-adds below which rows are computed on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

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

/// What every output row reads: q, k and v with each one's offset and batch/row strides, the
/// mask, and the shape.
struct Views<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: &'a [f32],
    at: [(usize, usize, usize); 3],
    /// Queries per batch row: the first `tq` of the `t` positions (fewer when only `[CLS]` of
    /// a last layer is read).
    tq: usize,
    t: usize,
    heads: usize,
    hd: usize,
    scale: f32,
}

/// Queries one unit of work takes: a unit transposes its head's keys once for this many rows.
const QUERIES: usize = 32;

/// Unit `u` of `units(b, tq, heads)`: queries `i0..i1` of batch `bi` on head `h`. Each query's
/// scores against every key, a max-shifted softmax with the additive mask, and the weighted sum
/// of values, written to `out[(bi·tq + i)·hidden + h·hd ..][..hd]`.
///
/// The head's keys are first transposed to `[hd][t]`, so a query's scores are `hd` multiply-adds
/// of one query value into a row of `t` partial scores, along the keys: vector lanes over the
/// keys with no horizontal sum per score. (A dot product per key over 32 features, its eight
/// lanes summed across at the end, made attention 17 % of an int8 pass at ~20 tokens.)
///
/// # Safety
/// `out` must hold `b·tq·hidden` floats that nothing else reads or writes meanwhile but other
/// units, which write other (row, head) slices.
#[inline(always)]
unsafe fn attend_unit(w: &Views<'_>, u: usize, out: OutPtr, hidden: usize, avx2: bool) {
    let [(q0, qb, qt), (k0, kb, kt), (v0, vb, vt)] = w.at;
    let (t, tq, hd) = (w.t, w.tq, w.hd);
    let blocks = tq.div_ceil(QUERIES);
    let (bi, h, blk) = (u / (w.heads * blocks), u / blocks % w.heads, u % blocks);
    let (i0, i1) = (blk * QUERIES, ((blk + 1) * QUERIES).min(tq));
    let mask = &w.mask[bi * t..(bi + 1) * t];
    // Keys padded with zeros to whole vectors of eight: a loop over 20 keys would otherwise
    // finish every feature with four scalar steps.
    let tp = t.next_multiple_of(8);
    let mut keys = vec![0f32; hd * tp];
    for j in 0..t {
        let kj = &w.k[k0 + bi * kb + j * kt + h * hd..][..hd];
        for (d, &x) in kj.iter().enumerate() {
            keys[d * tp + j] = x;
        }
    }
    let mut scores = vec![0f32; tp];
    for i in i0..i1 {
        let qi = &w.q[q0 + bi * qb + i * qt + h * hd..][..hd];
        // SAFETY: `keys` is `hd` rows of `tp`, a multiple of 8.
        unsafe { weighted_sum(avx2, qi, &keys, 0, tp, &mut scores) };
        let sum = {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: as above; `scores` is `tp` long and `mask` `t`.
                unsafe { softmax_avx2(&mut scores, mask, w.scale) }
            } else {
                softmax_with(&mut scores, mask, w.scale)
            }
            #[cfg(not(target_arch = "x86_64"))]
            softmax_with(&mut scores, mask, w.scale)
        };
        let p = &mut scores[..t];
        let inv = 1.0 / sum;
        for pj in p.iter_mut() {
            *pj *= inv;
        }
        // SAFETY: this unit alone writes head h's features of row (bi, i), inside `out`.
        let o = unsafe {
            std::slice::from_raw_parts_mut(out.get().add((bi * tq + i) * hidden + h * hd), hd)
        };
        // SAFETY: every value row `first + j·vt .. + hd` lies inside `v` (the caller checked
        // the last one).
        unsafe { weighted_sum(avx2, p, w.v, v0 + bi * vb + h * hd, vt, o) };
    }
}

/// Below this, `exp` is 0: the least whose result is a normal float (masked keys' scores, at
/// -1e9, land here).
const EXP_LOW: f32 = -87.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 in two parts, the first with trailing zero bits so that `n · LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Minimax coefficients for `(e^r - 1 - r) / r²` on |r| ≤ ln 2 / 2 (Cephes' `expf`).
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` for the softmax (x ≤ 0 there), within ~2 ulp: `x = n·ln 2 + r`, a degree-7 polynomial
/// in `r`, scaled by `2^n` through the exponent bits. Written as plain operations, unfused,
/// so that [`exp_avx2`] gives the same bits eight at a time; libm's `expf` was a call per
/// score and 40 % of attention at ~20 tokens.
#[inline(always)]
fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < EXP_LOW {
        return 0.0;
    }
    let x = x.min(88.0);
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let y = p * (r * r) + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// [`exp`] in place, eight lanes at a time: the same operations in the same order.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_avx2(p: &mut [f32]) {
    use std::arch::x86_64::*;
    let chunks = p.len() / 8;
    for c in 0..chunks {
        let ptr = p.as_mut_ptr().add(8 * c);
        let x0 = _mm256_loadu_ps(ptr);
        let low = _mm256_cmp_ps::<_CMP_NGE_UQ>(x0, _mm256_set1_ps(EXP_LOW));
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x0, x0);
        let x = _mm256_min_ps(x0, _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))),
            _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)),
        );
        let mut q = _mm256_set1_ps(EXP_POLY[0]);
        for &k in &EXP_POLY[1..] {
            q = _mm256_add_ps(_mm256_mul_ps(q, r), _mm256_set1_ps(k));
        }
        let y = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(q, _mm256_mul_ps(r, r)), r),
            _mm256_set1_ps(1.0),
        );
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
        // Below EXP_LOW: 0, or the NaN itself.
        let e = _mm256_blendv_ps(e, _mm256_and_ps(x0, nan), low);
        _mm256_storeu_ps(ptr, e);
    }
    for x in &mut p[8 * chunks..] {
        *x = exp(*x);
    }
}

/// The unnormalized softmax of `scores[..t]` scaled by `scale` plus `mask`, in place; returns
/// its sum. Lanes `t..` (up to a whole vector) become 0 and count for nothing. The sum is
/// taken as eight lane sums in key order, then added lane 0 to 7: the order [`softmax_avx2`]
/// has, so both give the same floats.
fn softmax_with(scores: &mut [f32], mask: &[f32], scale: f32) -> f32 {
    let t = mask.len();
    for (s, m) in scores.iter_mut().zip(mask) {
        *s = *s * scale + m;
    }
    let max = scores[..t].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut lanes = [0f32; 8];
    for (j, s) in scores.iter_mut().enumerate() {
        *s = if j < t { exp(*s - max) } else { 0.0 };
        lanes[j % 8] += *s;
    }
    lanes.iter().sum()
}

/// [`softmax_with`] eight keys at a time.
///
/// # Safety
/// The CPU must support AVX2; `scores.len()` must be a multiple of 8, at least `mask.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_avx2(scores: &mut [f32], mask: &[f32], scale: f32) -> f32 {
    use std::arch::x86_64::*;
    let t = mask.len();
    debug_assert!(scores.len().is_multiple_of(8) && scores.len() >= t);
    for (s, m) in scores.iter_mut().zip(mask) {
        *s = *s * scale + m;
    }
    // The padding lanes out of the max and, through exp(-inf) = 0, out of the sum.
    scores[t..].fill(f32::NEG_INFINITY);
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in scores.chunks_exact(8) {
        vmax = _mm256_max_ps(_mm256_loadu_ps(c.as_ptr()), vmax);
    }
    let mut m8 = [0f32; 8];
    _mm256_storeu_ps(m8.as_mut_ptr(), vmax);
    // Exact in any order (a NaN score makes every output NaN either way).
    let max = m8.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let vm = _mm256_set1_ps(max);
    for c in scores.chunks_exact_mut(8) {
        let x = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vm);
        _mm256_storeu_ps(c.as_mut_ptr(), x);
    }
    exp_avx2(scores);
    let mut sum = _mm256_setzero_ps();
    for c in scores.chunks_exact(8) {
        sum = _mm256_add_ps(sum, _mm256_loadu_ps(c.as_ptr()));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    lanes.iter().sum()
}

/// `out[c] = Σ_i coef[i] · rows[first + i·stride + c]`, summed in `i` order from zero: a
/// query's scores (`rows` its head's transposed keys) and its output (`rows` the values, `coef`
/// the softmax). Along `c` in vectors where `avx2` says the CPU has AVX2 and `out` is whole
/// vectors; the same floats either way.
///
/// # Safety
/// With `avx2`, the CPU must support AVX2; every row read must lie inside `rows`.
#[inline(always)]
unsafe fn weighted_sum(
    avx2: bool,
    coef: &[f32],
    rows: &[f32],
    first: usize,
    stride: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && out.len().is_multiple_of(8) {
        // SAFETY: as the caller promises.
        return unsafe { weighted_sum_avx2(coef, rows, first, stride, out) };
    }
    let _ = avx2;
    let n = out.len();
    out.fill(0.0);
    for (i, &a) in coef.iter().enumerate() {
        for (o, r) in out.iter_mut().zip(&rows[first + i * stride..][..n]) {
            *o += a * r;
        }
    }
}

/// [`weighted_sum`] eight columns a vector, four vectors at once (four independent add chains:
/// one chain waits out the add's latency at every step), each kept in a register over every
/// row; the portable loop read and wrote `out` once a row. The same multiplies and adds in the
/// same order, so the same floats.
///
/// # Safety
/// The CPU must support AVX2; `out.len()` must be a multiple of 8; every row read must lie
/// inside `rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn weighted_sum_avx2(
    coef: &[f32],
    rows: &[f32],
    first: usize,
    stride: usize,
    out: &mut [f32],
) {
    debug_assert!(out.len().is_multiple_of(8));
    debug_assert!(coef.is_empty() || first + (coef.len() - 1) * stride + out.len() <= rows.len());
    let mut c = 0;
    while c + 32 <= out.len() {
        weighted_block::<4>(coef, rows, first + c, stride, &mut out[c..c + 32]);
        c += 32;
    }
    while c < out.len() {
        weighted_block::<1>(coef, rows, first + c, stride, &mut out[c..c + 8]);
        c += 8;
    }
}

/// `G` vectors of [`weighted_sum_avx2`]: `out` is the `8·G` columns from `first` of each row.
///
/// # Safety
/// The CPU must have AVX2; `out` must hold `8·G` values, and every row of `rows` (`stride`
/// apart, one per `coef`) must have `8·G` values from `first`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn weighted_block<const G: usize>(
    coef: &[f32],
    rows: &[f32],
    first: usize,
    stride: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); G];
    for (i, &a) in coef.iter().enumerate() {
        let a = _mm256_set1_ps(a);
        let row = rows.as_ptr().add(first + i * stride);
        for (l, x) in acc.iter_mut().enumerate() {
            *x = _mm256_add_ps(*x, _mm256_mul_ps(a, _mm256_loadu_ps(row.add(8 * l))));
        }
    }
    for (l, x) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * l), *x);
    }
}

/// Units of work for `b` batches of `tq` queries and `heads` heads: one per batch, head and
/// block of [`QUERIES`] queries.
fn units(b: usize, tq: usize, heads: usize) -> usize {
    b * heads * tq.div_ceil(QUERIES)
}

/// [`attend_unit`] compiled for AVX2: the loops along keys and features become ymm multiplies
/// and adds (unfused: Rust never fuses them), eight lanes at a time; the same floats as the
/// baseline build.
///
/// # Safety
/// The CPU must support AVX2; as [`attend_unit`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_unit_avx2(w: &Views<'_>, u: usize, out: OutPtr, hidden: usize) {
    // SAFETY: as the caller promises.
    unsafe { attend_unit(w, u, out, hidden, true) }
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
        let (b, tq, hidden) = lq.shape().dims3()?;
        let t = lk.dims().get(1).copied().unwrap_or(0);
        if lk.dims() != [b, t, hidden]
            || lv.dims() != lk.dims()
            || tq > t
            || self.mask.len() != b * t
        {
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
        let last =
            |o: usize, sb: usize, st: usize, n: usize| o + (b - 1) * sb + (n - 1) * st + hidden;
        if b == 0 || tq == 0 {
            return Ok((CpuStorage::F32(Vec::new()), lq.shape().clone()));
        }
        if last(q0, qb, qt, tq) > q.len()
            || last(k0, kb, kt, t) > k.len()
            || last(v0, vb, vt, t) > v.len()
        {
            candle_core::bail!("attend: a view reaches past its storage");
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; b * tq * hidden];
        let view = Views {
            q,
            k,
            v,
            mask: &self.mask,
            at: [(q0, qb, qt), (k0, kb, kt), (v0, vb, vt)],
            tq,
            t,
            heads,
            hd,
            scale,
        };
        let avx2 = has_avx2();
        let base = OutPtr(out.as_mut_ptr());
        let unit = |u: usize| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 and FMA were detected at run time; units write disjoint slices
                // of `out`, which outlives every call.
                return unsafe { attend_unit_avx2(&view, u, base, hidden) };
            }
            let _ = avx2;
            // SAFETY: as above.
            unsafe { attend_unit(&view, u, base, hidden, false) }
        };
        let n = units(b, tq, heads);
        if b * tq * t * hidden >= PARALLEL_MIN_MACS && n > 1 && super::team::current_threads() > 1 {
            super::team::for_each(n, unit);
        } else {
            (0..n).for_each(unit);
        }
        Ok((CpuStorage::F32(out), lq.shape().clone()))
    }
}

/// Attention for `[batch, seq, hidden]` f32 CPU views of k and v with a `[batch, 1, 1, seq]`
/// additive mask, and queries `[batch, q_len, hidden]` for the first `q_len ≤ seq` positions;
/// `None` when the inputs are not of that kind (the caller then uses candle's ops).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: &Tensor,
) -> Result<Option<Tensor>> {
    let cpu_f32 = |x: &Tensor| super::own_f32(x.device(), x.dtype());
    if !(cpu_f32(q) && cpu_f32(k) && cpu_f32(v) && cpu_f32(mask)) {
        return Ok(None);
    }
    let (b, _, _) = q.dims3()?;
    let t = k.dim(1)?;
    if mask.dims() != [b, 1, 1, t] {
        return Ok(None);
    }
    let mask: Vec<f32> = mask.flatten_all()?.to_vec1()?;
    Ok(Some(q.apply_op3_no_bwd(k, v, &Attend { heads, mask })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention in f64 the textbook way, for `view`'s shape.
    fn reference(w: &Views<'_>, b: usize) -> Vec<f64> {
        let [(q0, qb, qt), (k0, kb, kt), (v0, vb, vt)] = w.at;
        let (t, tq, hd, hidden) = (w.t, w.tq, w.hd, w.heads * w.hd);
        let mut out = vec![0f64; b * tq * hidden];
        for bi in 0..b {
            for h in 0..w.heads {
                for i in 0..tq {
                    let at = |base: usize, sb: usize, st: usize, j: usize, d: usize| {
                        base + bi * sb + j * st + h * hd + d
                    };
                    let s: Vec<f64> = (0..t)
                        .map(|j| {
                            let dot: f64 = (0..hd)
                                .map(|d| {
                                    f64::from(w.q[at(q0, qb, qt, i, d)])
                                        * f64::from(w.k[at(k0, kb, kt, j, d)])
                                })
                                .sum();
                            dot * f64::from(w.scale) + f64::from(w.mask[bi * t + j])
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..hd {
                        out[(bi * tq + i) * hidden + h * hd + d] = (0..t)
                            .map(|j| e[j] / sum * f64::from(w.v[at(v0, vb, vt, j, d)]))
                            .sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn exp_is_within_a_few_ulp_and_its_avx2_build_gives_the_same_bits() {
        let mut xs: Vec<f32> = (0..20_000).map(|i| -90.0 + i as f32 * 0.0047).collect();
        xs.extend([
            0.0,
            -0.0,
            -1e-30,
            -0.5,
            -1e9,
            f32::NEG_INFINITY,
            f32::NAN,
            3.0,
        ]);
        let want: Vec<f32> = xs.iter().map(|&x| exp(x)).collect();
        for (&x, &e) in xs.iter().zip(&want) {
            if x.is_nan() {
                assert!(e.is_nan());
            } else if x < EXP_LOW {
                assert_eq!(e, 0.0, "exp({x})");
            } else {
                let exact = f64::from(x).exp();
                let ulp = f64::from(f32::EPSILON) * exact;
                assert!(
                    (f64::from(e) - exact).abs() <= 2.0 * ulp,
                    "exp({x}) = {e}, not {exact}"
                );
            }
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            let mut got = xs.clone();
            // SAFETY: detected.
            unsafe { exp_avx2(&mut got) };
            for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "exp({x})"
                );
            }
        }
    }

    #[test]
    fn units_agree_with_textbook_attention_and_the_avx2_build_bit_for_bit() {
        // Two rows of 37 tokens (two query blocks, the second ragged), 3 heads of 13 (a ragged
        // head size, the portable value sums) or 2 of 16 (the vector ones), q/k/v interleaved
        // as the fused projection leaves them, the second row's last five keys masked; every
        // query, or only the first one or 33 (a last layer read at `[CLS]` alone).
        for (heads, hd) in [(3, 13), (2, 16), (2, 40)] {
            for tq in [37, 33, 1] {
                check_units(2, 37, tq, heads, hd);
            }
        }
    }

    fn check_units(b: usize, t: usize, tq: usize, heads: usize, hd: usize) {
        let hidden = heads * hd;
        let qkv: Vec<f32> = (0..b * t * 3 * hidden)
            .map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0)
            .collect();
        let mut mask = vec![0f32; b * t];
        mask[2 * t - 5..].fill(-1e9);
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
            tq,
            t,
            heads,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let run = |avx2: bool| {
            let mut out = vec![0f32; b * tq * hidden];
            let base = OutPtr(out.as_mut_ptr());
            for u in 0..units(b, tq, heads) {
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: the caller checked the CPU; `out` holds every row.
                    unsafe { attend_unit_avx2(&view, u, base, hidden) };
                    continue;
                }
                let _ = avx2;
                // SAFETY: `out` holds every row, written one unit at a time.
                unsafe { attend_unit(&view, u, base, hidden, false) };
            }
            out
        };
        let got = run(false);
        let want = reference(&view, b);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{i}: {g} vs {w}");
        }
        if has_avx2() {
            let fast = run(true);
            assert!(
                got.iter()
                    .zip(&fast)
                    .all(|(a, c)| a.to_bits() == c.to_bits()),
                "the AVX2 build differs"
            );
        }
    }
}
