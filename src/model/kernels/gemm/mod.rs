//! The CPU f32 matmul behind every Linear layer: `x · Wᵀ + b` (then optionally GELU) on weights
//! packed once at load.
//!
//! Why not candle's matmul: at batch 1 the left-hand side has as many rows as the text has
//! tokens (m ≈ 10–50) while the weight is 384–1536 wide. The general-purpose kernel candle calls
//! packs the weight again on every call, picks AVX2 on AVX-512 machines, and reached ~37 GFLOP/s
//! here at m = 18: the six matmuls of a layer were 71 % of the forward pass. Here the weight is
//! laid out at load time in panels of [`NR`] output columns, each panel `k × NR` contiguous, so a
//! tile of the output streams one panel start to end; the bias is added in the same pass and
//! GELU is applied while the tile is still in L1.
//!
//! Once that was done the kernel was bound by reading the weights themselves (42 MB of f32 for
//! MiniLM-L6 per forward pass, past the L2 cache): so where every weight of a layer is exactly an
//! f16 (checkpoints stored in F16, like the default model), the panels hold f16 and the kernel
//! widens them as it loads (one `vcvtph2ps` per 16 values). That halves the bytes per pass and
//! changes no value: the result is bit-identical to the f32 panels.
//!
//! Kernels: AVX-512F (6 rows × 32 columns, 12 accumulators) and AVX2+FMA (4 rows × 32 columns,
//! 16 accumulators), chosen at run time, with a portable loop for other CPUs. Panels are split
//! across the engine's threads ([`super::team`]) only when the product is large enough to pay
//! for the fork.

use std::sync::OnceLock;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::mapped::{Buf, Values};

/// Output columns per packed panel.
pub const NR: usize = 32;

/// Multiply-adds below which the matmul stays on the calling thread: a fork/join costs a few
/// microseconds, about what 2^18 multiply-adds take on one core.
const PARALLEL_MIN_MACS: usize = 1 << 18;

#[derive(Debug, Clone)]
enum Panels {
    F32(Buf<f32>),
    /// Used only when every weight converts to f16 and back unchanged.
    F16(Buf<f16>),
}

impl Panels {
    fn f16(&self) -> Option<&Buf<f16>> {
        match self {
            Panels::F16(v) => Some(v),
            Panels::F32(_) => None,
        }
    }

    fn f32(&self) -> Option<&Buf<f32>> {
        match self {
            Panels::F32(v) => Some(v),
            Panels::F16(_) => None,
        }
    }
}

/// One panel of either element type.
#[derive(Clone, Copy)]
enum Panel<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// One named weight among the panels of a [`Packed`].
pub struct NamedPart {
    pub name: String,
    /// `(k, width)`.
    pub dims: (usize, usize),
    /// Byte offset of its first panel in [`Packed::panel_bytes`].
    pub at: usize,
}

