//! Each lane's engine threads: how many, how long they stay awake, where they run.
//!
//! A lane's loop runs on its engine thread, and the CPU kernels of its forward passes split
//! across the lane's [`Team`] (see [`crate::model::kernels::team`] for why a team and not rayon). The
//! team's helpers stay awake during a pass and for `--spin-us` after it, and the scheduler
//! wakes them when a request arrives ([`EngineThreads::wake`]), while the request is still
//! being tokenized; `--busy-poll` keeps them (and the engine thread's wait on its queue)
//! spinning for good; `--cpus` pins them all.

use std::time::Duration;

use crate::model::kernels::team::Team;

/// How the engine threads run (`--threads`, `--spin-us`, `--busy-poll`, `--cpus`); filled from
/// the settings, and defaulted to what `serve` runs with, in [`crate::serve::config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadsConfig {
    /// Threads per lane, the engine thread included; 0: one per usable CPU.
    pub threads: usize,
    /// How long the threads stay awake after a pass or an arrival.
    pub spin: Duration,
    /// Never sleep.
    pub busy_poll: bool,
    /// Pin the engine threads here (and keep the other threads off).
    pub cpus: Option<Vec<usize>>,
}

impl ThreadsConfig {
    /// The threads per lane: `--threads`, else one per CPU of `--cpus`, else
    /// `RAYON_NUM_THREADS` (set by the user, or by `main` to the CPUs this process may use).
    pub fn count(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        if let Some(cpus) = &self.cpus {
            return cpus.len().max(1);
        }
        std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// One lane's engine threads: the engine thread, which runs the lane's loop, and the kernels'
/// team ([`Team`]) it forks across.
pub struct EngineThreads {
    /// Where the lane loop runs: a rayon pool so that candle's own parallel ops (LayerNorm,
    /// softmax, its matmul outside the f32 path) fork from inside one rather than handing off
    /// to rayon's global pool. Of one thread when every hot kernel is the team's (f32 on the
    /// CPU): then candle's small ops run inline, cheaper than waking a thread per op.
    pool: rayon::ThreadPool,
    team: Team,
}

impl EngineThreads {
    /// `cfg.count()` threads named `name-N` (only the engine thread when `cpu` is false: a GPU
    /// computes, the host only launches), pinned to `cfg.cpus`, at background priority when
    /// `background`. `candle_wide`: candle's ops need the threads too (not f32 on the CPU).
    pub fn new(
        name: &'static str,
        cfg: &ThreadsConfig,
        cpu: bool,
        candle_wide: bool,
        background: bool,
    ) -> std::io::Result<EngineThreads> {
        let threads = if cpu { cfg.count().max(1) } else { 1 };
        let cpus = cfg.cpus.clone();
        let on_start = move || {
            if let Some(cpus) = &cpus {
                pin_current_thread(cpus, "engine");
            }
            if background {
                crate::sched::priority::lower_current_thread();
            }
        };
        let team = Team::new(name, threads, cfg.spin, cfg.busy_poll, on_start.clone())?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(if candle_wide { threads } else { 1 })
            .thread_name(move |i| match i {
                0 => format!("{name}-0"),
                i => format!("{name}-c{i}"),
            })
            .start_handler(move |_| on_start())
            .build()
            .map_err(std::io::Error::other)?;
        Ok(EngineThreads { pool, team })
    }

    /// The threads for a lane serving `engines`: kernels split across the team on the CPU;
    /// candle's ops need the rayon pool wide unless every engine computes f32 or int8 on the
    /// CPU (where every hot kernel is the team's). A GPU when any engine is on one (they all
    /// share the daemon's one device).
    pub fn for_engines(
        name: &'static str,
        cfg: &ThreadsConfig,
        engines: &[&crate::engine::Engine],
        background: bool,
    ) -> std::io::Result<EngineThreads> {
        let cpu = !engines.iter().any(|e| e.pads_batches());
        let candle_wide = !cpu
            || engines
                .iter()
                .any(|e| !matches!(e.info().compute_dtype.as_str(), "f32" | "int8"));
        EngineThreads::new(name, cfg, cpu, candle_wide, background)
    }

    /// Threads the kernels split across, the engine thread included.
    pub fn threads(&self) -> usize {
        self.team.threads()
    }

    /// Runs the lane loop `f` on the pool, with the team as its kernels' threads; blocks the
    /// caller until `f` returns (or panics, which reaches the caller).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(|| {
            self.team.enter();
            f()
        })
    }

    /// Whether the threads are being kept awake now: the engine thread then polls its queue
    /// instead of sleeping on it.
    pub fn awake(&self) -> bool {
        self.team.awake()
    }

    /// A request has arrived: keep the threads awake for `--spin-us` more, so that by the time
    /// it is tokenized and queued, the pass it joins finds them running.
    pub fn wake(&self) {
        self.team.wake()
    }

    /// A pass begins: no helper sleeps until it has ended.
    pub fn pass_started(&self) {
        self.team.pass_started()
    }

    /// A pass has ended: the helpers stay awake `--spin-us` more.
    pub fn pass_ended(&self) {
        self.team.pass_ended()
    }
}

