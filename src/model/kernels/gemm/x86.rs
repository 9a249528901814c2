//! The AVX-512 and AVX2+FMA tiles of the f32 matmul, chosen at run time by the caller.

use super::NR;
use half::f16;
use std::arch::x86_64::*;

/// A weight element the kernels can widen to f32 lanes.
pub trait Elem: Copy {
    /// 16 lanes from `p`.
    ///
    /// # Safety
    /// `p` must be valid for reading 16 elements (unaligned is fine), and the CPU must have
    /// AVX-512F.
    unsafe fn load16(p: *const Self) -> __m512;
    /// 8 lanes from `p`.
    ///
    /// # Safety
    /// `p` must be valid for reading 8 elements (unaligned is fine), and the CPU must have AVX
    /// and F16C.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Elem for f32 {
    // SAFETY (both): the trait's contract, passed on to the unaligned loads.
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Elem for f16 {
    // `vcvtph2ps`: AVX512F for 16 lanes, F16C (present with every AVX2+FMA CPU we select)
    // for 8.
    // SAFETY (both): the trait's contract; 16 f16 are the 32 bytes `_mm256_loadu_si256` reads.
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

/// Steps through `m` rows of `x` (`k` apart) and `c` (`ldc` apart) in tiles of at most
/// `mr` rows, calling `tile::<T, rows>` with `xp` and `cp` at the tile's first row: a tile's
/// row count is a const parameter, so each size is its own instantiation.
macro_rules! row_tiles {
    ($m:expr, $mr:expr, [$($n:literal),*], $x:expr, $k:expr, $c:expr, $ldc:expr,
     |$xp:ident, $cp:ident| $tile:ident::<$t:ty> $args:tt) => {{
        let mut r = 0;
        while r < $m {
            let rows = ($m - r).min($mr);
            let ($xp, $cp) = ($x.as_ptr().add(r * $k), $c.add(r * $ldc));
            match rows {
                $($n => $tile::<$t, $n> $args,)*
                _ => $tile::<$t, 1> $args,
            }
            r += rows;
        }
    }};
}

/// Rows of the output a tile covers: 2 zmm accumulators a row.
const MR512: usize = 6;
/// 4 ymm accumulators a row.
const MR256: usize = 4;

/// Two panels side by side: 4 zmm accumulators a row, 24 in all, with the 4 weight vectors
/// and a broadcast within the 32 registers.
///
/// Why: measured single-threaded on Zen 4, one 6 × 32 tile ran at ~55 % of the machine's
/// FMA peak; each k step pays 6 broadcasts and 2 weight loads for 12 FMAs. Two panels
/// per tile share the broadcasts: 6 + 4 for 24 FMAs. Each output element still sums the
/// same products in the same order from the same bias, so results are bit-identical.
///
/// # Safety
/// The CPU must have the features this function is compiled for; `x` must hold `m` rows of
/// `k`; the panel(s) `k × NR` each and `bias` `NR` values a panel; `c` must be valid for
/// writing `m` rows of `ldc` floats, of which this writes the panel's columns alone.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn panels2_avx512<T: Elem>(
    x: &[f32],
    m: usize,
    k: usize,
    a: &[T],
    b: &[T],
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    let (pa, pb, bp) = (a.as_ptr(), b.as_ptr(), bias.as_ptr());
    row_tiles!(
        m,
        MR512,
        [6, 5, 4, 3, 2],
        x,
        k,
        c,
        ldc,
        |xp, cp| tile512x2::<T>(xp, k, pa, pb, bp, cp, ldc)
    );
}

/// A tile of `R` rows.
///
/// # Safety
/// As for the panel function that calls it: `x` valid for `R` rows of `k`, the weight(s) for
/// `k × NR` and the bias for `NR` values, `c` for writing `R` rows `ldc` apart, and the CPU
/// features it is compiled for.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile512x2<T: Elem, const R: usize>(
    x: *const f32,
    k: usize,
    a: *const T,
    b: *const T,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    let init: [__m512; 4] = std::array::from_fn(|j| _mm512_loadu_ps(bias.add(16 * j)));
    let mut acc = [init; R];
    for kk in 0..k {
        let w0 = T::load16(a.add(kk * NR));
        let w1 = T::load16(a.add(kk * NR + 16));
        let w2 = T::load16(b.add(kk * NR));
        let w3 = T::load16(b.add(kk * NR + 16));
        for (r, row) in acc.iter_mut().enumerate() {
            let s = _mm512_set1_ps(*x.add(r * k + kk));
            row[0] = _mm512_fmadd_ps(s, w0, row[0]);
            row[1] = _mm512_fmadd_ps(s, w1, row[1]);
            row[2] = _mm512_fmadd_ps(s, w2, row[2]);
            row[3] = _mm512_fmadd_ps(s, w3, row[3]);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc + 16 * j), *v);
        }
    }
}

