//! The load itself: closed-loop clients, the open-loop dispatcher, and the in-process loop.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};

use crate::client::quic::{QuicClient, QuicClientConfig};
use crate::client::{
    classify_request, for_model, patiently, text, Client, ClientError, Patience, UnixClient,
};
use crate::engine::tokenize::Input;
use crate::engine::Engine;
use crate::sched::hot::{EngineThreads, ThreadsConfig};
use crate::wire::protocol::pb;

use super::report::{Recorder, RunReport};
use super::{Arrival, BenchError, Load, Plan};

/// How long the open loop waits, after its last send, for answers still out; what is left is
/// counted as `TIMEOUT`.
const GRACE: Duration = Duration::from_secs(15);

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum Remote {
    Uds(PathBuf),
    Quic(QuicClientConfig),
}

impl Remote {
    /// One connection, tried once (a QUIC attempt given 5 s).
    pub async fn connect(&self) -> Result<Client, ClientError> {
        self.connect_with(Patience::default()).await
    }

    /// One connection, retried while the daemon may still come up (`--wait`).
    pub async fn connect_with(&self, patience: Patience) -> Result<Client, ClientError> {
        patiently(patience, |attempt| self.connect_once(attempt)).await
    }

    async fn connect_once(&self, attempt: Duration) -> Result<Client, ClientError> {
        Ok(match self {
            Remote::Uds(p) => Client::Unix(UnixClient::connect(p).await?),
            Remote::Quic(cfg) => {
                match tokio::time::timeout(attempt, QuicClient::connect(cfg)).await {
                    Ok(client) => {
                        Client::Quic(client.map_err(|e| ClientError::Quic(e.to_string()))?)
                    }
                    Err(_) => {
                        return Err(ClientError::Timeout {
                            target: cfg.addr.to_string(),
                            after: attempt,
                        })
                    }
                }
            }
        })
    }
}

/// A recorder shared by every task of one load level. `closed` is set once the level is over so
/// that an answer straggling in after its request was already counted as `TIMEOUT` is not
/// counted twice.
#[derive(Default)]
struct Shared {
    rec: Recorder,
    closed: bool,
}

type SharedRec = Arc<Mutex<Shared>>;

fn lock(s: &SharedRec) -> MutexGuard<'_, Shared> {
    // A panicking task cannot leave the recorder half-updated in a way that matters for counts.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `k` texts after `*next`, wrapping, as one request's inputs.
fn inputs(texts: &[String], next: &mut usize, k: usize) -> Vec<pb::Input> {
    (0..k)
        .map(|_| {
            let t = &texts[*next % texts.len()];
            *next = next.wrapping_add(1);
            text(t.clone())
        })
        .collect()
}

/// Progress on stderr: rewritten in place on a terminal, a line every few seconds otherwise.
struct Progress {
    enabled: bool,
    tty: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn tick(&mut self, line: impl FnOnce() -> String) {
        let every = if self.tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        if !self.enabled || self.last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{}", line())
        } else {
            writeln!(err, "{}", line())
        };
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.enabled && self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
        self.last = None;
    }
}

fn progress_line(load: &Load, rec: &Recorder, start: Instant, plan: &Plan) -> String {
    let elapsed = start.elapsed();
    if elapsed < plan.warmup {
        format!("{:<12} warming up", load.label())
    } else {
        rec.progress_line(load, elapsed - plan.warmup, plan.duration)
    }
}

/// Runs every load level of `plan` against a daemon, one after the other.
pub async fn run_remote(remote: &Remote, plan: &Plan) -> Result<Vec<RunReport>, BenchError> {
    let mut out = Vec::with_capacity(plan.loads.len());
    for load in &plan.loads {
        let rec = match *load {
            Load::Closed { concurrency } => closed(remote, plan, load, concurrency).await?,
            Load::Open { rate, arrival } => open(remote, plan, load, rate, arrival).await?,
        };
        out.push(RunReport {
            load: *load,
            measured: plan.duration,
            rec,
        });
    }
    Ok(out)
}

async fn connect_all(remote: &Remote, n: usize) -> Result<Vec<Arc<Client>>, BenchError> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Arc::new(
            remote
                .connect()
                .await
                .map_err(|e| BenchError::Plan(e.to_string()))?,
        ));
    }
    Ok(clients)
}