/// The parts of a weight whose parts are `names` (name, width), one after the other, each
/// `bytes(width)` long; `None` when there are none (a part had no name).
pub(super) fn parts_of(
    names: &[(String, usize)],
    k: usize,
    bytes: impl Fn(usize) -> Option<usize>,
) -> Option<Vec<NamedPart>> {
    if names.is_empty() {
        return None;
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(names.len());
    for (name, n) in names {
        out.push(NamedPart {
            name: name.clone(),
            dims: (k, *n),
            at,
        });
        at += bytes(*n)?;
    }
    Some(out)
}

/// A `[n, k]` weight (PyTorch's Linear layout) packed for [`matmul`], with its bias.
#[derive(Debug, Clone)]
pub struct Packed {
    k: usize,
    n: usize,
    /// `ceil(n / NR)` panels, each `k × NR`; columns past `n` are zero.
    panels: Panels,
    /// Padded to a whole number of panels; zeros when the layer has no bias.
    bias: Vec<f32>,
    /// The checkpoint names of the weights side by side in these panels, each with its width
    /// (one for a plain layer, several for a fused one); empty when unnamed. The weights cache
    /// writes and finds panels by these names (`super::weights`).
    names: Vec<(String, usize)>,
}

impl Packed {
    /// Packs `w`, a `[n, k]` row-major weight (PyTorch's Linear layout).
    pub fn from_rows(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        Self::pack(w, k, n, bias, |kk, first, out| {
            for (j, o) in out.iter_mut().enumerate() {
                *o = w[(first + j) * k + kk];
            }
        })
    }

    /// Packs `w_t`, the weight already transposed to `[k, n]` row-major.
    pub fn from_transposed(w_t: &[f32], k: usize, n: usize, bias: Option<&[f32]>) -> Self {
        Self::pack(w_t, k, n, bias, |kk, first, out| {
            out.copy_from_slice(&w_t[kk * n + first..kk * n + first + out.len()]);
        })
    }

    /// `values` is the whole weight in any order (to decide f16 or f32); `gather(kk, j, out)`
    /// fills `out` with row `kk` of columns `j..j + out.len()`. Packing writes straight into the
    /// kept panels: a load allocates nothing else as large as the weight, which matters because
    /// a load's temporaries each get fresh pages (see `heap`).
    fn pack(
        values: &[f32],
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
        gather: impl Fn(usize, usize, &mut [f32]),
    ) -> Self {
        let np = n.div_ceil(NR);
        let mut row = [0f32; NR];
        let panels = if exactly_f16(values) {
            let mut halves = vec![f16::ZERO; np * k * NR];
            for p in 0..np {
                let cols = (n - p * NR).min(NR);
                for kk in 0..k {
                    gather(kk, p * NR, &mut row[..cols]);
                    let dst = (p * k + kk) * NR;
                    halves[dst..dst + cols].convert_from_f32_slice(&row[..cols]);
                }
            }
            Panels::F16(Buf::Owned(halves))
        } else {
            let mut panels = vec![0f32; np * k * NR];
            for p in 0..np {
                let cols = (n - p * NR).min(NR);
                for kk in 0..k {
                    let dst = (p * k + kk) * NR;
                    gather(kk, p * NR, &mut panels[dst..dst + cols]);
                }
            }
            Panels::F32(Buf::Owned(panels))
        };
        Self::with_panels(k, n, panels, bias)
    }

    fn with_panels(k: usize, n: usize, panels: Panels, bias: Option<&[f32]>) -> Self {
        let mut padded = vec![0f32; n.div_ceil(NR) * NR];
        if let Some(b) = bias {
            padded[..n].copy_from_slice(&b[..n]);
        }
        Self {
            k,
            n,
            panels,
            bias: padded,
            names: Vec::new(),
        }
    }

    /// A `[n, k]` weight whose panels are already packed (viewed in the weights cache), with
    /// its bias; `None` when `values` is not `ceil(n / NR)` panels of `k × NR`.
    pub fn from_panels(k: usize, n: usize, values: Values, bias: Option<&[f32]>) -> Option<Self> {
        let want = n.div_ceil(NR) * NR * k;
        let panels = match values {
            Values::F32(v) if v.len() == want => Panels::F32(v),
            Values::F16(v) if v.len() == want => Panels::F16(v),
            _ => return None,
        };
        Some(Self::with_panels(k, n, panels, bias))
    }

    /// The same weight, named as in the checkpoint (see `names`).
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
        let elem = if self.is_f16() { 2 } else { 4 };
        let k = self.k;
        parts_of(&self.names, k, |n| Some(n.div_ceil(NR) * NR * k * elem))
    }

    /// The panels as bytes (to write them to the weights cache).
    pub fn panel_bytes(&self) -> &[u8] {
        match &self.panels {
            Panels::F32(v) => v.as_bytes(),
            Panels::F16(v) => v.as_bytes(),
        }
    }

    /// Several packed weights over the same input side by side (Q, K and V as one matmul),
    /// by moving whole panels; `None` where that cannot be done exactly (a part whose width is
    /// not a whole number of panels before the last, mixed element types, different `k`).
    pub fn concat(parts: &[&Packed]) -> Option<Packed> {
        let first = parts.first()?;
        let k = first.k;
        let f16 = first.is_f16();
        let fits = parts.iter().all(|p| p.k == k && p.is_f16() == f16)
            && parts[..parts.len() - 1].iter().all(|p| p.n % NR == 0);
        if !fits {
            return None;
        }
        let n = parts.iter().map(|p| p.n).sum();
        // `fits` made every part the same element type, so each part yields its panels here.
        // Parts viewed side by side in the weights cache stay a view (they were written as one).
        let panels = if f16 {
            let bufs: Vec<_> = parts.iter().filter_map(|p| p.panels.f16()).collect();
            Panels::F16(Buf::concat(&bufs))
        } else {
            let bufs: Vec<_> = parts.iter().filter_map(|p| p.panels.f32()).collect();
            Panels::F32(Buf::concat(&bufs))
        };
        let bias = parts.iter().flat_map(|p| p.bias.iter().copied()).collect();
        let names = if parts.iter().all(|p| !p.names.is_empty()) {
            parts.iter().flat_map(|p| p.names.iter().cloned()).collect()
        } else {
            Vec::new()
        };
        Some(Packed {
            k,
            n,
            panels,
            bias,
            names,
        })
    }

    /// The weight back in `[k, n]` row-major (to fuse several layers into one, at load).
    pub fn to_transposed(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for p in 0..self.n.div_ceil(NR) {
            let cols = (self.n - p * NR).min(NR);
            for kk in 0..self.k {
                let src = (p * self.k + kk) * NR;
                let dst = &mut out[kk * self.n + p * NR..kk * self.n + p * NR + cols];
                match &self.panels {
                    Panels::F32(v) => dst.copy_from_slice(&v[src..src + cols]),
                    Panels::F16(v) => {
                        for (d, s) in dst.iter_mut().zip(&v[src..src + cols]) {
                            *d = s.to_f32();
                        }
                    }
                }
            }
        }
        out
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn bias(&self) -> &[f32] {
        &self.bias[..self.n]
    }

    /// Whether the panels are held in f16 (see the module notes).
    pub fn is_f16(&self) -> bool {
        matches!(self.panels, Panels::F16(_))
    }

    fn panel(&self, p: usize) -> Panel<'_> {
        let r = p * self.k * NR..(p + 1) * self.k * NR;
        match &self.panels {
            Panels::F32(v) => Panel::F32(&v[r]),
            Panels::F16(v) => Panel::F16(&v[r]),
        }
    }
}

