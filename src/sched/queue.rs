//! Admission between the async request handlers and the one engine thread: a bounded queue with
//! priorities, deadlines and cancellation.
//!
//! Handlers never block: `submit` takes a std mutex for a few pointer moves and hands back a
//! oneshot receiver. Each worker (see [`crate::sched::worker`]) sleeps on its own condvar while its
//! lane has nothing to do, so an idle worker starts a job the moment it is submitted.
//!
//! Two lanes share the queue and its capacity: [`Lane::Fast`] for ordinary requests and
//! [`Lane::Bulk`] for requests of more than [`SchedulerConfig::bulk_tokens`] tokens. Each has
//! its own engine thread, and the bulk lane computes at a lower CPU priority, so a request of
//! 64 long texts (seconds of work on a CPU) runs beside the short ones instead of in front of
//! them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::engine::error::EngineError;
use crate::engine::passes::PassShape;
use crate::engine::tokenize::Encoded;
pub use crate::sched::batch::Priority;
use crate::sched::batch::{Budget, Candidate, Index};
use crate::sched::hot::{EngineThreads, ThreadsConfig};
use crate::sched::route::Route;
pub use crate::sched::route::Stats;

/// What the scheduler runs with; `serve` fills it from the settings, and its `Default` is what
/// `serve` runs with when nothing is set (both in [`crate::serve::config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Jobs waiting, not counting the batch being computed.
    pub queue_capacity: usize,
    /// Padded tokens (rows × longest row) per forward pass.
    pub max_batch_tokens: usize,
    /// Rows per forward pass.
    pub max_batch_size: usize,
    /// Jobs of more tokens than this (all rows together) go to the bulk lane.
    pub bulk_tokens: usize,
    /// Attention working set of one forward pass, in bytes, as the model estimates it
    /// ([`crate::engine::Engine::attention_bytes`]); a batch is cut into passes that keep
    /// under it, and an input over it on its own is refused at admission.
    pub max_attention_bytes: usize,
    /// How often an idle worker wakes to beat its heartbeat ([`crate::sched::Scheduler::heartbeat_age`]);
    /// a busy one beats around every batch.
    pub idle_heartbeat: Duration,
    /// The engine threads of each lane (see [`crate::sched::hot`]).
    pub threads: ThreadsConfig,
    /// Whether `max_batch_tokens` / `max_batch_size` are the defaults, which are sized for a
    /// CPU; [`Self::for_device`] sizes them for a GPU then.
    pub default_limits: (bool, bool),
}

/// Rows one pass takes by default on a GPU: at BERT-base size a 128-row pass still fills an
/// H100 better than four 32-row ones, and launches per pass do not grow with rows.
pub const GPU_DEFAULT_ROWS: usize = 128;
/// Padded tokens one pass takes by default on a GPU (128 rows of 512 tokens).
pub const GPU_DEFAULT_TOKENS: usize = 65_536;

impl SchedulerConfig {
    /// What one batch may hold.
    pub fn budget(&self) -> Budget {
        Budget {
            max_tokens: self.max_batch_tokens,
            max_rows: self.max_batch_size,
        }
    }

    /// How a batch is cut into passes on a device that pads batches (`pad`, a GPU) or not.
    pub fn pass_shape(&self, pad: bool) -> PassShape {
        PassShape {
            max_tokens: self.max_batch_tokens,
            max_rows: self.max_batch_size,
            pad,
            max_attention_bytes: self.max_attention_bytes,
        }
    }
}

impl SchedulerConfig {
    /// The bulk lane's threshold for passes of `max_batch_tokens`: a job of more than a quarter
    /// of a full pass is bulk work. Never 0, which would send even one-token jobs to the bulk
    /// lane when a pass holds under four tokens.
    pub fn bulk_tokens_for(max_batch_tokens: usize) -> usize {
        (max_batch_tokens / 4).max(1)
    }

