//! Where a model's large CPU weights come from while it is built (`engine::cache` decides):
//!
//! - **recording**: packed and converted from the checkpoint as always, and each packed matmul
//!   weight and embedding table the finished model keeps is noted, so that the cache can write
//!   them to a file;
//! - **replaying**: taken, by name, as views into the mapped cache file instead, without
//!   reading or converting the checkpoint's copy. A name the cache lacks, or whose shape
//!   disagrees, falls back to the checkpoint.
//!
//! The mode is a thread-local set around one model build, so the model families need no extra
//! argument: [`super::Linear::load`] and [`super::embedding`] ask it by the `VarBuilder` path.
//! Only CPU F32 builds take part (the packed kernels' path), `--dtype int8` included: its
//! quantized layers are cached as their int8 panels, the rest as f32 ones.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use candle_core::Tensor;
use candle_nn::VarBuilder;
use memmap2::Mmap;

use super::gemm::{self, Packed};
pub use super::mapped::Values;
use super::mapped::{Buf, MapSlice, Plain};
use super::qgemm::QPacked;

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A [`gemm::Packed`] weight's panels: `dims` is `(k, n)`.
    Panels,
    /// An embedding table, row-major: `dims` is `(rows, width)`.
    Rows,
    /// A [`QPacked`] weight's panels and their trailers (bytes): `dims` is `(k, n)`.
    Int8,
}

/// One named weight in a mapped cache file.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    pub f16: bool,
    pub dims: (usize, usize),
    /// Byte offset in the file.
    pub offset: usize,
}

impl Entry {
    /// Values the entry must hold for its kind and dims.
    pub fn values(&self) -> Option<usize> {
        let (a, b) = self.dims;
        match self.kind {
            Kind::Panels => b.div_ceil(gemm::NR).checked_mul(gemm::NR)?.checked_mul(a),
            Kind::Rows => a.checked_mul(b),
            Kind::Int8 => QPacked::bytes_for(a, b),
        }
    }

    /// Bytes the entry takes in the file.
    pub fn bytes(&self) -> Option<usize> {
        let size = match (self.kind, self.f16) {
            (Kind::Int8, _) => 1,
            (_, true) => 2,
            (_, false) => 4,
        };
        self.values()?.checked_mul(size)
    }
}

/// A validated, mapped cache file: its entries by name.
pub struct Cached {
    map: Arc<Mmap>,
    entries: HashMap<String, Entry>,
    /// Views handed out: how many of the entries the build used in place.
    used: AtomicUsize,
}

impl Cached {
    /// Every entry must already have been checked to lie inside `map` (the cache reader does).
    pub fn new(map: Arc<Mmap>, entries: HashMap<String, Entry>) -> Self {
        Self {
            map,
            entries,
            used: AtomicUsize::new(0),
        }
    }

    /// Views handed out so far.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry `name` viewed in place, if it is of `kind` (not [`Kind::Int8`]) and `dims`.
    pub fn view(&self, name: &str, kind: Kind, dims: (usize, usize)) -> Option<Values> {
        if kind == Kind::Int8 {
            return None;
        }
        self.take(name, kind, dims, |e| {
            Some(if e.f16 {
                Values::F16(Buf::Mapped(self.slice(e)?))
            } else {
                Values::F32(Buf::Mapped(self.slice(e)?))
            })
        })
    }

    /// The [`Kind::Int8`] entry `name` viewed in place, if it has `dims`.
    pub fn view_int8(&self, name: &str, dims: (usize, usize)) -> Option<MapSlice<i8>> {
        self.take(name, Kind::Int8, dims, |e| self.slice(e))
    }

    /// `view` of the entry `name` if it is of `kind` and `dims`, counted as used when it gives
    /// one.
    fn take<V>(
        &self,
        name: &str,
        kind: Kind,
        dims: (usize, usize),
        view: impl FnOnce(&Entry) -> Option<V>,
    ) -> Option<V> {
        let e = self.entries.get(name)?;
        if e.kind != kind || e.dims != dims {
            return None;
        }
        let v = view(e)?;
        self.used.fetch_add(1, Ordering::Relaxed);
        Some(v)
    }

    /// The entry's values in the mapping.
    fn slice<T: Plain>(&self, e: &Entry) -> Option<MapSlice<T>> {
        MapSlice::new(self.map.clone(), e.offset, e.values()?)
    }
}

/// What a recorded build kept: the packed weights (held weakly: the parts of a fused weight
/// die when it is made, and only what the model keeps is worth writing) and the embedding
/// tables.
#[derive(Default)]
pub struct Recording {
    packed: Vec<Weak<Packed>>,
    quantized: Vec<Weak<QPacked>>,
    rows: Vec<(String, Tensor)>,
}

/// One blob to write: a name per part and where the part starts in the blob. It holds the
/// weight itself, not a copy of its bytes: a load that writes the cache allocates no second
/// copy of the model.
pub struct Blob {
    pub parts: Vec<Part>,
    data: BlobData,
}

