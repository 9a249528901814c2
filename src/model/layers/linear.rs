//! Linear layers: the packed f32 or int8 kernels on the CPU, candle's matmul elsewhere.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;

use super::{is_half, kernel_path, Activation};
use crate::model::kernels::{gemm, qgemm, weights};

/// A Linear layer. On the CPU in f32 its weight lives only in [`gemm::Packed`] form (see there
/// for why); elsewhere it is stored transposed and contiguous, so the matmul streams rows of the
/// weight instead of striding across them.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[in, out]`; `None` when `packed` holds the weight instead (never both: the weights are
    /// most of the daemon's memory).
    weight_t: Option<Tensor>,
    bias: Option<Tensor>,
    packed: Option<Arc<gemm::Packed>>,
    /// `--dtype int8`: the weight quantized instead (see [`qgemm`]); then the other two are
    /// `None`.
    quant: Option<Arc<qgemm::QPacked>>,
    /// F16/BF16 off the CPU kernels: the bias is folded into `weight_t` as row `in` (then
    /// zeros up to a multiple of 8 rows, this many in all past `in`), and the input gets a
    /// matching `[1, 0, …]` tail ([`unit_columns`]). The matmul then adds the bias inside its
    /// f32 accumulation and rounds once, as PyTorch's `addmm` does; a separate bias add rounded
    /// the product to F16/BF16 first (tests/engine/half.rs measured ~1.5× PyTorch's error from
    /// that alone). Same launches on a GPU: the input's copy replaces the bias add.
    folded: Option<usize>,
}

/// Extra rows a folded bias takes: the bias row, then zeros so `in + n` is a multiple of 8
/// (tensor-core GEMMs want aligned K).
fn folded_rows(in_dim: usize) -> usize {
    (in_dim + 1).next_multiple_of(8) - in_dim
}

thread_local! {
    /// The last `[rows, n]` tail [`unit_columns`] made: every Linear of a pass has the same
    /// rows, so a pass makes it once.
    static UNIT: std::cell::RefCell<Option<Tensor>> = const { std::cell::RefCell::new(None) };
}

/// `[rows, n]` of `[1, 0, …, 0]` rows in `dtype` on `device`, the input tail of a folded bias.
fn unit_columns(rows: usize, n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    UNIT.with(|cell| {
        let mut cell = cell.borrow_mut();
        if let Some(t) = cell.as_ref() {
            if t.dims() == [rows, n] && t.dtype() == dtype && t.device().same_device(device) {
                return Ok(t.clone());
            }
        }
        let one = Tensor::ones((rows, 1), dtype, device)?;
        let t = if n > 1 {
            Tensor::cat(&[one, Tensor::zeros((rows, n - 1), dtype, device)?], 1)?
        } else {
            one
        };
        *cell = Some(t.clone());
        Ok(t)
    })
}

