//! Prometheus metrics and health probes on an optional loopback HTTP listener
//! (`serve --metrics-addr`).
//!
//! Recording is lock-free (atomics inside `prometheus-client`); the scrape reads the scheduler's
//! [`Stats`] and the process RSS. The HTTP side is a deliberately tiny HTTP/1.1 responder: one
//! request per connection, a size-limited and time-limited request head, `Connection: close`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::sched::queue::Stats;
use crate::wire::protocol::pb;

/// Labels of `classifyd_model_info`.
pub struct ModelLabels {
    pub model: String,
    pub revision: String,
    pub device: String,
    pub dtype: String,
    pub architecture: String,
    /// `sequence` or `token`.
    pub task: String,
}

const STATUSES: [(pb::Status, &str); 6] = [
    (pb::Status::Ok, "ok"),
    (pb::Status::InvalidArgument, "invalid_argument"),
    (pb::Status::Overloaded, "overloaded"),
    (pb::Status::DeadlineExceeded, "deadline_exceeded"),
    (pb::Status::Unavailable, "unavailable"),
    (pb::Status::Internal, "internal"),
];

/// The listener a connection came in on (`classifyd_connections{transport}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Quic,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Quic => "quic",
        }
    }
}

/// The series of one model, each a clone of its family's, so that recording needs no family
/// lookup (and no lock).
struct ModelSeries {
    /// One counter per status, indexed as [`STATUSES`].
    requests: Vec<Counter>,
    queue: Histogram,
    tokenize: Histogram,
    inference: Histogram,
    total: Histogram,
    batch_rows: Histogram,
    batch_tokens: Histogram,
    queue_depth: Gauge,
    batches: Counter,
    computed: Counter,
    /// `classifyd_reloads_total{model,result}`: `[ok, failed]`.
    reloads: [Counter; 2],
    ready: Gauge,
}

pub struct Metrics {
    registry: Registry,
    /// By model name; the names are fixed for the daemon's life (a reload keeps its model's).
    models: HashMap<String, ModelSeries>,
    in_flight: Gauge,
    /// Open connections, indexed by `Transport as usize`.
    connections: [Gauge; 2],
    rss: Gauge,
    /// `classifyd_model_info`: one series per model, relabelled at each scrape so a reload
    /// shows.
    model_info: Family<Vec<(String, String)>, Gauge>,
    /// Serialises scrapes, which turn the service's absolute counts into counter increments.
    scrape: Mutex<()>,
}

/// What a scrape reads of one model.
pub struct ModelState {
    pub labels: ModelLabels,
    /// Counts since start, across reloads.
    pub stats: Stats,
    /// Its engine is healthy.
    pub ready: bool,
}

impl ModelLabels {
    fn pairs(self) -> Vec<(String, String)> {
        vec![
            ("model".into(), self.model),
            ("revision".into(), self.revision),
            ("device".into(), self.device),
            ("dtype".into(), self.dtype),
            ("architecture".into(), self.architecture),
            ("task".into(), self.task),
        ]
    }
}

fn seconds_histogram() -> Histogram {
    // 25 µs × 2^19 ≈ 13 s.
    Histogram::new(exponential_buckets(25e-6, 2.0, 20))
}

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The per-model families, registered once, from which each model's series are taken.
struct Families {
    requests: Family<Labels, Counter>,
    seconds: [HistogramFamily; 4],
    batch_rows: HistogramFamily,
    batch_tokens: HistogramFamily,
    queue_depth: Family<Labels, Gauge>,
    batches: Family<Labels, Counter>,
    computed: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    ready: Family<Labels, Gauge>,
}

/// Histogram families' help, in [`Families::seconds`]' order.
const SECONDS: [(&str, &str); 4] = [
    (
        "classifyd_queue_seconds",
        "Time OK requests waited in the queue",
    ),
    (
        "classifyd_tokenize_seconds",
        "Time from receipt to tokenized, OK requests",
    ),
    (
        "classifyd_inference_seconds",
        "Time from the start of OK requests' batches until their own rows were computed",
    ),
    (
        "classifyd_request_seconds",
        "Total time of OK requests, receipt to reply",
    ),
];

impl Families {
    fn new() -> Families {
        let rows: fn() -> Histogram = || Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let tokens: fn() -> Histogram = || Histogram::new(exponential_buckets(16.0, 2.0, 16));
        Families {
            requests: Family::default(),
            seconds: std::array::from_fn(|_| {
                Family::new_with_constructor(seconds_histogram as fn() -> Histogram)
            }),
            batch_rows: Family::new_with_constructor(rows),
            batch_tokens: Family::new_with_constructor(tokens),
            queue_depth: Family::default(),
            batches: Family::default(),
            computed: Family::default(),
            reloads: Family::default(),
            ready: Family::default(),
        }
    }

