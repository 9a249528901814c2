//! Scheduling: admission into a bounded queue, batch selection, and the engine threads. One
//! [`Scheduler`] serves every model of the daemon; each model submits through its own
//! [`ModelQueue`] (see [`route`]).

pub mod batch;
#[cfg(test)]
pub(crate) mod gate;
pub mod hooks;
pub mod hot;
pub mod priority;
pub mod queue;
pub mod route;
pub mod worker;

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::engine::tokenize::Encoded;
use crate::engine::Engine;
use queue::{
    BatchObserver, Counters, Job, JobError, JobOutput, Lane, SchedulerConfig, Shared, State, Stats,
    SubmitError,
};
use route::{ModelCounters, Route, RouteOptions};

/// Closes the queue when the last `Scheduler` clone goes, so the worker finishes what is queued
/// and exits instead of sleeping forever.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Handle>,
}

impl Scheduler {
    /// Spawns the engine threads, sized for `engines` (the models it will serve first: a
    /// reloaded one runs on the same threads). If the OS refuses a thread the scheduler starts
    /// closed, so every submit answers `ShuttingDown` instead of hanging;
    /// [`Scheduler::try_start`] reports it.
    pub fn start(engines: &[&Engine], cfg: SchedulerConfig) -> Scheduler {
        let (s, shared) = Self::unstarted(cfg);
        if let Err(e) = crate::sched::worker::spawn(engines, shared) {
            tracing::error!("cannot spawn the engine thread: {e}");
            s.close();
        }
        s
    }

    /// Like [`Scheduler::start`], but fails when the engine thread cannot be spawned.
    pub fn try_start(engines: &[&Engine], cfg: SchedulerConfig) -> std::io::Result<Scheduler> {
        let (s, shared) = Self::unstarted(cfg);
        crate::sched::worker::spawn(engines, shared)?;
        Ok(s)
    }

    /// A scheduler serving `engine` alone, as the daemon's only model is.
    pub fn start_one(engine: Arc<Engine>, cfg: SchedulerConfig) -> ModelQueue {
        let opts = RouteOptions::single("model", cfg.queue_capacity, cfg.max_batch_tokens);
        Scheduler::start(&[&engine], cfg).add(engine, opts, None)
    }