impl Linear {
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::from_weights_named(weight, bias, None)
    }

    fn from_weights_named(
        weight: Tensor,
        bias: Option<Tensor>,
        name: Option<String>,
    ) -> Result<Self> {
        if crate::model::kernels::own_f32(weight.device(), weight.dtype()) {
            // Packed straight from the loaded rows: no transposed copy on the way (see
            // `gemm::Packed::pack` for why a load avoids temporaries).
            let weight = weight.contiguous()?;
            let (n, k) = weight.dims2()?;
            let b: Option<Vec<f32>> = bias.as_ref().map(|b| b.to_vec1()).transpose()?;
            let (storage, layout) = weight.storage_and_layout();
            let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets())
            else {
                candle_core::bail!("linear weight is not a contiguous CPU tensor");
            };
            let w = &cpu.as_slice::<f32>()?[start..end];
            if name.as_deref().is_some_and(|n| weights::quantize(n, k)) {
                let mut q = qgemm::QPacked::from_rows(w, n, k, b.as_deref());
                if let Some(name) = name {
                    q = q.named(name);
                }
                return Ok(Self::quantized(q, bias));
            }
            let mut packed = gemm::Packed::from_rows(w, n, k, b.as_deref());
            if let Some(name) = name {
                packed = packed.named(name);
            }
            return Ok(Self::packed(packed, bias));
        }
        Self::from_transposed(weight.t()?.contiguous()?, bias)
    }

    fn packed(packed: gemm::Packed, bias: Option<Tensor>) -> Self {
        let packed = Arc::new(packed);
        weights::note_packed(&packed);
        Self {
            weight_t: None,
            bias,
            packed: Some(packed),
            quant: None,
            folded: None,
        }
    }

    fn quantized(q: qgemm::QPacked, bias: Option<Tensor>) -> Self {
        let q = Arc::new(q);
        weights::note_quantized(&q);
        Self {
            weight_t: None,
            bias,
            packed: None,
            quant: Some(q),
            folded: None,
        }
    }

    /// The `[out_dim, in_dim]` weight at `vb`'s path: viewed in the weights cache when the build
    /// replays one that has it, else read from the checkpoint and packed (and named, so that a
    /// recording build can write it).
    fn load_weight(
        in_dim: usize,
        out_dim: usize,
        bias: Option<Tensor>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let name = weights::name(&vb, "weight");
        match Self::cached(in_dim, out_dim, bias, &vb, &name)? {
            Ok(cached) => Ok(cached),
            Err(bias) => {
                let weight = vb.get((out_dim, in_dim), "weight")?;
                Self::from_weights_named(weight, bias, Some(name))
            }
        }
    }

    /// The weight `name` viewed in the weights cache, when the build replays one that has it
    /// in the form this build needs (int8 or f32 panels); else `bias` back, for a load from
    /// the checkpoint.
    fn cached(
        in_dim: usize,
        out_dim: usize,
        bias: Option<Tensor>,
        vb: &VarBuilder,
        name: &str,
    ) -> Result<std::result::Result<Self, Option<Tensor>>> {
        let dims = (in_dim, out_dim);
        let bias_values = || bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose();
        if weights::quantize(name, in_dim) {
            if let Some(bytes) = weights::view_int8(vb, name, dims) {
                let b = bias_values()?;
                if let Some(q) = qgemm::QPacked::from_panels(in_dim, out_dim, bytes, b.as_deref()) {
                    return Ok(Ok(Self::quantized(q.named(name.to_string()), bias)));
                }
            }
        } else if let Some(values) = weights::view(vb, name, weights::Kind::Panels, dims) {
            let b = bias_values()?;
            if let Some(p) = gemm::Packed::from_panels(in_dim, out_dim, values, b.as_deref()) {
                return Ok(Ok(Self::packed(p.named(name.to_string()), bias)));
            }
        }
        Ok(Err(bias))
    }

    /// A weight the model changes at load (a scale folded into a query projection): `f` maps
    /// the checkpoint's `[out_dim, in_dim]` weight and its bias (when `bias`), read in f32, to
    /// the ones served, before the one rounding to the compute dtype. Named after `vb`'s path
    /// like every loaded weight, so `--dtype int8` quantizes it and the weights cache keeps it,
    /// transformed: a replay views it as it is. (Unnamed, ModernBERT's fused Q/K/V stayed f32
    /// in the int8 path, ~40 % of its time.)
    pub fn load_transformed(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
        f: impl Fn(Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        let dtype = vb.dtype();
        let f32s = vb.clone().set_dtype(DType::F32);
        let bias = match bias {
            true => Some(f(f32s.get(out_dim, "bias")?)?.to_dtype(dtype)?),
            false => None,
        };
        let name = weights::name(&vb, "weight");
        match Self::cached(in_dim, out_dim, bias, &vb, &name)? {
            Ok(cached) => Ok(cached),
            Err(bias) => {
                let weight = f(f32s.get((out_dim, in_dim), "weight")?)?.to_dtype(dtype)?;
                Self::from_weights_named(weight, bias, Some(name))
            }
        }
    }

    fn from_transposed(weight_t: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if crate::model::kernels::own_f32(weight_t.device(), weight_t.dtype()) {
            let (k, n) = weight_t.dims2()?;
            let w: Vec<f32> = weight_t.flatten_all()?.to_vec1()?;
            let b: Option<Vec<f32>> = bias.as_ref().map(|b| b.to_vec1()).transpose()?;
            let packed = gemm::Packed::from_transposed(&w, k, n, b.as_deref());
            return Ok(Self::packed(packed, bias));
        }
        let mut folded = None;
        let mut weight_t = weight_t;
        if let (true, Some(b)) = (is_half(weight_t.dtype()), &bias) {
            let (k, n) = weight_t.dims2()?;
            let extra = folded_rows(k);
            let mut rows = vec![weight_t, b.reshape((1, n))?];
            if extra > 1 {
                rows.push(Tensor::zeros((extra - 1, n), b.dtype(), b.device())?);
            }
            weight_t = Tensor::cat(&rows, 0)?.contiguous()?;
            folded = Some(extra);
        }
        Ok(Self {
            weight_t: Some(weight_t),
            bias,
            packed: None,
            quant: None,
            folded,
        })
    }

    /// `[in, out]`, rebuilt from the packed form where that is all there is.
    fn weight_t(&self) -> Result<Tensor> {
        match (&self.weight_t, &self.packed) {
            (Some(w), _) if self.folded.is_some() => {
                let k = w.dim(0)? - self.folded.unwrap_or(0);
                w.narrow(0, 0, k)
            }
            (Some(w), _) => Ok(w.clone()),
            (None, Some(p)) => Tensor::from_vec(p.to_transposed(), (p.k(), p.n()), &Device::Cpu),
            (None, None) => candle_core::bail!("linear layer without a weight"),
        }
    }

    pub fn load(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let bias = vb.get(out_dim, "bias")?;
        Self::load_weight(in_dim, out_dim, Some(bias), vb)
    }

    /// [`Self::load`] with weight and bias multiplied by `scale` (the attention's 1/√d folded
    /// into the query projection), in f32 before the one rounding to the compute dtype. On the
    /// [`kernel_path`] it loads unscaled: the one-pass attention scales in f32 at no extra op,
    /// and the weights cache holds the checkpoint's panels.
    pub fn load_scaled(in_dim: usize, out_dim: usize, scale: f64, vb: VarBuilder) -> Result<Self> {
        if kernel_path(&vb) {
            return Self::load(in_dim, out_dim, vb);
        }
        let dtype = vb.dtype();
        let f = vb.set_dtype(DType::F32);
        let w = f.get((out_dim, in_dim), "weight")?.affine(scale, 0.0)?;
        let b = f.get(out_dim, "bias")?.affine(scale, 0.0)?;
        Self::from_weights(w.to_dtype(dtype)?, Some(b.to_dtype(dtype)?))
    }

    pub fn load_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Self::load_weight(in_dim, out_dim, None, vb)
    }

    pub fn load_opt_bias(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if bias {
            Self::load(in_dim, out_dim, vb)
        } else {
            Self::load_no_bias(in_dim, out_dim, vb)
        }
    }

    /// Several projections of the same input fused into one matmul (e.g. Q, K and V).
    pub fn fused(parts: &[Linear]) -> Result<Self> {
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            let bs: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias.as_ref()).collect();
            Some(Tensor::cat(&bs, 0)?)
        } else {
            None
        };
        // Packed parts are joined panel by panel; each packed bias is zeros where it had none,
        // so that is exact only when all or none have one.
        let same_bias = bias.is_some() || parts.iter().all(|p| p.bias.is_none());
        let quant: Option<Vec<&qgemm::QPacked>> =
            parts.iter().map(|p| p.quant.as_deref()).collect();
        if let Some(joined) = quant
            .filter(|_| same_bias)
            .and_then(|qs| qgemm::QPacked::concat(&qs))
        {
            return Ok(Self::quantized(joined, bias));
        }
        let packed: Option<Vec<&gemm::Packed>> =
            parts.iter().map(|p| p.packed.as_deref()).collect();
        if let Some(joined) = packed
            .filter(|_| same_bias)
            .and_then(|ps| gemm::Packed::concat(&ps))
        {
            return Ok(Self::packed(joined, bias));
        }
        let ws = parts
            .iter()
            .map(Linear::weight_t)
            .collect::<Result<Vec<_>>>()?;
        let weight_t = Tensor::cat(&ws, 1)?.contiguous()?;
        Self::from_transposed(weight_t, bias)
    }

    /// `act(self(xs))`, with exact GELU fused into the matmul where the packed kernel runs.
    pub fn forward_act(&self, xs: &Tensor, act: Activation) -> Result<Tensor> {
        match (self.kernel(), act) {
            (Some(w), Activation::Gelu) => packed_forward(w, xs, gemm::Epilogue::GeluErf),
            _ => act.apply(&self.forward(xs)?),
        }
    }

    /// `self(xs) + residual`, the sum done in the matmul's epilogue where the packed kernel runs
    /// and the residual is a contiguous f32 tensor of the output's shape; otherwise a tensor add
    /// (the same f32 sum either way).
    pub fn forward_add(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Some(w) = self.kernel() {
            if residual.dtype() == DType::F32 && residual.device().is_cpu() {
                return xs
                    .contiguous()?
                    .apply_op2_no_bwd(&residual.contiguous()?, &PackedMatmulAdd { w });
            }
        }
        self.forward(xs)? + residual
    }

    /// The hand-written kernel's weight, where one runs this layer.
    fn kernel(&self) -> Option<Kernel<'_>> {
        match (&self.quant, &self.packed) {
            (Some(q), _) => Some(Kernel::Int8(q)),
            (None, Some(p)) => Some(Kernel::F32(p)),
            (None, None) => None,
        }
    }
}