/// `values` as f16 when every one survives the round trip unchanged.
pub fn to_f16_exactly(values: &[f32]) -> Option<Vec<f16>> {
    exactly_f16(values).then(|| {
        let mut halves = vec![f16::ZERO; values.len()];
        halves.convert_from_f32_slice(values);
        halves
    })
}

/// Whether every value survives f32 → f16 → f32 unchanged, checked a block at a time with
/// `half`'s vectorised slice conversions and no allocation.
fn exactly_f16(values: &[f32]) -> bool {
    let mut halves = [f16::ZERO; 256];
    let mut back = [0f32; 256];
    values.chunks(256).all(|chunk| {
        let (h, b) = (&mut halves[..chunk.len()], &mut back[..chunk.len()]);
        h.convert_from_f32_slice(chunk);
        h.convert_to_f32_slice(b);
        b.iter().zip(chunk).all(|(a, c)| a.to_bits() == c.to_bits())
    })
}

/// What to do to the output after the bias, while a unit's columns are still in cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epilogue<'a> {
    None,
    GeluErf,
    /// Add these `m × n` values (a residual): the same sum, in the same f32 rounding, as adding
    /// them afterwards, without another pass over the output or a tensor op.
    Add(&'a [f32]),
}

impl Epilogue<'_> {
    /// Finishes `row`, which holds the output's elements from flat index `at` on.
    #[inline]
    pub(crate) fn finish(self, row: &mut [f32], at: usize) {
        match self {
            Epilogue::None => {}
            Epilogue::GeluErf => super::gelu::gelu_in_place(row),
            Epilogue::Add(residual) => {
                let n = row.len();
                for (y, r) in row.iter_mut().zip(&residual[at..at + n]) {
                    *y += r;
                }
            }
        }
    }

    /// Panics unless an [`Epilogue::Add`] holds exactly the `m × n` output's values.
    pub(crate) fn check(self, m: usize, n: usize) {
        if let Epilogue::Add(residual) = self {
            assert_eq!(
                residual.len(),
                m * n,
                "matmul: the residual is not {m} rows of {n}"
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// The matmul kernel set this CPU runs (`avx512`, `avx2` or `portable`), for the weights
/// cache's key and what the daemon reports.
pub fn kernel_set() -> &'static str {
    match isa() {
        Isa::Avx512 => "avx512",
        Isa::Avx2 => "avx2",
        Isa::Portable => "portable",
    }
}

/// `x · Wᵀ + b` for `x` of `m` rows of `w.k()` values; returns `m` rows of `w.n()` values.
pub fn matmul(x: &[f32], m: usize, w: &Packed, epilogue: Epilogue<'_>) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    assert_eq!(x.len(), m * k, "matmul: x is not {m} rows of {k}");
    epilogue.check(m, n);
    let np = n.div_ceil(NR);
    // Not zeroed first: every element is written below (each unit writes all its columns of
    // every row), so zeroing would write each output twice.
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let dst = OutPtr(out.as_mut_ptr());
    let isa = isa();
    // On AVX-512, full panels go two at a time: one broadcast of x feeds four accumulators
    // instead of two, which the kernel's loop was short of (see `x86::panels2_avx512`).
    let pairs = if isa == Isa::Avx512 { (n / NR) / 2 } else { 0 };
    let pair = |q: usize| {
        let p = 2 * q;
        let bias = &w.bias[p * NR..(p + 2) * NR];
        // SAFETY: panels p and p + 1 are full width; this pair alone writes their 2·NR
        // columns of each of the m rows of `out` (row stride n), so concurrent units never
        // touch the same element.
        let c = unsafe { dst.get().add(p * NR) };
        unsafe { panels_product2(x, m, k, w.panel(p), w.panel(p + 1), bias, c, n) };
        if epilogue != Epilogue::None {
            for r in 0..m {
                // SAFETY: as above; row r's columns of this pair.
                let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * n), 2 * NR) };
                epilogue.finish(row, r * n + p * NR);
            }
        }
    };
    let single = |p: usize| {
        let cols = (n - p * NR).min(NR);
        let bias = &w.bias[p * NR..(p + 1) * NR];
        let mut scratch;
        // SAFETY: panel p alone writes columns p·NR .. p·NR+cols of each of the m rows of `out`
        // (m·n floats, alive for the whole call), so concurrent panels never touch the same
        // element; the full-width case writes exactly those NR columns with row stride n.
        let (c, ldc) = if cols == NR {
            (unsafe { dst.get().add(p * NR) }, n)
        } else {
            scratch = vec![0f32; m * NR];
            (scratch.as_mut_ptr(), NR)
        };
        // SAFETY: `c` addresses m rows of ldc floats with at least NR valid in each (above).
        unsafe { panel_product(isa, x, m, k, w.panel(p), bias, c, ldc) };
        for r in 0..m {
            // SAFETY: as above; row r's columns of this panel.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), cols) };
            epilogue.finish(row, r * n + p * NR);
            if ldc != n {
                // SAFETY: the partial last panel's own columns of row r.
                let to =
                    unsafe { std::slice::from_raw_parts_mut(dst.get().add(r * n + p * NR), cols) };
                to.copy_from_slice(row);
            }
        }
    };
    // Units: the pairs first, then the panels left (an odd full one, a partial last one).
    let units = pairs + (np - 2 * pairs);
    let work = |u: usize| {
        if u < pairs {
            pair(u)
        } else {
            single(2 * pairs + (u - pairs))
        }
    };
    if m * n * k >= PARALLEL_MIN_MACS && units > 1 && super::team::current_threads() > 1 {
        super::team::for_each(units, work);
    } else {
        (0..units).for_each(work);
    }
    // SAFETY: the units together wrote all m·n elements: the pairs and the full single panels
    // every column of theirs in every row, the partial last panel its `cols` columns of every
    // row; the panels cover 0..n. A panic in a unit propagates before this line.
    unsafe { out.set_len(m * n) };
    out
}

