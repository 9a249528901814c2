//! The CPU int8 matmul behind `--dtype int8`: `x · Wᵀ + b` with the weight quantized once at
//! load, per output channel and symmetric, and `x` quantized per row as it arrives.
//!
//! Why per channel and per row: one scale for a whole weight (ONNX Runtime's default dynamic
//! quantization) lets one large column set the step for all the others, and on the default
//! model that flips 1 label in 23 against fp32 (BENCHMARKS.md). A scale per output column and
//! per input row keeps each dot product at the full 8 bits of its own range.
//!
//! The arithmetic: with `W[j] ≈ sw[j] · wq[j]` (wq in ±127) and each row of `x` mapped onto
//! the 256 levels between its own extremes, `x[r] ≈ lo[r] + sx[r] · u[r]` (u in 0..=255, the
//! unsigned operand the integer instructions want), `y[r][j] = sw[j] · (sx[r] · Σ u·wq + lo[r]
//! · Σ wq) + b[j]`, where `Σ wq[j]` is precomputed at load (`sums`). Dot products stay in i32 (at
//! most k · 255 · 127: [`MAX_K`] bounds `k`).
//!
//! Layout: panels of [`NR`] columns; inside a panel the weight bytes are in groups of four
//! consecutive `k` per column (`[k/4][column][4]`), the operand shape of `vpdpbusd`, which
//! multiplies four byte pairs and adds them into one i32 lane. Kernels, chosen at run time:
//! AVX-512 VNNI (6 rows × 32 columns, 12 accumulators); AVX2 (weights widened to i16 and
//! `vpmaddwd`, a row at a time: exact, where `vpmaddubsw` would saturate); and a portable loop
//! for every other CPU. All three give the same sums bit for bit, so a label never depends on
//! the machine.

use std::sync::OnceLock;

use super::gemm::{NamedPart, OutPtr};
use super::mapped::{Buf, MapSlice};

mod panels;
mod quantize;

use panels::panel_portable;
#[cfg(target_arch = "x86_64")]
use panels::{panel_avx2, panel_vnni};
use quantize::quantize_rows;

/// Output columns per panel (two vectors of 16 i32).
pub const NR: usize = 32;
/// `k` values per group: the four bytes one i32 lane sums.
const KG: usize = 4;
/// Rows per kernel tile.
const MR: usize = 6;
/// Multiply-adds below which the product stays on the calling thread (as in `gemm`).
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// The most inputs (`k`) a quantized weight may take: each dot product sums `k` products of at
/// most 255 · 127 in an i32, which passes `i32::MAX` beyond this (66,311). `intermediate_size`
/// comes from config.json, so a wider weight is kept in f32 instead
/// ([`super::weights::quantize`]).
pub const MAX_K: usize = (i32::MAX as usize) / (255 * 127);

/// Bytes that start on a cache line. A panel and its trailer are a whole number of lines
/// (`NR · KG` = 128 bytes a group, [`TRAILER`] 256), so every 64-byte weight load of the VNNI
/// kernel is one line; from a plain `Vec<i8>` (16-byte aligned by malloc) every one of them
/// straddled two.
#[derive(Clone)]
struct Lines {
    lines: Vec<Line>,
    len: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; 64]);

impl Lines {
    fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }
}

