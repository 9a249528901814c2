//! The threads the CPU kernels ([`super::gemm`], [`super::attend`]) split their work across: a
//! fork-join team whose helpers stay awake between the parallel regions of a forward pass, and
//! for a while after one, so that neither the next region nor the next request pays for waking
//! them.
//!
//! Why not rayon's pool for this: its idle threads go to sleep microseconds after they run out
//! of work, so each of a pass's ~30 parallel regions paid a futex wake-up per thread (worse on a
//! virtual machine whose idle vCPU has halted), and rayon has no setting to make them wait
//! longer. Keeping them awake with a spinning rayon job does not work either: a thread waiting
//! inside a join may pick that job up and stall the work beneath it (seen as a deadlock).
//! A team runs only kernel chunks, so none of that can happen here.
//!
//! [`for_each`] gives the calling thread and every helper a fixed share of the chunk indices
//! (then lets each help with what is left of the others'; see [`Job::work`] for why), and
//! returns once all are done. A helper spins (yielding its core to the OS
//! scheduler between looks, so the I/O and tokenizer threads never wait for a spinner) while the
//! team is *awake*: during a pass ([`Team::pass_started`]) and for `spin` after one
//! ([`Team::pass_ended`]) or after [`Team::wake`]; otherwise it parks, and an idle daemon costs
//! no CPU.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// No deadline: awake until told otherwise.
const NEVER: u64 = u64::MAX;

/// One parallel region: `n` chunks of a closure that lives on the caller's stack.
struct Job<'a> {
    data: *const (),
    /// Runs chunk `i` of the closure at `data`.
    ///
    /// # Safety
    /// Only with this job's own `data`, while the region that made the job has not returned.
    call: unsafe fn(*const (), usize),
    n: usize,
    /// One per thread of the team: thread `t` owns chunks `[t·n/T, (t+1)·n/T)` and takes them
    /// from `shares[t]`, then helps with the others' that are left.
    shares: &'a [Share],
    /// Helpers that took the job and have not finished with it.
    pending: AtomicUsize,
    panicked: AtomicBool,
}

/// The next chunk of one thread's share, on a cache line of its own (two, for the adjacent-line
/// prefetcher), so that a thread counting through its own share never moves a line another
/// thread is using.
#[repr(align(128))]
struct Share {
    next: AtomicUsize,
}

impl Job<'_> {
    /// Runs chunks as thread `me` of the team: its own share first, then what is left of the
    /// others'.
    ///
    /// Why fixed shares rather than one counter for all: a kernel's chunk `i` is the same slice
    /// of the same weight in every pass (a panel of columns), so the thread that owns it finds
    /// that weight in its own caches pass after pass. From one shared counter the chunks fell
    /// to whichever thread came first, so each pass read about half of every weight from the
    /// other core's cache, and every chunk moved the counter's line between the cores. On this
    /// VM, whose two vCPUs sometimes sit on cores ~350 ns apart (a cache-line round trip,
    /// against ~60 ns when close), that made two threads slower than one.
    fn work(&self, me: usize) {
        let t = self.shares.len();
        for off in 0..t {
            let u = (me + off) % t;
            let end = (u + 1) * self.n / t;
            loop {
                let i = self.shares[u].next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                // SAFETY: `data` is the `F` of `call::<F>`, alive until `run` returns, which
                // waits for every helper that took the job.
                unsafe { (self.call)(self.data, i) };
            }
        }
    }
}

/// # Safety
/// `data` must point to a live `F`.
unsafe fn call<F: Fn(usize) + Sync>(data: *const (), i: usize) {
    // SAFETY: as the caller promises.
    unsafe { (*data.cast::<F>())(i) }
}

struct Helper {
    /// The job, with its lifetime erased: it lives until `Inner::run` has seen `pending` fall
    /// to zero.
    mailbox: AtomicPtr<Job<'static>>,
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
}

struct Inner {
    helpers: Vec<Helper>,
    /// One per thread, the caller's first: the running region's shares (see [`Job::work`]).
    shares: Vec<Share>,
    epoch: Instant,
    /// Nanoseconds after `epoch` until which helpers spin, or [`NEVER`].
    until: AtomicU64,
    spin_ns: u64,
    busy_poll: bool,
    stop: AtomicBool,
    /// Held by the one region running at a time; a second caller runs its region alone.
    running: Mutex<()>,
}