/// Two adjacent full panels at once: `c[r·ldc + j] = bias[j] + Σ_kk x[r][kk] · w[kk][j]` for
/// 2·NR columns, the first NR from `a`, the next from `b`. AVX-512 only.
///
/// # Safety
/// `c` must be valid for writes of 2·NR floats at each of `c + r·ldc`, r < m; the ISA must be
/// AVX-512 (the callers check [`isa`]).
#[allow(clippy::too_many_arguments)]
unsafe fn panels_product2(
    x: &[f32],
    m: usize,
    k: usize,
    a: Panel<'_>,
    b: Panel<'_>,
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    assert!(
        x.len() >= m * k && bias.len() == 2 * NR && ldc >= 2 * NR,
        "panels_product2: slice sizes disagree with m = {m}, k = {k}"
    );
    match (a, b) {
        #[cfg(target_arch = "x86_64")]
        (Panel::F32(a), Panel::F32(b)) if a.len() == k * NR && b.len() == k * NR => {
            x86::panels2_avx512(x, m, k, a, b, bias, c, ldc)
        }
        #[cfg(target_arch = "x86_64")]
        (Panel::F16(a), Panel::F16(b)) if a.len() == k * NR && b.len() == k * NR => {
            x86::panels2_avx512(x, m, k, a, b, bias, c, ldc)
        }
        _ => unreachable!("panels_product2: panels of one weight share a dtype and length"),
    }
}