    /// The limits for a device that pads batches (`pads`, a GPU) or not: on a GPU, pass sizes
    /// left at their CPU defaults become [`GPU_DEFAULT_ROWS`] and [`GPU_DEFAULT_TOKENS`]
    /// (what was set by flag or file stays).
    pub fn for_device(&self, pads: bool) -> SchedulerConfig {
        let mut c = self.clone();
        if pads {
            if c.default_limits.0 {
                c.max_batch_tokens = GPU_DEFAULT_TOKENS;
                c.bulk_tokens = Self::bulk_tokens_for(GPU_DEFAULT_TOKENS);
            }
            if c.default_limits.1 {
                c.max_batch_size = GPU_DEFAULT_ROWS;
            }
        }
        c
    }
}

/// Which engine thread computes a job (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Fast = 0,
    Bulk = 1,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Fast, Lane::Bulk];

    /// The lane of a job of `tokens` tokens, when jobs of more than `bulk_tokens` are bulk
    /// work (a model's [`crate::sched::route::Route::bulk_tokens`]).
    pub fn of(tokens: usize, bulk_tokens: usize) -> Lane {
        if tokens > bulk_tokens {
            Lane::Bulk
        } else {
            Lane::Fast
        }
    }
}

/// One request's rows; they always run in the same forward pass.
#[derive(Debug, Clone)]
pub struct Job {
    pub inputs: Vec<Encoded>,
    pub priority: Priority,
    pub deadline: Option<Instant>,
    /// When the server read the request; the scheduler's queue time counts from `submit`.
    pub received: Instant,
}

#[derive(Debug, Clone)]
pub struct JobOutput {
    /// One row of logits per input, in input order.
    pub logits: Vec<Vec<f32>>,
    pub queue_us: u64,
    pub inference_us: u64,
    /// Rows in the forward pass this job shared.
    pub batch_size: u32,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    #[error("deadline exceeded before the job was started")]
    DeadlineExceeded,
    #[error(transparent)]
    Engine(EngineError),
    #[error("shutting down")]
    ShuttingDown,
    /// The engine failed a pass and then its health probe (see [`Shared::unhealthy`]).
    #[error("engine unhealthy: {0}")]
    Unhealthy(String),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("overloaded: {capacity} jobs already queued")]
    Overloaded { capacity: usize },
    #[error("shutting down")]
    ShuttingDown,
    #[error("engine unhealthy: {0}")]
    Unhealthy(String),
}

pub(crate) type Reply = oneshot::Sender<Result<JobOutput, JobError>>;

pub(crate) struct Queued {
    pub job: Job,
    pub reply: Reply,
    pub submitted: Instant,
    pub arrival: u64,
    pub lane: Lane,
}

impl Queued {
    pub fn longest(&self) -> usize {
        self.job.inputs.iter().map(Encoded::len).max().unwrap_or(0)
    }

    fn tokens(&self) -> u64 {
        self.job.inputs.iter().map(|e| e.len() as u64).sum()
    }

    fn candidate(&self) -> Candidate {
        Candidate {
            priority: self.job.priority,
            len: self.longest(),
            rows: self.job.inputs.len(),
            arrival: self.arrival,
        }
    }
}

/// The fair share's unit: tokens served × this / weight, so weights up to 1000 stay exact
/// enough in integers.
const SHARE_SCALE: u64 = 1000;

/// One model version's waiting jobs.
struct Queue {
    route: Arc<Route>,
    jobs: HashMap<u64, Queued>,
    /// One per [`Lane`].
    index: [Index; 2],
    /// Per [`Lane`]: (deadline, arrival) of every queued job that has one, soonest first. Per
    /// lane, so each worker judges the deadlines of the jobs it would start, and only those.
    deadlines: [BTreeSet<(Instant, u64)>; 2],
    /// Per [`Lane`]: the tokens this model was served, scaled by its weight (the fair share's
    /// virtual time). A model whose lane was idle catches up to the busy ones when work
    /// arrives, so idleness is not saved up as credit.
    served: [u64; 2],
    /// Per [`Lane`]: when this model's jobs were last picked there (the lane's pick count),
    /// so that between models equally served the one that waited longest goes first: a model
    /// waking up next to a busy one has caught up to its virtual time, and must not lose the
    /// tie to it.
    last_pick: [u64; 2],
    /// No handle is left: nothing more arrives, and the queue goes once empty.
    retired: bool,
}

