//! What one load level measured: latencies in an HdrHistogram, answers by status, the server's
//! own time breakdown; and how it is printed (a table, or JSON for scripts and plots).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::wire::protocol::pb;

use super::Load;

/// Latencies up to an hour fit; three significant digits keep p99.9 honest at microsecond scale.
const HIGHEST_US: u64 = 3_600_000_000;

/// Everything recorded for one load level, inside its measurement window.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency: Histogram<u64>,
    pub sent: u64,
    pub ok: u64,
    /// Non-OK answers by status name, and client-side failures (`CONNECTION`, `TIMEOUT`).
    pub errors: BTreeMap<String, u64>,
    server: ServerSums,
    /// How late the open-loop dispatcher sent, behind the schedule: large values mean the load
    /// generator itself could not keep the rate.
    dispatch_lag: Histogram<u64>,
}

#[derive(Debug, Clone, Default)]
struct ServerSums {
    n: u64,
    queue: u64,
    tokenize: u64,
    inference: u64,
    total: u64,
    batch: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; failing here is a programming error.
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            latency: histogram(),
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            server: ServerSums::default(),
            dispatch_lag: histogram(),
        }
    }

    /// One answer that arrived `latency` after it was due (closed loop: after it was sent).
    pub fn answer(&mut self, latency: Duration, resp: &pb::Response) {
        self.latency.saturating_record(micros(latency));
        match pb::Status::try_from(resp.status) {
            Ok(pb::Status::Ok) => {
                self.ok += 1;
                if let Some(pb::response::Body::Classify(c)) = &resp.body {
                    if let Some(t) = &c.timings {
                        let s = &mut self.server;
                        s.n += 1;
                        s.queue += t.queue_us;
                        s.tokenize += t.tokenize_us;
                        s.inference += t.inference_us;
                        s.total += t.total_us;
                        s.batch += u64::from(t.batch_size);
                    }
                }
            }
            Ok(other) => self.error(other.as_str_name()),
            Err(_) => self.error("UNKNOWN_STATUS"),
        }
    }

    /// An in-process call that succeeded.
    pub fn local_ok(&mut self, latency: Duration) {
        self.latency.saturating_record(micros(latency));
        self.ok += 1;
    }

    /// A request that got no answer: the latency is not recorded (there is none), the failure is.
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    pub fn dispatched(&mut self, lag: Duration) {
        self.sent += 1;
        self.dispatch_lag.saturating_record(micros(lag));
    }

    pub fn answered(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.latency.is_empty() {
            0
        } else {
            self.latency.value_at_quantile(q)
        }
    }

    /// The merge of per-client recorders into one.
    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.dispatch_lag.add(&other.dispatch_lag);
        self.sent += other.sent;
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        let (s, o) = (&mut self.server, &other.server);
        s.n += o.n;
        s.queue += o.queue;
        s.tokenize += o.tokenize;
        s.inference += o.inference;
        s.total += o.total;
        s.batch += o.batch;
    }

    /// One short line for the progress display.
    pub fn progress_line(&self, load: &Load, elapsed: Duration, of: Duration) -> String {
        format!(
            "{:<12} {:>5.1}/{:.0} s  sent {:>7}  ok {:>7}  errors {:>5}  p50 {}  p99 {}",
            load.label(),
            elapsed.as_secs_f64(),
            of.as_secs_f64(),
            self.sent,
            self.ok,
            self.errors.values().sum::<u64>(),
            ms(self.quantile_us(0.5)),
            ms(self.quantile_us(0.99)),
        )
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// The outcome of one load level.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub load: Load,
    pub measured: Duration,
    pub rec: Recorder,
}

