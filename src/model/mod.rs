//! Model code, one file per architecture family.
//!
//! Every family implements [`SequenceClassifier`]: a padded batch in, one row of logits per text
//! out. Masks are built here once per batch, in the compute dtype, with a finite "minus a lot"
//! value so that F16/BF16 never see `0 × -inf` (the candle-transformers BERT bug) and never
//! overflow to infinity when the score is added.

pub mod attend;
pub mod bert;
pub mod deberta;
pub mod decoder;
pub mod distilbert;
pub mod electra;
pub mod embedding;
pub mod gelu;
pub mod gemm;
pub mod mapped;
pub mod modernbert;
pub mod norm;
pub mod qgemm;
pub mod roberta;
pub mod rope;
pub mod team;
pub mod weights;

pub use embedding::{embedding, Embedding};

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

/// A tokenized, padded batch, already on the model's device. Uploaded once per batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, seq]` u32 token ids, right-padded with the tokenizer's pad id.
    pub input_ids: Tensor,
    /// `[batch, seq]` u32, 1 for a real token and 0 for padding (Hugging Face's meaning).
    pub attention_mask: Tensor,
    /// `[batch, seq]` u32 segment ids (zeros where the model has no segments).
    pub token_type_ids: Tensor,
    /// `[batch, seq]` u32 absolute position ids, already offset as the model expects.
    pub position_ids: Tensor,
}

/// How a family numbers positions. RoBERTa-style models start at `pad_token_id + 1` and give
/// padding the pad id itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionScheme {
    FromZero,
    AfterPadding { pad_token_id: u32 },
}

impl PositionScheme {
    pub fn position(self, index: usize, real: bool) -> u32 {
        match self {
            PositionScheme::FromZero => index as u32,
            PositionScheme::AfterPadding { pad_token_id } if real => {
                pad_token_id + 1 + index as u32
            }
            PositionScheme::AfterPadding { pad_token_id } => pad_token_id,
        }
    }

    /// How many positions the scheme spends before the first token.
    pub fn offset(self) -> usize {
        match self {
            PositionScheme::FromZero => 0,
            PositionScheme::AfterPadding { pad_token_id } => pad_token_id as usize + 1,
        }
    }
}

/// What a model's logits describe: each text (`*ForSequenceClassification`) or each of its
/// tokens (`*ForTokenClassification`: NER, PII).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Sequence,
    Token,
}

impl Task {
    /// From `architectures[0]`.
    pub fn of(architecture: &str) -> Self {
        if architecture.ends_with("ForTokenClassification") {
            Task::Token
        } else {
            Task::Sequence
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Sequence => "sequence",
            Task::Token => "token",
        }
    }
}

/// The head every `*ForTokenClassification` of these families shares: one linear layer
/// (`classifier`) over each token's final hidden state, dropout being the identity at
/// inference. In f32 off F32, as [`head_vb`] says why.
#[derive(Debug, Clone)]
pub struct TokenHead(Linear);

impl TokenHead {
    pub fn load(hidden: usize, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Linear::load(
            hidden,
            num_labels,
            head_vb(vb.pp("classifier")),
        )?))
    }
    /// `[batch, tokens, hidden]` → `[batch, tokens, num_labels]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.0.forward(&to_head(hidden)?)
    }
}

/// `RobertaClassificationHead` and `ElectraClassificationHead`: dense and an activation over
/// the first token (tanh for RoBERTa; exact GELU for ELECTRA, whatever `hidden_act` says), then
/// `out_proj`. In f32 off F32, as [`head_vb`] says why.
pub struct ClsHead {
    dense: Linear,
    out_proj: Linear,
    act: Activation,
}

impl ClsHead {
    /// `vb` at the head (`classifier`).
    pub fn load(hidden: usize, num_labels: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        let vb = head_vb(vb);
        Ok(Self {
            dense: Linear::load(hidden, hidden, vb.pp("dense"))?,
            out_proj: Linear::load(hidden, num_labels, vb.pp("out_proj"))?,
            act,
        })
    }
    /// `[batch, tokens, hidden]` → `[batch, num_labels]`.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = self.dense.forward(&to_head(&first_token(hidden)?)?)?;
        self.out_proj.forward(&self.act.apply(&x)?)
    }
}

/// The head of a family whose sequence head is a [`ClsHead`] (RoBERTa, ELECTRA): that, or the
/// shared [`TokenHead`] for `*ForTokenClassification`.
pub enum ClsOrTokens {
    Cls(ClsHead),
    Tokens(TokenHead),
}