impl Queue {
    fn new(route: Arc<Route>) -> Queue {
        Queue {
            route,
            jobs: HashMap::new(),
            index: Default::default(),
            deadlines: Default::default(),
            served: [0; 2],
            last_pick: [0; 2],
            retired: false,
        }
    }
}

/// The waiting jobs of every model. Every operation the handlers and the workers run under the
/// lock is O(log n) per job it touches (plus one look at each model); only a submit that
/// finds its model's share full scans that model's jobs, for those whose clients have gone.
#[derive(Default)]
pub(crate) struct State {
    queues: BTreeMap<u64, Queue>,
    len: usize,
    next_arrival: u64,
    /// Per [`Lane`]: batches picked, for [`Queue::last_pick`].
    picks: [u64; 2],
    pub closed: bool,
}

impl State {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn add(&mut self, route: Arc<Route>) {
        self.queues.insert(route.key, Queue::new(route));
    }

    /// Nothing more arrives for `key`: its queue goes once its last job is taken. Returns it
    /// when that is now, for the caller to drop outside the lock (it may hold the last
    /// reference to an engine).
    pub(crate) fn retire(&mut self, key: u64) -> Option<Arc<Route>> {
        let q = self.queues.get_mut(&key)?;
        q.retired = true;
        self.prune(key)
    }

    fn prune(&mut self, key: u64) -> Option<Arc<Route>> {
        let q = self.queues.get(&key)?;
        if q.retired && q.jobs.is_empty() {
            return self.queues.remove(&key).map(|q| q.route);
        }
        None
    }