/// The output's base pointer, shared by the threads that write disjoint columns of it.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: the threads given an OutPtr write disjoint elements (see `matmul` here and in
// `qgemm`, `attend`'s units and `norm`'s rows).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// One panel: `c[r·ldc + j] = bias[j] + Σ_kk x[r][kk] · panel[kk][j]` for `m` rows, NR columns.
///
/// # Safety
/// `c` must be valid for writes of NR floats at each of `c + r·ldc`, r < m.
#[allow(clippy::too_many_arguments)]
unsafe fn panel_product(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    panel: Panel<'_>,
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    let panel_len = match panel {
        Panel::F32(p) => p.len(),
        Panel::F16(p) => p.len(),
    };
    assert!(
        x.len() >= m * k && panel_len == k * NR && bias.len() == NR && ldc >= NR,
        "panel_product: slice sizes disagree with m = {m}, k = {k}"
    );
    match (isa, panel) {
        // SAFETY (all four): the ISA was detected at run time; the assert above checked that
        // x and the panel cover every index the kernels read, and the caller vouches for c.
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, Panel::F32(p)) => x86::panel_avx512(x, m, k, p, bias, c, ldc),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, Panel::F16(p)) => x86::panel_avx512(x, m, k, p, bias, c, ldc),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, Panel::F32(p)) => x86::panel_avx2(x, m, k, p, bias, c, ldc),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, Panel::F16(p)) => x86::panel_avx2(x, m, k, p, bias, c, ldc),
        (_, Panel::F32(p)) => panel_portable(x, m, k, p, bias, c, ldc, |v| v),
        (_, Panel::F16(p)) => panel_portable(x, m, k, p, bias, c, ldc, f16::to_f32),
    }
}

