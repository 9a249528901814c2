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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use bytes::Bytes;

use crate::engine::Engine;
use crate::sched::queue::Stats;
use crate::sched::Scheduler;
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
    pub fn of(dir: &Path) -> Self {
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
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
/// each request holds the one it started with, so in-flight requests finish on the old model
/// and its scheduler closes (and its worker exits) when the last of them lets go.
pub struct Model {
    pub engine: Arc<Engine>,
    pub scheduler: Scheduler,
    pub identity: ModelIdentity,
}

pub struct Service {
    /// Read only to clone the `Arc`; written only by a reload.
    model: RwLock<Arc<Model>>,
    /// Forward passes and requests computed by schedulers retired by reloads, so totals stay
    /// monotonic across reloads (a new scheduler counts from zero).
    retired: (AtomicU64, AtomicU64),
    limits: RequestLimits,
    /// Where requests are tokenized, so that no I/O thread ever runs the tokenizer.
    tokenizer: TokenizePool,
    ready: AtomicBool,
    metrics: Option<Arc<Metrics>>,
}

impl Service {
    pub fn new(
        engine: Arc<Engine>,
        scheduler: Scheduler,
        limits: RequestLimits,
        identity: ModelIdentity,
        tokenizer: TokenizePool,
    ) -> Self {
        Self {
            tokenizer,
            retired: (AtomicU64::new(0), AtomicU64::new(0)),
            model: RwLock::new(Arc::new(Model {
                engine,
                scheduler,
                identity,
            })),
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

    /// Started, warmed up and not draining, with an engine that is not unhealthy.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.unhealthy().is_none()
    }

    /// Why the serving engine is unhealthy, if it is (see [`Scheduler::unhealthy`]).
    pub fn unhealthy(&self) -> Option<String> {
        self.model().scheduler.unhealthy()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The model serving now.
    pub fn model(&self) -> Arc<Model> {
        self.model
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `model` the one new requests use; returns the one it replaces.
    pub fn swap_model(&self, model: Arc<Model>) -> Arc<Model> {
        let mut cur = self.model.write().unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *cur, model);
        let done = old.scheduler.stats();
        self.retired.0.fetch_add(done.batches, Ordering::Relaxed);
        self.retired.1.fetch_add(done.computed, Ordering::Relaxed);
        old
    }

    /// The current scheduler's stats, with `batches` and `computed` counted since start
    /// across every reload.
    pub fn lifetime_stats(&self) -> Stats {
        let mut s = self.scheduler().stats();
        s.batches += self.retired.0.load(Ordering::Relaxed);
        s.computed += self.retired.1.load(Ordering::Relaxed);
        s
    }

    /// The current model's scheduler.
    pub fn scheduler(&self) -> Scheduler {
        self.model().scheduler.clone()
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
        // One model for the whole request, even if a reload swaps it meanwhile.
        let model = self.model();
        let (id, result) = match protocol::decode_request(&payload) {
            Err(r) => (r.id, Err(ServiceError::from(r))),
            Ok(request) => {
                // The decoded request owns its data; the frame would only sit in memory while
                // the request waits its turn.
                drop(payload);
                let id = request.id;
                match request.body {
                    // Info is a probe, not a classify request: not counted.
                    Some(pb::request::Body::Info(_)) => return self.info(&model, id),
                    None => (id, Err(ServiceError::Invalid("request has no body".into()))),
                    Some(pb::request::Body::Classify(c)) => {
                        (id, self.classify(&model, id, c, received).await)
                    }
                }
            }
        };
        match result {
            Ok(response) => {
                if let (Some(m), Some(pb::response::Body::Classify(c))) =
                    (&self.metrics, &response.body)
                {
                    m.record(pb::Status::Ok, c.timings.as_ref());
                }
                response
            }
            Err(e) => {
                let status = e.status();
                if let Some(m) = &self.metrics {
                    m.record(status, None);
                }
                protocol::status(id, status, e.to_string())
            }
        }
    }

    fn info(&self, model: &Model, id: u64) -> pb::Response {
        let info = model.engine.info();
        let stats = model.scheduler.stats();
        pb::Response {
            version: protocol::VERSION,
            id,
            status: pb::Status::Ok as i32,
            message: String::new(),
            body: Some(pb::response::Body::Info(pb::InfoResponse {
                model: model.identity.name.clone(),
                revision: model.identity.revision.clone(),
                architecture: info.architecture.clone(),
                labels: info.labels.clone(),
                max_length: info.max_length as u32,
                device: info.device.clone(),
                dtype: info.compute_dtype.clone(),
                ready: self.ready.load(Ordering::Acquire) && model.scheduler.unhealthy().is_none(),
                problem_type: info.problem_type.to_string(),
                protocol_version: protocol::VERSION,
                server_version: env!("CARGO_PKG_VERSION").to_string(),
                batches: stats.batches,
                computed: stats.computed,
                task: info.task.to_string(),
            })),
        }
    }
}