impl ClsOrTokens {
    /// `act`: the [`ClsHead`]'s activation. Its weights are under `classifier` either way.
    pub fn load(
        task: Task,
        hidden: usize,
        num_labels: usize,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(match task {
            Task::Sequence => {
                Self::Cls(ClsHead::load(hidden, num_labels, act, vb.pp("classifier"))?)
            }
            Task::Token => Self::Tokens(TokenHead::load(hidden, num_labels, vb)?),
        })
    }
    /// Whether the head reads the first position alone (so the last layer need compute no other).
    pub fn first_only(&self) -> bool {
        matches!(self, Self::Cls(_))
    }
    /// `[batch, tokens, hidden]` → the task's logits.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        match self {
            Self::Cls(h) => h.forward(hidden),
            Self::Tokens(h) => h.forward(hidden),
        }
    }
}

/// What the engine needs to know about a loaded architecture beyond its forward pass.
pub trait SequenceClassifier: Send + Sync {
    /// Logits in the compute dtype: `[batch, num_labels]`, or `[batch, tokens, num_labels]`
    /// for a [`Task::Token`] model.
    fn forward(&self, batch: &Batch) -> Result<Tensor>;
    fn position_scheme(&self) -> PositionScheme {
        PositionScheme::FromZero
    }
    /// Whether the model reads `token_type_ids` (BERT-style segments); otherwise zeros are sent.
    fn uses_token_types(&self) -> bool {
        false
    }
    /// Rows of the token-type embedding table, when [`Self::uses_token_types`]: every type id
    /// sent must be below it (checked on the host: on a GPU an id past the table is an
    /// out-of-bounds gather, not an error).
    fn token_types(&self) -> usize {
        0
    }
    /// Where a sequence head reads each text, for `inspect`: `"first token"` unless said
    /// otherwise (a token head reads every token; the engine says so from the task).
    fn pooling(&self) -> String {
        "first token".into()
    }
    /// The attention pattern, for `inspect`: `"bidirectional"` unless said otherwise.
    fn attention_pattern(&self) -> String {
        "bidirectional".into()
    }
    /// Longest sequence the position table (or rotary setup) allows, in tokens.
    fn max_positions(&self) -> usize;
    /// Rows of the word-embedding table; a tokenizer with more ids than this would index out of it.
    fn vocab_size(&self) -> usize;
    /// Bytes of attention working set (scores, probabilities, masks, position tables) that a
    /// forward pass of `rows` rows padded to `len` tokens takes at its peak. The scheduler
    /// cuts batches into passes under `--max-attention-mib` with it, and admission refuses a
    /// single input over that.
    fn attention_bytes(&self, rows: usize, len: usize) -> usize;
}

/// Bytes the scores of one query chunk may take in [`attention`] and ModernBERT's attention:
/// queries are processed in chunks so that no `[batch, heads, T, T]` tensor exists, and the
/// working set stays this size (times the three tensors a chunk lives as) whatever `T` is.
pub const ATTENTION_CHUNK_BYTES: usize = 32 << 20;

/// Query rows per attention chunk of at most `budget` bytes of scores, for `rows × heads`
/// score rows over `keys` keys (f32, the worst case): at least one, at most `len`.
pub fn attention_chunk(budget: usize, rows: usize, heads: usize, keys: usize, len: usize) -> usize {
    let per_query = rows
        .saturating_mul(heads)
        .saturating_mul(keys)
        .saturating_mul(4);
    (budget / per_query.max(1)).clamp(1, len.max(1))
}

/// [`SequenceClassifier::attention_bytes`] for query-chunked attention: three tensors
/// (scores, the masked scores, probabilities) of one chunk of `[rows, heads, chunk, len]` f32.
pub fn chunked_attention_bytes(rows: usize, heads: usize, len: usize) -> usize {
    let chunk = attention_chunk(ATTENTION_CHUNK_BYTES, rows, heads, len, len);
    3usize
        .saturating_mul(rows)
        .saturating_mul(heads)
        .saturating_mul(chunk)
        .saturating_mul(len)
        .saturating_mul(4)
}

/// `layer_types` as transformers 5 writes it, one entry a layer: whether each layer attends
/// within a sliding window (`"sliding_attention"`) or to every key (`"full_attention"`).
pub fn sliding_layers(types: &[String], layers: usize) -> std::result::Result<Vec<bool>, String> {
    if types.len() != layers {
        return Err(format!(
            "layer_types has {} entries for {layers} layers",
            types.len()
        ));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "sliding_attention" => Ok(true),
            "full_attention" => Ok(false),
            other => Err(format!("layer_types: {other:?} is not supported")),
        })
        .collect()
}