impl RunReport {
    pub fn throughput(&self) -> f64 {
        self.rec.ok as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    pub fn json(&self) -> Value {
        let r = &self.rec;
        let s = &r.server;
        let avg = |x: u64| {
            if s.n == 0 {
                Value::Null
            } else {
                json!(x as f64 / s.n as f64)
            }
        };
        let (mode, concurrency, offered, arrival) = match self.load {
            Load::Closed { concurrency } => {
                ("closed", json!(concurrency), Value::Null, Value::Null)
            }
            Load::Open { rate, arrival } => {
                ("open", Value::Null, json!(rate), json!(arrival.as_str()))
            }
        };
        let lat_mean = if r.latency.is_empty() {
            0.0
        } else {
            r.latency.mean()
        };
        json!({
            "mode": mode,
            "concurrency": concurrency,
            "offered_rps": offered,
            "arrival": arrival,
            "duration_s": self.measured.as_secs_f64(),
            "sent": r.sent,
            "ok": r.ok,
            "errors": r.errors,
            "throughput_rps": self.throughput(),
            "latency_us": {
                "p50": r.quantile_us(0.5),
                "p90": r.quantile_us(0.9),
                "p99": r.quantile_us(0.99),
                "p999": r.quantile_us(0.999),
                "max": r.latency.max(),
                "mean": lat_mean,
            },
            "server_us": {
                "queue": avg(s.queue),
                "tokenize": avg(s.tokenize),
                "inference": avg(s.inference),
                "total": avg(s.total),
            },
            "mean_batch_size": avg(s.batch),
            "dispatch_lag_us": {
                "p99": if r.dispatch_lag.is_empty() { 0 } else { r.dispatch_lag.value_at_quantile(0.99) },
                "max": r.dispatch_lag.max(),
            },
        })
    }
}

/// The human-readable table: one row per load level, latencies in milliseconds.
pub fn table(target: &str, runs: &[RunReport]) -> String {
    let mut out = format!("target: {target}\n");
    out.push_str(&format!(
        "{:<12} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>7} {:>7} {:>7} {:>6}\n",
        "load",
        "sent",
        "ok",
        "errors",
        "req/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "queue",
        "tok",
        "infer",
        "batch"
    ));
    for run in runs {
        let r = &run.rec;
        let s = &r.server;
        let avg_ms = |x: u64| {
            if s.n == 0 {
                "-".to_string()
            } else {
                format!("{:.2}", x as f64 / s.n as f64 / 1000.0)
            }
        };
        let batch = if s.n == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", s.batch as f64 / s.n as f64)
        };
        let q = |p: f64| format!("{:.2}", r.quantile_us(p) as f64 / 1000.0);
        out.push_str(&format!(
            "{:<12} {:>8} {:>8} {:>7} {:>9.1} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>7} {:>7} {:>7} {:>6}\n",
            run.load.label(),
            r.sent,
            r.ok,
            r.errors.values().sum::<u64>(),
            run.throughput(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            format!("{:.2}", r.latency.max() as f64 / 1000.0),
            avg_ms(s.queue),
            avg_ms(s.tokenize),
            avg_ms(s.inference),
            batch,
        ));
    }
    out.push_str("latencies in ms; queue/tok/infer: the server's own breakdown, averaged\n");
    for run in runs {
        if !run.rec.errors.is_empty() {
            let list: Vec<String> = run
                .rec
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            out.push_str(&format!(
                "errors at {}: {}\n",
                run.load.label(),
                list.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: pb::Status, queue_us: u64) -> pb::Response {
        pb::Response {
            status: status as i32,
            body: Some(pb::response::Body::Classify(pb::ClassifyResponse {
                timings: Some(pb::Timings {
                    queue_us,
                    tokenize_us: 10,
                    inference_us: 100,
                    total_us: queue_us + 110,
                    batch_size: 2,
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_errors_and_server_breakdown() {
        let mut r = Recorder::new();
        for ms in 1..=100u64 {
            r.dispatched(Duration::ZERO);
            r.answer(Duration::from_millis(ms), &response(pb::Status::Ok, ms));
        }
        r.answer(
            Duration::from_millis(1),
            &response(pb::Status::Overloaded, 0),
        );
        r.error("TIMEOUT");
        // Three significant digits: 50 ms is reported within 0.1 %.
        assert!((49_950..=50_050).contains(&r.quantile_us(0.5)));
        assert!((98_900..=99_100).contains(&r.quantile_us(0.99)));
        assert_eq!(r.ok, 100);
        assert_eq!(r.errors["OVERLOADED"], 1);
        assert_eq!(r.errors["TIMEOUT"], 1);
        assert_eq!(r.answered(), 102);
        let rep = RunReport {
            load: Load::Closed { concurrency: 1 },
            measured: Duration::from_secs(2),
            rec: r,
        };
        let j = rep.json();
        assert_eq!(j["throughput_rps"], 50.0);
        assert_eq!(j["server_us"]["queue"], 50.5);
        assert_eq!(j["mean_batch_size"], 2.0);
        assert_eq!(j["errors"]["OVERLOADED"], 1);
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.answer(Duration::from_micros(100), &response(pb::Status::Ok, 1));
        b.answer(Duration::from_micros(300), &response(pb::Status::Ok, 3));
        b.error("CONNECTION");
        a.merge(&b);
        assert_eq!(a.ok, 2);
        assert_eq!(a.errors["CONNECTION"], 1);
        assert!(a.quantile_us(1.0) >= 299);
    }
}