/// A weight in one of the CPU kernels' layouts.
#[derive(Clone, Copy)]
enum Kernel<'a> {
    F32(&'a gemm::Packed),
    Int8(&'a qgemm::QPacked),
}

impl Kernel<'_> {
    fn k(&self) -> usize {
        match self {
            Kernel::F32(w) => w.k(),
            Kernel::Int8(w) => w.k(),
        }
    }
    fn n(&self) -> usize {
        match self {
            Kernel::F32(w) => w.n(),
            Kernel::Int8(w) => w.n(),
        }
    }
    /// The shape of this weight's output for an input laid out as `input` (checked by
    /// [`kernel_rows`]): its last dimension becomes `n`.
    fn output_dims(&self, input: &candle_core::Layout) -> Vec<usize> {
        let mut dims = input.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.n();
        }
        dims
    }
    fn matmul(&self, x: &[f32], m: usize, epilogue: gemm::Epilogue<'_>) -> Vec<f32> {
        match self {
            Kernel::F32(w) => gemm::matmul(x, m, w, epilogue),
            Kernel::Int8(w) => qgemm::matmul(x, m, w, epilogue),
        }
    }
}

fn packed_forward(w: Kernel<'_>, xs: &Tensor, epilogue: gemm::Epilogue<'static>) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op1_no_bwd(&PackedMatmul { w, epilogue })
}

