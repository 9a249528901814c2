//! Faults and holds the tests inject into a real engine thread. Compiled only with the
//! `test-hooks` feature, which only the tests enable (a dev-dependency of the crate on itself);
//! without it the functions the worker calls are empty, the stall check is not compiled in, and
//! the flags do not exist.

#[cfg(feature = "test-hooks")]
use std::path::PathBuf;
#[cfg(feature = "test-hooks")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "test-hooks")]
use std::sync::OnceLock;
#[cfg(feature = "test-hooks")]
use std::thread;
#[cfg(feature = "test-hooks")]
use std::time::{Duration, Instant};

use crate::sched::queue::{Lane, Shared};

/// Faults the daemon tests (tests/daemon/faults.rs, tests/daemon/systemd.rs) inject into a real
/// `classifyd serve` through hidden flags, which `serve` turns into this. Process-wide rather
/// than per scheduler so that they need no plumbing through the scheduler's configuration and
/// hold across reloads; armed once, by `serve`, only when one of those flags is given. Never
/// armed in production.
#[cfg(feature = "test-hooks")]
#[derive(Debug, Default)]
pub struct TestHooks {
    /// `--test-fail-batches N`: the next N forward passes panic inside the engine call.
    pub fail_batches: AtomicU64,
    /// `--test-fail-probes N`: the next N health probes panic (see `worker::check_health`).
    pub fail_probes: AtomicU64,
    /// `--test-hold-batches-while PATH`: a batch the worker has picked waits while PATH exists,
    /// so a test can keep the engine busy, with work queued behind it, for as long as it needs.
    pub hold_while: Option<PathBuf>,
    /// `--test-hold-bulk-while PATH`: the same for the bulk lane alone.
    pub hold_bulk_while: Option<PathBuf>,
    /// `--test-stall-worker-after-secs`: this long after its scheduler starts, an idle worker
    /// stops for good without beating, as a hung device would (the watchdog tests).
    pub stall_after: Option<Duration>,
}

#[cfg(feature = "test-hooks")]
static TEST_HOOKS: OnceLock<TestHooks> = OnceLock::new();

/// Arms the test hooks for the rest of the process; a second call is ignored.
#[cfg(feature = "test-hooks")]
pub fn arm(hooks: TestHooks) {
    if TEST_HOOKS.set(hooks).is_ok() {
        tracing::warn!("test hooks armed: {:?}", TEST_HOOKS.get());
    }
}

#[cfg(feature = "test-hooks")]
impl TestHooks {
    fn take_failure_now(&self, probe: bool) -> bool {
        let count = if probe {
            &self.fail_probes
        } else {
            &self.fail_batches
        };
        count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    fn hold_now(&self, shared: &Shared, lane: Lane) {
        let bulk = self.hold_bulk_while.as_ref().filter(|_| lane == Lane::Bulk);
        let Some(path) = self.hold_while.iter().chain(bulk).find(|p| p.exists()) else {
            return;
        };
        // Tests wait for this line to know the batch has left the queue.
        tracing::warn!(
            "test hook: holding a batch ({lane:?} lane) while {} exists",
            path.display()
        );
        while path.exists() {
            // Held, not hung: the watchdog keeps being fed.
            shared.beat(lane);
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether this forward pass is to fail: a batch (`--test-fail-batches`) or a health probe
/// (`probe`, `--test-fail-probes`).
pub fn take_failure(probe: bool) -> bool {
    #[cfg(feature = "test-hooks")]
    return TEST_HOOKS.get().is_some_and(|h| h.take_failure_now(probe));
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = probe;
        false
    }
}

/// Holds a picked batch while the hold file exists (`--test-hold-*-while`).
pub(crate) fn hold(shared: &Shared, lane: Lane) {
    #[cfg(feature = "test-hooks")]
    if let Some(hooks) = TEST_HOOKS.get() {
        hooks.hold_now(shared, lane);
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = (shared, lane);
}

/// Whether an idle worker of this scheduler is to stall now (`--test-stall-worker-after-secs`).
#[cfg(feature = "test-hooks")]
pub(crate) fn stall_due(shared: &Shared) -> bool {
    TEST_HOOKS
        .get()
        .and_then(|h| h.stall_after)
        .is_some_and(|after| Instant::now() >= shared.epoch + after)
}

/// Stops the calling thread for good without beating, holding no lock, the way a forward pass
/// stuck on a hung device looks from outside.
#[cfg(feature = "test-hooks")]
pub(crate) fn stall() -> ! {
    tracing::warn!("test hook: the engine thread stalls now (--test-stall-worker-after-secs)");
    loop {
        thread::park();
    }
}