impl Inner {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(NEVER - 1)
    }

    fn awake(&self) -> bool {
        self.busy_poll || self.now_ns() < self.until.load(Ordering::SeqCst)
    }

    fn unpark_sleepers(&self) {
        for h in &self.helpers {
            if h.sleeping.load(Ordering::SeqCst) {
                if let Some(t) = h.thread.get() {
                    t.unpark();
                }
            }
        }
    }

    fn run<F: Fn(usize) + Sync>(&self, n: usize, f: &F) {
        let Ok(_one_at_a_time) = self.running.try_lock() else {
            return (0..n).for_each(f);
        };
        // No helper still uses the shares: the last region waited for every one that took it.
        let t = self.shares.len();
        for (u, share) in self.shares.iter().enumerate() {
            share.next.store(u * n / t, Ordering::Relaxed);
        }
        let job = Job {
            data: (f as *const F).cast(),
            call: call::<F>,
            n,
            shares: &self.shares,
            pending: AtomicUsize::new(self.helpers.len()),
            panicked: AtomicBool::new(false),
        };
        // The mailbox's SeqCst store below publishes the shares' starts with the job.
        let p = &job as *const Job as *mut Job<'static>;
        for h in &self.helpers {
            h.mailbox.store(p, Ordering::SeqCst);
            if h.sleeping.load(Ordering::SeqCst) {
                if let Some(t) = h.thread.get() {
                    t.unpark();
                }
            }
        }
        let mine = panic::catch_unwind(AssertUnwindSafe(|| job.work(0)));
        // Take back what no helper has taken: exactly one of us swaps the pointer out.
        for h in &self.helpers {
            if !h.mailbox.swap(ptr::null_mut(), Ordering::SeqCst).is_null() {
                job.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let mut spins = 0u32;
        while job.pending.load(Ordering::Acquire) > 0 {
            spins += 1;
            if spins.is_multiple_of(64) {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Err(p) = mine {
            panic::resume_unwind(p);
        }
        if job.panicked.load(Ordering::SeqCst) {
            panic!("a kernel panicked on a helper thread");
        }
    }
}

thread_local! {
    /// The team this thread's kernels split across (set by [`Team::enter`]).
    static CURRENT: RefCell<Option<Arc<Inner>>> = const { RefCell::new(None) };
    /// Set on helper threads: a kernel a helper runs does not fork again.
    static HELPER: Cell<bool> = const { Cell::new(false) };
}

fn helper_loop(inner: Arc<Inner>, me: usize) {
    HELPER.set(true);
    let h = &inner.helpers[me];
    loop {
        let p = h.mailbox.swap(ptr::null_mut(), Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: the caller keeps the job alive until `pending` reaches zero, and this
            // helper counts itself out only after its last use of it.
            let job = unsafe { &*p };
            if panic::catch_unwind(AssertUnwindSafe(|| job.work(me + 1))).is_err() {
                job.panicked.store(true, Ordering::SeqCst);
            }
            job.pending.fetch_sub(1, Ordering::Release);
            continue;
        }
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        if inner.awake() {
            for _ in 0..32 {
                std::hint::spin_loop();
            }
            thread::yield_now();
            continue;
        }
        h.sleeping.store(true, Ordering::SeqCst);
        // Looked at again after saying so: a job or wake-up from before is seen here, one from
        // after unparks (and an unpark before the park makes it return at once).
        if h.mailbox.load(Ordering::SeqCst).is_null()
            && !inner.awake()
            && !inner.stop.load(Ordering::SeqCst)
        {
            thread::park();
        }
        h.sleeping.store(false, Ordering::SeqCst);
    }
}

/// A team of `threads - 1` helper threads beside whichever thread calls [`for_each`].
pub struct Team {
    inner: Arc<Inner>,
}

impl Team {
    /// `threads` counts the caller: 1 is no helper at all. `on_start` runs first on each
    /// helper (pinning, priority).
    pub fn new(
        name: &str,
        threads: usize,
        spin: Duration,
        busy_poll: bool,
        on_start: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<Team> {
        let helpers = threads.max(1) - 1;
        let inner = Arc::new(Inner {
            shares: (0..=helpers)
                .map(|_| Share {
                    next: AtomicUsize::new(0),
                })
                .collect(),
            helpers: (0..helpers)
                .map(|_| Helper {
                    mailbox: AtomicPtr::new(ptr::null_mut()),
                    sleeping: AtomicBool::new(false),
                    thread: OnceLock::new(),
                })
                .collect(),
            epoch: Instant::now(),
            until: AtomicU64::new(0),
            spin_ns: u64::try_from(spin.as_nanos()).unwrap_or(NEVER - 1),
            busy_poll,
            stop: AtomicBool::new(false),
            running: Mutex::new(()),
        });
        let on_start = Arc::new(on_start);
        for i in 0..helpers {
            let (inner2, on_start) = (inner.clone(), on_start.clone());
            let handle = thread::Builder::new()
                .name(format!("{name}-{}", i + 1))
                .spawn(move || {
                    on_start();
                    helper_loop(inner2, i)
                });
            match handle {
                Ok(h) => {
                    let _ = inner.helpers[i].thread.set(h.thread().clone());
                }
                Err(e) => {
                    Team { inner }.shut();
                    return Err(e);
                }
            }
        }
        Ok(Team { inner })
    }

    /// Threads the kernels split across, the caller included.
    pub fn threads(&self) -> usize {
        self.inner.helpers.len() + 1
    }

    /// Makes this team the one the calling thread's kernels use.
    pub fn enter(&self) {
        let inner = self.inner.clone();
        CURRENT.with(|c| *c.borrow_mut() = Some(inner));
    }

    /// Whether the helpers are being kept awake now.
    pub fn awake(&self) -> bool {
        self.inner.awake()
    }

    /// Work is coming: keep the helpers awake for `spin` more (nothing when `spin` is 0).
    pub fn wake(&self) {
        let i = &self.inner;
        if i.spin_ns == 0 || i.busy_poll {
            return;
        }
        i.until
            .fetch_max(i.now_ns().saturating_add(i.spin_ns), Ordering::SeqCst);
        i.unpark_sleepers();
    }

    /// A forward pass begins: no helper sleeps until it has ended.
    pub fn pass_started(&self) {
        self.inner.until.store(NEVER, Ordering::SeqCst);
        self.inner.unpark_sleepers();
    }

    /// A forward pass has ended: the helpers stay awake `spin` more.
    pub fn pass_ended(&self) {
        let i = &self.inner;
        i.until
            .store(i.now_ns().saturating_add(i.spin_ns), Ordering::SeqCst);
    }

    /// Helpers spinning now (for tests).
    #[cfg(test)]
    fn spinning(&self) -> usize {
        self.inner
            .helpers
            .iter()
            .filter(|h| !h.sleeping.load(Ordering::SeqCst))
            .count()
    }

    fn shut(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        for h in &self.inner.helpers {
            if let Some(t) = h.thread.get() {
                t.unpark();
            }
        }
    }
}

impl Drop for Team {
    /// The helpers end (they hold only the team's own state).
    fn drop(&mut self) {
        self.shut();
    }
}

/// The team of threads that have not entered one: created on first use with one thread per
/// CPU and a short spin, like rayon's global pool (in-process use, tests, warm-up).
fn global() -> Option<&'static Arc<Inner>> {
    static GLOBAL: OnceLock<Option<Team>> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            Team::new(
                "classifyd-kernels",
                threads,
                Duration::from_millis(1),
                false,
                || {},
            )
            .ok()
        })
        .as_ref()
        .map(|t| &t.inner)
}

/// The threads `for_each` would split across on this thread.
pub fn current_threads() -> usize {
    if HELPER.get() {
        return 1;
    }
    CURRENT.with(|c| match &*c.borrow() {
        Some(inner) => inner.helpers.len() + 1,
        None => global().map_or(1, |g| g.helpers.len() + 1),
    })
}

/// Runs `f(0)`, ..., `f(n - 1)`, split across the calling thread's team (its own, or the global
/// one), in no particular order; returns when all are done. A panic in any of them reaches
/// the caller.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 || HELPER.get() {
        return (0..n).for_each(f);
    }
    let team = CURRENT.with(|c| c.borrow().clone());
    match team.as_ref().or_else(|| global()) {
        Some(inner) if !inner.helpers.is_empty() => {
            // The global team is woken per region (no pass brackets it).
            if team.is_none() {
                inner.until.fetch_max(
                    inner.now_ns().saturating_add(inner.spin_ns),
                    Ordering::SeqCst,
                );
                inner.unpark_sleepers();
            }
            inner.run(n, &f)
        }
        _ => (0..n).for_each(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn every_chunk_runs_once_on_every_thread_count() {
        for threads in [1, 2, 3, 5] {
            let team =
                Team::new("test-team", threads, Duration::from_millis(1), false, || {}).unwrap();
            team.enter();
            for n in [0, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                team.pass_started();
                for_each(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                team.pass_ended();
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{threads} {n}"
                );
            }
            assert_eq!(current_threads(), threads);
        }
        CURRENT.with(|c| *c.borrow_mut() = None);
    }

    #[test]
    fn helpers_take_part_and_a_helper_does_not_fork_again() {
        let team = Team::new("test-team2", 2, Duration::from_millis(50), false, || {}).unwrap();
        team.enter();
        team.pass_started();
        let me = thread::current().id();
        let others = AtomicU64::new(0);
        let nested_threads = AtomicU64::new(0);
        for_each(64, |_| {
            if thread::current().id() != me {
                others.fetch_add(1, Ordering::Relaxed);
                nested_threads.fetch_max(current_threads() as u64, Ordering::Relaxed);
                for_each(4, |_| {}); // runs inline on the helper
            }
            thread::sleep(Duration::from_micros(200));
        });
        team.pass_ended();
        assert!(
            others.load(Ordering::Relaxed) > 0,
            "the helper did no chunk"
        );
        assert_eq!(nested_threads.load(Ordering::Relaxed), 1);
        CURRENT.with(|c| *c.borrow_mut() = None);
    }

    #[test]
    fn each_thread_runs_its_own_share_of_the_chunks_and_the_caller_starts_at_zero() {
        let team = Team::new("test-team8", 2, Duration::from_millis(50), false, || {}).unwrap();
        team.enter();
        team.pass_started();
        let me = thread::current().id();
        let mut split_by_shares = 0;
        for _ in 0..5 {
            let mine: Vec<AtomicBool> = (0..64).map(|_| AtomicBool::new(false)).collect();
            for_each(64, |i| {
                mine[i].store(thread::current().id() == me, Ordering::Relaxed);
                thread::sleep(Duration::from_micros(200));
            });
            let mine: Vec<bool> = mine.iter().map(|m| m.load(Ordering::Relaxed)).collect();
            assert!(mine[0], "the caller takes its own first chunk first");
            // Unless the helper came late (then the caller takes what is left of its share).
            if mine[..32].iter().all(|&m| m) && mine[32..].iter().all(|&m| !m) {
                split_by_shares += 1;
            }
        }
        team.pass_ended();
        assert!(split_by_shares > 0, "no region split by shares");
        CURRENT.with(|c| *c.borrow_mut() = None);
    }

    #[test]
    fn a_panic_in_a_chunk_reaches_the_caller_and_the_team_goes_on() {
        let team = Team::new("test-team3", 3, Duration::from_millis(1), false, || {}).unwrap();
        team.enter();
        let r = panic::catch_unwind(|| {
            for_each(50, |i| {
                thread::sleep(Duration::from_micros(50));
                assert!(i != 37, "chunk 37 fails");
            })
        });
        assert!(r.is_err());
        let sum = AtomicU64::new(0);
        for_each(10, |i| {
            sum.fetch_add(i as u64, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
        CURRENT.with(|c| *c.borrow_mut() = None);
    }

    #[test]
    fn helpers_sleep_after_the_spin_and_wake_on_arrival() {
        let team = Team::new("test-team4", 3, Duration::from_millis(5), false, || {}).unwrap();
        team.pass_started();
        wait_for("both helpers to spin", || team.spinning() == 2);
        team.pass_ended();
        assert!(team.awake());
        wait_for("both helpers to sleep", || team.spinning() == 0);
        assert!(!team.awake());
        team.wake();
        assert!(team.awake());
        wait_for("a helper to spin again", || team.spinning() > 0);
        wait_for("both to sleep again", || team.spinning() == 0);
    }

    #[test]
    fn no_spin_sleeps_at_once_and_busy_poll_never_does() {
        let lazy = Team::new("test-team5", 2, Duration::ZERO, false, || {}).unwrap();
        lazy.pass_started();
        lazy.pass_ended();
        lazy.wake();
        assert!(!lazy.awake());
        wait_for("the helper to sleep", || lazy.spinning() == 0);
        let busy = Team::new("test-team6", 2, Duration::ZERO, true, || {}).unwrap();
        busy.pass_ended();
        thread::sleep(Duration::from_millis(20));
        assert!(busy.awake());
        assert_eq!(busy.spinning(), 1);
    }

    #[test]
    fn two_callers_of_one_team_both_finish() {
        let team =
            Arc::new(Team::new("test-team7", 2, Duration::from_millis(1), false, || {}).unwrap());
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let team = team.clone();
                thread::spawn(move || {
                    team.enter();
                    let sum = AtomicU64::new(0);
                    for _ in 0..200 {
                        for_each(16, |i| {
                            sum.fetch_add(i as u64, Ordering::Relaxed);
                        });
                    }
                    sum.load(Ordering::Relaxed)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 200 * 120);
        }
    }
}
