//! LayerNorm for f32 on the CPU, a row at a time in vectors.
//!
//! candle's CPU LayerNorm sums each row and its squares in two scalar chains (one add waits
//! for the last, ~4 cycles an element) and takes the variance as E[x²] − E[x]², which loses
//! digits when the mean is large against the spread. Here the sums are eight lanes wide and
//! the variance is taken around the mean in a second pass, as PyTorch does: ~5 % of an int8
//! pass at batch 1 before.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::gemm::OutPtr;
use super::has_avx2;

/// Elements below which rows are normalized on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;
/// Rows one unit of work takes.
const ROWS: usize = 16;

/// Eight lane sums of `f(x)` over `xs`, then the lanes added in a fixed order: the same floats
/// whether or not the loop is compiled to vectors.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut s = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            s[l] += f(c[l]);
        }
    }
    for (l, &x) in tail.iter().enumerate() {
        s[l] += f(x);
    }
    ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
}

/// `out = (x − mean) / √(var + eps) · w + b` over one row.
#[inline(always)]
fn norm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(w).zip(b) {
        *o = (v - mean) * inv * w + b;
    }
}

/// [`norm_row`] compiled for AVX2: the eight lane sums become one ymm; the same operations,
/// unfused (Rust never fuses on its own), so the same floats.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn norm_row_avx2(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    norm_row(x, w, b, eps, out)
}

struct Norm<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f32,
}

impl CustomOp1 for Norm<'_> {
    fn name(&self) -> &'static str {
        "classifyd-layer-norm-f32"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("layer-norm-f32 needs a contiguous f32 tensor");
        };
        let width = self.weight.len();
        let x = &data[start..end];
        if width == 0 || layout.dims().last() != Some(&width) || self.bias.len() != width {
            candle_core::bail!("layer-norm-f32: input {:?}, {width} weights", layout.dims());
        }
        let rows = x.len() / width;
        let mut out = vec![0f32; x.len()];
        let avx2 = has_avx2();
        let (w, b, eps) = (self.weight, self.bias, self.eps);
        let row = |r: usize, o: &mut [f32]| {
            let xr = &x[r * width..(r + 1) * width];
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 was detected at run time.
                return unsafe { norm_row_avx2(xr, w, b, eps, o) };
            }
            let _ = avx2;
            norm_row(xr, w, b, eps, o)
        };
        if x.len() >= PARALLEL_MIN && super::team::current_threads() > 1 {
            let base = OutPtr(out.as_mut_ptr());
            super::team::for_each(rows.div_ceil(ROWS), |u| {
                for r in u * ROWS..((u + 1) * ROWS).min(rows) {
                    // SAFETY: row r is `width` floats of `out` that no other unit touches, and
                    // `out` outlives `for_each`.
                    let o =
                        unsafe { std::slice::from_raw_parts_mut(base.get().add(r * width), width) };
                    row(r, o);
                }
            });
        } else {
            for (r, o) in out.chunks_mut(width).enumerate() {
                row(r, o);
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// LayerNorm over the last dimension of a contiguous f32 CPU tensor, or `None` when `x`,
/// `weight` or `bias` is not of that kind (the caller then uses candle's).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| super::own_f32(t.device(), t.dtype());
    if !(cpu_f32(x) && cpu_f32(weight) && cpu_f32(bias)) || weight.rank() != 1 {
        return Ok(None);
    }
    let (ws, wl) = weight.storage_and_layout();
    let (bs, bl) = bias.storage_and_layout();
    let (
        candle_core::Storage::Cpu(CpuStorage::F32(w)),
        candle_core::Storage::Cpu(CpuStorage::F32(b)),
        Some((w0, w1)),
        Some((b0, b1)),
    ) = (&*ws, &*bs, wl.contiguous_offsets(), bl.contiguous_offsets())
    else {
        return Ok(None);
    };
    let op = Norm {
        weight: &w[w0..w1],
        bias: &b[b0..b1],
        eps,
    };
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&op)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{data, max_abs_diff};

    #[test]
    fn rows_match_f64_layer_norm_and_the_avx2_build_bit_for_bit() {
        // A width with a tail past whole vectors, and rows with a large mean.
        for width in [384, 13] {
            let (w, b) = (data(width, 1), data(width, 2));
            let mut x = data(5 * width, 3);
            x[width..2 * width].iter_mut().for_each(|v| *v += 1000.0);
            for r in 0..5 {
                let xr = &x[r * width..(r + 1) * width];
                let mut got = vec![0f32; width];
                norm_row(xr, &w, &b, 1e-12, &mut got);
                let n = width as f64;
                let mean = xr.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = xr
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                // The f32 mean itself is off by ~1e-7 of its size: a row far from zero can be
                // normalized only that well, by any f32 LayerNorm.
                let tol = 2e-5 * (1.0 + mean.abs() / var.sqrt());
                for i in 0..width {
                    let want = (f64::from(xr[i]) - mean) / (var + 1e-12).sqrt() * f64::from(w[i])
                        + f64::from(b[i]);
                    assert!((f64::from(got[i]) - want).abs() < tol, "row {r}, {i}");
                }
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    let mut fast = vec![0f32; width];
                    // SAFETY: detected.
                    unsafe { norm_row_avx2(xr, &w, &b, 1e-12, &mut fast) };
                    assert!(got
                        .iter()
                        .zip(&fast)
                        .all(|(a, c)| a.to_bits() == c.to_bits()));
                }
            }
        }
    }

    #[test]
    fn the_op_agrees_with_candles_layer_norm_and_refuses_what_it_cannot_take() {
        let dev = candle_core::Device::Cpu;
        let (rows, width) = (300, 384);
        let x = Tensor::from_vec(data(rows * width, 4), (3, 100, width), &dev).unwrap();
        let w = Tensor::from_vec(data(width, 5), width, &dev).unwrap();
        let b = Tensor::from_vec(data(width, 6), width, &dev).unwrap();
        let got = layer_norm(&x, &w, &b, 1e-12).unwrap().expect("taken");
        let want = candle_nn::ops::layer_norm(&x, &w, &b, 1e-12).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "{diff}");
        let half = x.to_dtype(candle_core::DType::F16).unwrap();
        assert!(layer_norm(&half, &w, &b, 1e-12).unwrap().is_none());
    }
}
