//! The one thread that owns the engine: pick a batch, run its forward passes most urgent first,
//! and answer each job as soon as its own rows are done.
//!
//! One thread per lane (see [`crate::sched::queue`]): within a lane one pass at a time, because a
//! forward pass already uses every core (or the whole GPU) and two side by side would only make
//! both slower. The bulk lane's passes run on a thread pool of their own at background
//! priority ([`crate::sched::priority`]), so when both lanes compute, the kernel gives the fast lane
//! nearly all of the cores: a short request waits neither for a big one nor, much, beside it.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::engine::error::EngineError;
use crate::engine::passes::{self, PassShape, PlanRow};
use crate::engine::tokenize::Encoded;
use crate::engine::Engine;
use crate::sched::hooks;
use crate::sched::hot::EngineThreads;
use crate::sched::queue::{Job, JobError, JobOutput, Lane, Priority, Queued, Reply, Shared};
use crate::sched::route::Route;

/// Starts both lanes' engine threads: each lane's loop runs inside its own pool (see
/// [`crate::sched::hot`]), the bulk lane's at background priority. The thread that starts a
/// loop (`classifyd-lane-*`) waits for it, so a panic that escapes the loop still ends in
/// [`ExitGuard`].
pub(crate) fn spawn(engines: &[&Engine], shared: Arc<Shared>) -> std::io::Result<()> {
    for (lane, name) in [
        (Lane::Fast, "classifyd-engine"),
        (Lane::Bulk, "classifyd-bulk"),
    ] {
        let bulk = lane == Lane::Bulk;
        let threads = EngineThreads::for_engines(name, &shared.cfg.threads, engines, bulk)?;
        // Started once per scheduler; a second call keeps the first lane's threads.
        let _ = shared.threads[lane as usize].set(threads);
    }
    for (lane, name) in [
        (Lane::Fast, "classifyd-lane-fast"),
        (Lane::Bulk, "classifyd-lane-bulk"),
    ] {
        let s = shared.clone();
        thread::Builder::new().name(name.into()).spawn(move || {
            let _exit = ExitGuard(&s, lane);
            if let Some(threads) = s.threads[lane as usize].get() {
                threads.run(|| run(&s, lane, threads));
            }
        })?;
    }
    Ok(())
}

/// However a worker ends, no caller may be left waiting on a job of its lane that it will
/// never run; and no new job is taken (the queue closes), since half the engine is gone.
struct ExitGuard<'a>(&'a Shared, Lane);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let orphans: Vec<Queued> = {
            let mut st = self.0.lock();
            st.closed = true;
            self.0.counters.busy[self.1 as usize].store(false, Ordering::Release);
            st.drain_lane(self.1)
        };
        for w in &self.0.work {
            w.notify_all();
        }
        for q in orphans {
            let _ = q.reply.send(Err(JobError::ShuttingDown));
        }
        self.0.idle.notify_waiters();
    }
}

fn run(shared: &Shared, lane: Lane, threads: &EngineThreads) {
    while let Some((route, batch)) = next_batch(shared, lane, threads) {
        let engine = &route.engine;
        let shape = PassShape {
            max_tokens: route.budget.max_tokens,
            ..shared.cfg.pass_shape(engine.pads_batches())
        };
        shared.beat(lane);
        #[cfg(test)]
        shared.gate.pass();
        hooks::hold(shared, lane);
        // Counted before any of its jobs is answered, as each pass's rows are (in `run_batch`),
        // so a client holding its answer sees its batch counted.
        route.counters.batches.fetch_add(1, Ordering::Relaxed);
        threads.pass_started();
        run_batch(&route, shared, lane, shape, batch);
        threads.pass_ended();
        shared.beat(lane);
        // Idle only after answering, so `drained()` never resolves ahead of a reply.
        shared.counters.busy[lane as usize].store(false, Ordering::Release);
        // The route may hold the last reference to a replaced engine: let go of it before
        // the lock is taken again.
        drop(route);
        shared.idle.notify_waiters();
    }
}

