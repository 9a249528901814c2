//! One request, start to finish: decode → admit → tokenize → submit → (worker) → answer
//! ([`classify`]), the model it runs on and its hot-swap. Every path returns exactly one
//! response; nothing here fails or panics on input. Conversions between the wire's messages and
//! the engine's types are in [`convert`], the ways a request fails in [`error`].

mod classify;
pub mod convert;
pub mod error;
pub mod metrics;
pub mod tokenize_pool;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use bytes::Bytes;

use crate::engine::Engine;
use crate::sched::{ModelQueue, Scheduler};
pub use crate::service::error::ServiceError;
use crate::service::metrics::{Metrics, ModelLabels};
use crate::service::tokenize_pool::TokenizePool;
use crate::wire::protocol::{self, pb, RequestLimits};

/// The model that answers, as responses name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    pub name: String,
    /// Changes whenever the weight files change: their sizes and modification times.
    pub revision: String,
}

impl Model {
    /// The labels of the model serving requests.
    pub fn labels(&self) -> ModelLabels {
        let info = self.engine.info();
        ModelLabels {
            model: self.identity.name.clone(),
            revision: self.identity.revision.clone(),
            device: info.device.clone(),
            dtype: info.compute_dtype.clone(),
            architecture: info.architecture.clone(),
            task: info.task.to_string(),
        }
    }
}

impl ModelIdentity {
    /// What a model served from `dir` without a name of its own is called: its directory's
    /// name.
    pub fn dir_name(dir: &Path) -> String {
        dir.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string())
    }

    /// A fingerprint of every file in `dir` (names, sizes, modification times): a change to
    /// the config or the tokenizer shows here, where the revision looks at the weights only.
    pub fn files(dir: &Path) -> u64 {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in entries {
            let meta = std::fs::metadata(&f).ok();
            let mtime = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            let bytes = f.as_os_str().as_encoded_bytes().iter().copied();
            let len = meta.map_or(0, |m| m.len()).to_le_bytes();
            for b in bytes.chain(len).chain(mtime.to_le_bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    }

    /// The model `name`, served from `dir` as its files are now.
    pub fn of(name: &str, dir: &Path) -> Self {
        let name = name.to_string();
        // Size and mtime, not a content hash: hashing the weights would cost cold start time.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |v: u64| {
            for b in v.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            if f.extension().is_some_and(|e| e == "safetensors") {
                if let Ok(m) = std::fs::metadata(&f) {
                    feed(m.len());
                    let mtime = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos() as u64);
                    feed(mtime);
                }
            }
        }
        Self {
            name,
            revision: format!("{h:016x}"),
        }
    }
}

/// Everything that belongs to one loaded model. A reload builds a new one and swaps it in;
/// each request holds the one it started with, so in-flight requests finish on the old model,
/// whose queue goes (and whose engine is freed) when the last of them lets go.
pub struct Model {
    pub engine: Arc<Engine>,
    /// Its way into the daemon's one scheduler.
    pub queue: ModelQueue,
    pub identity: ModelIdentity,
    /// Every file of its directory as it was loaded ([`ModelIdentity::files`]), so that a
    /// reload can tell which models changed.
    pub files: u64,
}

impl Model {
    /// What `Info` says of this model.
    fn info(&self, default: bool) -> pb::ModelInfo {
        let info = self.engine.info();
        let stats = self.queue.stats();
        pb::ModelInfo {
            name: self.identity.name.clone(),
            revision: self.identity.revision.clone(),
            architecture: info.architecture.clone(),
            labels: info.labels.clone(),
            max_length: info.max_length as u32,
            device: info.device.clone(),
            dtype: info.compute_dtype.clone(),
            ready: self.queue.unhealthy().is_none(),
            problem_type: info.problem_type.to_string(),
            task: info.task.to_string(),
            batches: stats.batches,
            computed: stats.computed,
            default,
        }
    }
}

pub struct Service {
    /// The engine threads every model's queue feeds.
    scheduler: Scheduler,
    /// Every model served, the default first. Read only to clone an `Arc`; written only by a
    /// reload, which replaces one entry.
    models: RwLock<Vec<Arc<Model>>>,
    limits: RequestLimits,
    /// Where requests are tokenized, so that no I/O thread ever runs the tokenizer.
    tokenizer: TokenizePool,
    ready: AtomicBool,
    metrics: Option<Arc<Metrics>>,
}

impl Service {
    /// Serves `default` and `others` through `scheduler`.
    pub fn new(
        scheduler: Scheduler,
        default: Arc<Model>,
        others: Vec<Arc<Model>>,
        limits: RequestLimits,
        tokenizer: TokenizePool,
    ) -> Self {
        let mut models = vec![default];
        models.extend(others);
        Self {
            scheduler,
            // Never empty (the default is always there), so `[0]` below cannot fail.
            models: RwLock::new(models),
            tokenizer,
            limits,
            ready: AtomicBool::new(false),
            metrics: None,
        }
    }

