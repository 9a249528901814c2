//! The engine: a loaded model, its tokenizer and labels, and the batched forward pass.
//!
//! The engine is synchronous and owns its device. The daemon runs it on a dedicated thread;
//! the CLI calls it directly.

pub mod cache;
pub mod entities;
pub mod error;
pub mod heap;
pub mod loader;
pub mod opcount;
pub mod passes;
pub mod tokenize;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::engine::cache::{CacheFile, CacheStatus};
use crate::engine::entities::{Aggregation, Entity, MinScore, Spans};
use crate::engine::error::{EngineError, InputError, LoadError};
use crate::engine::loader::{weight_summary, HeadConfig, ModelDir, ProblemType};
use crate::engine::tokenize::{Encoded, Input, TextTokenizer, TokenTask};
use crate::model::{
    bert::{Bert, EncoderConfig},
    deberta::DebertaV2,
    distilbert::{DistilBert, DistilBertConfig},
    electra::Electra,
    gemm,
    modernbert::ModernBert,
    roberta::Roberta,
    weights, Batch, SequenceClassifier, Task,
};

/// The architectures (`architectures[0]` in config.json) this build can serve.
pub const SUPPORTED: &[&str] = &[
    "BertForSequenceClassification",
    "DistilBertForSequenceClassification",
    "RobertaForSequenceClassification",
    "XLMRobertaForSequenceClassification",
    "ElectraForSequenceClassification",
    "ModernBertForSequenceClassification",
    "DebertaV2ForSequenceClassification",
    "LlamaForSequenceClassification",
    "MistralForSequenceClassification",
    "Qwen2ForSequenceClassification",
    "Qwen3ForSequenceClassification",
    "Gemma2ForSequenceClassification",
    "Gemma3TextForSequenceClassification",
    "Gemma3ForSequenceClassification",
    "BertForTokenClassification",
    "DistilBertForTokenClassification",
    "RobertaForTokenClassification",
    "XLMRobertaForTokenClassification",
    "ElectraForTokenClassification",
    "ModernBertForTokenClassification",
    "DebertaV2ForTokenClassification",
    "LlamaForTokenClassification",
    "MistralForTokenClassification",
    "Qwen2ForTokenClassification",
    "Qwen3ForTokenClassification",
    "Gemma2ForTokenClassification",
];

/// `--device auto|cpu|cuda[:N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?} (expected auto, cpu, cuda or cuda:N)"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    pub fn open(self) -> Result<Device, LoadError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => {
                if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                    // Falling back is the point of `auto`, but never silently: an operator who
                    // expected the GPU must see why it is not used.
                    Ok(Device::new_cuda(0).unwrap_or_else(|e| {
                        tracing::warn!(
                            "--device auto: CUDA failed to initialise ({}); using the CPU",
                            cuda_open_error(crate::engine::error::one_line(&e))
                        );
                        Device::Cpu
                    }))
                } else {
                    Ok(Device::Cpu)
                }
            }
            DeviceChoice::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(LoadError::Device {
                        device: format!("cuda:{n}"),
                        message: "this binary was built without the `cuda` feature".into(),
                    });
                }
                Device::new_cuda(n).map_err(|e| LoadError::Device {
                    device: format!("cuda:{n}"),
                    message: cuda_open_error(crate::engine::error::one_line(&e)),
                })
            }
        }
    }
}

/// What the driver errors seen when opening a device mean to an operator; the code is kept.
const CUDA_OPEN_ERRORS: &[(&str, &str)] = &[
    (
        "CUDA_ERROR_STUB_LIBRARY",
        "no NVIDIA GPU driver: the libcuda.so.1 found is a link-time stub, not the driver",
    ),
    ("CUDA_ERROR_NO_DEVICE", "no NVIDIA GPU found"),
    ("CUDA_ERROR_INVALID_DEVICE", "no NVIDIA GPU with that index"),
    (
        "CUDA_ERROR_INSUFFICIENT_DRIVER",
        "the NVIDIA driver is older than the CUDA this binary was built with",
    ),
    (
        "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
        "the NVIDIA driver library does not match the loaded kernel module",
    ),
    (
        "CUDA_ERROR_OUT_OF_MEMORY",
        "out of GPU memory while creating the CUDA context",
    ),
];