/// One panel of 32 columns, 6 × 32 tiles of 12 zmm accumulators.
///
/// # Safety
/// The CPU must have the features this function is compiled for; `x` must hold `m` rows of
/// `k`; the panel(s) `k × NR` each and `bias` `NR` values a panel; `c` must be valid for
/// writing `m` rows of `ldc` floats, of which this writes the panel's columns alone.
#[target_feature(enable = "avx512f")]
pub unsafe fn panel_avx512<T: Elem>(
    x: &[f32],
    m: usize,
    k: usize,
    panel: &[T],
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    let (pp, bp) = (panel.as_ptr(), bias.as_ptr());
    row_tiles!(
        m,
        MR512,
        [6, 5, 4, 3, 2],
        x,
        k,
        c,
        ldc,
        |xp, cp| tile512::<T>(xp, k, pp, bp, cp, ldc)
    );
}

/// A tile of `R` rows.
///
/// # Safety
/// As for the panel function that calls it: `x` valid for `R` rows of `k`, the weight(s) for
/// `k × NR` and the bias for `NR` values, `c` for writing `R` rows `ldc` apart, and the CPU
/// features it is compiled for.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile512<T: Elem, const R: usize>(
    x: *const f32,
    k: usize,
    panel: *const T,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    let b0 = _mm512_loadu_ps(bias);
    let b1 = _mm512_loadu_ps(bias.add(16));
    let mut acc = [[b0, b1]; R];
    for kk in 0..k {
        let w0 = T::load16(panel.add(kk * NR));
        let w1 = T::load16(panel.add(kk * NR + 16));
        for (r, row) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*x.add(r * k + kk));
            row[0] = _mm512_fmadd_ps(a, w0, row[0]);
            row[1] = _mm512_fmadd_ps(a, w1, row[1]);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.add(r * ldc), row[0]);
        _mm512_storeu_ps(c.add(r * ldc + 16), row[1]);
    }
}

/// One panel of 32 columns on AVX2+FMA, 4 × 32 tiles of 16 ymm accumulators.
///
/// # Safety
/// The CPU must have the features this function is compiled for; `x` must hold `m` rows of
/// `k`; the panel(s) `k × NR` each and `bias` `NR` values a panel; `c` must be valid for
/// writing `m` rows of `ldc` floats, of which this writes the panel's columns alone.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn panel_avx2<T: Elem>(
    x: &[f32],
    m: usize,
    k: usize,
    panel: &[T],
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    let (pp, bp) = (panel.as_ptr(), bias.as_ptr());
    row_tiles!(m, MR256, [4, 3, 2], x, k, c, ldc, |xp, cp| tile256::<T>(
        xp, k, pp, bp, cp, ldc
    ));
}

/// A tile of `R` rows.
///
/// # Safety
/// As for the panel function that calls it: `x` valid for `R` rows of `k`, the weight(s) for
/// `k × NR` and the bias for `NR` values, `c` for writing `R` rows `ldc` apart, and the CPU
/// features it is compiled for.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn tile256<T: Elem, const R: usize>(
    x: *const f32,
    k: usize,
    panel: *const T,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    let b: [__m256; 4] = std::array::from_fn(|j| _mm256_loadu_ps(bias.add(8 * j)));
    let mut acc = [b; R];
    for kk in 0..k {
        let w: [__m256; 4] = std::array::from_fn(|j| T::load8(panel.add(kk * NR + 8 * j)));
        for (r, row) in acc.iter_mut().enumerate() {
            let a = _mm256_set1_ps(*x.add(r * k + kk));
            for j in 0..4 {
                row[j] = _mm256_fmadd_ps(a, w[j], row[j]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * ldc + 8 * j), *v);
        }
    }
}