/// Hidden activations named in config.json (`hidden_act`, `classifier_activation`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU (erf), what transformers calls "gelu".
    Gelu,
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    Relu,
    #[serde(alias = "swish")]
    Silu,
    Tanh,
    Linear,
}

impl Activation {
    pub fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => gelu::gelu_erf(xs),
            Activation::GeluNew => xs.gelu(),
            Activation::Relu => xs.relu(),
            Activation::Silu => candle_nn::ops::silu(xs),
            Activation::Tanh => xs.tanh(),
            Activation::Linear => Ok(xs.clone()),
        }
    }
}

/// The value added to attention scores of padded keys: large enough to zero the key after
/// softmax, small enough that score + mask stays finite in the dtype.
pub fn mask_fill_value(dtype: DType) -> f64 {
    match dtype {
        // f16 tops out at 65504; half of it leaves room for any realistic score.
        DType::F16 => -32_000.0,
        _ => -1.0e30,
    }
}

/// `[batch, 1, 1, seq]` additive mask in `dtype`: 0 for real keys, a large negative for padding.
pub fn additive_key_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = attention_mask.dims2()?;
    let keep = attention_mask.to_dtype(DType::F32)?;
    let masked = ((keep - 1.0)? * -mask_fill_value(dtype))?;
    // (keep - 1) is 0 or -1; multiplying by -fill gives 0 or fill. Done in f32, then cast once.
    masked.to_dtype(dtype)?.reshape((b, 1, 1, t))
}

/// Whether a build at `vb` runs the hand-written CPU kernels (f32 on the CPU: packed matmuls,
/// one-pass attention) rather than candle's ops (every GPU build, and F16/BF16 on the CPU).
pub fn kernel_path(vb: &VarBuilder) -> bool {
    vb.device().is_cpu() && vb.dtype() == DType::F32
}

/// Whether this CPU runs AVX2, asked once: the vector builds of attention and LayerNorm
/// ([`attend`], [`norm`]) need nothing more.
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether `dtype` is a reduced precision whose attention, norms and head we keep in f32.
pub fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// The dtype attention scores and softmax are computed in: f32 for F16/BF16 (as PyTorch's
/// attention kernels accumulate them), else the compute dtype. Rounding scores to F16/BF16
/// before the softmax was the largest part of our reduced-precision error (tests/engine/half.rs).
pub fn attention_dtype(dtype: DType) -> DType {
    if is_half(dtype) {
        DType::F32
    } else {
        dtype
    }
}

/// `x` contiguous and in `dtype`, in one copy: a cast of a strided view writes it contiguous, so
/// a permute followed by a cast costs one kernel, not two.
pub fn contiguous_as(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        x.contiguous()
    } else {
        x.to_dtype(dtype)
    }
}

/// The classification head's builder: f32 when the body runs in F16/BF16, so the pooler and
/// classifier read the checkpoint's weights unrounded and add up in f32 (a few `[batch, hidden]`
/// rows: nothing to save by doing them in half).
pub fn head_vb(vb: VarBuilder) -> VarBuilder {
    let dtype = vb.dtype();
    if is_half(dtype) {
        vb.set_dtype(DType::F32)
    } else {
        vb
    }
}

