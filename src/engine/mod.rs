//! The engine: a loaded model, its tokenizer and labels, and the batched forward pass.
//!
//! The engine is synchronous and owns its device. The daemon runs it on a dedicated thread;
//! the CLI calls it directly.

pub mod budget;
pub mod build;
pub mod cache;
pub mod device;
pub mod entities;
pub mod error;
pub mod heap;
pub mod loader;
pub mod opcount;
pub mod passes;
pub mod predict;
pub mod tokenize;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

pub use crate::engine::build::supported;
use crate::engine::build::{build_cached, build_model};
use crate::engine::cache::{CacheFile, CacheStatus};
use crate::engine::device::{device_name, DeviceKind, PassGate};
pub use crate::engine::device::{DTypeChoice, DeviceChoice};
use crate::engine::entities::Spans;
use crate::engine::error::{EngineError, InputError, LoadError};
use crate::engine::loader::{weight_summary, HeadConfig, ModelDir};
use crate::engine::predict::Answerer;
pub use crate::engine::predict::{scores, Answer, Prediction, TokenOptions, TokenPrediction};
use crate::engine::tokenize::{Encoded, Input, TextTokenizer, TokenTask};
use crate::model::kernels::{gemm, qgemm, weights};
use crate::model::{families, Batch, SequenceClassifier, Task};

/// What `inspect` prints and the daemon reports as its model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub architecture: String,
    /// The registry's family that serves it ("BERT", "DeBERTa-v2/v3", "Qwen3", …).
    pub family: &'static str,
    pub labels: Vec<String>,
    pub problem_type: &'static str,
    pub parameters: usize,
    pub max_length: usize,
    pub weight_dtype: String,
    pub compute_dtype: String,
    /// Why that dtype: `--dtype`, or which rule of `--dtype auto` chose it.
    pub dtype_reason: &'static str,
    /// The matmul kernels that run: `f32 avx512|avx2|portable` (packed panels), `int8
    /// avx512-vnni|avx2|portable`, or `candle` (GPU, F16/BF16).
    pub kernels: String,
    pub device: String,
    /// `sequence` (one row of logits per text) or `token` (one per token: NER, PII).
    pub task: &'static str,
    /// Where the head reads each text (first token, mean, last non-pad token).
    pub pooling: String,
    /// Bidirectional or causal, heads, windows.
    pub attention: String,
    /// The most attention scores one query chunk holds, in MiB: 32 on the CPU, sized from the
    /// free memory on a GPU (see `budget::chunk_bytes`).
    pub attention_chunk_mib: usize,
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where cache files live; `None` keeps every weight in private memory.
    pub cache_dir: Option<PathBuf>,
    /// The scheduler's `--max-attention-mib` in bytes, which a GPU's attention chunks stay
    /// well under (see `budget::chunk_bytes`); `None`: its default.
    pub max_attention_bytes: Option<usize>,
}

impl LoadOptions {
    /// From the `cache_dir` / `no_weights_cache` settings (serve) or flags (classify, bench):
    /// off, the directory given, or [`cache::default_dir`].
    pub fn from_settings(cache_dir: Option<&Path>, no_weights_cache: bool) -> Self {
        Self {
            cache_dir: if no_weights_cache {
                None
            } else {
                cache_dir.map(Path::to_path_buf).or_else(cache::default_dir)
            },
            max_attention_bytes: None,
        }
    }
}

pub struct Engine {
    model: Box<dyn SequenceClassifier>,
    task: Task,
    cache: CacheStatus,
    /// Cache entries the model uses in place, of those in the file.
    cache_views: (usize, usize),
    tokenizer: TextTokenizer,
    head: HeadConfig,
    info: ModelInfo,
    device: Device,
    /// One pass at a time on a GPU (see [`PassGate`]).
    passes: PassGate,
    /// Bytes of scores per attention query chunk, which every batch carries.
    chunk_bytes: usize,
    /// The packed matmul weights and the kernels they run in (empty on candle's path).
    matmuls: Vec<weights::WeightUse>,
    /// Last, so that it drops after the weights (fields drop in declaration order).
    _release: ReleaseOnDrop,
}

