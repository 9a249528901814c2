//! Activation rows to unsigned 8-bit levels, each row on its own range: the `x` side of the int8
//! matmul.

use super::{isa, Isa, KG};

/// Rows of `x` quantized: `x[r][k] ≈ lo[r] + steps[r] · u[r][k]`, `u` padded to whole groups.
pub(super) struct QRows {
    pub(super) u: Vec<u8>,
    pub(super) steps: Vec<f32>,
    pub(super) lows: Vec<f32>,
    pub(super) stride: usize,
}

/// Each row to the 256 levels between its own minimum and maximum (asymmetric): a one-sided
/// row, like GELU's outputs in [-0.17, max], keeps all 8 bits instead of the 7 a symmetric
/// ±max scale leaves it. Measured on the default model (2,014 held-out sentences and 300
/// tweets): 11 labels differ from f32 with symmetric rows, 6 with these (BENCHMARKS.md).
pub(super) fn quantize_rows(x: &[f32], m: usize, k: usize) -> QRows {
    #[cfg(target_arch = "x86_64")]
    if isa() != Isa::Portable {
        // SAFETY: AVX2 is present (every non-portable kernel set implies it).
        return unsafe { quantize_rows_avx2(x, m, k) };
    }
    quantize_rows_with(x, m, k, range, levels)
}

/// [`quantize_rows_with`] with the row scans in AVX2 ([`range_avx2`], [`levels_avx2`]). It
/// was 12 % of a one-thread int8 pass compiled for AVX2 by the compiler alone: `f32::min`'s
/// NaN rule kept the range scalar, and the saturating `as u8` kept the levels scalar too.
/// The same operations on every value: the same bytes (a unit test compares them).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_rows_avx2(x: &[f32], m: usize, k: usize) -> QRows {
    quantize_rows_with(
        x,
        m,
        k,
        // SAFETY (both): AVX2 is present, as this function's caller promises.
        |row| unsafe { range_avx2(row) },
        |row, lo, inv, out| unsafe { levels_avx2(row, lo, inv, out) },
    )
}

#[inline(always)]
pub(super) fn quantize_rows_with(
    x: &[f32],
    m: usize,
    k: usize,
    range: impl Fn(&[f32]) -> Option<(f32, f32)>,
    levels: impl Fn(&[f32], f32, f32, &mut [u8]),
) -> QRows {
    let stride = k.div_ceil(KG) * KG;
    let mut u = vec![0u8; m * stride];
    let mut steps = vec![0f32; m];
    let mut lows = vec![0f32; m];
    for r in 0..m {
        let row = &x[r * k..(r + 1) * k];
        let Some((lo, hi)) = range(row) else {
            // A row with a NaN or an infinity cannot be quantized: NaN out, as the f32 path
            // would give.
            steps[r] = f32::NAN;
            continue;
        };
        lows[r] = lo;
        if hi == lo {
            continue;
        }
        let step = (hi - lo) / 255.0;
        let inv = 255.0 / (hi - lo);
        levels(row, lo, inv, &mut u[r * stride..r * stride + k]);
        steps[r] = step;
    }
    QRows {
        u,
        steps,
        lows,
        stride,
    }
}

/// A row's least and greatest values, `None` if any value is NaN or infinite. A zero least
/// value is +0 whichever zero the row holds, so that every scan order gives the same bits.
pub(super) fn range(row: &[f32]) -> Option<(f32, f32)> {
    let (mut lo, mut hi, mut nan) = (f32::INFINITY, f32::NEG_INFINITY, false);
    for &v in row {
        lo = lo.min(v);
        hi = hi.max(v);
        nan |= v.is_nan();
    }
    (!nan && lo.is_finite() && hi.is_finite()).then_some((lo + 0.0, hi))
}

/// `out[i] = round_ties_even((row[i] - lo) · inv)` clamped to 0..=255.
pub(super) fn levels(row: &[f32], lo: f32, inv: f32, out: &mut [u8]) {
    for (d, v) in out.iter_mut().zip(row) {
        *d = ((v - lo) * inv).round_ties_even().clamp(0.0, 255.0) as u8;
    }
}

/// [`range`], eight lanes at a time.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn range_avx2(row: &[f32]) -> Option<(f32, f32)> {
    use std::arch::x86_64::*;
    if row.len() < 8 {
        return range(row);
    }
    let mut lo = _mm256_set1_ps(f32::INFINITY);
    let mut hi = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut nan = _mm256_setzero_ps();
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        let v = _mm256_loadu_ps(c.as_ptr());
        lo = _mm256_min_ps(lo, v);
        hi = _mm256_max_ps(hi, v);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    }
    let (mut l, mut h, mut n) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    _mm256_storeu_ps(l.as_mut_ptr(), lo);
    _mm256_storeu_ps(h.as_mut_ptr(), hi);
    _mm256_storeu_ps(n.as_mut_ptr(), nan);
    if n.iter().any(|v| v.to_bits() != 0) {
        return None;
    }
    // Each lane's least is at most its greatest, so the least and greatest of the lanes' and
    // the tail's values together are the row's (an infinity among them is still seen).
    let mut rest = [0f32; 23];
    rest[..8].copy_from_slice(&l);
    rest[8..16].copy_from_slice(&h);
    rest[16..16 + tail.len()].copy_from_slice(tail);
    range(&rest[..16 + tail.len()])
}

/// [`levels`], eight lanes at a time: the same subtract, multiply, round, clamp and convert.
///
/// # Safety
/// The CPU must support AVX2; the row's values must be finite.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn levels_avx2(row: &[f32], lo: f32, inv: f32, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = row.len().min(out.len());
    let (vlo, vinv) = (_mm256_set1_ps(lo), _mm256_set1_ps(inv));
    let (zero, top) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(row.as_ptr().add(i));
        let q = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(_mm256_sub_ps(v, vlo), vinv),
        );
        // Whole numbers in 0..=255 convert exactly; the two packs cannot saturate them.
        let w = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, zero), top));
        let w16 = _mm_packus_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
        _mm_storel_epi64(out.as_mut_ptr().add(i).cast(), _mm_packus_epi16(w16, w16));
        i += 8;
    }
    levels(&row[i..n], lo, inv, &mut out[i..n]);
}