/// A row of hidden states entering the head, in the head's dtype (see [`head_vb`]).
pub fn to_head(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(attention_dtype(x.dtype()))
}

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
        if weight.device().is_cpu() && weight.dtype() == DType::F32 {
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
            if name.as_deref().is_some_and(weights::quantize) {
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
        let dims = (in_dim, out_dim);
        let bias_values = || bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose();
        if weights::quantize(&name) {
            if let Some(bytes) = weights::view_int8(&vb, &name, dims) {
                let b = bias_values()?;
                if let Some(q) = qgemm::QPacked::from_panels(in_dim, out_dim, bytes, b.as_deref()) {
                    return Ok(Self::quantized(q.named(name), bias));
                }
            }
        } else if let Some(values) = weights::view(&vb, &name, weights::Kind::Panels, dims) {
            let b = bias_values()?;
            if let Some(p) = gemm::Packed::from_panels(in_dim, out_dim, values, b.as_deref()) {
                return Ok(Self::packed(p.named(name), bias));
            }
        }
        let weight = vb.get((out_dim, in_dim), "weight")?;
        Self::from_weights_named(weight, bias, Some(name))
    }

    fn from_transposed(weight_t: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if weight_t.device().is_cpu() && weight_t.dtype() == DType::F32 {
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

/// LayerNorm in one op: f32 on the CPU through [`norm`] (vector lane sums, the variance taken
/// around the mean), otherwise candle's fused kernel, which accumulates in f32 whatever the
/// compute dtype (F16 variance over a few hundred features would overflow or lose the mean
/// otherwise). Either makes one op instead of the eight tensor ops of the textbook formula.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    /// Zeros when the checkpoint has no bias, so one kernel serves both.
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Self::load_opt_bias(dim, eps, true, vb)
    }

    pub fn load_opt_bias(dim: usize, eps: f64, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let bias = if bias {
            vb.get(dim, "bias")?
        } else {
            weight.zeros_like()?
        };
        Ok(Self {
            weight,
            bias,
            eps: eps as f32,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(y) = norm::layer_norm(xs, &self.weight, &self.bias, self.eps)? {
            return Ok(y);
        }
        candle_nn::ops::layer_norm(&xs.contiguous()?, &self.weight, &self.bias, self.eps)
    }
}

/// Multi-head scaled dot-product attention straight from a fused `[batch, seq, 3·hidden]` Q/K/V
/// projection. `mask` is additive, broadcastable to `[batch, heads, seq, seq]`, in
/// [`attention_dtype`]. `prescaled`: the query projection already carries 1/√d
/// ([`Linear::load_scaled`]), as it does everywhere but on the [`kernel_path`]. Only the first
/// `q_len` positions query (all `seq` keys are read): `[batch, q_len, hidden]` comes back, so
/// a last layer read only at `[CLS]` attends for it alone.
///
/// On the CPU in f32 this is the one-pass kernel ([`attend`]). Otherwise, candle ops: one
/// reshape and permute into `[3, batch, heads, seq, head_dim]` and one copy that also casts
/// F16/BF16 to f32 (a single kernel on a GPU, where splitting q, k and v apart took three),
/// the scores and softmax in f32, and the merge of the heads and the cast back as one more copy.
pub fn self_attention(
    qkv: &Tensor,
    heads: usize,
    mask: &Tensor,
    prescaled: bool,
    q_len: usize,
) -> Result<Tensor> {
    let (b, t, three) = qkv.dims3()?;
    let hidden = three / 3;
    if hidden * 3 != three || heads == 0 || !hidden.is_multiple_of(heads) {
        candle_core::bail!("attention: {three} fused features do not split into 3 × {heads} heads");
    }
    if q_len > t {
        candle_core::bail!("attention: {q_len} queries from {t} positions");
    }
    let hd = hidden / heads;
    let scale = if prescaled {
        1.0
    } else {
        1.0 / (hd as f64).sqrt()
    };
    if !prescaled {
        let (q, k, v) = (
            qkv.narrow(2, 0, hidden)?.narrow(1, 0, q_len)?,
            qkv.narrow(2, hidden, hidden)?,
            qkv.narrow(2, 2 * hidden, hidden)?,
        );
        if let Some(ctx) = attend::attend(&q, &k, &v, heads, mask)? {
            return Ok(ctx);
        }
    }
    let chunk = attention_chunk(ATTENTION_CHUNK_BYTES, b, heads, t, q_len);
    attention_ops(qkv, heads, mask, scale, chunk, q_len)
}

/// [`self_attention`] in candle ops, for every device and dtype, `chunk` query rows at a time.
fn attention_ops(
    qkv: &Tensor,
    heads: usize,
    mask: &Tensor,
    scale: f64,
    chunk: usize,
    q_len: usize,
) -> Result<Tensor> {
    let (b, t, three) = qkv.dims3()?;
    let hidden = three / 3;
    let dtype = qkv.dtype();
    let split = contiguous_as(
        &qkv.reshape((b, t, 3, heads, hidden / heads))?
            .permute((2, 0, 3, 1, 4))?,
        attention_dtype(dtype),
    )?;
    let (q, k, v) = (split.get(0)?, split.get(1)?, split.get(2)?);
    let q = if q_len == t {
        q
    } else {
        q.narrow(2, 0, q_len)?
    };
    let parts = attention_heads(&q, &k, &v, mask, scale, chunk)?;
    merge_heads_as(parts, (b, q_len, hidden), dtype)
}

/// Attention over heads already split, `[B, H, T, D]` each, `chunk` query rows at a time, so
/// that the scores never take more than [`ATTENTION_CHUNK_BYTES`] (about) whatever the length;
/// short sequences are one chunk. Returns each chunk's `[B, H, c, D]` context.
fn attention_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    chunk: usize,
) -> Result<Vec<Tensor>> {
    let t = q.dim(2)?;
    let kt = k.t()?;
    let chunk = chunk.clamp(1, t.max(1));
    let per_query_mask = mask.rank() == 4 && mask.dim(2)? == t && t > 1;
    let mut parts = Vec::with_capacity(t.div_ceil(chunk));
    for i0 in (0..t).step_by(chunk) {
        let c = chunk.min(t - i0);
        let (qc, mc) = if c == t {
            (q.clone(), mask.clone())
        } else {
            let m = if per_query_mask {
                mask.narrow(2, i0, c)?
            } else {
                mask.clone()
            };
            (q.narrow(2, i0, c)?, m)
        };
        let mut scores = qc.matmul(&kt)?;
        if scale != 1.0 {
            scores = (scores * scale)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mc)?)?;
        parts.push(probs.matmul(v)?);
    }
    Ok(parts)
}

/// The per-chunk contexts `[B, H, c, D]` of a chunked attention as one `[B, T, H·D]` tensor in
/// `dtype`: the merge of the heads and the cast are one copy.
pub(crate) fn merge_heads_as(
    mut parts: Vec<Tensor>,
    (b, t, hidden): (usize, usize, usize),
    dtype: DType,
) -> Result<Tensor> {
    let ctx = if parts.len() == 1 {
        parts.remove(0)
    } else {
        Tensor::cat(&parts, 2)?
    };
    contiguous_as(&ctx.transpose(1, 2)?, dtype)?.reshape((b, t, hidden))
}

/// The first `n` positions of `[batch, seq, hidden]`, contiguous (the residual of a layer that
/// computes only those); `x` itself when that is all of it.
pub fn first_positions(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == x.dim(1)? {
        Ok(x.clone())
    } else {
        x.narrow(1, 0, n)?.contiguous()
    }
}

/// The hidden state of the first token of every row (`[CLS]` / `<s>`).
pub fn first_token(hidden: &Tensor) -> Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)
}