/// Pins the calling thread to `cpus`. A refusal (CPUs outside this process's cgroup, a
/// seccomp filter) costs only the isolation, so it is logged, not fatal.
pub fn pin_current_thread(cpus: &[usize], what: &str) {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        if let Err(e) = set.set(c) {
            tracing::warn!("cannot pin the {what} threads to CPU {c}: {e}");
            return;
        }
    }
    if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
        tracing::warn!("cannot pin the {what} threads to CPUs {cpus:?}: {e}");
    }
}

/// The CPUs the calling thread may run on (empty if the mask cannot be read).
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The CPUs this process may run on other than `engine`: where the I/O and tokenizer threads
/// go when the engine threads are pinned. `None` if that leaves none: those threads then stay
/// unpinned.
pub fn other_cpus(engine: &[usize]) -> Option<Vec<usize>> {
    let rest: Vec<usize> = allowed_cpus()
        .into_iter()
        .filter(|c| !engine.contains(c))
        .collect();
    (!rest.is_empty()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(threads: usize, spin_us: u64, busy_poll: bool) -> ThreadsConfig {
        ThreadsConfig {
            threads,
            spin: Duration::from_micros(spin_us),
            busy_poll,
            cpus: None,
        }
    }

    #[test]
    fn the_lane_loop_runs_with_the_lanes_team() {
        let t = EngineThreads::new("test-hot", &cfg(3, 1_000, false), true, false, false).unwrap();
        assert_eq!(t.threads(), 3);
        let (threads, rayon) = t.run(|| {
            (
                crate::model::kernels::team::current_threads(),
                rayon::current_num_threads(),
            )
        });
        // The kernels fork across the team; candle's ops stay on the engine thread.
        assert_eq!((threads, rayon), (3, 1));
        let wide = EngineThreads::new("test-wide", &cfg(2, 0, false), true, true, false).unwrap();
        assert_eq!(wide.run(rayon::current_num_threads), 2);
    }

    #[test]
    fn a_gpu_lane_has_the_engine_thread_only() {
        let t = EngineThreads::new("test-gpu", &cfg(4, 1_000, false), false, true, false).unwrap();
        assert_eq!(t.threads(), 1);
        assert_eq!(t.run(rayon::current_num_threads), 1);
    }

    #[test]
    fn the_thread_count_follows_threads_then_cpus() {
        assert_eq!(cfg(3, 0, false).count(), 3);
        let pinned = ThreadsConfig {
            cpus: Some(vec![0, 1]),
            ..cfg(0, 0, false)
        };
        assert_eq!(pinned.count(), 2);
        assert!(cfg(0, 0, false).count() >= 1);
    }

    #[test]
    fn pinned_threads_run_only_on_their_cpus() {
        let all = allowed_cpus();
        let first = all[0];
        let cfg = ThreadsConfig {
            cpus: Some(vec![first]),
            ..cfg(2, 0, false)
        };
        let t = EngineThreads::new("test-pin", &cfg, true, false, false).unwrap();
        let (engine, helper) = t.run(|| {
            let helper = std::sync::Mutex::new(Vec::new());
            let me = std::thread::current().id();
            t.pass_started();
            crate::model::kernels::team::for_each(64, |_| {
                if std::thread::current().id() != me {
                    *helper.lock().unwrap() = allowed_cpus();
                }
                std::thread::sleep(Duration::from_micros(100));
            });
            t.pass_ended();
            (allowed_cpus(), helper.into_inner().unwrap())
        });
        assert_eq!(engine, vec![first]);
        assert_eq!(
            helper,
            vec![first],
            "the helper did a chunk, on the pinned CPU"
        );
        // The rest are where the other threads go; none when the engine has them all.
        let rest = other_cpus(&[first]).unwrap_or_default();
        assert_eq!(rest.len(), all.len() - 1);
        assert!(!rest.contains(&first));
        assert_eq!(other_cpus(&all), None);
    }
}