/// Blocks until there is work, then takes it out of the queue and marks the worker busy.
/// `None` once the queue is closed and empty. Beats the heartbeat at least every
/// `idle_heartbeat` while waiting. While the lane's threads are kept awake it polls the queue
/// instead of sleeping on it, so a job submitted then starts without a wake-up.
fn next_batch(
    shared: &Shared,
    lane: Lane,
    threads: &EngineThreads,
) -> Option<(Arc<Route>, Vec<Queued>)> {
    let mut st = shared.lock();
    // Never 0: wait_timeout(0) would spin.
    let heartbeat = shared.cfg.idle_heartbeat.max(Duration::from_millis(10));
    loop {
        #[cfg(feature = "test-hooks")]
        if hooks::stall_due(shared) {
            drop(st);
            hooks::stall();
        }
        shared.beat(lane);
        // Expired at pick time so a deadline is judged when the job would start, not when it
        // arrived.
        st.expire(lane, Instant::now());
        if let Some((route, batch)) = st.pick(lane) {
            if !batch.is_empty() {
                shared.counters.busy[lane as usize].store(true, Ordering::Release);
                return Some((route, batch));
            }
            // Everything it met had been cancelled; look again (without the lock held while
            // `route` goes, which may be a replaced engine's last reference).
            drop(st);
            drop(route);
            st = shared.lock();
            continue;
        }
        if st.closed {
            return None;
        }
        if threads.awake() {
            // Read under the lock: a push after it changes it.
            let seen = shared.pushed[lane as usize].load(Ordering::SeqCst);
            drop(st);
            let until = Instant::now() + heartbeat;
            while threads.awake()
                && shared.pushed[lane as usize].load(Ordering::SeqCst) == seen
                && Instant::now() < until
            {
                thread::yield_now();
            }
            st = shared.lock();
            continue;
        }
        let sleeping = &shared.sleeping[lane as usize];
        sleeping.store(true, Ordering::SeqCst);
        st = shared.work[lane as usize]
            .wait_timeout(st, heartbeat)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        sleeping.store(false, Ordering::SeqCst);
    }
}

/// Where a job stands while its batch runs.
struct Progress {
    job: Job,
    submitted: Instant,
    /// Taken when the job is answered.
    reply: Option<Reply>,
    logits: Vec<Option<Vec<f32>>>,
    left: usize,
}

impl Progress {
    /// Still to be answered, and someone still waits for the answer.
    fn wanted(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| !r.is_closed())
    }
}