impl std::ops::Deref for Lines {
    type Target = [i8];
    fn deref(&self) -> &[i8] {
        // SAFETY: `lines` holds at least `len` contiguous, initialized bytes (Line is
        // repr(C) over [i8; 64], no padding).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut [i8] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

impl FromIterator<i8> for Lines {
    /// Only at load (joining weights that are not side by side in the cache).
    fn from_iter<I: IntoIterator<Item = i8>>(iter: I) -> Self {
        let bytes: Vec<i8> = iter.into_iter().collect();
        let mut out = Lines::zeroed(bytes.len());
        out.copy_from_slice(&bytes);
        out
    }
}

/// A quantized weight's bytes: the process's own, on cache lines, or a view into the weights
/// cache.
type Bytes = Buf<i8, Lines>;

impl Bytes {
    /// The owned bytes, while a weight made by `QPacked::zeroed` is being filled in.
    fn owned(&mut self) -> &mut Lines {
        match self {
            Buf::Owned(l) => l,
            Buf::Mapped(_) => unreachable!("only a weight made by `zeroed` is filled in"),
        }
    }
}

/// Bytes after each panel's weights: its columns' scales (f32) then sums (i32), little
/// endian. A panel is then self-contained, so the panels of Q, K and V written one after the
/// other to the weights cache are the fused weight as they lie, and it is used in place.
const TRAILER: usize = NR * 8;

/// A `[n, k]` weight quantized for [`matmul`].
#[derive(Debug, Clone)]
pub struct QPacked {
    k: usize,
    n: usize,
    /// `ceil(n / NR)` panels of [`Self::stride`] bytes: `groups() × NR × KG` weight bytes (zero
    /// past `k` and past `n`), then the [`TRAILER`].
    panels: Bytes,
    /// Per column (padded to whole panels): the dequantization step `sw[j]`. Read at load from
    /// the trailers, where the kernels want them as `f32` (a few KiB a weight).
    scales: Vec<f32>,
    /// Per column: `Σ_k wq[j][k]`, what the activations' offset (`lo`) multiplies.
    sums: Vec<i32>,
    /// Per column; zeros when the layer has no bias.
    bias: Vec<f32>,
    /// The checkpoint's name of each part and its width, for the weights cache (as
    /// `gemm::Packed`'s); empty when any part has none.
    names: Vec<(String, usize)>,
}

/// `bias` padded with zeros to whole panels.
fn padded_bias(bias: Option<&[f32]>, n: usize) -> Vec<f32> {
    let mut padded = vec![0f32; n.div_ceil(NR) * NR];
    if let Some(b) = bias {
        padded[..n].copy_from_slice(&b[..n]);
    }
    padded
}

impl QPacked {
    /// Bytes a `[n, k]` weight takes (its panels and their trailers); `None` on overflow.
    pub fn bytes_for(k: usize, n: usize) -> Option<usize> {
        k.div_ceil(KG)
            .checked_mul(NR * KG)?
            .checked_add(TRAILER)?
            .checked_mul(n.div_ceil(NR))
    }

    /// Quantizes `w`, `[n, k]` row-major (PyTorch's Linear layout).
    pub fn from_rows(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        assert_eq!(w.len(), n * k, "weight is not {n} × {k}");
        let mut out = Self::zeroed(k, n);
        let mut q = vec![0i8; k];
        for j in 0..n {
            let row = &w[j * k..(j + 1) * k];
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = if amax > 0.0 { amax / 127.0 } else { 0.0 };
            let mut sum = 0i32;
            for (d, v) in q.iter_mut().zip(row) {
                *d = if step > 0.0 {
                    (v / step).round_ties_even().clamp(-127.0, 127.0) as i8
                } else {
                    0
                };
                sum += i32::from(*d);
            }
            out.scales[j] = step;
            out.sums[j] = sum;
            for (g, four) in q.chunks(KG).enumerate() {
                let at = out.at(j, g);
                out.panels.owned()[at..at + four.len()].copy_from_slice(four);
            }
        }
        out.bias = padded_bias(bias, n);
        out.write_trailers();
        out
    }

    /// A weight of zeros, owned, to fill in.
    fn zeroed(k: usize, n: usize) -> Self {
        let np = n.div_ceil(NR);
        let groups = k.div_ceil(KG);
        Self {
            k,
            n,
            panels: Buf::Owned(Lines::zeroed(np * (groups * NR * KG + TRAILER))),
            scales: vec![0f32; np * NR],
            sums: vec![0i32; np * NR],
            bias: vec![0f32; np * NR],
            names: Vec::new(),
        }
    }

    /// Copies `scales` and `sums` into the panels' trailers.
    fn write_trailers(&mut self) {
        let (stride, weights) = (self.stride(), self.weight_bytes());
        let lines = self.panels.owned();
        for (p, (sc, su)) in self.scales.chunks(NR).zip(self.sums.chunks(NR)).enumerate() {
            let at = p * stride + weights;
            let bytes = sc
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .chain(su.iter().flat_map(|v| v.to_le_bytes()));
            for (d, b) in lines[at..at + TRAILER].iter_mut().zip(bytes) {
                *d = b.cast_signed();
            }
        }
    }

    /// A `[n, k]` weight whose panels and trailers are already made (viewed in the weights
    /// cache), with its bias; `None` when `bytes` is not [`Self::bytes_for`] long.
    pub fn from_panels(
        k: usize,
        n: usize,
        bytes: MapSlice<i8>,
        bias: Option<&[f32]>,
    ) -> Option<Self> {
        if Some(bytes.len()) != Self::bytes_for(k, n) {
            return None;
        }
        let np = n.div_ceil(NR);
        let mut out = Self {
            k,
            n,
            panels: Buf::Mapped(bytes),
            scales: Vec::with_capacity(np * NR),
            sums: Vec::with_capacity(np * NR),
            bias: padded_bias(bias, n),
            names: Vec::new(),
        };
        let (stride, weights) = (out.stride(), out.weight_bytes());
        for p in 0..np {
            let trailer = &out.panels[p * stride + weights..(p + 1) * stride];
            let word = |i: usize| {
                let b = &trailer[i * 4..i * 4 + 4];
                [b[0], b[1], b[2], b[3]].map(i8::cast_unsigned)
            };
            out.scales
                .extend((0..NR).map(|c| f32::from_le_bytes(word(c))));
            out.sums
                .extend((0..NR).map(|c| i32::from_le_bytes(word(NR + c))));
        }
        Some(out)
    }

    /// The same weight, named as in the checkpoint.
    pub fn named(mut self, name: String) -> Self {
        self.names = vec![(name, self.n)];
        self
    }

    /// The checkpoint names side by side in it, each with its width; empty when unnamed.
    pub fn names(&self) -> &[(String, usize)] {
        &self.names
    }

    /// Each named part, when every part has a name.
    pub fn named_parts(&self) -> Option<Vec<NamedPart>> {
        let k = self.k;
        super::gemm::parts_of(&self.names, k, |n| Self::bytes_for(k, n))
    }

    /// The panels and their trailers as bytes (to write them to the weights cache).
    pub fn panel_bytes(&self) -> &[u8] {
        self.panels.as_bytes()
    }

    /// Several quantized weights over the same input side by side (Q, K and V as one
    /// matmul); `None` when their input widths differ. Whole panels are moved (and parts viewed
    /// side by side in the weights cache stay a view) when every part but the last is a whole
    /// number of panels; otherwise column by column.
    pub fn concat(parts: &[&QPacked]) -> Option<QPacked> {
        let k = parts.first()?.k;
        if parts.iter().any(|p| p.k != k) {
            return None;
        }
        let n: usize = parts.iter().map(|p| p.n).sum();
        if parts[..parts.len() - 1].iter().all(|p| p.n % NR == 0) {
            let bytes: Vec<&Bytes> = parts.iter().map(|p| &p.panels).collect();
            let names = if parts.iter().all(|p| !p.names.is_empty()) {
                parts.iter().flat_map(|p| p.names.iter().cloned()).collect()
            } else {
                Vec::new()
            };
            return Some(QPacked {
                k,
                n,
                panels: Bytes::concat(&bytes),
                scales: parts
                    .iter()
                    .flat_map(|p| p.scales.iter().copied())
                    .collect(),
                sums: parts.iter().flat_map(|p| p.sums.iter().copied()).collect(),
                bias: parts.iter().flat_map(|p| p.bias.iter().copied()).collect(),
                names,
            });
        }
        let mut out = Self::zeroed(k, n);
        let groups = out.groups();
        let mut to = 0;
        for part in parts {
            for j in 0..part.n {
                for g in 0..groups {
                    let src = part.at(j, g);
                    let dst = out.at(to, g);
                    out.panels.owned()[dst..dst + KG].copy_from_slice(&part.panels[src..src + KG]);
                }
                out.scales[to] = part.scales[j];
                out.sums[to] = part.sums[j];
                out.bias[to] = part.bias[j];
                to += 1;
            }
        }
        out.write_trailers();
        Some(out)
    }

    /// A panel's weight bytes, before its trailer.
    fn weight_bytes(&self) -> usize {
        self.groups() * NR * KG
    }

    /// Bytes from one panel to the next.
    fn stride(&self) -> usize {
        self.weight_bytes() + TRAILER
    }

    /// Where column `j`'s four bytes of group `g` start in `panels`.
    fn at(&self, j: usize, g: usize) -> usize {
        j / NR * self.stride() + (g * NR + j % NR) * KG
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    fn groups(&self) -> usize {
        self.k.div_ceil(KG)
    }

    /// Panel `p`'s weight bytes (without its trailer).
    fn panel(&self, p: usize) -> &[i8] {
        let at = p * self.stride();
        &self.panels[at..at + self.weight_bytes()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512Vnni,
    Avx2,
    Portable,
}

/// The best kernel this CPU runs, or a lesser one named by `CLASSIFYD_INT8_KERNELS`
/// (`avx2`, `portable`), to measure what a machine without AVX-512 VNNI would get.
fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = best_isa();
        match std::env::var("CLASSIFYD_INT8_KERNELS").as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") if best != Isa::Portable => Isa::Avx2,
            _ => best,
        }
    })
}

fn best_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        // The VNNI path quantizes and dequantizes with AVX2 code: asked for, not assumed.
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx2")
        {
            return Isa::Avx512Vnni;
        }
        if std::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// The int8 kernel set this CPU runs (`avx512-vnni`, `avx2` or `portable`), for what the
/// daemon reports and the weights cache's key.
pub fn kernel_set() -> &'static str {
    match isa() {
        Isa::Avx512Vnni => "avx512-vnni",
        Isa::Avx2 => "avx2",
        Isa::Portable => "portable",
    }
}

