//! Scheduling: admission into a bounded queue, batch selection, and the engine threads.

pub mod batch;
#[cfg(test)]
pub(crate) mod gate;
pub mod hooks;
pub mod hot;
pub mod priority;
pub mod queue;
pub mod worker;

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
    /// Spawns the engine thread. If the OS refuses a thread the scheduler starts closed, so
    /// every submit answers `ShuttingDown` instead of hanging; [`Scheduler::try_start`] reports it.
    pub fn start(engine: Arc<Engine>, cfg: SchedulerConfig) -> Scheduler {
        let (s, shared) = Self::unstarted(cfg);
        if let Err(e) = crate::sched::worker::spawn(engine, shared) {
            tracing::error!("cannot spawn the engine thread: {e}");
            s.close();
        }
        s
    }

    /// Like [`Scheduler::start`], but fails when the engine thread cannot be spawned.
    pub fn try_start(engine: Arc<Engine>, cfg: SchedulerConfig) -> std::io::Result<Scheduler> {
        let (s, shared) = Self::unstarted(cfg);
        crate::sched::worker::spawn(engine, shared)?;
        Ok(s)
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
            unhealthy: OnceLock::new(),
            threads: Default::default(),
            pushed: Default::default(),
            sleeping: Default::default(),
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

    pub fn submit(
        &self,
        job: Job,
    ) -> Result<oneshot::Receiver<Result<JobOutput, JobError>>, SubmitError> {
        let shared = self.shared();
        let (reply, rx) = oneshot::channel();
        let now = Instant::now();
        if let Some(why) = shared.unhealthy.get() {
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
        if st.len() >= shared.cfg.queue_capacity {
            // Dead entries should not turn live requests away.
            for lane in Lane::ALL {
                st.expire(lane, now, &shared.counters);
            }
            st.sweep_cancelled(&shared.counters);
        }
        if st.len() >= shared.cfg.queue_capacity {
            shared.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Overloaded {
                capacity: shared.cfg.queue_capacity,
            });
        }
        let tokens = job.inputs.iter().map(Encoded::len).sum();
        let lane = Lane::of(tokens, &shared.cfg);
        st.push(job, reply, now, lane);
        shared.counters.queued.store(st.len(), Ordering::Relaxed);
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

    /// Counts since start; read from atomics, without the queue lock.
    pub fn stats(&self) -> Stats {
        self.shared().counters.snapshot()
    }

    /// How long ago the engine thread last showed it was alive. An idle worker beats every
    /// [`SchedulerConfig::idle_heartbeat`], a busy one before and after each forward pass, so a
    /// large age means a hung forward pass (or device) or a wedged worker. The systemd watchdog
    /// ([`crate::serve::systemd`]) is fed only while this stays small.
    pub fn heartbeat_age(&self) -> Duration {
        self.shared().heartbeat_age()
    }

    /// Why the engine is unhealthy, if it is: a failed pass whose probe failed too. Then every
    /// queued and later job is answered UNAVAILABLE, and the service reports not ready.
    pub fn unhealthy(&self) -> Option<String> {
        self.shared().unhealthy.get().cloned()
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
        self.shared().answer_queued(|| JobError::ShuttingDown);
    }

    #[cfg(test)]
    pub(crate) fn gate(&self) -> &crate::sched::gate::Gate {
        &self.shared().gate
    }
}