/// # Safety
/// As [`panel_product`].
#[allow(clippy::too_many_arguments)]
unsafe fn panel_portable<T: Copy>(
    x: &[f32],
    m: usize,
    k: usize,
    panel: &[T],
    bias: &[f32],
    c: *mut f32,
    ldc: usize,
    widen: impl Fn(T) -> f32,
) {
    for r in 0..m {
        let out = std::slice::from_raw_parts_mut(c.add(r * ldc), NR);
        out.copy_from_slice(bias);
        for kk in 0..k {
            let a = x[r * k + kk];
            let b = &panel[kk * NR..(kk + 1) * NR];
            for j in 0..NR {
                out[j] += a * widen(b[j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain triple loop, in f64, as the reference.
    fn reference(x: &[f32], m: usize, w_t: &[f32], k: usize, n: usize, bias: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let mut s = f64::from(bias[j]);
                for kk in 0..k {
                    s += f64::from(x[r * k + kk]) * f64::from(w_t[kk * n + j]);
                }
                out[r * n + j] = s as f32;
            }
        }
        out
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic, no dependency.
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn paired_panels_equal_single_panels_bit_for_bit() {
        // matmul takes full panels two at a time on AVX-512; every other unit one at a time.
        // Shapes with an odd count of full panels, a partial last one, and tile heights 1–6.
        for (m, k, n, in_f16) in [
            (1, 16, 64, false),
            (5, 40, 97, true),
            (13, 384, 160, false),
            (19, 96, 1536, true),
        ] {
            let x = data(m * k, 4);
            let w_t: Vec<f32> = data(k * n, 5)
                .into_iter()
                .map(|v| if in_f16 { f16::from_f32(v).to_f32() } else { v })
                .collect();
            let bias = data(n, 6);
            let packed = Packed::from_transposed(&w_t, k, n, Some(&bias));
            let got = matmul(&x, m, &packed, Epilogue::None);
            let mut want = vec![0f32; m * n];
            for p in 0..n.div_ceil(NR) {
                let mut block = vec![0f32; m * NR];
                // SAFETY: block holds m rows of NR.
                unsafe {
                    panel_product(
                        isa(),
                        &x,
                        m,
                        k,
                        packed.panel(p),
                        &packed.bias[p * NR..(p + 1) * NR],
                        block.as_mut_ptr(),
                        NR,
                    )
                };
                for r in 0..m {
                    for j in 0..NR.min(n - p * NR) {
                        want[r * n + p * NR + j] = block[r * NR + j];
                    }
                }
            }
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "m={m} k={k} n={n} f16={in_f16}"
            );
        }
    }

    #[test]
    fn every_kernel_matches_the_reference_on_ragged_shapes() {
        // Rows not a multiple of any tile height, columns not a multiple of a panel, and the
        // shapes the default model uses.
        let shapes = [
            (1, 3, 2),
            (7, 5, 33),
            (13, 64, 31),
            (18, 384, 1152),
            (19, 1536, 384),
        ];
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                isas.push(Isa::Avx2);
            }
        }
        for ((m, k, n), in_f16) in shapes.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            let x = data(m * k, 1);
            let w_t: Vec<f32> = data(k * n, 2)
                .into_iter()
                .map(|v| if in_f16 { f16::from_f32(v).to_f32() } else { v })
                .collect();
            let bias = data(n, 3);
            let packed = Packed::from_transposed(&w_t, k, n, Some(&bias));
            assert_eq!(packed.is_f16(), in_f16);
            assert_eq!(packed.to_transposed(), w_t);
            let want = reference(&x, m, &w_t, k, n, &bias);
            for &isa in &isas {
                let np = n.div_ceil(NR);
                let mut got = vec![0f32; m * n];
                for p in 0..np {
                    let mut block = vec![0f32; m * NR];
                    // SAFETY: block holds m rows of NR.
                    unsafe {
                        panel_product(
                            isa,
                            &x,
                            m,
                            k,
                            packed.panel(p),
                            &packed.bias[p * NR..(p + 1) * NR],
                            block.as_mut_ptr(),
                            NR,
                        )
                    };
                    let cols = (n - p * NR).min(NR);
                    for r in 0..m {
                        got[r * n + p * NR..r * n + p * NR + cols]
                            .copy_from_slice(&block[r * NR..r * NR + cols]);
                    }
                }
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < 1e-4 * (k as f32).sqrt(),
                    "{isa:?} {m}x{k}x{n}: {worst}"
                );
            }
            let full = matmul(&x, m, &packed, Epilogue::None);
            let worst = full
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                worst < 1e-4 * (k as f32).sqrt(),
                "matmul {m}x{k}x{n}: {worst}"
            );
        }
    }

    #[test]
    fn f16_panels_only_when_exact_and_then_bit_identical() {
        let (m, k, n) = (9, 96, 40);
        let x = data(m * k, 6);
        let w_t: Vec<f32> = data(k * n, 7)
            .into_iter()
            .map(|v| f16::from_f32(v).to_f32())
            .collect();
        let as_f16 = Packed::from_transposed(&w_t, k, n, None);
        assert!(as_f16.is_f16());
        assert_eq!(as_f16.to_transposed(), w_t);
        // The same values, forced to stay f32 by one weight that f16 cannot hold.
        let mut w_odd = w_t.clone();
        w_odd[k * n - 1] = 1.0 + f32::EPSILON;
        let as_f32 = Packed::from_transposed(&w_odd, k, n, None);
        assert!(!as_f32.is_f16());
        let mut w_fixed = as_f32.clone();
        if let Panels::F32(Buf::Owned(v)) = &mut w_fixed.panels {
            // Put the representable value back: now both packings hold the same numbers.
            let last = v.iter().rposition(|&e| e == 1.0 + f32::EPSILON).unwrap();
            v[last] = w_t[k * n - 1];
        }
        assert_eq!(
            matmul(&x, m, &as_f16, Epilogue::None),
            matmul(&x, m, &w_fixed, Epilogue::None)
        );
    }

    #[test]
    fn packing_rows_equals_packing_the_transpose() {
        let (k, n) = (40, 70);
        let w_t = data(k * n, 8);
        let rows: Vec<f32> = (0..n * k).map(|i| w_t[(i % k) * n + i / k]).collect();
        let bias = data(n, 9);
        let a = Packed::from_transposed(&w_t, k, n, Some(&bias));
        let b = Packed::from_rows(&rows, n, k, Some(&bias));
        assert_eq!(a.to_transposed(), b.to_transposed());
        assert_eq!(a.bias(), b.bias());
        let x = data(3 * k, 10);
        assert_eq!(
            matmul(&x, 3, &a, Epilogue::None),
            matmul(&x, 3, &b, Epilogue::None)
        );
    }

    #[test]
    fn concat_equals_packing_the_joined_weight() {
        let k = 24;
        // Widths of whole panels, then a ragged last one; f32 values and f16-exact values.
        for exact in [false, true] {
            let widths = [64, 32, 45];
            let parts_t: Vec<Vec<f32>> = widths
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let v = data(k * n, 11 + i as u32);
                    if exact {
                        v.into_iter().map(|x| f16::from_f32(x).to_f32()).collect()
                    } else {
                        v
                    }
                })
                .collect();
            let biases: Vec<Vec<f32>> = widths.iter().map(|&n| data(n, 20 + n as u32)).collect();
            let parts: Vec<Packed> = parts_t
                .iter()
                .zip(&widths)
                .zip(&biases)
                .map(|((w, &n), b)| Packed::from_transposed(w, k, n, Some(b)))
                .collect();
            let joined = Packed::concat(&parts.iter().collect::<Vec<_>>()).expect("joins");
            let total: usize = widths.iter().sum();
            let mut w_t = Vec::with_capacity(k * total);
            for kk in 0..k {
                for (w, &n) in parts_t.iter().zip(&widths) {
                    w_t.extend_from_slice(&w[kk * n..(kk + 1) * n]);
                }
            }
            let whole = Packed::from_transposed(&w_t, k, total, Some(&biases.concat()));
            assert_eq!(joined.is_f16(), exact);
            assert_eq!(joined.to_transposed(), whole.to_transposed());
            assert_eq!(joined.bias(), whole.bias());
            let x = data(5 * k, 30);
            assert_eq!(
                matmul(&x, 5, &joined, Epilogue::None),
                matmul(&x, 5, &whole, Epilogue::None)
            );
        }
        // A ragged part before the last cannot be joined by moving panels.
        let a = Packed::from_transposed(&data(k * 45, 1), k, 45, None);
        let b = Packed::from_transposed(&data(k * 32, 2), k, 32, None);
        assert!(Packed::concat(&[&a, &b]).is_none());
    }

    #[test]
    fn gelu_epilogue_equals_gelu_after() {
        let (m, k, n) = (5, 40, 70);
        let x = data(m * k, 4);
        let w_t = data(k * n, 5);
        let packed = Packed::from_transposed(&w_t, k, n, None);
        let mut plain = matmul(&x, m, &packed, Epilogue::None);
        super::super::gelu::gelu_in_place(&mut plain);
        assert_eq!(matmul(&x, m, &packed, Epilogue::GeluErf), plain);
    }

    #[test]
    fn add_epilogue_equals_adding_after_bit_for_bit() {
        // 70 columns: a pair of full panels, then a partial one (written through scratch).
        let (m, k, n) = (5, 40, 70);
        let x = data(m * k, 6);
        let packed = Packed::from_transposed(&data(k * n, 7), k, n, Some(&data(n, 8)));
        let residual = data(m * n, 9);
        let want: Vec<f32> = matmul(&x, m, &packed, Epilogue::None)
            .iter()
            .zip(&residual)
            .map(|(y, r)| y + r)
            .collect();
        assert_eq!(matmul(&x, m, &packed, Epilogue::Add(&residual)), want);
    }

    #[test]
    #[should_panic(expected = "residual")]
    fn a_residual_of_the_wrong_size_is_refused() {
        let packed = Packed::from_transposed(&data(8 * 4, 1), 8, 4, None);
        let _ = matmul(&data(2 * 8, 2), 2, &packed, Epilogue::Add(&[0.0; 7]));
    }
}