    /// `model`'s series, created now so that a dashboard sees 0 rather than nothing.
    fn series(&self, model: &str) -> ModelSeries {
        let m = || vec![("model", model.to_string())];
        let with = |k: &'static str, v: &str| {
            let mut l = m();
            l.push((k, v.to_string()));
            l
        };
        let [queue, tokenize, inference, total] =
            std::array::from_fn(|i| self.seconds[i].get_or_create(&m()).clone());
        ModelSeries {
            requests: STATUSES
                .iter()
                .map(|(_, s)| self.requests.get_or_create(&with("status", s)).clone())
                .collect(),
            queue,
            tokenize,
            inference,
            total,
            batch_rows: self.batch_rows.get_or_create(&m()).clone(),
            batch_tokens: self.batch_tokens.get_or_create(&m()).clone(),
            queue_depth: self.queue_depth.get_or_create(&m()).clone(),
            batches: self.batches.get_or_create(&m()).clone(),
            computed: self.computed.get_or_create(&m()).clone(),
            // Both results from the start, so `increase(...{result="failed"}[..]) > 0` can
            // fire on the first failure.
            reloads: ["ok", "failed"]
                .map(|r| self.reloads.get_or_create(&with("result", r)).clone()),
            ready: self.ready.get_or_create(&m()).clone(),
        }
    }

    fn register(self, reg: &mut Registry) {
        reg.register(
            "classifyd_requests",
            "Classify requests answered, by model and status",
            self.requests,
        );
        for ((name, help), family) in SECONDS.into_iter().zip(self.seconds) {
            reg.register(name, help, family);
        }
        reg.register(
            "classifyd_batch_rows",
            "Rows per batch (one or more forward passes)",
            self.batch_rows,
        );
        reg.register(
            "classifyd_batch_padded_tokens",
            "Padded tokens (rows x longest row of each pass, summed) per batch",
            self.batch_tokens,
        );
        reg.register(
            "classifyd_queue_depth",
            "Jobs waiting in the queue",
            self.queue_depth,
        );
        reg.register(
            "classifyd_batches",
            "Batches run (each one or more forward passes)",
            self.batches,
        );
        reg.register(
            "classifyd_computed",
            "Jobs (requests) computed",
            self.computed,
        );
        reg.register(
            "classifyd_reloads",
            "SIGHUP reloads since start, by model and result (a failed one leaves the old \
             version serving)",
            self.reloads,
        );
        reg.register(
            "classifyd_model_ready",
            "1 while the model answers, 0 once its engine failed its health probe",
            self.ready,
        );
    }
}

impl Metrics {
    /// The metrics of a daemon serving `models` (their names are fixed from here on).
    pub fn new(models: Vec<ModelLabels>) -> Self {
        let mut registry = Registry::default();
        let families = Families::new();
        let series = models
            .iter()
            .map(|l| (l.model.clone(), families.series(&l.model)))
            .collect();
        families.register(&mut registry);
        let open = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        // Both series from the start, so a dashboard sees 0 rather than nothing.
        let connections = [Transport::Unix, Transport::Quic]
            .map(|t| open.get_or_create(&vec![("transport", t.label())]).clone());
        registry.register(
            "classifyd_connections",
            "Connections open now, by transport",
            open,
        );
        let mut m = Self {
            models: series,
            connections,
            in_flight: Gauge::default(),
            rss: Gauge::default(),
            model_info: Family::default(),
            scrape: Mutex::new(()),
            registry,
        };
        let reg = &mut m.registry;
        reg.register(
            "classifyd_requests_in_flight",
            "Requests being handled",
            m.in_flight.clone(),
        );
        reg.register(
            "classifyd_process_resident_memory_bytes",
            "Resident set size of the process",
            m.rss.clone(),
        );
        for labels in models {
            m.model_info.get_or_create(&labels.pairs()).set(1);
        }
        reg.register(
            "classifyd_model_info",
            "The models being served (value 1)",
            m.model_info.clone(),
        );
        m
    }

    /// One SIGHUP reload of `model`, swapped in (`ok`) or failed with the old version still
    /// serving.
    pub fn record_reload(&self, model: &str, ok: bool) {
        if let Some(s) = self.models.get(model) {
            s.reloads[usize::from(!ok)].inc();
        }
    }

    /// One answered classify request of `model`; `timings` only for OK answers.
    pub fn record(&self, model: &str, status: pb::Status, timings: Option<&pb::Timings>) {
        let Some(s) = self.models.get(model) else {
            return;
        };
        if let Some(i) = STATUSES.iter().position(|(st, _)| *st == status) {
            s.requests[i].inc();
        }
        if let Some(t) = timings {
            let secs = |us: u64| us as f64 / 1e6;
            s.queue.observe(secs(t.queue_us));
            s.tokenize.observe(secs(t.tokenize_us));
            s.inference.observe(secs(t.inference_us));
            s.total.observe(secs(t.total_us));
        }
    }

    /// One batch of `model`: its rows and padded tokens, on the engine thread before any of
    /// its answers.
    pub fn record_batch(&self, model: &str, rows: usize, padded_tokens: usize) {
        if let Some(s) = self.models.get(model) {
            s.batch_rows.observe(rows as f64);
            s.batch_tokens.observe(padded_tokens as f64);
        }
    }

    /// Counts a connection as open until the guard drops; the guard is `Send`, so it can live
    /// in the connection's task.
    pub fn connection_opened(&self, transport: Transport) -> OpenConnection {
        let gauge = self.connections[transport as usize].clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// Counts a request as in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// The Prometheus text exposition (format 0.0.4), with each model's state now.
    pub fn render(&self, models: Vec<ModelState>) -> String {
        let _one = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.model_info.clear();
        for m in models {
            if let Some(s) = self.models.get(&m.labels.model) {
                s.queue_depth.set(m.stats.queued as i64);
                s.batches
                    .inc_by(m.stats.batches.saturating_sub(s.batches.get()));
                s.computed
                    .inc_by(m.stats.computed.saturating_sub(s.computed.get()));
                s.ready.set(i64::from(m.ready));
            }
            self.model_info.get_or_create(&m.labels.pairs()).set(1);
        }
        self.rss.set(rss_bytes().unwrap_or(0) as i64);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// An open connection, counted in `classifyd_connections` until dropped.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Resident set size from /proc/self/statm (pages → bytes).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
