//! The integer dot products of one panel: portable, AVX-512 VNNI and AVX2, all bit-identical.

use super::quantize::QRows;
use super::{KG, MR, NR};

/// `acc[r][c] = Σ_g Σ_t u[r][4g+t] · panel[g][c][t]`, the reference for the vector kernel.
pub(super) fn panel_portable(rows: &QRows, m: usize, groups: usize, panel: &[i8], acc: &mut [i32]) {
    for r in 0..m {
        let u = &rows.u[r * rows.stride..(r + 1) * rows.stride];
        let out = &mut acc[r * NR..(r + 1) * NR];
        for g in 0..groups {
            let a = &u[g * KG..(g + 1) * KG];
            let wg = &panel[g * NR * KG..(g + 1) * NR * KG];
            for (c, o) in out.iter_mut().enumerate() {
                let b = &wg[c * KG..(c + 1) * KG];
                *o += (0..KG)
                    .map(|t| i32::from(a[t]) * i32::from(b[t]))
                    .sum::<i32>();
            }
        }
    }
}

/// The AVX-512 VNNI panel product: tiles of up to [`MR`] rows, two vectors of 16 columns each,
/// one `vpdpbusd` per row and vector per group of four `k`.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI; `acc` must hold `m × NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn panel_vnni(
    rows: &QRows,
    m: usize,
    groups: usize,
    panel: &[i8],
    acc: &mut [i32],
) {
    use std::arch::x86_64::*;
    debug_assert!(acc.len() >= m * NR && panel.len() >= groups * NR * KG);
    let mut r0 = 0;
    while r0 < m {
        let mr = (m - r0).min(MR);
        let mut c = [[_mm512_setzero_si512(); 2]; MR];
        for g in 0..groups {
            let wp = panel.as_ptr().add(g * NR * KG);
            let w0 = _mm512_loadu_si512(wp.cast());
            let w1 = _mm512_loadu_si512(wp.add(16 * KG).cast());
            for (r, cr) in c.iter_mut().enumerate().take(mr) {
                let up = rows.u.as_ptr().add((r0 + r) * rows.stride + g * KG);
                let a = _mm512_set1_epi32(std::ptr::read_unaligned(up.cast::<i32>()));
                cr[0] = _mm512_dpbusd_epi32(cr[0], a, w0);
                cr[1] = _mm512_dpbusd_epi32(cr[1], a, w1);
            }
        }
        for (r, cr) in c.iter().enumerate().take(mr) {
            let o = acc.as_mut_ptr().add((r0 + r) * NR);
            _mm512_storeu_si512(o.cast(), cr[0]);
            _mm512_storeu_si512(o.add(16).cast(), cr[1]);
        }
        r0 += mr;
    }
}

/// The AVX2 panel product, a row at a time. `vpmaddubsw` would add two u8 × s8 products into
/// a saturating i16 (255 · 127 · 2 overflows it), so the weight bytes are widened to i16 as they
/// load (`vpmovsxbw`) and multiplied with `vpmaddwd`, which adds pairs into i32 exactly: the
/// same sums as the other kernels, bit for bit, at twice the instructions of the saturating
/// form. Each i32 lane holds half a column's group (two `k`); the halves are added at the end.
///
/// # Safety
/// The CPU must support AVX2; `acc` must hold `m × NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn panel_avx2(
    rows: &QRows,
    m: usize,
    groups: usize,
    panel: &[i8],
    acc: &mut [i32],
) {
    use std::arch::x86_64::*;
    debug_assert!(acc.len() >= m * NR && panel.len() >= groups * NR * KG);
    const BLOCKS: usize = NR / 8;
    for r in 0..m {
        // [block][half]: half 0 holds columns 8b..8b+4, half 1 columns 8b+4..8b+8, two lanes each.
        let mut c = [[_mm256_setzero_si256(); 2]; BLOCKS];
        let urow = rows.u.as_ptr().add(r * rows.stride);
        for g in 0..groups {
            // The group's four activations as i16, repeated for the four columns of a half.
            let u = std::ptr::read_unaligned(urow.add(g * KG).cast::<[u8; 4]>());
            let spread = u
                .iter()
                .enumerate()
                .fold(0u64, |acc, (i, &b)| acc | (u64::from(b) << (16 * i)));
            let a = _mm256_set1_epi64x(spread as i64);
            let wp = panel.as_ptr().add(g * NR * KG);
            for (b, cb) in c.iter_mut().enumerate() {
                for (h, ch) in cb.iter_mut().enumerate() {
                    let bytes = _mm_loadu_si128(wp.add((2 * b + h) * 16).cast());
                    let w = _mm256_cvtepi8_epi16(bytes);
                    *ch = _mm256_add_epi32(*ch, _mm256_madd_epi16(w, a));
                }
            }
        }
        let mut lanes = [0i32; 2 * NR];
        for (b, cb) in c.iter().enumerate() {
            for (h, ch) in cb.iter().enumerate() {
                _mm256_storeu_si256(lanes.as_mut_ptr().add((2 * b + h) * 8).cast(), *ch);
            }
        }
        for (col, out) in acc[r * NR..(r + 1) * NR].iter_mut().enumerate() {
            *out = lanes[2 * col] + lanes[2 * col + 1];
        }
    }
}
