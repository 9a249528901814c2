//! One request, start to finish: decode → validate → tokenize → queue → (worker) → reply.
//! Every path returns exactly one encoded response; nothing here fails or panics on input.

pub mod convert;
pub mod metrics;
pub mod tokenize_pool;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::engine::entities::Spans;
use crate::engine::{Answer, Engine};
use crate::model::Task;
use crate::sched::queue::{Job, JobError, Priority, Stats, SubmitError};
use crate::sched::Scheduler;
use crate::service::metrics::{Metrics, ModelLabels};
use crate::service::tokenize_pool::{TokenizeError, TokenizePool};
use crate::wire::protocol::{self, pb, RequestLimits};

/// An input on its way to be computed: its length and, for a token model, its ids and spans.
struct Computed {
    tokens: usize,
    spans: Option<(Vec<u32>, Box<Spans>)>,
}

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

    /// Answers one request message (without its length prefix) with one response message.
    pub async fn handle(&self, payload: Bytes) -> Vec<u8> {
        let _in_flight = self.metrics.as_deref().map(Metrics::in_flight);
        let received = Instant::now();
        // One model for the whole request, even if a reload swaps it meanwhile.
        let model = self.model();
        let (status, response) = match protocol::decode_request(&payload) {
            Err(r) => (
                r.status,
                protocol::status_response(r.id, r.status, r.message),
            ),
            Ok(request) => {
                // The decoded request owns its data; the frame would only sit in memory while
                // the request waits its turn.
                drop(payload);
                let id = request.id;
                match request.body {
                    // Info is a probe, not a classify request: not counted.
                    Some(pb::request::Body::Info(_)) => {
                        return self.info(&model, id).encode_to_vec()
                    }
                    None => {
                        let status = pb::Status::InvalidArgument;
                        (
                            status,
                            protocol::status_response(id, status, "request has no body"),
                        )
                    }
                    Some(pb::request::Body::Classify(c)) => {
                        match self.classify(&model, id, c, received).await {
                            Ok(r) => {
                                if let (Some(m), Some(pb::response::Body::Classify(c))) =
                                    (&self.metrics, &r.body)
                                {
                                    m.record(pb::Status::Ok, c.timings.as_ref());
                                }
                                return r.encode_to_vec();
                            }
                            Err((status, message)) => {
                                (status, protocol::status_response(id, status, message))
                            }
                        }
                    }
                }
            }
        };
        if let Some(m) = &self.metrics {
            m.record(status, None);
        }
        response
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

    async fn classify(
        &self,
        model: &Model,
        id: u64,
        mut req: pb::ClassifyRequest,
        received: Instant,
    ) -> Result<pb::Response, (pb::Status, String)> {
        let invalid = |m: String| (pb::Status::InvalidArgument, m);
        let inputs = convert::inputs(&req, &self.limits).map_err(invalid)?;
        // The engine threads wake while the texts are tokenized, not after.
        model.scheduler.wake();
        // From here on the texts live in `inputs` only.
        drop(std::mem::take(&mut req.inputs));
        let options = req.options.unwrap_or_default();
        let token_options = match model.engine.task() {
            Task::Token => Some(convert::token_options(&options).map_err(invalid)?),
            Task::Sequence => None,
        };
        // A redacted text must have had every character seen: a truncated one would come back
        // with its tail unredacted, so redaction refuses over-long texts instead.
        let truncate = !options.no_truncate && !token_options.as_ref().is_some_and(|t| t.redact);
        let deadline = (req.deadline_us > 0)
            .then(|| received.checked_add(Duration::from_micros(req.deadline_us)))
            .flatten();
        // Tokenized on the tokenizer pool: the engine thread only ever runs the model, and the
        // I/O threads stay free for other connections and the health probes. Only token ids
        // wait in the queue, not the texts they came from (a token model's spans wait here).
        let encoded = self
            .tokenizer
            .encode(model.engine.clone(), inputs, truncate)
            .await
            .map_err(|e| match e {
                TokenizeError::Busy { .. } => (pb::Status::Overloaded, e.to_string()),
                TokenizeError::Failed(_) => (pb::Status::Internal, e.to_string()),
            })?;
        // Each input is computed or refused on its own; the request fails only when none can
        // be computed.
        let budget = model.scheduler.config().max_attention_bytes;
        let mut plan: Vec<Result<Computed, String>> = Vec::with_capacity(encoded.len());
        let mut rows = Vec::with_capacity(encoded.len());
        for (i, e) in encoded.into_iter().enumerate() {
            let mut e = match e {
                Ok(e) => e,
                Err(why) => {
                    plan.push(Err(format!("input {i}: {why}")));
                    continue;
                }
            };
            // Rows are never split, so an input whose attention alone is over the pass budget
            // could never run within it.
            let need = model.engine.attention_bytes(1, e.len());
            if need > budget {
                plan.push(Err(format!(
                    "input {i}: {} tokens need {} MiB of attention memory, over the limit of \
                     {} MiB (--max-attention-mib)",
                    e.len(),
                    need.div_ceil(1 << 20),
                    budget >> 20
                )));
                continue;
            }
            plan.push(Ok(Computed {
                tokens: e.len(),
                spans: e.spans.take().map(|s| (e.ids.clone(), s)),
            }));
            rows.push(e);
        }
        if rows.is_empty() {
            let first = plan.into_iter().find_map(Result::err);
            return Err(invalid(
                first.unwrap_or_else(|| "no input to classify".into()),
            ));
        }
        let tokenized = Instant::now();
        let priority = match pb::Priority::try_from(req.priority) {
            Ok(pb::Priority::High) => Priority::High,
            _ => Priority::Normal,
        };
        let job = Job {
            inputs: rows,
            priority,
            deadline,
            received,
        };
        let rx = model.scheduler.submit(job).map_err(|e| match e {
            SubmitError::Overloaded { capacity } => (
                pb::Status::Overloaded,
                format!("queue is full ({capacity} requests waiting); retry later"),
            ),
            SubmitError::ShuttingDown => {
                (pb::Status::Unavailable, "server is shutting down".into())
            }
            SubmitError::Unhealthy(why) => {
                (pb::Status::Unavailable, format!("engine unhealthy: {why}"))
            }
        })?;
        let output = match rx.await {
            Ok(Ok(out)) => out,
            Ok(Err(JobError::DeadlineExceeded)) => {
                return Err((
                    pb::Status::DeadlineExceeded,
                    format!("deadline of {} µs passed while queued", req.deadline_us),
                ))
            }
            Ok(Err(JobError::ShuttingDown)) => {
                return Err((pb::Status::Unavailable, "server is shutting down".into()))
            }
            Ok(Err(JobError::Engine(e))) => return Err((pb::Status::Internal, e.to_string())),
            Ok(Err(e @ JobError::Unhealthy(_))) => {
                return Err((pb::Status::Unavailable, e.to_string()))
            }
            Err(_) => return Err((pb::Status::Internal, "engine worker stopped".into())),
        };
        let mut logits = output.logits.into_iter();
        let token_options = token_options.unwrap_or_default();
        let results = plan
            .into_iter()
            .map(|p| match p {
                Err(message) => convert::refused_result(message),
                Ok(c) => {
                    let l = logits.next().unwrap_or_default();
                    let answer = match c.spans {
                        Some((ids, spans)) => Answer::Token(model.engine.predict_tokens(
                            l,
                            &ids,
                            &spans,
                            &token_options,
                        )),
                        None => Answer::Sequence(model.engine.predict(l, c.tokens)),
                    };
                    convert::result(answer, &options, &model.engine.info().labels)
                }
            })
            .collect();
        let micros = |d: Duration| d.as_micros() as u64;
        Ok(pb::Response {
            version: protocol::VERSION,
            id,
            status: pb::Status::Ok as i32,
            message: String::new(),
            body: Some(pb::response::Body::Classify(pb::ClassifyResponse {
                results,
                model: model.identity.name.clone(),
                revision: model.identity.revision.clone(),
                timings: Some(pb::Timings {
                    queue_us: output.queue_us,
                    tokenize_us: micros(tokenized - received),
                    inference_us: output.inference_us,
                    total_us: micros(received.elapsed()),
                    batch_size: output.batch_size,
                }),
            })),
        })
    }
}