/// The progress task of one load level; [`ProgressTask::stop`] waits until its line is cleared,
/// so that the report printed next starts on a clean line.
struct ProgressTask {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressTask {
    async fn stop(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

/// Spawns the task that prints progress until it is stopped.
fn spawn_progress(load: Load, shared: SharedRec, start: Instant, plan: &Plan) -> ProgressTask {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let plan = plan.clone();
    let task = tokio::spawn(async move {
        let mut progress = Progress::new(plan.progress);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    progress.tick(|| progress_line(&load, &lock(&shared).rec, start, &plan));
                }
            }
        }
        progress.finish();
    });
    ProgressTask { stop, task }
}

async fn closed(
    remote: &Remote,
    plan: &Plan,
    load: &Load,
    concurrency: usize,
) -> Result<Recorder, BenchError> {
    let clients = connect_all(remote, concurrency).await?;
    let shared: SharedRec = Arc::default();
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let stop = spawn_progress(*load, shared.clone(), start, plan);
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, client) in clients.into_iter().enumerate() {
        let texts = plan.texts.clone();
        let k = plan.inputs_per_request;
        let gap = plan.gap;
        let model = plan.model.clone();
        let shared = shared.clone();
        tasks.spawn(async move {
            // Workers start at different texts so that concurrent batches are not all alike.
            let mut next = worker.wrapping_mul(7919);
            while Instant::now() < end {
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                let req = for_model(
                    classify_request(inputs(&texts, &mut next, k), pb::Options::default()),
                    &model,
                );
                let t0 = Instant::now();
                let res = client.call(req).await;
                let latency = t0.elapsed();
                let measured = t0 >= measure_from;
                let mut s = lock(&shared);
                if measured {
                    s.rec.dispatched(Duration::ZERO);
                }
                match res {
                    Ok(resp) if measured => s.rec.answer(latency, &resp),
                    Ok(_) => {}
                    Err(_) => {
                        // A lost connection stays lost: this client stops, the loss is counted.
                        s.rec.error("CONNECTION");
                        break;
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    stop.stop().await;
    let mut s = lock(&shared);
    s.closed = true;
    Ok(std::mem::take(&mut s.rec))
}

/// The gaps between scheduled sends.
struct Schedule {
    rate: f64,
    exp: Option<Exp<f64>>,
    rng: StdRng,
}

impl Schedule {
    fn new(rate: f64, arrival: Arrival) -> Self {
        Self {
            rate,
            exp: match arrival {
                Arrival::Constant => None,
                // `rate` was checked positive and finite, which is all Exp::new asks.
                Arrival::Poisson => Exp::new(rate).ok(),
            },
            // A fixed seed: the same Poisson schedule every run, so runs compare.
            rng: StdRng::seed_from_u64(0x636c_6173_7369_6679),
        }
    }

    fn next_gap(&mut self) -> Duration {
        let secs = match &self.exp {
            Some(e) => e.sample(&mut self.rng),
            None => 1.0 / self.rate,
        };
        Duration::from_secs_f64(secs.min(3600.0))
    }
}

async fn open(
    remote: &Remote,
    plan: &Plan,
    load: &Load,
    rate: f64,
    arrival: Arrival,
) -> Result<Recorder, BenchError> {
    let clients = connect_all(remote, plan.connections).await?;
    let shared: SharedRec = Arc::default();
    let outstanding = Arc::new(AtomicUsize::new(0));
    let outstanding_measured = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let stop = spawn_progress(*load, shared.clone(), start, plan);

    // The schedule is kept by a plain thread: tokio's timer rounds to milliseconds, which would
    // add up to a millisecond of the generator's own lateness to latencies of a few.
    let handle = tokio::runtime::Handle::current();
    let dispatcher = {
        let shared = shared.clone();
        let outstanding = outstanding.clone();
        let outstanding_measured = outstanding_measured.clone();
        let texts = plan.texts.clone();
        let k = plan.inputs_per_request;
        let max_outstanding = plan.max_outstanding;
        let model = plan.model.clone();
        std::thread::spawn(move || {
            let mut schedule = Schedule::new(rate, arrival);
            let mut due = start;
            let mut n = 0usize;
            while due < end {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let lag = Instant::now().saturating_duration_since(due);
                let measured = due >= measure_from;
                if outstanding.load(Ordering::Relaxed) >= max_outstanding {
                    if measured {
                        let mut s = lock(&shared);
                        s.rec.dispatched(lag);
                        s.rec.error("CLIENT_BACKLOG");
                    }
                } else {
                    outstanding.fetch_add(1, Ordering::Relaxed);
                    if measured {
                        outstanding_measured.fetch_add(1, Ordering::Relaxed);
                        lock(&shared).rec.dispatched(lag);
                    }
                    let client = clients[n % clients.len()].clone();
                    let req = for_model(
                        classify_request(inputs(&texts, &mut n, k), pb::Options::default()),
                        &model,
                    );
                    let shared = shared.clone();
                    let outstanding = outstanding.clone();
                    let outstanding_measured = outstanding_measured.clone();
                    let scheduled = due;
                    handle.spawn(async move {
                        let res = client.call(req).await;
                        let latency = scheduled.elapsed();
                        let mut s = lock(&shared);
                        if measured && !s.closed {
                            match res {
                                Ok(resp) => s.rec.answer(latency, &resp),
                                Err(_) => s.rec.error("CONNECTION"),
                            }
                            outstanding_measured.fetch_sub(1, Ordering::Relaxed);
                        }
                        outstanding.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                due += schedule.next_gap();
            }
        })
    };
    let _ = tokio::task::spawn_blocking(move || dispatcher.join()).await;
    let grace_end = Instant::now() + GRACE;
    while outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.stop().await;
    let mut s = lock(&shared);
    s.closed = true;
    for _ in 0..outstanding_measured.load(Ordering::Relaxed) {
        s.rec.error("TIMEOUT");
    }
    Ok(std::mem::take(&mut s.rec))
}

/// The reference point for the transport's cost: the same texts through the engine in this
/// process, one request at a time (closed loop, concurrency 1 only), on engine threads as the
/// daemon runs them at its default settings ([`crate::sched::hot`]).
pub fn run_local(engine: &Engine, plan: &Plan) -> Result<Vec<RunReport>, BenchError> {
    if plan
        .loads
        .iter()
        .any(|l| *l != (Load::Closed { concurrency: 1 }))
    {
        return Err(BenchError::Plan(
            "in-process (--model) runs one request at a time: use --concurrency 1".into(),
        ));
    }
    let threads = EngineThreads::for_engines(
        "classifyd-bench",
        &ThreadsConfig::default(),
        &[engine],
        false,
    )
    .map_err(|e| BenchError::Plan(format!("cannot start the engine threads: {e}")))?;
    Ok(threads.run(|| local_loads(engine, plan, &threads)))
}

fn local_loads(engine: &Engine, plan: &Plan, threads: &EngineThreads) -> Vec<RunReport> {
    let mut out = Vec::with_capacity(plan.loads.len());
    for load in &plan.loads {
        let mut rec = Recorder::new();
        let mut progress = Progress::new(plan.progress);
        let start = Instant::now();
        let measure_from = start + plan.warmup;
        let end = measure_from + plan.duration;
        let mut next = 0usize;
        while Instant::now() < end {
            let batch: Vec<Input> = (0..plan.inputs_per_request)
                .map(|_| {
                    let t = &plan.texts[next % plan.texts.len()];
                    next = next.wrapping_add(1);
                    Input::Text(t.clone())
                })
                .collect();
            if !plan.gap.is_zero() {
                std::thread::sleep(plan.gap);
            }
            let t0 = Instant::now();
            threads.pass_started();
            // Whichever the task: a token model's entities are part of what a caller waits for.
            let res = engine.classify_with(&batch, true, &crate::engine::TokenOptions::default());
            threads.pass_ended();
            let latency = t0.elapsed();
            if t0 >= measure_from {
                rec.dispatched(Duration::ZERO);
                match res {
                    Ok(preds) if preds.iter().all(Result::is_ok) => rec.local_ok(latency),
                    Ok(_) => rec.error("INVALID_ARGUMENT"),
                    Err(_) => rec.error("INTERNAL"),
                }
            }
            progress.tick(|| progress_line(load, &rec, start, plan));
        }
        progress.finish();
        out.push(RunReport {
            load: *load,
            measured: plan.duration,
            rec,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_average_to_the_rate_and_constant_is_exact() {
        let mut s = Schedule::new(1000.0, Arrival::Poisson);
        let n = 20_000;
        let total: f64 = (0..n).map(|_| s.next_gap().as_secs_f64()).sum();
        let mean = total / n as f64;
        assert!((mean - 1e-3).abs() < 5e-5, "mean gap {mean}");
        let mut c = Schedule::new(250.0, Arrival::Constant);
        assert_eq!(c.next_gap(), Duration::from_millis(4));
    }

    #[test]
    fn inputs_wrap_around_the_texts() {
        let texts: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut next = 2;
        let got = inputs(&texts, &mut next, 2);
        let names: Vec<_> = got
            .iter()
            .map(|i| match &i.kind {
                Some(pb::input::Kind::Text(t)) => t.clone(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(names, vec!["c", "a"]);
        assert_eq!(next, 4);
    }
}