/// Opening a CUDA device fails with a bare driver error code (and, without a driver, an error
/// string that cannot be looked up); name what is missing instead.
fn cuda_open_error(raw: String) -> String {
    CUDA_OPEN_ERRORS
        .iter()
        .find(|(code, _)| raw.contains(code))
        .map(|(code, meaning)| format!("{meaning} ({code})"))
        .unwrap_or(raw)
}

/// `--dtype auto|f32|f16|bf16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    Auto,
    Fixed(DType),
    /// F32 with the transformer layers' matmul weights in int8 (CPU only; `model::qgemm`).
    Int8,
}

impl FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::Fixed(DType::F32)),
            "f16" => Ok(Self::Fixed(DType::F16)),
            "bf16" => Ok(Self::Fixed(DType::BF16)),
            "int8" => Ok(Self::Int8),
            _ => Err(format!(
                "unknown dtype {s:?} (expected auto, f32, f16, bf16 or int8)"
            )),
        }
    }
}

impl std::fmt::Display for DTypeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DTypeChoice::Auto => "auto",
            DTypeChoice::Fixed(DType::F16) => "f16",
            DTypeChoice::Fixed(DType::BF16) => "bf16",
            DTypeChoice::Fixed(_) => "f32",
            DTypeChoice::Int8 => "int8",
        })
    }
}

impl DTypeChoice {
    /// F32 on CPU (no f16 arithmetic in AVX2), F16 on CUDA. Int8 computes everything but the
    /// quantized matmuls in F32.
    pub fn resolve(self, device: &Device) -> DType {
        match self {
            DTypeChoice::Fixed(d) => d,
            DTypeChoice::Int8 => DType::F32,
            DTypeChoice::Auto if device.is_cuda() => DType::F16,
            DTypeChoice::Auto => DType::F32,
        }
    }
}

/// What `inspect` prints and the daemon reports as its model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub architecture: String,
    pub labels: Vec<String>,
    pub problem_type: &'static str,
    pub parameters: usize,
    pub max_length: usize,
    pub weight_dtype: String,
    pub compute_dtype: String,
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
}

/// One input's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub label: String,
    pub score: f32,
    /// Per-label scores in label order.
    pub scores: Vec<(String, f32)>,
    pub logits: Vec<f32>,
    pub tokens: usize,
}

/// One token-classification input's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenPrediction {
    pub entities: Vec<Entity>,
    pub tokens: usize,
    /// Each token's best label (an index into the model's labels) and its softmax score.
    #[serde(skip)]
    pub best: Vec<(usize, f32)>,
    /// One row per token, special tokens included, in label order.
    pub token_logits: Vec<Vec<f32>>,
    /// The text with each entity replaced by `[LABEL]`, when asked for.
    pub redacted: Option<String>,
}

/// What a token-classification answer is made of: the pipeline's aggregation, whether to
/// redact, and the scores an entity needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenOptions {
    pub aggregation: Aggregation,
    pub redact: bool,
    pub min_score: MinScore,
}

/// One input's answer, whichever the task.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Sequence(Prediction),
    Token(TokenPrediction),
}

/// How a load treats the weights cache ([`cache`]).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where cache files live; `None` keeps every weight in private memory.
    pub cache_dir: Option<PathBuf>,
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
    /// Last, so that it drops after the weights (fields drop in declaration order).
    _release: ReleaseOnDrop,
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

fn parse_config<T: serde::de::DeserializeOwned>(dir: &ModelDir) -> Result<T, LoadError> {
    T::deserialize(&dir.config).map_err(|e| LoadError::Config {
        path: dir.config_path.clone(),
        message: e.to_string(),
    })
}

fn check(dir: &ModelDir, r: Result<(), String>) -> Result<(), LoadError> {
    r.map_err(|message| LoadError::Config {
        path: dir.config_path.clone(),
        message,
    })
}