/// What the model families' unit tests share: a committed fixture's config and weights, and a
/// padded two-row batch.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A fixture's config.json, parsed as `T`, and its weights in f32 on the CPU.
    pub fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> (T, VarBuilder<'static>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let cfg: T =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        // SAFETY: a committed fixture, not modified while mapped.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        (cfg, vb)
    }

    /// Two rows of `t` ids below `vocab`, the second padded after `second` tokens.
    pub fn two_rows(t: usize, vocab: u32, second: usize) -> Batch {
        let dev = Device::Cpu;
        let ids: Vec<u32> = (0..2 * t as u32).map(|i| 5 + (i * 7) % vocab).collect();
        let keep: Vec<u32> = (0..2 * t)
            .map(|i| u32::from(i < t || i % t < second))
            .collect();
        let positions: Vec<u32> = (0..2 * t as u32).map(|i| i % t as u32).collect();
        Batch {
            input_ids: Tensor::from_vec(ids, (2, t), &dev).unwrap(),
            attention_mask: Tensor::from_vec(keep, (2, t), &dev).unwrap(),
            token_type_ids: Tensor::zeros((2, t), DType::U32, &dev).unwrap(),
            position_ids: Tensor::from_vec(positions, (2, t), &dev).unwrap(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` values in [-1, 1] from a xorshift seeded with `seed`, for the kernels' tests.
    pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn fused_cpu_attention_matches_candle_ops_with_padding() {
        let dev = Device::Cpu;
        let (b, t, heads, hd) = (2, 7, 3, 8);
        let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * heads * hd), &dev).unwrap();
        // The second row is padded after 4 tokens.
        let keep = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]], &dev).unwrap();
        let mask = additive_key_mask(&keep, DType::F32).unwrap();
        let fast = self_attention(&qkv, heads, &mask, false, t).unwrap();
        let scale = 1.0 / (hd as f64).sqrt();
        let slow = attention_ops(&qkv, heads, &mask, scale, t, t).unwrap();
        let diff = max_abs_diff(&fast, &slow);
        assert!(diff < 1e-5, "max |Δ| {diff}");
        // A query projection that carries the scale gives the same context.
        let h = heads * hd;
        let pre = Tensor::cat(
            &[
                qkv.narrow(2, 0, h).unwrap().affine(scale, 0.0).unwrap(),
                qkv.narrow(2, h, 2 * h).unwrap(),
            ],
            2,
        )
        .unwrap();
        let diff = max_abs_diff(&self_attention(&pre, heads, &mask, true, t).unwrap(), &slow);
        assert!(diff < 1e-5, "prescaled: max |Δ| {diff}");
        // F16 takes candle's path, scores in f32, and comes back in F16.
        let half =
            self_attention(&pre.to_dtype(DType::F16).unwrap(), heads, &mask, true, t).unwrap();
        assert_eq!(half.dtype(), DType::F16);
        let diff = max_abs_diff(&half, &slow);
        assert!(diff < 1e-2, "f16: max |Δ| {diff}");
    }

    #[test]
    fn attention_for_the_first_queries_is_those_rows_of_the_whole() {
        let dev = Device::Cpu;
        let (b, t, heads, hd) = (2, 9, 3, 8);
        let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * heads * hd), &dev).unwrap();
        let keep = Tensor::new(&[[1u32; 9], [1, 1, 1, 1, 1, 0, 0, 0, 0]], &dev).unwrap();
        let mask = additive_key_mask(&keep, DType::F32).unwrap();
        let whole = self_attention(&qkv, heads, &mask, false, t).unwrap();
        for q_len in [1, 4] {
            let want = whole.narrow(1, 0, q_len).unwrap();
            // The one-pass kernel computes each row alone: the same bits.
            let fast = self_attention(&qkv, heads, &mask, false, q_len).unwrap();
            assert_eq!(fast.dims(), [b, q_len, heads * hd]);
            assert_eq!(max_abs_diff(&fast, &want), 0.0, "q_len {q_len}");
            // candle's ops (every other device and dtype), chunked or not.
            for chunk in [1, q_len] {
                let scale = 1.0 / (hd as f64).sqrt();
                let ops = attention_ops(&qkv, heads, &mask, scale, chunk, q_len).unwrap();
                assert_eq!(ops.dims(), [b, q_len, heads * hd]);
                let diff = max_abs_diff(&ops, &want);
                assert!(diff < 1e-5, "q_len {q_len}, chunk {chunk}: max |Δ| {diff}");
            }
        }
        assert!(self_attention(&qkv, heads, &mask, false, t + 1).is_err());
    }

    #[test]
    fn unscaled_scores_that_overflow_f16_stay_finite() {
        let dev = Device::Cpu;
        let (b, t, heads, hd) = (1, 5, 2, 16);
        // q·k ≈ 16 × 80 × 80 = 102,400 before scaling: past f16's 65,504.
        let qkv = (Tensor::ones((b, t, 3 * heads * hd), DType::F32, &dev).unwrap() * 80.0)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let keep = Tensor::ones((b, t), DType::U32, &dev).unwrap();
        let mask = additive_key_mask(&keep, DType::F32).unwrap();
        let ctx = self_attention(&qkv, heads, &mask, false, t).unwrap();
        let v: Vec<f32> = ctx
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(v.iter().all(|x| (x - 80.0).abs() < 1e-3), "{v:?}");
    }

    #[test]
    fn chunked_attention_equals_one_chunk_and_its_bound_holds_for_any_length() {
        let dev = Device::Cpu;
        let (b, t, heads, hd) = (2, 11, 2, 4);
        let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * heads * hd), &dev).unwrap();
        let keep = Tensor::new(
            &[
                [1u32, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
            ],
            &dev,
        )
        .unwrap();
        let mask = additive_key_mask(&keep, DType::F32).unwrap();
        let whole = attention_ops(&qkv, heads, &mask, 0.5, t, t).unwrap();
        for chunk in [1, 3, 4, 10] {
            let parts = attention_ops(&qkv, heads, &mask, 0.5, chunk, t).unwrap();
            let diff = max_abs_diff(&whole, &parts);
            assert!(diff < 1e-6, "chunk {chunk}: max |Δ| {diff}");
        }
        // The working set stops growing with T² once chunks are needed.
        let small = chunked_attention_bytes(1, 12, 512);
        assert_eq!(small, 3 * 12 * 512 * 512 * 4);
        for t in [4096, 8192, 1 << 16] {
            let bytes = chunked_attention_bytes(1, 12, t);
            assert!(bytes <= 3 * ATTENTION_CHUNK_BYTES, "{t}: {bytes}");
        }
        assert_eq!(attention_chunk(100, 1, 1, 1000, 7), 1);
        assert_eq!(attention_chunk(usize::MAX, 1, 1, 1, 7), 7);
    }
}