    /// Records every classify answer into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The models whose engine is unhealthy, and why (see [`ModelQueue::unhealthy`]).
    pub fn unhealthy(&self) -> Vec<(String, String)> {
        self.models()
            .iter()
            .filter_map(|m| Some((m.identity.name.clone(), m.queue.unhealthy()?)))
            .collect()
    }

    /// [`Service::unhealthy`] in one line (`name: why; …`), for `/readyz`, `STATUS=` and the
    /// watchdog's log; `None` when every model is healthy.
    pub fn unhealthy_line(unhealthy: &[(String, String)]) -> Option<String> {
        (!unhealthy.is_empty()).then(|| {
            unhealthy
                .iter()
                .map(|(name, why)| format!("{name}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Started and not draining.
    pub fn started(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The default model, serving now.
    pub fn model(&self) -> Arc<Model> {
        self.models.read().unwrap_or_else(PoisonError::into_inner)[0].clone()
    }

    /// Every model serving now, the default first.
    pub fn models(&self) -> Vec<Arc<Model>> {
        self.models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The model a request names (the default for `""`), or why there is none.
    pub fn model_named(&self, name: &str) -> Result<Arc<Model>, ServiceError> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        if name.is_empty() {
            return Ok(models[0].clone());
        }
        models
            .iter()
            .find(|m| m.identity.name == name)
            .cloned()
            .ok_or_else(|| {
                let served: Vec<&str> = models.iter().map(|m| m.identity.name.as_str()).collect();
                ServiceError::Invalid(format!(
                    "no model named {name:?}: this daemon serves {}",
                    served.join(", ")
                ))
            })
    }

    /// Makes `model` the one new requests for its name use; returns the one it replaces (or
    /// `None`, and nothing changes, when no model of that name is served).
    pub fn swap_model(&self, model: Arc<Model>) -> Option<Arc<Model>> {
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        let slot = models
            .iter_mut()
            .find(|m| m.identity.name == model.identity.name)?;
        Some(std::mem::replace(slot, model))
    }

    /// The scheduler every model shares.
    pub fn scheduler(&self) -> Scheduler {
        self.scheduler.clone()
    }

    pub fn identity(&self) -> ModelIdentity {
        self.model().identity.clone()
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Answers one request message (without its length prefix): decode, then the request's own
    /// stages ([`classify`]). Every path ends in exactly one response.
    pub async fn respond(&self, payload: Bytes) -> pb::Response {
        let _in_flight = self.metrics.as_deref().map(Metrics::in_flight);
        let received = Instant::now();
        // The model a refusal before routing is counted against.
        let mut counted = String::new();
        let (id, result) = match protocol::decode_request(&payload) {
            Err(r) => (r.id, Err(ServiceError::from(r))),
            Ok(request) => {
                // The decoded request owns its data; the frame would only sit in memory while
                // the request waits its turn.
                drop(payload);
                let id = request.id;
                match request.body {
                    // Info is a probe, not a classify request: not counted.
                    Some(pb::request::Body::Info(_)) => return self.info(id),
                    None => (id, Err(ServiceError::Invalid("request has no body".into()))),
                    // One model for the whole request, even if a reload swaps it meanwhile.
                    Some(pb::request::Body::Classify(c)) => match self.model_named(&c.model) {
                        Err(e) => (id, Err(e)),
                        Ok(model) => {
                            counted.clone_from(&model.identity.name);
                            (id, self.classify(&model, id, c, received).await)
                        }
                    },
                }
            }
        };
        if counted.is_empty() {
            // Refused before it named a model it could have: the default model's count.
            counted = self.model().identity.name.clone();
        }
        match result {
            Ok(response) => {
                if let (Some(m), Some(pb::response::Body::Classify(c))) =
                    (&self.metrics, &response.body)
                {
                    m.record(&counted, pb::Status::Ok, c.timings.as_ref());
                }
                response
            }
            Err(e) => {
                let status = e.status();
                if let Some(m) = &self.metrics {
                    m.record(&counted, status, None);
                }
                protocol::status(id, status, e.to_string())
            }
        }
    }

    fn info(&self, id: u64) -> pb::Response {
        let models = self.models();
        let started = self.ready.load(Ordering::Acquire);
        let all: Vec<pb::ModelInfo> = models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut info = m.info(i == 0);
                info.ready &= started;
                info
            })
            .collect();
        // The top-level fields: the default model's, as before the daemon served several.
        let first = all[0].clone();
        pb::Response {
            version: protocol::VERSION,
            id,
            status: pb::Status::Ok as i32,
            message: String::new(),
            body: Some(pb::response::Body::Info(pb::InfoResponse {
                model: first.name,
                revision: first.revision,
                architecture: first.architecture,
                labels: first.labels,
                max_length: first.max_length,
                device: first.device,
                dtype: first.dtype,
                ready: first.ready,
                problem_type: first.problem_type,
                protocol_version: protocol::VERSION,
                server_version: env!("CARGO_PKG_VERSION").to_string(),
                batches: first.batches,
                computed: first.computed,
                task: first.task,
                models: all,
            })),
        }
    }
}