fn build_model(dir: &ModelDir, vb: VarBuilder) -> Result<Box<dyn SequenceClassifier>, LoadError> {
    let n = dir.head.labels.len();
    let weights_err = |e: candle_core::Error| LoadError::Weights {
        path: if dir.weight_files.len() == 1 {
            dir.weight_files[0].clone()
        } else {
            dir.root.clone()
        },
        message: crate::engine::error::one_line(&e),
    };
    let task = Task::of(&dir.head.architecture);
    let model: Box<dyn SequenceClassifier> = match dir.head.architecture.as_str() {
        "BertForSequenceClassification" | "BertForTokenClassification" => {
            let cfg: EncoderConfig = parse_config(dir)?;
            check(dir, cfg.check())?;
            Box::new(Bert::load(cfg, n, task, vb).map_err(weights_err)?)
        }
        "RobertaForSequenceClassification"
        | "XLMRobertaForSequenceClassification"
        | "RobertaForTokenClassification"
        | "XLMRobertaForTokenClassification" => {
            let cfg: EncoderConfig = parse_config(dir)?;
            check(dir, cfg.check())?;
            Box::new(Roberta::load(cfg, n, task, vb).map_err(weights_err)?)
        }
        "ElectraForSequenceClassification" | "ElectraForTokenClassification" => {
            let cfg: EncoderConfig = parse_config(dir)?;
            check(dir, cfg.check())?;
            Box::new(Electra::load(cfg, n, task, vb).map_err(weights_err)?)
        }
        "DistilBertForSequenceClassification" | "DistilBertForTokenClassification" => {
            let cfg: DistilBertConfig = parse_config(dir)?;
            check(dir, cfg.check())?;
            Box::new(DistilBert::load(cfg, n, task, vb).map_err(weights_err)?)
        }
        "ModernBertForSequenceClassification" | "ModernBertForTokenClassification" => {
            let cfg = parse_config(dir)?;
            Box::new(ModernBert::load(cfg, n, task, vb).map_err(weights_err)?)
        }
        "DebertaV2ForSequenceClassification" | "DebertaV2ForTokenClassification" => {
            let cfg: crate::model::deberta::Config = parse_config(dir)?;
            check(dir, cfg.check())?;
            Box::new(DebertaV2::load(cfg, n, task, vb).map_err(weights_err)?)
        }
        arch @ ("LlamaForSequenceClassification"
        | "MistralForSequenceClassification"
        | "Qwen2ForSequenceClassification"
        | "Qwen3ForSequenceClassification"
        | "Gemma2ForSequenceClassification"
        | "Gemma3TextForSequenceClassification"
        | "LlamaForTokenClassification"
        | "MistralForTokenClassification"
        | "Qwen2ForTokenClassification"
        | "Qwen3ForTokenClassification"
        | "Gemma2ForTokenClassification") => {
            use crate::model::decoder;
            let mut raw: decoder::RawConfig = parse_config(dir)?;
            if task == Task::Token && raw.pad_token_id.is_none() {
                // Only the sequence head reads at the pad id; a token head scores every
                // token, and padding is masked whatever id it has.
                raw.pad_token_id = Some(0);
            }
            let family = arch.split("For").next().unwrap_or(arch);
            let cfg = match family {
                "Llama" => decoder::llama::config(&raw),
                "Mistral" => decoder::mistral::config(&raw),
                "Qwen2" => decoder::qwen2::config(&raw),
                "Gemma2" => decoder::gemma2::config(&raw),
                "Gemma3Text" => decoder::gemma3::config(&raw),
                _ => decoder::qwen3::config(&raw),
            };
            let cfg = cfg.map_err(|message| LoadError::Config {
                path: dir.config_path.clone(),
                message,
            })?;
            Box::new(decoder::Decoder::load(cfg, n, task, vb).map_err(weights_err)?)
        }
        "Gemma3ForSequenceClassification" => {
            use crate::model::decoder;
            let config_err = |message: String| LoadError::Config {
                path: dir.config_path.clone(),
                message,
            };
            let text = dir.config.get("text_config").ok_or_else(|| {
                config_err("text_config is missing (Gemma 3's text model is read from it)".into())
            })?;
            let raw = <decoder::RawConfig as serde::Deserialize>::deserialize(text)
                .map_err(|e| config_err(format!("text_config: {e}")))?;
            let cfg = decoder::gemma3::config(&raw)
                .map_err(|m| config_err(format!("text_config: {m}")))?;
            // Checkpoints name the text model `language_model.model` (as transformers saves
            // them) or `model.language_model` (its in-memory names).
            let body = if vb.contains_tensor("language_model.model.embed_tokens.weight") {
                "language_model.model"
            } else {
                "model.language_model"
            };
            Box::new(decoder::Decoder::load_at(cfg, n, task, vb, body).map_err(weights_err)?)
        }
        other => {
            return Err(LoadError::UnknownArchitecture {
                path: dir.config_path.clone(),
                architecture: other.to_string(),
                supported: SUPPORTED.join(", "),
            })
        }
    };
    Ok(model)
}