enum BlobData {
    Panels(Arc<Packed>),
    Int8(Arc<QPacked>),
    Rows(Values),
}

impl Blob {
    /// What is written to the file.
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            BlobData::Panels(p) => p.panel_bytes(),
            BlobData::Int8(q) => q.panel_bytes(),
            BlobData::Rows(Values::F32(v)) => v.as_bytes(),
            BlobData::Rows(Values::F16(v)) => v.as_bytes(),
        }
    }
}

/// One named weight of a [`Blob`].
pub struct Part {
    pub name: String,
    pub kind: Kind,
    pub f16: bool,
    pub dims: (usize, usize),
    /// Byte offset within the blob.
    pub at: usize,
}

impl Recording {
    /// What the finished model kept, in the order it was built (so a fused weight's parts stay
    /// adjacent: they are one blob). Packed weights made without a name are left out.
    pub fn blobs(&self) -> candle_core::Result<Vec<Blob>> {
        let blob = |parts: Vec<gemm::NamedPart>, kind, f16, data| Blob {
            parts: parts
                .into_iter()
                .map(|n| Part {
                    name: n.name,
                    kind,
                    f16,
                    dims: n.dims,
                    at: n.at,
                })
                .collect(),
            data,
        };
        let mut out = Vec::new();
        for p in self.packed.iter().filter_map(Weak::upgrade) {
            if let Some(parts) = p.named_parts() {
                out.push(blob(parts, Kind::Panels, p.is_f16(), BlobData::Panels(p)));
            }
        }
        for q in self.quantized.iter().filter_map(Weak::upgrade) {
            if let Some(parts) = q.named_parts() {
                out.push(blob(parts, Kind::Int8, false, BlobData::Int8(q)));
            }
        }
        for (name, table) in &self.rows {
            let dims = table.dims2()?;
            let values: Vec<f32> = table.flatten_all()?.to_vec1()?;
            let (f16, values) = match gemm::to_f16_exactly(&values) {
                Some(halves) => (true, Values::F16(Buf::Owned(halves))),
                None => (false, Values::F32(Buf::Owned(values))),
            };
            out.push(Blob {
                parts: vec![Part {
                    name: name.clone(),
                    kind: Kind::Rows,
                    f16,
                    dims,
                    at: 0,
                }],
                data: BlobData::Rows(values),
            });
        }
        Ok(out)
    }
}

enum Mode {
    Record(Recording),
    Replay(Arc<Cached>),
}

thread_local! {
    static MODE: RefCell<Option<Mode>> = const { RefCell::new(None) };
    static QUANTIZE: Cell<bool> = const { Cell::new(false) };
    static INVENTORY: RefCell<Option<Inventory>> = const { RefCell::new(None) };
}

/// The matmul weights a build packed, in any mode (see [`inventoried`]).
#[derive(Default)]
struct Inventory {
    packed: Vec<Weak<Packed>>,
    quantized: Vec<Weak<QPacked>>,
}

/// One matmul weight of a built model and the kernel it runs in, for `inspect --weights`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WeightUse {
    /// The checkpoint names side by side in it (Q, K and V of a fused projection); empty for
    /// a weight built at load without one, which the weights cache cannot keep.
    pub names: Vec<String>,
    /// `int8` ([`super::qgemm`]) or `f32` ([`super::gemm`]; its panels may be stored as f16).
    pub kernel: &'static str,
    /// Inputs and outputs.
    pub k: usize,
    pub n: usize,
}

/// Runs `build` and lists the packed matmul weights the finished model keeps (a part fused
/// into a larger weight is listed with it, not alone). Empty where the model runs candle's
/// matmuls (a GPU, F16/BF16).
pub fn inventoried<R>(build: impl FnOnce() -> R) -> (R, Vec<WeightUse>) {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            INVENTORY.with(|i| i.borrow_mut().take());
        }
    }
    INVENTORY.with(|i| *i.borrow_mut() = Some(Inventory::default()));
    let off = Off;
    let out = build();
    let inv = INVENTORY
        .with(|i| i.borrow_mut().take())
        .unwrap_or_default();
    drop(off);
    let names = |parts: &[(String, usize)]| parts.iter().map(|(n, _)| n.clone()).collect();
    let mut uses: Vec<WeightUse> = inv
        .quantized
        .iter()
        .filter_map(Weak::upgrade)
        .map(|q| WeightUse {
            names: names(q.names()),
            kernel: "int8",
            k: q.k(),
            n: q.n(),
        })
        .chain(
            inv.packed
                .iter()
                .filter_map(Weak::upgrade)
                .map(|p| WeightUse {
                    names: names(p.names()),
                    kernel: "f32",
                    k: p.k(),
                    n: p.n(),
                }),
        )
        .collect();
    uses.sort_by(|a, b| a.names.cmp(&b.names));
    (out, uses)
}