/// Runs one batch as [`passes::passes`] cuts it, answering each job the moment its last row
/// is computed. Returns (rows, padded tokens) over all passes.
fn run_batch(route: &Route, shared: &Shared, lane: Lane, shape: PassShape, batch: Vec<Queued>) {
    let engine = &route.engine;
    let started = Instant::now();
    let batch_size =
        u32::try_from(batch.iter().map(|q| q.job.inputs.len()).sum::<usize>()).unwrap_or(u32::MAX);
    // Most urgent first: earliest deadline, then priority, then the fewest tokens.
    let mut urgency: Vec<usize> = (0..batch.len()).collect();
    urgency.sort_by_key(|&j| {
        let job = &batch[j].job;
        (
            job.deadline.is_none(),
            job.deadline,
            job.priority != Priority::High,
            job.inputs.iter().map(Encoded::len).sum::<usize>(),
            batch[j].arrival,
        )
    });
    let mut rank = vec![0; batch.len()];
    for (r, &j) in urgency.iter().enumerate() {
        rank[j] = r;
    }
    // (job, row) of every row, and what the planner needs of it.
    let rows: Vec<(usize, usize)> = batch
        .iter()
        .enumerate()
        .flat_map(|(j, q)| (0..q.job.inputs.len()).map(move |r| (j, r)))
        .collect();
    let plan: Vec<PlanRow> = rows
        .iter()
        .map(|&(j, r)| PlanRow {
            len: batch[j].job.inputs[r].len(),
            urgency: rank[j],
        })
        .collect();
    let passes = passes::passes(&plan, shape, |n, l| engine.attention_bytes(n, l));
    // Observed before any of its jobs is answered, as the batch is counted (in `run`), so a
    // client that scrapes the metrics after its answer sees its batch's rows too. The rows and
    // padded tokens planned: rows of a client gone meanwhile are counted, not computed.
    if let Some(observe) = shared.observer.get() {
        let padded = passes
            .iter()
            .map(|p| p.len() * p.iter().map(|&i| plan[i].len).max().unwrap_or(0))
            .sum();
        observe(route.name(), plan.len(), padded);
    }
    let mut jobs: Vec<Progress> = batch
        .into_iter()
        .map(|q| Progress {
            logits: vec![None; q.job.inputs.len()],
            left: q.job.inputs.len(),
            reply: Some(q.reply),
            submitted: q.submitted,
            job: q.job,
        })
        .collect();
    for pass in passes {
        // Rows of jobs already failed, or whose clients have gone, are not computed.
        let live: Vec<usize> = pass
            .into_iter()
            .filter(|&i| jobs[rows[i].0].wanted())
            .collect();
        if live.is_empty() {
            continue;
        }
        if let Some(why) = route.unhealthy.get() {
            for &i in &live {
                finish(
                    route,
                    &mut jobs[rows[i].0],
                    Err(JobError::Unhealthy(why.clone())),
                );
            }
            continue;
        }
        let inputs: Vec<&Encoded> = live
            .iter()
            .map(|&i| &jobs[rows[i].0].job.inputs[rows[i].1])
            .collect();
        let result = forward(engine, &inputs, false);
        drop(inputs);
        shared.beat(lane);
        route
            .counters
            .rows
            .fetch_add(live.len() as u64, Ordering::Relaxed);
        match result {
            Ok(logits) => {
                for (&i, l) in live.iter().zip(logits) {
                    let (j, r) = rows[i];
                    let p = &mut jobs[j];
                    p.logits[r] = Some(l);
                    p.left -= 1;
                }
            }
            Err(e) => {
                tracing::warn!(rows = live.len(), "batch failed: a forward pass: {e}");
                for &i in &live {
                    finish(
                        route,
                        &mut jobs[rows[i].0],
                        Err(JobError::Engine(e.clone())),
                    );
                }
                check_health(route, shared, &e);
                continue;
            }
        }
        for &i in &live {
            let p = &mut jobs[rows[i].0];
            if p.reply.is_some() && p.left == 0 {
                let out = JobOutput {
                    logits: p
                        .logits
                        .iter_mut()
                        .map(|l| l.take().unwrap_or_default())
                        .collect(),
                    queue_us: micros(started.saturating_duration_since(p.submitted)),
                    inference_us: micros(started.elapsed()),
                    batch_size,
                };
                finish(route, p, Ok(out));
            }
        }
    }
    // Whoever is left unanswered had gone before its rows ran: counted, not answered.
    let gone = jobs.iter().filter(|p| p.reply.is_some()).count();
    route
        .counters
        .cancelled
        .fetch_add(gone as u64, Ordering::Relaxed);
}

/// Answers one job whose rows ran (or failed), once: a later call for the same job does
/// nothing. Counted before the reply, so a client holding its answer sees its job counted.
fn finish(route: &Route, p: &mut Progress, answer: Result<JobOutput, JobError>) {
    if let Some(reply) = p.reply.take() {
        route.counters.computed.fetch_add(1, Ordering::Relaxed);
        // The client may have gone during the pass; nothing else to do for it.
        let _ = reply.send(answer);
    }
}