/// `x · Wᵀ + b` for `x` of `m` rows of `w.k()` values; returns `m` rows of `w.n()` values.
pub fn matmul(x: &[f32], m: usize, w: &QPacked, epilogue: super::gemm::Epilogue<'_>) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), m * k, "matmul: x is not {m} rows of {k}");
    epilogue.check(m, n);
    let isa = isa();
    let rows = quantize_rows(x, m, k);
    let np = n.div_ceil(NR);
    // Not zeroed first: every element is written below (see the `set_len`).
    let mut out = Vec::<f32>::with_capacity(m * n);
    let dst = OutPtr(out.as_mut_ptr());
    let work = |p: usize| {
        let cols = (n - p * NR).min(NR);
        let mut acc = vec![0i32; m * NR];
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F/BW/VNNI (checked in `isa`); `acc` holds m × NR.
            Isa::Avx512Vnni => unsafe { panel_vnni(&rows, m, w.groups(), w.panel(p), &mut acc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 (checked in `isa`); `acc` holds m × NR.
            Isa::Avx2 => unsafe { panel_avx2(&rows, m, w.groups(), w.panel(p), &mut acc) },
            _ => panel_portable(&rows, m, w.groups(), w.panel(p), &mut acc),
        }
        let cols_of = p * NR..p * NR + cols;
        let (sums, scales, bias) = (
            &w.sums[cols_of.clone()],
            &w.scales[cols_of.clone()],
            &w.bias[cols_of],
        );
        for r in 0..m {
            // SAFETY: panel p alone writes columns p·NR .. p·NR+cols of each row of `out`
            // (m·n floats, alive for the whole call).
            let y = unsafe { std::slice::from_raw_parts_mut(dst.get().add(r * n + p * NR), cols) };
            let acc = &acc[r * NR..r * NR + cols];
            let (step, lo) = (rows.steps[r], rows.lows[r]);
            #[cfg(target_arch = "x86_64")]
            if isa != Isa::Portable {
                // SAFETY: AVX2 is present (every non-portable kernel set implies it).
                unsafe { dequantize_avx2(y, acc, step, lo, sums, scales, bias) };
            } else {
                dequantize(y, acc, step, lo, sums, scales, bias);
            }
            #[cfg(not(target_arch = "x86_64"))]
            dequantize(y, acc, step, lo, sums, scales, bias);
            epilogue.finish(y, r * n + p * NR);
        }
    };
    if m * n * k >= PARALLEL_MIN_MACS && np > 1 && super::team::current_threads() > 1 {
        super::team::for_each(np, work);
    } else {
        (0..np).for_each(work);
    }
    // SAFETY: panel p wrote columns p·NR .. p·NR+cols of every row, and the panels cover 0..n;
    // a panic in one propagates before this line.
    unsafe { out.set_len(m * n) };
    out
}

/// One row's integer sums back to floats: `y = sw · (step · Σ u·wq + lo · Σ wq) + b`.
#[inline(always)]
fn dequantize(
    y: &mut [f32],
    acc: &[i32],
    step: f32,
    lo: f32,
    sums: &[i32],
    scales: &[f32],
    bias: &[f32],
) {
    for ((((v, &a), &s), &sw), &b) in y.iter_mut().zip(acc).zip(sums).zip(scales).zip(bias) {
        *v = sw * (step * a as f32 + lo * s as f32) + b;
    }
}

/// [`dequantize`] compiled for AVX2, so it vectorizes (it was 14 % of an int8 pass, scalar).
/// The same operations in the same order, unfused: the same floats.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dequantize_avx2(
    y: &mut [f32],
    acc: &[i32],
    step: f32,
    lo: f32,
    sums: &[i32],
    scales: &[f32],
    bias: &[f32],
) {
    dequantize(y, acc, step, lo, sums, scales, bias)
}