/// A built model, how it used the weights cache, and `(entries used in place, in the file)`.
type Built = (Box<dyn SequenceClassifier>, CacheStatus, (usize, usize));

/// Builds the model taking its large CPU weights from `cached`, reporting `status` and how many
/// of the file's entries the model uses in place.
fn replay(
    dir: &ModelDir,
    vb: VarBuilder,
    cached: crate::model::weights::Cached,
    status: CacheStatus,
) -> Result<Built, LoadError> {
    let cached = Arc::new(cached);
    let model = weights::replaying(cached.clone(), || build_model(dir, vb))?;
    Ok((model, status, (cached.used(), cached.len())))
}

/// Builds the model with its large CPU weights viewed in the cache file: replayed from a valid
/// file, or recorded from the checkpoint, written, and then replayed from the new file (so the
/// first start serves from shared pages too). Cache trouble never fails a load: the weights
/// then stay private and the status says why.
fn build_cached(
    dir: &ModelDir,
    vb: VarBuilder,
    cache_dir: &Path,
    device: &Device,
    dtype: &str,
    kernels: &str,
) -> Result<Built, LoadError> {
    let file = match CacheFile::for_model(cache_dir, dir, dtype, kernels) {
        Ok(f) => f,
        Err(e) => {
            let status = CacheStatus::Unwritable {
                path: cache_dir.to_path_buf(),
                why: format!("cannot key the model's files: {e}"),
            };
            return Ok((build_model(dir, vb)?, status, (0, 0)));
        }
    };
    let why = match file.open() {
        Ok(Some(cached)) => return replay(dir, vb, cached, CacheStatus::Hit(file.path)),
        Ok(None) => "none yet".to_string(),
        Err(invalid) => invalid,
    };
    let (model, rec) = weights::recording(|| build_model(dir, vb));
    let model = model?;
    if let Err(e) = file.write(&rec) {
        let status = CacheStatus::Unwritable {
            path: file.path,
            why: e.to_string(),
        };
        return Ok((model, status, (0, 0)));
    }
    drop(rec);
    match file.open() {
        Ok(Some(cached)) => {
            let vb =
                VarBuilder::from_backend(Box::new(dir.map_weights()?), DType::F32, device.clone());
            drop(model);
            let status = CacheStatus::Written {
                path: file.path,
                why,
            };
            replay(dir, vb, cached, status)
        }
        // Written but gone or unreadable at once (another process, a full disk): serve what
        // was built.
        other => {
            let why = match other {
                Err(e) => e,
                _ => "vanished after writing".into(),
            };
            Ok((
                model,
                CacheStatus::Unwritable {
                    path: file.path,
                    why,
                },
                (0, 0),
            ))
        }
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
        if !SUPPORTED.contains(&dir.head.architecture.as_str()) {
            return Err(LoadError::UnknownArchitecture {
                path: dir.config_path.clone(),
                architecture: dir.head.architecture.clone(),
                supported: SUPPORTED.join(", "),
            });
        }
        let device = device.open()?;
        let int8 = dtype == DTypeChoice::Int8;
        if int8 && !device.is_cpu() {
            return Err(LoadError::Device {
                device: device_name(&device),
                message: "--dtype int8 runs on the CPU only; use f16 or bf16 on a GPU".into(),
            });
        }
        let dtype = dtype.resolve(&device);
        let st = dir.map_weights()?;
        let (parameters, weight_dtype) = weight_summary(&st);
        let vb = VarBuilder::from_backend(Box::new(st), dtype, device.clone());
        let (model, cache, cache_views) = match &opts.cache_dir {
            // The layers' int8 panels, and the f32 panels of what stays in floating point, so
            // the key names both kernel sets.
            Some(cache_dir) if int8 => {
                let kernels = format!(
                    "{}+{}",
                    gemm::kernel_set(),
                    crate::model::qgemm::kernel_set()
                );
                weights::quantizing(|| {
                    build_cached(&dir, vb, cache_dir, &device, "int8", &kernels)
                })?
            }
            None if int8 => (
                weights::quantizing(|| build_model(&dir, vb))?,
                CacheStatus::Off,
                (0, 0),
            ),
            Some(cache_dir) if device.is_cpu() && dtype == DType::F32 => {
                build_cached(&dir, vb, cache_dir, &device, "f32", gemm::kernel_set())?
            }
            Some(_) => (build_model(&dir, vb)?, CacheStatus::NotUsed, (0, 0)),
            None => (build_model(&dir, vb)?, CacheStatus::Off, (0, 0)),
        };
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
            kernels: match (int8, device.is_cpu() && dtype == DType::F32) {
                (true, _) => format!("int8 {}", crate::model::qgemm::kernel_set()),
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
        };
        Ok(Self {
            model,
            task,
            cache,
            cache_views,
            tokenizer,
            head: dir.head,
            info,
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
        let all = Tensor::from_vec(planes, (4, rows, cols), &self.device)?;
        let plane = |i: usize| all.get(i);
        Ok(Batch {
            input_ids: plane(0)?,
            attention_mask: plane(1)?,
            token_type_ids: plane(2)?,
            position_ids: plane(3)?,
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

    /// Whether rows of different lengths share padded passes: on a GPU, not on the CPU.
    pub fn pads_batches(&self) -> bool {
        !self.device.is_cpu()
    }

    /// The attention working set, in bytes, of one forward pass of `rows` rows padded to
    /// `len` tokens, as the model computes attention (see
    /// [`crate::model::SequenceClassifier::attention_bytes`]).
    pub fn attention_bytes(&self, rows: usize, len: usize) -> usize {
        self.model.attention_bytes(rows, len)
    }

    /// Logits for each input from one padded batch, whatever the device (the GPU path, and
    /// the padding masks' parity tests on the CPU).
    pub fn logits_padded(&self, inputs: &[&Encoded]) -> Result<Vec<Vec<f32>>, EngineError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
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

    /// Tensors one forward pass of `rows` rows of `len` tokens creates, the upload included
    /// (see [`opcount`]): a proxy for kernel launches. `None` if candle's counter is unreadable.
    pub fn tensors_per_forward(
        &self,
        rows: usize,
        len: usize,
    ) -> Result<Option<usize>, EngineError> {
        let row = self.synthetic_input(len);
        let inputs: Vec<&Encoded> = (0..rows.max(1)).map(|_| &row).collect();
        let (logits, n) = opcount::tensors_created(|| self.logits_padded(&inputs));
        logits?;
        Ok(n)
    }

    /// Turns logits into labels and scores as transformers' pipelines do.
    pub fn predict(&self, logits: Vec<f32>, tokens: usize) -> Prediction {
        let scores = scores(&logits, self.head.problem_type);
        let best = entities::argmax(&scores);
        let labels = &self.head.labels;
        Prediction {
            label: labels.get(best).cloned().unwrap_or_default(),
            score: scores.get(best).copied().unwrap_or(f32::NAN),
            scores: labels.iter().cloned().zip(scores.iter().copied()).collect(),
            logits,
            tokens,
        }
    }

    /// A token model's answer from one input's flattened token logits (as
    /// [`Engine::logits_padded`] returns them), its ids and its spans.
    pub fn predict_tokens(
        &self,
        logits: Vec<f32>,
        ids: &[u32],
        spans: &Spans,
        opts: &TokenOptions,
    ) -> TokenPrediction {
        let n = self.head.labels.len().max(1);
        let token_logits: Vec<Vec<f32>> = logits.chunks(n).map(<[f32]>::to_vec).collect();
        let probs: Vec<Vec<f32>> = token_logits
            .iter()
            .map(|l| scores(l, ProblemType::SingleLabel))
            .collect();
        let mut found = entities::entities(
            &self.tokenizer,
            &self.head.labels,
            ids,
            spans,
            &probs,
            opts.aggregation,
        );
        found.retain(|e| opts.min_score.keeps(e));
        TokenPrediction {
            redacted: opts.redact.then(|| entities::redact(&spans.text, &found)),
            entities: found,
            tokens: ids.len(),
            best: probs
                .iter()
                .map(|p| {
                    let i = entities::argmax(p);
                    (i, p.get(i).copied().unwrap_or(f32::NAN))
                })
                .collect(),
            token_logits,
        }
    }

    /// One input's answer from its logits: a [`Prediction`] or, for a token model, a
    /// [`TokenPrediction`] (which needs the input's spans; without them it has no entities).
    pub fn answer(&self, logits: Vec<f32>, encoded: &Encoded, opts: &TokenOptions) -> Answer {
        match (self.task, &encoded.spans) {
            (Task::Token, Some(spans)) => {
                Answer::Token(self.predict_tokens(logits, &encoded.ids, spans, opts))
            }
            (Task::Token, None) => {
                let spans = Spans {
                    text: String::new(),
                    offsets: Vec::new(),
                    special: vec![true; encoded.len()],
                };
                Answer::Token(self.predict_tokens(logits, &encoded.ids, &spans, opts))
            }
            (Task::Sequence, _) => Answer::Sequence(self.predict(logits, encoded.len())),
        }
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
        answer: impl Fn(Vec<f32>, &Encoded) -> T,
    ) -> Result<Vec<Result<T, InputError>>, EngineError> {
        let encoded: Vec<Result<Encoded, InputError>> =
            inputs.iter().map(|i| self.tokenize(i, truncate)).collect();
        let ok: Vec<&Encoded> = encoded.iter().filter_map(|e| e.as_ref().ok()).collect();
        let mut logits = self.logits(&ok)?.into_iter();
        Ok(encoded
            .into_iter()
            .map(|e| {
                let e = e?;
                Ok(answer(logits.next().unwrap_or_default(), &e))
            })
            .collect())
    }
}

fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// Softmax (shifted by the true maximum, so large negative logits cannot overflow), sigmoid for
/// multi-label models, identity for regression.
pub fn scores(logits: &[f32], problem: ProblemType) -> Vec<f32> {
    match problem {
        ProblemType::Regression => logits.to_vec(),
        ProblemType::MultiLabel => logits
            .iter()
            .map(|&x| (1.0 / (1.0 + (-(x as f64)).exp())) as f32)
            .collect(),
        ProblemType::SingleLabel => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.iter().map(|e| (e / sum) as f32).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_survives_huge_negative_logits() {
        let s = scores(&[-1.0e30, 0.0, -5.0], ProblemType::SingleLabel);
        assert!(s.iter().all(|v| v.is_finite()));
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[1] > s[2] && s[2] > s[0]);
    }

    #[test]
    fn sigmoid_for_multi_label_is_independent() {
        let s = scores(&[0.0, 100.0], ProblemType::MultiLabel);
        assert!((s[0] - 0.5).abs() < 1e-6 && (s[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn cuda_open_errors_name_what_is_missing() {
        let raw =
            r#"DriverError(CUDA_ERROR_STUB_LIBRARY, "<Failure when calling cuGetErrorString()>")"#;
        assert_eq!(
            cuda_open_error(raw.into()),
            "no NVIDIA GPU driver: the libcuda.so.1 found is a link-time stub, not the driver \
             (CUDA_ERROR_STUB_LIBRARY)"
        );
        assert_eq!(cuda_open_error("other".into()), "other");
    }

    #[test]
    fn device_and_dtype_flags_parse() {
        assert_eq!("cuda:3".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert_eq!(
            "bf16".parse::<DTypeChoice>(),
            Ok(DTypeChoice::Fixed(DType::BF16))
        );
        assert_eq!(DTypeChoice::Auto.resolve(&Device::Cpu), DType::F32);
    }
}