/// After a failed pass: one tiny probe pass (one row of two tokens). A pass can fail on its
/// own inputs (a kernel refusing a shape) and the engine is fine, and the probe passes; after a
/// sticky device fault (on CUDA an illegal access poisons the context) every later pass fails,
/// the probe too, and the model is marked unhealthy: its queued jobs are answered UNAVAILABLE,
/// its later submissions are refused, and the service reports it not ready (the other models
/// go on; each finds out for itself with its own probe).
fn check_health(route: &Route, shared: &Shared, failure: &EngineError) {
    let engine = &route.engine;
    let probe = engine.synthetic_input(2);
    let Err(e) = forward(engine, &[&probe], true) else {
        tracing::info!("health probe passed after the failed batch; the engine goes on");
        return;
    };
    let why = format!("a forward pass failed ({failure}) and so did the health probe ({e})");
    if route.unhealthy.set(why.clone()).is_err() {
        return;
    }
    tracing::error!(
        model = route.name(),
        "engine unhealthy: {why}; answering UNAVAILABLE until reloaded or restarted"
    );
    shared.answer_queued(Some(route.key), || JobError::Unhealthy(why.clone()));
}

/// One forward pass. A panic in a kernel must cost this pass, not every later request.
/// `probe`: the health probe after a failed pass (for the test hooks only).
fn forward(
    engine: &Engine,
    inputs: &[&Encoded],
    probe: bool,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let rows = inputs.len();
    panic::catch_unwind(AssertUnwindSafe(|| {
        if hooks::take_failure(probe) {
            panic!("test hook: this forward pass fails (--test-fail-batches/--test-fail-probes)");
        }
        engine.logits_padded(inputs)
    }))
    .unwrap_or_else(|p| Err(EngineError(format!("engine panicked: {}", panic_text(&*p)))))
    .and_then(|l| match l.len() == rows {
        true => Ok(l),
        false => Err(EngineError(format!(
            "engine returned {} rows of logits for {rows} inputs",
            l.len()
        ))),
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::tokenize::Input;
    use crate::engine::{DTypeChoice, DeviceChoice};
    use crate::sched::queue::{Job, Priority, SchedulerConfig};
    use crate::sched::{ModelQueue, Scheduler};
    use std::path::Path;

    pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    pub fn engine() -> Arc<Engine> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert");
        Arc::new(Engine::load(&dir, DeviceChoice::Cpu, DTypeChoice::Auto).expect("fixture loads"))
    }

    pub fn encode(engine: &Engine, text: &str) -> Encoded {
        engine
            .tokenize(&Input::Text(text.into()), true)
            .expect("tokenizes")
    }

    pub fn job(inputs: Vec<Encoded>) -> Job {
        Job {
            inputs,
            priority: Priority::Normal,
            deadline: None,
            received: Instant::now(),
        }
    }

    /// A scheduler whose worker has picked a first job and is held before computing it.
    pub fn held(engine: &Arc<Engine>, cfg: SchedulerConfig) -> (ModelQueue, Rx) {
        let s = Scheduler::start_one(engine.clone(), cfg);
        s.gate().shut();
        let first = s
            .submit(job(vec![encode(engine, "hold")]))
            .expect("admitted");
        s.gate().wait_batches(1);
        (s, first)
    }

    pub type Rx = tokio::sync::oneshot::Receiver<Result<JobOutput, JobError>>;

    fn sentence(i: usize) -> String {
        let words = [
            "good", "bad", "film", "the", "was", "not", "very", "plot", "actors",
        ];
        (0..1 + i % 13)
            .map(|k| words[(i * 7 + k) % words.len()])
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn concurrent_submits_match_each_computed_alone() {
        let e = engine();
        let s = Scheduler::start_one(e.clone(), SchedulerConfig::default());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (s, e) = (s.clone(), e.clone());
                thread::spawn(move || {
                    let mut answered = Vec::new();
                    for j in 0..16 {
                        let rows: Vec<Encoded> = (0..1 + j % 3)
                            .map(|r| encode(&e, &sentence(t * 100 + j * 3 + r)))
                            .collect();
                        let rx = s.submit(job(rows.clone())).expect("admitted");
                        answered.push((rows, rx));
                    }
                    answered
                        .into_iter()
                        .map(|(rows, rx)| {
                            (rows, rx.blocking_recv().expect("answered").expect("ok"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut jobs = 0;
        let mut rows = 0;
        for h in handles {
            for (inputs, out) in h.join().expect("thread") {
                assert_eq!(out.logits.len(), inputs.len());
                for (row, got) in inputs.iter().zip(&out.logits) {
                    let alone = e.logits(&[row]).expect("alone");
                    for (a, b) in alone[0].iter().zip(got) {
                        assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
                    }
                }
                jobs += 1;
                rows += inputs.len() as u64;
            }
        }
        let st = s.stats();
        assert_eq!((st.computed, st.rows), (jobs, rows));
        assert_eq!((st.expired, st.cancelled, st.overloaded), (0, 0, 0));
    }

    #[test]
    fn arrivals_while_busy_share_the_next_batch_minus_expired_and_cancelled() {
        let e = engine();
        let (s, first) = held(&e, SchedulerConfig::default());
        let expired = s
            .submit(Job {
                deadline: Some(Instant::now()),
                ..job(vec![encode(&e, "late")])
            })
            .expect("admitted");
        drop(s.submit(job(vec![encode(&e, "gone")])).expect("admitted"));
        let waiting: Vec<Rx> = (0..4)
            .map(|i| {
                s.submit(job(vec![encode(&e, &sentence(i))]))
                    .expect("admitted")
            })
            .collect();
        assert_eq!(s.stats().queued, 6);
        s.gate().open();
        assert_eq!(
            first
                .blocking_recv()
                .expect("answered")
                .expect("ok")
                .batch_size,
            1
        );
        assert!(matches!(
            expired.blocking_recv(),
            Ok(Err(JobError::DeadlineExceeded))
        ));
        for rx in waiting {
            assert_eq!(
                rx.blocking_recv()
                    .expect("answered")
                    .expect("ok")
                    .batch_size,
                4
            );
        }
        let st = s.stats();
        assert_eq!((st.batches, st.computed, st.rows), (2, 5, 5));
        assert_eq!((st.expired, st.cancelled, st.queued), (1, 1, 0));
    }

    #[test]
    fn engine_error_fails_its_batch_and_the_worker_goes_on() {
        let e = engine();
        let (s, first) = held(&e, SchedulerConfig::default());
        let bad = Encoded {
            ids: vec![2, 1_000_000, 3],
            type_ids: vec![0; 3],
            spans: None,
        };
        let bad = s.submit(job(vec![bad])).expect("admitted");
        let bystander = s.submit(job(vec![encode(&e, "fine")])).expect("admitted");
        s.gate().open();
        assert!(first.blocking_recv().expect("answered").is_ok());
        assert!(matches!(bad.blocking_recv(), Ok(Err(JobError::Engine(_)))));
        assert!(matches!(
            bystander.blocking_recv(),
            Ok(Err(JobError::Engine(_)))
        ));
        let after = s.submit(job(vec![encode(&e, "again")])).expect("admitted");
        assert!(after.blocking_recv().expect("answered").is_ok());
    }

    #[test]
    fn high_priority_overtakes_older_normal_jobs() {
        let e = engine();
        let cfg = SchedulerConfig {
            max_batch_size: 1,
            ..SchedulerConfig::default()
        };
        let (s, first) = held(&e, cfg);
        let normal = s.submit(job(vec![encode(&e, "normal")])).expect("admitted");
        let high = s
            .submit(Job {
                priority: Priority::High,
                ..job(vec![encode(&e, "high")])
            })
            .expect("admitted");
        s.gate().step();
        s.gate().wait_batches(2);
        // The second batch is picked and held; whatever is still queued lost the race.
        s.abort_queued();
        s.gate().open();
        assert!(first.blocking_recv().expect("answered").is_ok());
        assert!(high.blocking_recv().expect("answered").is_ok());
        assert!(matches!(
            normal.blocking_recv(),
            Ok(Err(JobError::ShuttingDown))
        ));
    }
}