#[cfg(test)]
mod tests {
    use super::quantize::*;
    use super::*;
    use crate::model::kernels::gemm::Epilogue;
    use crate::model::testing::data;

    fn reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, b: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                out[r * n + j] = b[j] + (0..k).map(|kk| x[r * k + kk] * w[j * k + kk]).sum::<f32>();
            }
        }
        out
    }

    #[test]
    fn the_vector_kernels_equal_the_portable_one_exactly() {
        #[cfg(target_arch = "x86_64")]
        let (vnni, avx2) = (
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni"),
            std::is_x86_feature_detected!("avx2"),
        );
        #[cfg(not(target_arch = "x86_64"))]
        let (vnni, avx2) = (false, false);
        for (m, k, n) in [(1, 4, 32), (7, 37, 45), (13, 384, 96), (6, 130, 64)] {
            let w = QPacked::from_rows(&data(n * k, 1), n, k, None);
            {
                let rows = quantize_rows(&data(m * k, 2), m, k);
                for p in 0..n.div_ceil(NR) {
                    let mut want = vec![0i32; m * NR];
                    panel_portable(&rows, m, w.groups(), w.panel(p), &mut want);
                    #[cfg(target_arch = "x86_64")]
                    {
                        let mut got = vec![0i32; m * NR];
                        if vnni {
                            // SAFETY: the features were detected; got holds m × NR.
                            unsafe { panel_vnni(&rows, m, w.groups(), w.panel(p), &mut got) };
                            assert_eq!(got, want, "vnni {m}x{k}x{n} panel {p}");
                        }
                        if avx2 {
                            // SAFETY: as above.
                            unsafe { panel_avx2(&rows, m, w.groups(), w.panel(p), &mut got) };
                            assert_eq!(got, want, "avx2 {m}x{k}x{n} panel {p}");
                        }
                    }
                }
            }
        }
        let _ = (vnni, avx2);
    }

    #[test]
    fn int8_matmul_is_within_quantization_error_of_f32() {
        let (m, k, n) = (9, 384, 70);
        let (x, w, b) = (data(m * k, 3), data(n * k, 4), data(n, 5));
        let want = reference(&x, m, &w, n, k, &b);
        let q = QPacked::from_rows(&w, n, k, Some(&b));
        let got = matmul(&x, m, &q, Epilogue::None);
        // Each product carries at most half a step of error from each side; over k terms of
        // uniform values the sum's error is a small fraction of its typical size (~√k / 3).
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 0.05 * (k as f32).sqrt() / 3.0, "worst {worst}");
        // A residual added in the epilogue is the same sum as one added after.
        let residual = data(m * n, 8);
        let added: Vec<f32> = got.iter().zip(&residual).map(|(y, r)| y + r).collect();
        assert_eq!(matmul(&x, m, &q, Epilogue::Add(&residual)), added);
        // Joined parts give exactly what each part gives alone.
        let (w2, b2) = (data(32 * k, 6), data(32, 7));
        let q2 = QPacked::from_rows(&w2, 32, k, Some(&b2));
        let q1 = QPacked::from_rows(&w[..64 * k], 64, k, Some(&b[..64]));
        let joined = QPacked::concat(&[&q1, &q2]).expect("joins");
        // A ragged part first: still exact, column by column.
        let q3 = QPacked::from_rows(&w[..45 * k], 45, k, Some(&b[..45]));
        let ragged = QPacked::concat(&[&q3, &q2]).expect("joins");
        let (r3, rj) = (
            matmul(&x, m, &q3, Epilogue::None),
            matmul(&x, m, &ragged, Epilogue::None),
        );
        let (a, c) = (
            matmul(&x, m, &q1, Epilogue::None),
            matmul(&x, m, &q2, Epilogue::None),
        );
        for r in 0..m {
            assert_eq!(&rj[r * 77..r * 77 + 45], &r3[r * 45..(r + 1) * 45]);
            assert_eq!(&rj[r * 77 + 45..(r + 1) * 77], &c[r * 32..(r + 1) * 32]);
        }
        let j = matmul(&x, m, &joined, Epilogue::None);
        for r in 0..m {
            assert_eq!(&j[r * 96..r * 96 + 64], &a[r * 64..(r + 1) * 64]);
            assert_eq!(&j[r * 96 + 64..(r + 1) * 96], &c[r * 32..(r + 1) * 32]);
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_builds_of_quantize_and_dequantize_are_bit_identical() {
        if !std::is_x86_feature_detected!("avx2") || !std::is_x86_feature_detected!("fma") {
            return;
        }
        let same = |x: &[f32], m: usize, k: usize| {
            let want = quantize_rows_with(x, m, k, range, levels);
            // SAFETY: the features were detected.
            let got = unsafe { quantize_rows_avx2(x, m, k) };
            assert_eq!(got.u, want.u, "{m}x{k}");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.steps), bits(&want.steps), "{m}x{k}");
            assert_eq!(bits(&got.lows), bits(&want.lows), "{m}x{k}");
            want
        };
        // Values on exact .5 steps too, where ties-to-even decides.
        let (m, k) = (8, 77);
        let mut x = data(m * k, 7);
        x[3] = 0.5;
        x[4] = -0.5;
        x[k + 1] = 2.5;
        // A NaN in a vector lane, an infinity in the tail, a row of zeros of both signs
        // whose least is a zero, and a constant row.
        x[2 * k + 9] = f32::NAN;
        x[4 * k - 1] = f32::INFINITY;
        for (i, v) in x[4 * k..5 * k].iter_mut().enumerate() {
            *v = if i % 3 == 0 { -0.0 } else { i as f32 };
        }
        x[5 * k..6 * k].fill(1.25);
        x[6 * k + 40] = f32::NEG_INFINITY;
        let q = same(&x, m, k);
        assert!(q.steps[2].is_nan() && q.steps[3].is_nan() && q.steps[6].is_nan());
        assert_eq!(q.lows[4].to_bits(), 0f32.to_bits());
        assert_eq!((q.steps[5], q.lows[5]), (0.0, 1.25));
        // Rows shorter than a vector, and exactly one.
        for k in [1, 5, 8, 16] {
            same(&data(3 * k, k as u32), 3, k);
        }

        let n = 45;
        let acc: Vec<i32> = (0..n as i32).map(|i| i * 977 - 20_000).collect();
        let sums: Vec<i32> = (0..n as i32).map(|i| 300 - i * 13).collect();
        let scales = data(n, 8);
        let bias = data(n, 9);
        let mut a = vec![0f32; n];
        let mut b = vec![0f32; n];
        dequantize(&mut a, &acc, 0.013, -0.7, &sums, &scales, &bias);
        // SAFETY: as above.
        unsafe { dequantize_avx2(&mut b, &acc, 0.013, -0.7, &sums, &scales, &bias) };
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }

    #[test]
    fn panels_written_out_and_mapped_back_give_the_same_bits_and_adjacent_parts_stay_one_view() {
        use std::io::Write;
        use std::sync::Arc;
        let (m, k) = (5, 100);
        let x = data(m * k, 11);
        let parts: Vec<QPacked> = [(64, 12), (32, 13), (40, 14)]
            .iter()
            .map(|&(n, seed)| QPacked::from_rows(&data(n * k, seed), n, k, Some(&data(n, seed))))
            .collect();
        // The three written one after another, as the weights cache writes a fused weight.
        let mut file = tempfile::tempfile().unwrap();
        for p in &parts {
            assert_eq!(p.panel_bytes().len(), QPacked::bytes_for(k, p.n).unwrap());
            file.write_all(p.panel_bytes()).unwrap();
        }
        // SAFETY: a private temporary file nobody else writes.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
        let mut at = 0;
        let mapped: Vec<QPacked> = parts
            .iter()
            .map(|p| {
                let len = QPacked::bytes_for(k, p.n).unwrap();
                let view = MapSlice::new(map.clone(), at, len).unwrap();
                at += len;
                QPacked::from_panels(k, p.n, view, Some(&p.bias[..p.n])).expect("fits")
            })
            .collect();
        for (a, b) in parts.iter().zip(&mapped) {
            assert!(matches!(b.panels, Buf::Mapped(_)));
            assert_eq!((&a.scales, &a.sums, &a.bias), (&b.scales, &b.sums, &b.bias));
            let (ya, yb) = (
                matmul(&x, m, a, Epilogue::None),
                matmul(&x, m, b, Epilogue::None),
            );
            assert_eq!(ya, yb);
        }
        let owned = QPacked::concat(&parts.iter().collect::<Vec<_>>()).unwrap();
        let viewed = QPacked::concat(&mapped.iter().collect::<Vec<_>>()).unwrap();
        assert!(
            matches!(viewed.panels, Buf::Mapped(_)),
            "{:?}",
            viewed.panels
        );
        assert_eq!(
            matmul(&x, m, &owned, Epilogue::None),
            matmul(&x, m, &viewed, Epilogue::None)
        );
        // Not adjacent: copied, same bits.
        let apart = QPacked::concat(&[&mapped[0], &mapped[2]]).unwrap();
        assert!(matches!(apart.panels, Buf::Owned(_)));
        let both = QPacked::concat(&[&parts[0], &parts[2]]).unwrap();
        assert_eq!(
            matmul(&x, m, &apart, Epilogue::None),
            matmul(&x, m, &both, Epilogue::None)
        );
        // A view of the wrong length is refused.
        let short = MapSlice::new(map.clone(), 0, 64).unwrap();
        assert!(QPacked::from_panels(k, 64, short, None).is_none());
    }

    #[test]
    fn zero_rows_and_zero_columns_give_the_bias() {
        let (m, k, n) = (2, 8, 3);
        let mut w = data(n * k, 8);
        w[k..2 * k].fill(0.0);
        let q = QPacked::from_rows(&w, n, k, Some(&[1.0, 2.0, 3.0]));
        let x = vec![0f32; m * k];
        assert_eq!(
            matmul(&x, m, &q, Epilogue::None),
            vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
        );
    }
}