/// [`Engine::ops_per_forward`]'s counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassOps {
    /// Tensors created; `None` if candle's counter is unreadable.
    pub tensors: Option<usize>,
    /// Tensors made from host data.
    pub uploads: usize,
}

/// Hands the freed weights' memory back to the kernel when an engine is dropped (after a reload
/// retires it). The weights are mappings of their own and go back as they drop (see `heap`);
/// this returns what the model's smaller heap objects leave free.
#[derive(Debug, Default)]
struct ReleaseOnDrop;

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        crate::engine::heap::trim();
    }
}

impl Engine {
    /// Loads the model directory onto the chosen device in the chosen compute dtype, every
    /// weight in private memory.
    pub fn load(root: &Path, device: DeviceChoice, dtype: DTypeChoice) -> Result<Self, LoadError> {
        Self::load_with(root, device, dtype, &LoadOptions::default())
    }

    /// [`Engine::load`], with the weights cache when `opts` names a directory.
    pub fn load_with(
        root: &Path,
        device: DeviceChoice,
        dtype: DTypeChoice,
        opts: &LoadOptions,
    ) -> Result<Self, LoadError> {
        let _weights_apart = crate::engine::heap::Phase::load();
        let dir = ModelDir::open(root)?;
        let family = families::find(&dir.head.architecture).ok_or_else(|| build::unknown(&dir))?;
        let device = device.open()?;
        let int8 = dtype == DTypeChoice::Int8;
        if int8 && !device.is_cpu() {
            return Err(LoadError::Device {
                device: device_name(&device),
                message: "--dtype int8 runs on the CPU only; use f16 or bf16 on a GPU".into(),
            });
        }
        if int8 && crate::model::kernels::candle_ops() {
            return Err(LoadError::Device {
                device: device_name(&device),
                message: "--dtype int8 needs classifyd's own kernels, and \
                          CLASSIFYD_F32_KERNELS=candle turns them off"
                    .into(),
            });
        }
        let (dtype, dtype_reason) = dtype.resolve(
            &device,
            crate::engine::device::checkpoint_dtype(&dir.config),
            family.decoder,
        );
        // The cache's key is taken before the weights are mapped and again after the build
        // (see `build_cached`), so a file replaced in between is never cached under the key
        // of what was not read.
        let cached_as = match (&opts.cache_dir, int8) {
            // The layers' int8 panels, and the f32 panels of what stays in floating point, so
            // the key names both kernel sets.
            (Some(cache_dir), true) => Some((
                cache_dir,
                "int8",
                format!("{}+{}", gemm::kernel_set(), qgemm::kernel_set()),
            )),
            (Some(cache_dir), false) if crate::model::kernels::own_f32(&device, dtype) => {
                Some((cache_dir, "f32", gemm::kernel_set().to_string()))
            }
            _ => None,
        };
        let cache_file = cached_as
            .as_ref()
            .map(|(d, dt, k)| (CacheFile::for_model(d, &dir, dt, k), *d, *dt, k.as_str()));
        let st = dir.map_weights()?;
        let (parameters, weight_dtype) = weight_summary(&st);
        let chunk_bytes = budget::chunk_bytes(
            &device,
            (parameters as u64).saturating_mul(dtype.size_in_bytes() as u64),
            opts.max_attention_bytes
                .unwrap_or(crate::engine::passes::DEFAULT_MAX_ATTENTION_BYTES),
        );
        let vb = VarBuilder::from_backend(Box::new(st), dtype, device.clone());
        let build = |vb| match cache_file {
            Some((file, cache_dir, dt, kernels)) => {
                let key = build::CacheKey {
                    dir: cache_dir,
                    dtype: dt,
                    kernels,
                };
                build_cached(&dir, vb, file, key, &device)
            }
            None => {
                let status = if opts.cache_dir.is_some() {
                    CacheStatus::NotUsed
                } else {
                    CacheStatus::Off
                };
                Ok((build_model(&dir, vb)?, status, (0, 0)))
            }
        };
        let (built, matmuls) = weights::inventoried(|| match int8 {
            true => weights::quantizing(|| build(vb)),
            false => build(vb),
        });
        let (model, cache, cache_views) = built?;
        let max_len = match dir.model_max_length {
            Some(m) => m.min(model.max_positions()),
            None => model.max_positions(),
        };
        let task = Task::of(&dir.head.architecture);
        let token_task = TokenTask {
            unk_token: dir.unk_token.clone(),
        };
        let tokenizer = TextTokenizer::load(
            &dir.tokenizer_path,
            max_len,
            dir.head.pad_token_id,
            (task == Task::Token).then_some(&token_task),
        )?;
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(LoadError::VocabTooLarge {
                path: dir.tokenizer_path.clone(),
                tokenizer: tokenizer.vocab_size(),
                model: model.vocab_size(),
            });
        }
        let info = ModelInfo {
            architecture: dir.head.architecture.clone(),
            family: family.name,
            labels: dir.head.labels.clone(),
            problem_type: dir.head.problem_type.as_str(),
            parameters,
            max_length: max_len,
            weight_dtype,
            compute_dtype: if int8 {
                "int8".into()
            } else {
                format!("{dtype:?}").to_lowercase()
            },
            dtype_reason,
            kernels: match (int8, crate::model::kernels::own_f32(&device, dtype)) {
                (true, _) => format!("int8 {}", qgemm::kernel_set()),
                (false, true) => format!("f32 {}", gemm::kernel_set()),
                (false, false) => "candle".into(),
            },
            device: device_name(&device),
            task: task.as_str(),
            pooling: match task {
                Task::Token => "every token".into(),
                Task::Sequence => model.pooling(),
            },
            attention: model.attention_pattern(),
            attention_chunk_mib: chunk_bytes >> 20,
        };
        Ok(Self {
            model,
            task,
            cache,
            cache_views,
            tokenizer,
            head: dir.head,
            info,
            passes: PassGate::for_kind(DeviceKind::of(&device)),
            chunk_bytes,
            matmuls,
            device,
            _release: ReleaseOnDrop,
        })
    }

    /// How this load used the weights cache.
    pub fn cache_status(&self) -> &CacheStatus {
        &self.cache
    }

    /// `(used in place, in the file)`: how many of the cache file's weights the model reads
    /// from the mapping (every one, unless the model code and file disagree on a name).
    pub fn cache_views(&self) -> (usize, usize) {
        self.cache_views
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Each packed matmul weight of the model and the kernel it runs in, for `inspect
    /// --weights`; empty where every matmul is candle's (a GPU, F16/BF16).
    pub fn matmuls(&self) -> &[weights::WeightUse] {
        &self.matmuls
    }

    pub fn task(&self) -> Task {
        self.task
    }

    /// Tokenizes one input and checks it against the model's tables, so that nothing out of
    /// range ever reaches the device.
    pub fn tokenize(&self, input: &Input, truncate: bool) -> Result<Encoded, InputError> {
        let e = self.tokenizer.encode(input, truncate)?;
        if e.is_empty() {
            return Err(InputError::NoTokens);
        }
        if self.model.uses_token_types() {
            let types = self.model.token_types();
            if let Some(&id) = e.type_ids.iter().find(|&&t| t as usize >= types) {
                return Err(InputError::TokenTypeOutOfRange { id, types });
            }
        }
        Ok(e)
    }

    /// Pads the inputs into one batch and uploads it in one go: ids, mask, segments and
    /// positions are four planes of one `[4, rows, cols]` tensor, so a GPU sees one host-to-device
    /// copy per pass rather than four, and the model gets views.
    pub fn make_batch(&self, inputs: &[&Encoded]) -> Result<Batch, EngineError> {
        let rows = inputs.len();
        let cols = inputs.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let scheme = self.model.position_scheme();
        let types = self.model.uses_token_types();
        let pad = self.tokenizer.pad_id();
        let n = rows * cols;
        let mut planes = vec![0u32; 4 * n];
        let (ids, rest) = planes.split_at_mut(n);
        let (mask, rest) = rest.split_at_mut(n);
        let (type_ids, positions) = rest.split_at_mut(n);
        for (r, e) in inputs.iter().enumerate() {
            for j in 0..cols {
                let at = r * cols + j;
                let real = j < e.len();
                ids[at] = if real { e.ids[j] } else { pad };
                mask[at] = real as u32;
                type_ids[at] = if real && types { e.type_ids[j] } else { 0 };
                positions[at] = scheme.position(j, real);
            }
        }
        let all = crate::model::upload::from_vec(planes, (4, rows, cols), &self.device)?;
        let plane = |i: usize| all.get(i);
        Ok(Batch {
            input_ids: plane(0)?,
            attention_mask: plane(1)?,
            token_type_ids: plane(2)?,
            position_ids: plane(3)?,
            chunk_bytes: self.chunk_bytes,
        })
    }

    /// Logits for each input, as f32 on the host, in as many passes as
    /// [`crate::engine::passes::passes`] cuts them into under the default limits.
    ///
    /// On the CPU, inputs of different lengths are not padded into one batch: each group of
    /// equal length runs as its own forward pass. Padding is pure waste there (the packed
    /// matmul is as efficient at one 20-token row as at thirty: measured ~96 vs ~87 GFLOP/s),
    /// and with real text lengths a padded batch cost twice as much per text as one at a time
    /// (batch 32 of the bench tweets: 10.3 ms a text against 5.1 ms alone), so a backlog, once
    /// formed, was drained *slower* by batching. On a GPU padding is cheap and batching is the
    /// point, so rows share padded passes there, bucketed by length.
    pub fn logits(&self, inputs: &[&Encoded]) -> Result<Vec<Vec<f32>>, EngineError> {
        let shape = crate::engine::passes::PassShape::default_for(self.pads_batches());
        let plan: Vec<crate::engine::passes::PlanRow> = inputs
            .iter()
            .map(|e| crate::engine::passes::PlanRow {
                len: e.len(),
                urgency: 0,
            })
            .collect();
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); inputs.len()];
        for pass in crate::engine::passes::passes(&plan, shape, |n, l| self.attention_bytes(n, l)) {
            let rows: Vec<&Encoded> = pass.iter().map(|&i| inputs[i]).collect();
            for (&i, l) in pass.iter().zip(self.logits_padded(&rows)?) {
                out[i] = l;
            }
        }
        Ok(out)
    }

    /// The pass gate, as if this engine ran on `kind`: a test without a GPU checks that a GPU's
    /// passes go one at a time.
    #[doc(hidden)]
    pub fn gate_passes_as_on(&mut self, kind: DeviceKind) {
        self.passes = PassGate::for_kind(kind);
    }

    /// (passes that went through the gate, the most inside it at once); see [`PassGate`].
    pub fn pass_gate_counts(&self) -> (u64, usize) {
        self.passes.counts()
    }

    /// Whether rows of different lengths share padded passes: on a GPU, not on the CPU.
    pub fn pads_batches(&self) -> bool {
        !self.device.is_cpu()
    }

    /// The attention working set, in bytes, of one forward pass of `rows` rows padded to
    /// `len` tokens, as the model computes attention (see
    /// [`crate::model::SequenceClassifier::attention_bytes`]).
    pub fn attention_bytes(&self, rows: usize, len: usize) -> usize {
        self.model.attention_bytes(rows, len, self.chunk_bytes)
    }

    /// Logits for each input from one padded batch, whatever the device (the GPU path, and
    /// the padding masks' parity tests on the CPU).
    pub fn logits_padded(&self, inputs: &[&Encoded]) -> Result<Vec<Vec<f32>>, EngineError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        // Upload, pass and download together: all of it uses the device's one stream and
        // cuBLAS handle.
        self.passes.pass(|| self.logits_alone(inputs))
    }

    /// [`Engine::logits_padded`] inside the pass gate.
    fn logits_alone(&self, inputs: &[&Encoded]) -> Result<Vec<Vec<f32>>, EngineError> {
        let batch = self.make_batch(inputs)?;
        let logits = self.model.forward(&batch)?.to_dtype(DType::F32)?;
        match self.task {
            Task::Sequence => Ok(logits.to_vec2::<f32>()?),
            // A row's token logits, flattened, without its padding.
            Task::Token => {
                let labels = logits.dim(2)?;
                let flat = logits.flatten_from(1)?.to_vec2::<f32>()?;
                Ok(flat
                    .into_iter()
                    .zip(inputs)
                    .map(|(mut row, e)| {
                        row.truncate(e.len() * labels);
                        row
                    })
                    .collect())
            }
        }
    }

    /// A stand-in input of `len` tokens (clamped to the model's maximum): the pad token
    /// repeated, which every vocabulary has. For warm-up and measurements.
    pub fn synthetic_input(&self, len: usize) -> Encoded {
        Encoded::synthetic(
            self.tokenizer.pad_id(),
            len.clamp(1, self.info.max_length.max(1)),
        )
    }

    /// What one forward pass of `rows` rows of `len` tokens costs in ops: the tensors it
    /// creates, the upload included (see [`opcount`]), a proxy for kernel launches; and the
    /// tensors it makes from host data ([`crate::model::upload`]), each a host-to-device copy
    /// on a GPU.
    pub fn ops_per_forward(&self, rows: usize, len: usize) -> Result<PassOps, EngineError> {
        let row = self.synthetic_input(len);
        let inputs: Vec<&Encoded> = (0..rows.max(1)).map(|_| &row).collect();
        let uploads = crate::model::upload::count();
        let (logits, tensors) = opcount::tensors_created(|| self.logits_padded(&inputs));
        let uploads = crate::model::upload::count().saturating_sub(uploads);
        logits?;
        Ok(PassOps { tensors, uploads })
    }

    fn answerer(&self) -> Answerer<'_> {
        Answerer {
            head: &self.head,
            tokenizer: &self.tokenizer,
            task: self.task,
        }
    }

    /// Turns logits into labels and scores as transformers' pipelines do.
    /// A NaN or infinite logit refuses the input ([`InputError::NotFinite`]).
    pub fn predict(&self, logits: Vec<f32>, tokens: usize) -> Result<Prediction, InputError> {
        self.answerer().predict(logits, tokens)
    }

    /// A token model's answer from one input's flattened token logits (as
    /// [`Engine::logits_padded`] returns them), its ids and its spans.
    pub fn predict_tokens(
        &self,
        logits: Vec<f32>,
        ids: &[u32],
        spans: &Spans,
        opts: &TokenOptions,
    ) -> Result<TokenPrediction, InputError> {
        self.answerer().predict_tokens(logits, ids, spans, opts)
    }

    /// One input's answer from its logits: a [`Prediction`] or, for a token model, a
    /// [`TokenPrediction`] (which needs the input's spans; without them it has no entities).
    pub fn answer(
        &self,
        logits: Vec<f32>,
        encoded: &Encoded,
        opts: &TokenOptions,
    ) -> Result<Answer, InputError> {
        self.answerer().answer(logits, encoded, opts)
    }

    /// Tokenizes and classifies `inputs`, whichever the task.
    pub fn classify_with(
        &self,
        inputs: &[Input],
        truncate: bool,
        opts: &TokenOptions,
    ) -> Result<Vec<Result<Answer, InputError>>, EngineError> {
        self.run(inputs, truncate, |logits, e| self.answer(logits, e, opts))
    }

    /// Tokenizes, batches and classifies `inputs` with a sequence model.
    pub fn classify(
        &self,
        inputs: &[Input],
        truncate: bool,
    ) -> Result<Vec<Result<Prediction, InputError>>, EngineError> {
        self.run(inputs, truncate, |logits, e| self.predict(logits, e.len()))
    }

    /// Tokenizes `inputs`, computes the logits of those that tokenize, and turns each input's
    /// into an answer with `answer`; an input that does not tokenize keeps its error.
    fn run<T>(
        &self,
        inputs: &[Input],
        truncate: bool,
        answer: impl Fn(Vec<f32>, &Encoded) -> Result<T, InputError>,
    ) -> Result<Vec<Result<T, InputError>>, EngineError> {
        let encoded: Vec<Result<Encoded, InputError>> =
            inputs.iter().map(|i| self.tokenize(i, truncate)).collect();
        let ok: Vec<&Encoded> = encoded.iter().filter_map(|e| e.as_ref().ok()).collect();
        let mut logits = self.logits(&ok)?.into_iter();
        Ok(encoded
            .into_iter()
            .map(|e| {
                let e = e?;
                answer(logits.next().unwrap_or_default(), &e)
            })
            .collect())
    }
}