/// Runs `build` with the transformer layers' matmul weights quantized to int8
/// (`--dtype int8`, see `super::qgemm`).
pub fn quantizing<R>(build: impl FnOnce() -> R) -> R {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            QUANTIZE.with(|q| q.set(false));
        }
    }
    QUANTIZE.with(|q| q.set(true));
    let _off = Off;
    build()
}

/// Whether the weight `name` is quantized in this build: the matmuls inside the transformer
/// layers (`….layer.N.…`, `….layers.N.…`), which are nearly all of the arithmetic. Embeddings,
/// norms, the pooler and the classification head stay in floating point: they are a sliver of
/// the work, and the head's few outputs are where a rounding error would show up as a flipped
/// label. A weight taking more than [`super::qgemm::MAX_K`] inputs stays in f32: its integer
/// dot products could pass i32.
pub fn quantize(name: &str, k: usize) -> bool {
    QUANTIZE.with(Cell::get) && k <= super::qgemm::MAX_K && in_layer(name)
}

/// Whether the checkpoint name `name` is a transformer layer's (`….layer.N.…`,
/// `….layers.N.…`): the weights `--dtype int8` quantizes.
pub fn in_layer(name: &str) -> bool {
    name.contains(".layer.") || name.contains(".layers.") || name.starts_with("layers.")
}

/// Restores "no mode" when a build ends, by return or by unwinding.
struct Reset;
impl Drop for Reset {
    fn drop(&mut self) {
        MODE.with(|m| m.borrow_mut().take());
    }
}

/// Runs `build` recording what it packs; returns its result and the recording.
pub fn recording<R>(build: impl FnOnce() -> R) -> (R, Recording) {
    MODE.with(|m| *m.borrow_mut() = Some(Mode::Record(Recording::default())));
    let reset = Reset;
    let out = build();
    let rec = MODE.with(|m| match m.borrow_mut().take() {
        Some(Mode::Record(r)) => r,
        _ => Recording::default(),
    });
    drop(reset);
    (out, rec)
}

/// Runs `build` taking weights from `cached` where it has them.
pub fn replaying<R>(cached: Arc<Cached>, build: impl FnOnce() -> R) -> R {
    MODE.with(|m| *m.borrow_mut() = Some(Mode::Replay(cached)));
    let _reset = Reset;
    build()
}

/// Whether this build takes part: CPU F32 only.
fn eligible(vb: &VarBuilder) -> bool {
    super::own_f32(vb.device(), vb.dtype())
}

/// A weight's name in the cache: its checkpoint path.
pub fn name(vb: &VarBuilder, leaf: &str) -> String {
    let prefix = vb.prefix();
    if prefix.is_empty() {
        leaf.to_string()
    } else {
        format!("{prefix}.{leaf}")
    }
}

/// The cached view of `name` when replaying and the cache has it with this kind and shape.
pub(crate) fn view(
    vb: &VarBuilder,
    name: &str,
    kind: Kind,
    dims: (usize, usize),
) -> Option<Values> {
    replayed(vb, |c| c.view(name, kind, dims))
}

/// The cached int8 panels of `name` when replaying and the cache has them with this shape.
pub(crate) fn view_int8(vb: &VarBuilder, name: &str, dims: (usize, usize)) -> Option<MapSlice<i8>> {
    replayed(vb, |c| c.view_int8(name, dims))
}

/// `view` of the cache being replayed, for a build that takes part.
fn replayed<V>(vb: &VarBuilder, view: impl FnOnce(&Cached) -> Option<V>) -> Option<V> {
    if !eligible(vb) {
        return None;
    }
    MODE.with(|m| match &*m.borrow() {
        Some(Mode::Replay(c)) => view(c),
        _ => None,
    })
}

/// Notes a quantized weight a layer keeps, when recording.
pub(crate) fn note_quantized(q: &Arc<QPacked>) {
    INVENTORY.with(|i| {
        if let Some(inv) = &mut *i.borrow_mut() {
            inv.quantized.push(Arc::downgrade(q));
        }
    });
    MODE.with(|m| {
        if let Some(Mode::Record(r)) = &mut *m.borrow_mut() {
            r.quantized.push(Arc::downgrade(q));
        }
    });
}

/// Notes a packed weight a layer keeps, when recording.
pub(crate) fn note_packed(p: &Arc<Packed>) {
    INVENTORY.with(|i| {
        if let Some(inv) = &mut *i.borrow_mut() {
            inv.packed.push(Arc::downgrade(p));
        }
    });
    MODE.with(|m| {
        if let Some(Mode::Record(r)) = &mut *m.borrow_mut() {
            r.packed.push(Arc::downgrade(p));
        }
    });
}

/// Notes an embedding table, when recording a CPU F32 build.
pub(crate) fn note_rows(vb: &VarBuilder, name: String, table: &Tensor) {
    if !eligible(vb) {
        return;
    }
    MODE.with(|m| {
        if let Some(Mode::Record(r)) = &mut *m.borrow_mut() {
            r.rows.push((name, table.clone()));
        }
    });
}