/// [`gemm::matmul`] or [`qgemm::matmul`] as a candle op on `[.., in]` f32 CPU tensors.
struct PackedMatmul<'a> {
    w: Kernel<'a>,
    epilogue: gemm::Epilogue<'static>,
}

/// The contiguous f32 rows of an input to one of the kernels, and how many of `k` values.
fn kernel_rows<'s>(
    storage: &'s candle_core::CpuStorage,
    layout: &candle_core::Layout,
    k: usize,
) -> Result<(&'s [f32], usize)> {
    let (candle_core::CpuStorage::F32(data), Some((start, end))) =
        (storage, layout.contiguous_offsets())
    else {
        candle_core::bail!("packed matmul needs a contiguous f32 tensor");
    };
    let dims = layout.dims();
    if dims.last() != Some(&k) {
        candle_core::bail!("packed matmul: input {dims:?}, weight takes {k} features");
    }
    Ok((&data[start..end], (end - start) / k))
}

/// [`PackedMatmul`] plus a residual of the output's shape, added in the epilogue.
struct PackedMatmulAdd<'a> {
    w: Kernel<'a>,
}

impl candle_core::CustomOp2 for PackedMatmulAdd<'_> {
    fn name(&self) -> &'static str {
        "classifyd-packed-matmul-add"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (x, m) = kernel_rows(s1, l1, self.w.k())?;
        let out_dims = self.w.output_dims(l1);
        if l2.dims() != out_dims.as_slice() {
            candle_core::bail!(
                "packed matmul: residual {:?}, output {out_dims:?}",
                l2.dims()
            );
        }
        let (residual, _) = kernel_rows(s2, l2, self.w.n())?;
        let out = self.w.matmul(x, m, gemm::Epilogue::Add(residual));
        Ok((candle_core::CpuStorage::F32(out), out_dims.into()))
    }
}

impl candle_core::CustomOp1 for PackedMatmul<'_> {
    fn name(&self) -> &'static str {
        "classifyd-packed-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (x, m) = kernel_rows(storage, layout, self.w.k())?;
        let out = self.w.matmul(x, m, self.epilogue);
        Ok((
            candle_core::CpuStorage::F32(out),
            self.w.output_dims(layout).into(),
        ))
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(w) = self.kernel() {
            return packed_forward(w, xs, gemm::Epilogue::None);
        }
        let dims = xs.dims();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let flat = xs.reshape((rows, in_dim))?;
        let out = match (&self.weight_t, self.folded) {
            (Some(w), Some(extra)) => {
                let tail = unit_columns(rows, extra, xs.dtype(), xs.device())?;
                Tensor::cat(&[&flat, &tail], 1)?.matmul(w)?
            }
            _ => {
                let mut out = flat.matmul(&self.weight_t()?)?;
                if let Some(bias) = &self.bias {
                    out = out.broadcast_add(bias)?;
                }
                out
            }
        };
        let mut out_dims = dims.to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = out.dim(1)?;
        out.reshape(out_dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quantized weight's dot products stay inside i32: one wider than `qgemm::MAX_K` inputs
    /// is kept in f32 even while the build quantizes, and one at the bound is quantized.
    #[test]
    fn int8_is_refused_where_the_integer_sums_could_wrap() {
        let worst = |k: usize| k as i64 * 255 * 127;
        assert!(worst(qgemm::MAX_K) <= i64::from(i32::MAX));
        assert!(worst(qgemm::MAX_K + 1) > i64::from(i32::MAX));
        let name = "encoder.layer.0.intermediate.dense.weight".to_string();
        let linear = |k: usize| {
            let w = Tensor::ones((1, k), DType::F32, &Device::Cpu).unwrap();
            weights::quantizing(|| Linear::from_weights_named(w, None, Some(name.clone()))).unwrap()
        };
        let wide = linear(qgemm::MAX_K + 1);
        assert!(wide.quant.is_none() && wide.packed.is_some());
        let fits = linear(qgemm::MAX_K);
        assert!(fits.quant.is_some());
    }
}