    pub(crate) fn push(&mut self, key: u64, job: Job, reply: Reply, now: Instant, lane: Lane) {
        let l = lane as usize;
        // The least virtual time among the models already waiting in this lane.
        let busiest = self
            .queues
            .values()
            .filter(|q| q.route.key != key && !q.index[l].is_empty())
            .map(|q| q.served[l])
            .min();
        let Some(q) = self.queues.get_mut(&key) else {
            // A model's queue lives as long as a handle to it, so a handle never misses it.
            let _ = reply.send(Err(JobError::ShuttingDown));
            return;
        };
        if q.index[l].is_empty() {
            if let Some(v) = busiest {
                q.served[l] = q.served[l].max(v);
            }
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let queued = Queued {
            job,
            reply,
            submitted: now,
            arrival,
            lane,
        };
        q.index[l].insert(queued.candidate());
        if let Some(d) = queued.job.deadline {
            q.deadlines[l].insert((d, arrival));
        }
        q.jobs.insert(arrival, queued);
        q.route.counters.queued.fetch_add(1, Ordering::Relaxed);
        self.len += 1;
    }

    fn take(&mut self, key: u64, arrival: u64) -> Option<Queued> {
        let q = self.queues.get_mut(&key)?;
        let job = q.jobs.remove(&arrival)?;
        let l = job.lane as usize;
        q.index[l].remove(arrival);
        if let Some(d) = job.job.deadline {
            q.deadlines[l].remove(&(d, arrival));
        }
        q.route.counters.queued.fetch_sub(1, Ordering::Relaxed);
        self.len -= 1;
        Some(job)
    }

    /// Answers and removes the jobs of `lane` whose deadline has passed: they could no longer
    /// be on time, and must take neither a batch slot nor a queue slot.
    pub fn expire(&mut self, lane: Lane, now: Instant) {
        self.expire_where(lane, now, |_| true);
    }

    /// [`State::expire`] for the queues whose key passes `of`. Allocates only when something
    /// is due: the worker runs it before every pick.
    fn expire_where(&mut self, lane: Lane, now: Instant, of: impl Fn(u64) -> bool) {
        let l = lane as usize;
        let due: Vec<(u64, u64)> = self
            .queues
            .iter()
            .filter(|(k, _)| of(**k))
            .flat_map(|(&k, q)| {
                q.deadlines[l]
                    .iter()
                    .take_while(move |(d, _)| *d <= now)
                    .map(move |&(_, a)| (k, a))
            })
            .collect();
        for (key, arrival) in due {
            if let Some(q) = self.take(key, arrival) {
                if let Some(route) = self.queues.get(&key).map(|q| &q.route) {
                    route.counters.expired.fetch_add(1, Ordering::Relaxed);
                }
                let _ = q.reply.send(Err(JobError::DeadlineExceeded));
            }
        }
    }

    /// Makes room in `key`'s share before it is found full: its expired jobs, and those nobody
    /// waits for any more. O(n) in that model's jobs: run only when its share is full, where
    /// it keeps dead entries from turning live requests away.
    pub(crate) fn make_room(&mut self, key: u64, now: Instant) {
        for lane in Lane::ALL {
            self.expire_where(lane, now, |k| k == key);
        }
        let Some(q) = self.queues.get(&key) else {
            return;
        };
        let counters = q.route.counters.clone();
        let gone: Vec<u64> = q
            .jobs
            .values()
            .filter(|q| q.reply.is_closed())
            .map(|q| q.arrival)
            .collect();
        for a in gone {
            self.take(key, a);
            counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The model whose jobs `lane` runs next: the best class, then the soonest deadline, then
    /// the least served for its weight, then the one picked longest ago.
    fn next_model(&self, lane: Lane) -> Option<u64> {
        let l = lane as usize;
        self.queues
            .values()
            .filter(|q| !q.index[l].is_empty())
            .min_by_key(|q| {
                let deadline = q.deadlines[l].first().map(|&(d, _)| d);
                (
                    q.route.opts.class,
                    deadline.is_none(),
                    deadline,
                    q.served[l],
                    q.last_pick[l],
                    q.route.key,
                )
            })
            .map(|q| q.route.key)
    }

    /// Takes the next batch out of the queue, all of one model (see [`crate::sched::batch`]);
    /// jobs it meets whose clients have gone are dropped on the way and counted as cancelled.
    /// `None` when the lane has nothing waiting; an empty batch when all it met had gone.
    pub fn pick(&mut self, lane: Lane) -> Option<(Arc<Route>, Vec<Queued>)> {
        let l = lane as usize;
        let key = self.next_model(lane)?;
        let q = self.queues.get(&key)?;
        let route = q.route.clone();
        let mut gone = Vec::new();
        let jobs = &q.jobs;
        let picked = q.index[l].select(route.budget, |a| {
            let live = jobs.get(&a).is_some_and(|q| !q.reply.is_closed());
            if !live {
                gone.push(a);
            }
            live
        });
        // A job can be met twice (as a candidate anchor, then by length).
        for a in gone {
            if self.take(key, a).is_some() {
                route.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        let batch: Vec<Queued> = picked
            .into_iter()
            .filter_map(|a| self.take(key, a))
            .collect();
        let tokens: u64 = batch.iter().map(Queued::tokens).sum::<u64>().max(1);
        self.picks[l] += 1;
        if let Some(q) = self.queues.get_mut(&key) {
            let share = tokens.saturating_mul(SHARE_SCALE) / u64::from(route.opts.weight.max(1));
            q.served[l] = q.served[l].saturating_add(share);
            q.last_pick[l] = self.picks[l];
        }
        // The worker holds `route` for the batch, so a pruned engine is let go outside the lock.
        drop(self.prune(key));
        Some((route, batch))
    }

    /// Everything still queued of `key` (or of every model when `None`), oldest first.
    pub fn drain(&mut self, key: Option<u64>) -> Vec<Queued> {
        self.drain_where(|k, _| key.is_none_or(|key| key == k))
    }

    /// Everything still queued in `lane`, oldest first.
    pub fn drain_lane(&mut self, lane: Lane) -> Vec<Queued> {
        self.drain_where(|_, q| q.lane == lane)
    }

    fn drain_where(&mut self, keep: impl Fn(u64, &Queued) -> bool) -> Vec<Queued> {
        let mut picked: Vec<(u64, u64)> = self
            .queues
            .iter()
            .flat_map(|(&k, q)| q.jobs.values().map(move |j| (k, j)))
            .filter(|(k, j)| keep(*k, j))
            .map(|(k, j)| (k, j.arrival))
            .collect();
        picked.sort_unstable_by_key(|&(_, a)| a);
        let all: Vec<Queued> = picked
            .into_iter()
            .filter_map(|(k, a)| self.take(k, a))
            .collect();
        let keys: Vec<u64> = self.queues.keys().copied().collect();
        for k in keys {
            drop(self.prune(k));
        }
        all
    }
}

/// What the scheduler as a whole reports: its workers' state, for the drain and the watchdog.
/// The counts of each model are its route's [`ModelCounters`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Per [`Lane`]: its worker is computing a batch.
    pub busy: [AtomicBool; 2],
}

impl Counters {
    pub fn any_busy(&self) -> bool {
        self.busy.iter().any(|b| b.load(Ordering::Acquire))
    }
}

pub(crate) struct Shared {
    pub cfg: SchedulerConfig,
    pub state: Mutex<State>,
    pub counters: Counters,
    /// Per [`Lane`]: its worker waits here for jobs or for close.
    pub work: [Condvar; 2],
    /// `drained()` waiters; notified whenever the queue shrinks or the worker goes idle.
    pub idle: Notify,
    /// When the scheduler was created; the heartbeat counts from here.
    pub epoch: Instant,
    /// Per [`Lane`]: milliseconds after `epoch` at which its worker last showed it was alive.
    pub heartbeat_ms: [AtomicU64; 2],
    /// Told about every forward pass, on the engine thread (see [`Scheduler::observe_batches`]).
    pub observer: OnceLock<BatchObserver>,
    /// Per [`Lane`]: its engine threads, once started.
    pub threads: [OnceLock<EngineThreads>; 2],
    /// Per [`Lane`]: bumped by every push and by close, so that a worker polling its lane
    /// (while its threads are kept awake) sees work without taking the lock.
    pub pushed: [AtomicU64; 2],
    /// Per [`Lane`]: its worker sleeps on its condvar (and a wake-up must notify it).
    pub sleeping: [AtomicBool; 2],
    /// The key of the next route added.
    pub next_key: AtomicU64,
    #[cfg(test)]
    pub gate: crate::sched::gate::Gate,
}

/// Called with (model name, rows, padded tokens) after each forward pass; must be cheap.
pub type BatchObserver = Box<dyn Fn(&str, usize, usize) + Send + Sync>;

impl Shared {
    /// A panic elsewhere while holding the lock leaves the queue consistent (every mutation is a
    /// single push, retain or drain), so the poisoned state is still usable.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers every job still waiting for `key` (every model's when `None`) with `error()`
    /// (the batch being computed finishes). Does not close the queue by itself.
    pub fn answer_queued(&self, key: Option<u64>, error: impl Fn() -> JobError) {
        let queued: Vec<Queued> = self.lock().drain(key);
        for q in queued {
            let _ = q.reply.send(Err(error()));
        }
        self.idle.notify_waiters();
    }

    /// `lane`'s worker is alive: called on every turn of its loop and around every pass.
    pub fn beat(&self, lane: Lane) {
        self.heartbeat_ms[lane as usize].store(millis(self.epoch.elapsed()), Ordering::Relaxed);
    }

    /// The age of the older of the two workers' heartbeats: either one hung is a hang. Except
    /// the bulk lane's while it computes: at background priority next to a saturated fast lane
    /// one of its passes may take far longer than any watchdog interval without being stuck
    /// (a hung device stops the fast lane's next pass too, which this does see).
    pub fn heartbeat_age(&self) -> Duration {
        let now = millis(self.epoch.elapsed());
        Lane::ALL
            .iter()
            .filter(|&&l| {
                l == Lane::Fast || !self.counters.busy[l as usize].load(Ordering::Acquire)
            })
            .map(|&l| now.saturating_sub(self.heartbeat_ms[l as usize].load(Ordering::Relaxed)))
            .max()
            .map_or(Duration::ZERO, Duration::from_millis)
    }

    pub fn close(&self) {
        self.lock().closed = true;
        for p in &self.pushed {
            p.fetch_add(1, Ordering::SeqCst);
        }
        for w in &self.work {
            w.notify_all();
        }
        self.idle.notify_waiters();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::worker::tests::{block_on, encode, engine, held, job, Rx};
    use crate::sched::Scheduler;
    use futures::FutureExt;

    #[test]
    fn burst_beyond_capacity_is_refused_at_submit_and_nothing_is_lost() {
        let e = engine();
        let cfg = SchedulerConfig {
            queue_capacity: 8,
            ..SchedulerConfig::default()
        };
        let (s, first) = held(&e, cfg);
        let row = encode(&e, "burst");
        let mut admitted: Vec<Rx> = Vec::new();
        let mut refused = 0;
        for _ in 0..200 {
            match s.submit(job(vec![row.clone()])) {
                Ok(rx) => admitted.push(rx),
                Err(SubmitError::Overloaded { capacity }) => {
                    assert_eq!(capacity, 8);
                    refused += 1;
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
        // The held job is computing, so exactly the capacity is admitted.
        assert_eq!((admitted.len(), refused), (8, 192));
        assert_eq!(s.stats().overloaded, 192);
        s.gate().open();
        assert!(first.blocking_recv().expect("answered").is_ok());
        for rx in admitted {
            assert!(rx.blocking_recv().expect("answered").is_ok());
        }
        assert_eq!(s.stats().computed, 9);
    }

    #[test]
    fn dead_entries_do_not_count_against_capacity() {
        let e = engine();
        let cfg = SchedulerConfig {
            queue_capacity: 2,
            ..SchedulerConfig::default()
        };
        let (s, first) = held(&e, cfg);
        drop(s.submit(job(vec![encode(&e, "a")])).expect("admitted"));
        drop(s.submit(job(vec![encode(&e, "b")])).expect("admitted"));
        let live = s
            .submit(job(vec![encode(&e, "c")]))
            .expect("room after sweep");
        assert_eq!(s.stats().cancelled, 2);
        s.gate().open();
        assert!(first.blocking_recv().expect("answered").is_ok());
        assert!(live.blocking_recv().expect("answered").is_ok());
    }

    #[test]
    fn close_refuses_new_jobs_and_drained_waits_for_queued_work() {
        let e = engine();
        let (s, first) = held(&e, SchedulerConfig::default());
        let queued: Vec<Rx> = ["one", "two"]
            .iter()
            .map(|t| s.submit(job(vec![encode(&e, t)])).expect("admitted"))
            .collect();
        s.close();
        assert!(matches!(
            s.submit(job(vec![encode(&e, "late")])),
            Err(SubmitError::ShuttingDown)
        ));
        // The worker is held mid-batch, so the drain cannot be complete.
        assert!(s.drained().now_or_never().is_none());
        s.gate().open();
        block_on(s.drained());
        assert!(first.blocking_recv().expect("answered").is_ok());
        for rx in queued {
            assert!(rx.blocking_recv().expect("answered").is_ok());
        }
        let st = s.stats();
        assert_eq!((st.computed, st.queued, st.busy), (3, 0, false));
    }

    #[test]
    fn abort_queued_answers_waiting_jobs_and_lets_the_running_one_finish() {
        let e = engine();
        let (s, first) = held(&e, SchedulerConfig::default());
        let queued: Vec<Rx> = ["one", "two"]
            .iter()
            .map(|t| s.submit(job(vec![encode(&e, t)])).expect("admitted"))
            .collect();
        s.close();
        s.abort_queued();
        for rx in queued {
            assert!(matches!(
                rx.blocking_recv(),
                Ok(Err(JobError::ShuttingDown))
            ));
        }
        s.gate().open();
        block_on(s.drained());
        assert!(first.blocking_recv().expect("answered").is_ok());
        assert_eq!(s.stats().computed, 1);
    }

    #[test]
    fn idle_worker_starts_a_lone_job_at_once_and_empty_jobs_need_no_pass() {
        let e = engine();
        let s = Scheduler::start_one(e.clone(), SchedulerConfig::default());
        let rx = s.submit(job(vec![encode(&e, "solo")])).expect("admitted");
        assert_eq!(
            rx.blocking_recv()
                .expect("answered")
                .expect("ok")
                .batch_size,
            1
        );
        let empty = s.submit(job(Vec::new())).expect("admitted");
        assert!(empty
            .blocking_recv()
            .expect("answered")
            .expect("ok")
            .logits
            .is_empty());
        assert_eq!(s.stats().batches, 1);
    }

    #[test]
    fn the_heartbeat_is_the_older_lane_s_but_a_computing_bulk_lane_may_be_slow() {
        let (_s, shared) = Scheduler::unstarted(SchedulerConfig::default());
        std::thread::sleep(Duration::from_millis(30));
        shared.beat(Lane::Fast);
        // The bulk lane never beat: its age is the scheduler's.
        assert!(shared.heartbeat_age() >= Duration::from_millis(30));
        shared.counters.busy[Lane::Bulk as usize].store(true, Ordering::Release);
        assert!(shared.heartbeat_age() < Duration::from_millis(30));
        shared.counters.busy[Lane::Bulk as usize].store(false, Ordering::Release);
        shared.beat(Lane::Bulk);
        assert!(shared.heartbeat_age() < Duration::from_millis(30));
    }

    /// Three models, one pass at a time: the high class goes first, then the model that was
    /// idle (level with the busy one's share, and served longest ago), then the busy one.
    #[test]
    fn between_models_the_class_goes_first_then_the_least_served() {
        use crate::sched::route::{Class, RouteOptions};
        let e = engine();
        let cfg = SchedulerConfig {
            max_batch_size: 1,
            ..SchedulerConfig::default()
        };
        let s = Scheduler::start(&[&e], cfg.clone());
        let opts = |name: &str| RouteOptions::single(name, 64, cfg.max_batch_tokens);
        let busy = s.add(e.clone(), opts("busy"), None);
        let idle = s.add(e.clone(), opts("idle"), None);
        let high = s.add(
            e.clone(),
            RouteOptions {
                class: Class::High,
                ..opts("high")
            },
            None,
        );
        s.gate().shut();
        let first = busy
            .submit(job(vec![encode(&e, "first")]))
            .expect("admitted");
        s.gate().wait_batches(1);
        let mut rest: Vec<Rx> = (0..2)
            .map(|i| {
                busy.submit(job(vec![encode(&e, &format!("busy {i}"))]))
                    .expect("admitted")
            })
            .collect();
        let mut idle_rx = idle
            .submit(job(vec![encode(&e, "idle")]))
            .expect("admitted");
        let mut high_rx = high
            .submit(job(vec![encode(&e, "high")]))
            .expect("admitted");
        // Each step computes the batch held at the gate; the next one is then picked and held.
        s.gate().step();
        s.gate().wait_batches(2);
        s.gate().step();
        s.gate().wait_batches(3);
        assert!(first.blocking_recv().expect("answered").is_ok());
        assert!(high_rx.try_recv().is_ok(), "the high class went first");
        assert!(idle_rx.try_recv().is_err(), "the idle model waits its turn");
        s.gate().step();
        s.gate().wait_batches(4);
        assert!(
            idle_rx.try_recv().is_ok(),
            "then the idle model, ahead of the busy one"
        );
        assert!(rest.iter_mut().all(|rx| rx.try_recv().is_err()));
        s.gate().open();
        for rx in rest {
            assert!(rx.blocking_recv().expect("answered").is_ok());
        }
        let computed = |q: &crate::sched::ModelQueue| q.stats().computed;
        assert_eq!(
            (computed(&busy), computed(&idle), computed(&high)),
            (3, 1, 1)
        );
    }

    #[test]
    fn jobs_over_a_quarter_of_a_full_pass_are_bulk_work() {
        let cfg = SchedulerConfig::default();
        assert_eq!(Lane::of(cfg.bulk_tokens, cfg.bulk_tokens), Lane::Fast);
        assert_eq!(Lane::of(cfg.bulk_tokens + 1, cfg.bulk_tokens), Lane::Bulk);
    }
}