    fn unstarted(cfg: SchedulerConfig) -> (Scheduler, Arc<Shared>) {
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            work: Default::default(),
            idle: Notify::new(),
            epoch: Instant::now(),
            heartbeat_ms: Default::default(),
            observer: OnceLock::new(),
            threads: Default::default(),
            pushed: Default::default(),
            sleeping: Default::default(),
            next_key: Default::default(),
            #[cfg(test)]
            gate: Default::default(),
        });
        let s = Scheduler {
            inner: Arc::new(Handle(shared.clone())),
        };
        (s, shared)
    }

    fn shared(&self) -> &Shared {
        &self.inner.0
    }

    /// Serves `engine` as the model `opts` names, from now until the last clone of the
    /// returned queue goes (its jobs still queued then still run). `counters`: a reloaded
    /// model's predecessor's, so that its counts go on from there.
    pub fn add(
        &self,
        engine: Arc<Engine>,
        opts: RouteOptions,
        counters: Option<Arc<ModelCounters>>,
    ) -> ModelQueue {
        let shared = self.shared();
        let key = shared.next_key.fetch_add(1, Ordering::Relaxed);
        // The scheduler's bulk threshold (a GPU's when sized for one), unless this model has
        // passes of its own size.
        let bulk_tokens = match opts.max_batch_tokens == shared.cfg.max_batch_tokens {
            true => shared.cfg.bulk_tokens,
            false => SchedulerConfig::bulk_tokens_for(opts.max_batch_tokens),
        };
        let route = Arc::new(Route::new(
            key,
            engine,
            opts,
            shared.cfg.max_batch_size,
            bulk_tokens,
            counters.unwrap_or_default(),
        ));
        shared.lock().add(route.clone());
        ModelQueue {
            inner: Arc::new(QueueHandle {
                scheduler: self.clone(),
                route,
            }),
        }
    }

    /// A request has arrived and will be submitted once tokenized: wakes the fast lane's engine
    /// threads now, so that its pass finds them running (see [`hot`]). Cheap when they are.
    pub fn wake(&self) {
        let shared = self.shared();
        let lane = Lane::Fast as usize;
        if let Some(t) = shared.threads[lane].get() {
            t.wake();
            if t.awake() && shared.sleeping[lane].load(Ordering::SeqCst) {
                // Polls its queue from now on instead of waking when the job lands.
                shared.work[lane].notify_one();
            }
        }
    }

    fn submit(
        &self,
        route: &Route,
        job: Job,
    ) -> Result<oneshot::Receiver<Result<JobOutput, JobError>>, SubmitError> {
        let shared = self.shared();
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        if let Some(why) = route.unhealthy.get() {
            return Err(SubmitError::Unhealthy(why.clone()));
        }
        let mut st = shared.lock();
        if st.closed {
            return Err(SubmitError::ShuttingDown);
        }
        if job.inputs.is_empty() {
            // Nothing to compute; a zero-row pass would only skew the batch stats.
            let _ = reply.send(Ok(JobOutput {
                logits: Vec::new(),
                queue_us: 0,
                inference_us: 0,
                batch_size: 0,
            }));
            return Ok(rx);
        }
        let capacity = route.opts.queue_capacity;
        let full = || route.counters.queued.load(Ordering::Relaxed) >= capacity;
        if full() {
            // Dead entries should not turn live requests away.
            st.make_room(route.key, now);
        }
        if full() {
            route.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Overloaded { capacity });
        }
        let tokens: usize = job.inputs.iter().map(Encoded::len).sum();
        let lane = Lane::of(tokens, route.bulk_tokens);
        st.push(route.key, job, reply, now, lane);
        shared.pushed[lane as usize].fetch_add(1, Ordering::SeqCst);
        drop(st);
        shared.work[lane as usize].notify_one();
        Ok(rx)
    }

    /// Installs the one observer of forward passes (metrics); later calls are ignored.
    pub fn observe_batches(&self, observer: BatchObserver) {
        let _ = self.shared().observer.set(observer);
    }

    /// The limits this scheduler was started with.
    pub fn config(&self) -> &SchedulerConfig {
        &self.shared().cfg
    }

    /// Whether an engine thread is computing a batch now.
    pub fn busy(&self) -> bool {
        self.shared().counters.any_busy()
    }

    /// How long ago the engine thread last showed it was alive. An idle worker beats every
    /// [`SchedulerConfig::idle_heartbeat`], a busy one before and after each forward pass, so a
    /// large age means a hung forward pass (or device) or a wedged worker. The systemd watchdog
    /// ([`crate::serve::systemd`]) is fed only while this stays small.
    pub fn heartbeat_age(&self) -> Duration {
        self.shared().heartbeat_age()
    }

    /// Refuses new jobs; queued ones still run. Idempotent.
    pub fn close(&self) {
        self.shared().close();
    }

    /// Resolves once closed, with nothing queued and nothing computing.
    pub async fn drained(&self) {
        let shared = self.shared();
        loop {
            let notified = shared.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a notification between check and await is kept.
            notified.as_mut().enable();
            {
                let st = shared.lock();
                if st.closed && st.is_empty() && !shared.counters.any_busy() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Answers every job still waiting with `ShuttingDown`; the batch being computed finishes.
    /// Does not close the queue by itself.
    pub fn abort_queued(&self) {
        self.shared().answer_queued(None, || JobError::ShuttingDown);
    }

    #[cfg(test)]
    pub(crate) fn gate(&self) -> &crate::sched::gate::Gate {
        &self.shared().gate
    }
}

/// Lets the scheduler know, when the last clone of a [`ModelQueue`] goes, that nothing more
/// will arrive for its route.
struct QueueHandle {
    scheduler: Scheduler,
    route: Arc<Route>,
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        let shared = self.scheduler.shared();
        let gone = shared.lock().retire(self.route.key);
        // Dropped outside the lock: it may be the engine's last reference.
        drop(gone);
        shared.idle.notify_waiters();
    }
}

/// One model's way into the shared [`Scheduler`] (which it derefs to, for what is the
/// scheduler's as a whole: waking the threads, closing, draining).
#[derive(Clone)]
pub struct ModelQueue {
    inner: Arc<QueueHandle>,
}

impl Deref for ModelQueue {
    type Target = Scheduler;

    fn deref(&self) -> &Scheduler {
        &self.inner.scheduler
    }
}

impl ModelQueue {
    pub fn submit(
        &self,
        job: Job,
    ) -> Result<oneshot::Receiver<Result<JobOutput, JobError>>, SubmitError> {
        self.inner.scheduler.submit(&self.inner.route, job)
    }

    /// This model's counts since start, across its reloads; read from atomics, without the
    /// queue lock.
    pub fn stats(&self) -> Stats {
        let busy = self.inner.scheduler.busy();
        self.inner.route.counters.snapshot(busy)
    }

    /// Why this model's engine is unhealthy, if it is: a failed pass whose probe failed too.
    /// Then its queued and later jobs are answered UNAVAILABLE (the other models serve on),
    /// and the service reports it not ready.
    pub fn unhealthy(&self) -> Option<String> {
        self.inner.route.unhealthy.get().cloned()
    }

    /// How this model is scheduled.
    pub fn options(&self) -> &RouteOptions {
        &self.inner.route.opts
    }

    /// The counts a reloaded version of this model goes on from.
    pub fn counters(&self) -> Arc<ModelCounters> {
        self.inner.route.counters.clone()
    }
}
