//! Prometheus metrics and health probes on an optional loopback HTTP listener
//! (`serve --metrics-addr`).
//!
//! Recording is lock-free (atomics inside `prometheus-client`); the scrape reads the scheduler's
//! [`Stats`] and the process RSS. The HTTP side is a deliberately tiny HTTP/1.1 responder: one
//! request per connection, a size-limited and time-limited request head, `Connection: close`.

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

type StatusLabel = Vec<(&'static str, &'static str)>;

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

pub struct Metrics {
    registry: Registry,
    /// One counter per status, indexed as [`STATUSES`]; clones of the family's, so recording
    /// needs no family lookup (and no lock).
    requests: Vec<Counter>,
    queue: Histogram,
    tokenize: Histogram,
    inference: Histogram,
    total: Histogram,
    batch_rows: Histogram,
    batch_tokens: Histogram,
    in_flight: Gauge,
    /// Open connections, indexed by `Transport as usize`.
    connections: [Gauge; 2],
    queue_depth: Gauge,
    rss: Gauge,
    batches: Counter,
    computed: Counter,
    /// `classifyd_reloads_total{result="ok"|"failed"}`, indexed by `ok as usize` reversed:
    /// `[ok, failed]`.
    reloads: [Counter; 2],
    /// `classifyd_model_info`: one series, relabelled at each scrape so a reload shows.
    model_info: Family<Vec<(String, String)>, Gauge>,
    /// Serialises scrapes, which turn the service's absolute counts into counter increments.
    scrape: Mutex<()>,
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

impl Metrics {
    pub fn new(model: ModelLabels) -> Self {
        let mut registry = Registry::default();
        let family = Family::<StatusLabel, Counter>::default();
        let requests = STATUSES
            .iter()
            .map(|(_, name)| family.get_or_create(&vec![("status", *name)]).clone())
            .collect();
        registry.register(
            "classifyd_requests",
            "Classify requests answered, by status",
            family,
        );
        let open = Family::<StatusLabel, Gauge>::default();
        // Both series from the start, so a dashboard sees 0 rather than nothing.
        let connections = [Transport::Unix, Transport::Quic]
            .map(|t| open.get_or_create(&vec![("transport", t.label())]).clone());
        registry.register(
            "classifyd_connections",
            "Connections open now, by transport",
            open,
        );
        let reloads = Family::<StatusLabel, Counter>::default();
        // Both series from the start, so `increase(...{result="failed"}[..]) > 0` can fire on
        // the first failure.
        let reload_counters =
            ["ok", "failed"].map(|r| reloads.get_or_create(&vec![("result", r)]).clone());
        registry.register(
            "classifyd_reloads",
            "SIGHUP reloads since start, by result (a failed one leaves the old model serving)",
            reloads,
        );
        let m = Self {
            requests,
            connections,
            queue: seconds_histogram(),
            tokenize: seconds_histogram(),
            inference: seconds_histogram(),
            total: seconds_histogram(),
            batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            batch_tokens: Histogram::new(exponential_buckets(16.0, 2.0, 16)),
            in_flight: Gauge::default(),
            queue_depth: Gauge::default(),
            rss: Gauge::default(),
            batches: Counter::default(),
            computed: Counter::default(),
            reloads: reload_counters,
            model_info: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        let reg = &mut registry;
        let seconds = [
            (
                "classifyd_queue_seconds",
                "Time OK requests waited in the queue",
                &m.queue,
            ),
            (
                "classifyd_tokenize_seconds",
                "Time from receipt to tokenized, OK requests",
                &m.tokenize,
            ),
            (
                "classifyd_inference_seconds",
                "Time from the start of OK requests' batches until their own rows were computed",
                &m.inference,
            ),
            (
                "classifyd_request_seconds",
                "Total time of OK requests, receipt to reply",
                &m.total,
            ),
        ];
        for (name, help, h) in seconds {
            reg.register(name, help, h.clone());
        }
        reg.register(
            "classifyd_batch_rows",
            "Rows per batch (one or more forward passes)",
            m.batch_rows.clone(),
        );
        reg.register(
            "classifyd_batch_padded_tokens",
            "Padded tokens (rows x longest row of each pass, summed) per batch",
            m.batch_tokens.clone(),
        );
        reg.register(
            "classifyd_requests_in_flight",
            "Requests being handled",
            m.in_flight.clone(),
        );
        reg.register(
            "classifyd_queue_depth",
            "Jobs waiting in the queue",
            m.queue_depth.clone(),
        );
        reg.register(
            "classifyd_batches",
            "Batches run (each one or more forward passes)",
            m.batches.clone(),
        );
        reg.register(
            "classifyd_computed",
            "Jobs (requests) computed",
            m.computed.clone(),
        );
        reg.register(
            "classifyd_process_resident_memory_bytes",
            "Resident set size of the process",
            m.rss.clone(),
        );
        m.model_info.get_or_create(&model.pairs()).set(1);
        reg.register(
            "classifyd_model_info",
            "The model being served (value 1)",
            m.model_info.clone(),
        );
        Self { registry, ..m }
    }

    /// One SIGHUP reload, swapped in (`ok`) or failed with the old model still serving.
    pub fn record_reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    /// One answered classify request; `timings` only for OK answers.
    pub fn record(&self, status: pb::Status, timings: Option<&pb::Timings>) {
        if let Some(i) = STATUSES.iter().position(|(s, _)| *s == status) {
            self.requests[i].inc();
        }
        if let Some(t) = timings {
            let secs = |us: u64| us as f64 / 1e6;
            self.queue.observe(secs(t.queue_us));
            self.tokenize.observe(secs(t.tokenize_us));
            self.inference.observe(secs(t.inference_us));
            self.total.observe(secs(t.total_us));
        }
    }

    /// One batch: its rows and padded tokens, on the engine thread before any of its answers.
    pub fn record_batch(&self, rows: usize, padded_tokens: usize) {
        self.batch_rows.observe(rows as f64);
        self.batch_tokens.observe(padded_tokens as f64);
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

    /// The Prometheus text exposition (format 0.0.4). `stats` counts since start across
    /// reloads ([`crate::service::Service::lifetime_stats`]); `labels` describe the model serving now.
    pub fn render(&self, stats: Stats, labels: ModelLabels) -> String {
        let _one = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.queue_depth.set(stats.queued as i64);
        self.batches
            .inc_by(stats.batches.saturating_sub(self.batches.get()));
        self.computed
            .inc_by(stats.computed.saturating_sub(self.computed.get()));
        self.model_info.clear();
        self.model_info.get_or_create(&labels.pairs()).set(1);
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
