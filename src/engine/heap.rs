//! How a retired model's memory goes back to the kernel after a reload.
//!
//! glibc serves a block from the heap or from a mapping of its own depending on its size and
//! the mmap threshold, which it raises on its own each time a mapped block is freed. Soon after
//! start the threshold sits above a weight matrix's size, so a reloaded model's weights, and the
//! hundreds of megabytes of temporaries its load converts and packs them through, land on the
//! heap between long-lived small objects. Once freed they leave holes that later forward passes
//! keep touching, so every reload left RSS higher: a 10-minute soak grew 10.8 % over three reloads
//! (BENCHMARKS.md), and ten reloads in 100 s took it from 99 to 130 MiB.
//!
//! So a load runs with a low, fixed threshold ([`Phase::load`]): each weight and each temporary
//! gets a mapping of its own, unmapped on free, and the heap never holds them. The same ten
//! reloads stay between 88 and 104 MiB. The price is that a load faults in fresh pages for its
//! temporaries, paid at start and on reload, not per request: 49,000 page faults instead of
//! 29,000 for the default model once packing stopped making copies (`model::kernels::gemm`), and no
//! measurable change in cold start. The thresholds are the process's, so requests the old model
//! answers while a reload loads (well under a second) map their large temporaries too.
//!
//! Outside loads the threshold is fixed high instead, and the trim threshold at 8 MiB: the
//! megabyte-sized temporaries of a forward pass over long texts then reuse heap memory. Left low,
//! each 250-token text took ~5,400 extra page faults.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::sync::Mutex;

    use super::Kind;

    /// glibc's own default: biases and norms stay on the heap, weights do not.
    const LOADING: libc::c_int = 128 * 1024;
    /// glibc's ceiling for the threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
    const SERVING: libc::c_int = 32 * 1024 * 1024;
    /// Free memory kept at the top of a heap rather than handed back after every free. Fixing
    /// the mmap threshold stops glibc from adjusting this one, and at its 128 KiB default each
    /// forward pass over a long text would give its temporaries back and fault them in again.
    /// 8 MiB covers one 250-token text's pass (no extra faults, measured) while a burst of big
    /// batches gives back what it grew: at 64 MiB, a 10-minute soak kept +11 % of RSS after an
    /// overload; at 8 MiB a batch of 16 such texts costs ~350 page faults a request (under a
    /// millisecond, against a pass of hundreds).
    const KEEP_FREE: libc::c_int = 8 * 1024 * 1024;

    /// Loads and warm-ups in flight (tests load models on several threads at once): the
    /// thresholds follow whichever phases are still open.
    static OPEN: Mutex<[usize; 2]> = Mutex::new([0, 0]);

    fn apply(open: &[usize; 2]) {
        let mmap = if open[Kind::Load as usize] > 0 {
            LOADING
        } else {
            SERVING
        };
        // Low in both phases: what they free at the top of a heap goes back at once instead of
        // staying as the loading thread's spare.
        let trim = if open.iter().sum::<usize>() > 0 {
            LOADING
        } else {
            KEEP_FREE
        };
        // SAFETY: mallopt only changes allocator parameters, under glibc's own arena lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        }
    }

    pub fn enter(kind: Kind) {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open[kind as usize] += 1;
        apply(&open);
    }

    pub fn leave(kind: Kind) {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open[kind as usize] = open[kind as usize].saturating_sub(1);
        apply(&open);
    }

    pub fn few_arenas() {
        // SAFETY: mallopt only changes allocator parameters, under glibc's own arena lock.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, super::ARENAS);
        }
    }

    pub fn trim() {
        // SAFETY: malloc_trim only walks and releases glibc's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn enter(_: super::Kind) {}
    pub fn leave(_: super::Kind) {}
    pub fn few_arenas() {}
    pub fn trim() {}
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Load = 0,
    WarmUp = 1,
}

/// Held while a model is loaded or warmed up; see the module comment.
#[derive(Debug)]
pub struct Phase(Kind);

impl Phase {
    /// Weights and load temporaries in mappings of their own.
    pub fn load() -> Self {
        imp::enter(Kind::Load);
        Phase(Kind::Load)
    }

    /// Temporaries from the heap as when serving, but its top handed back as it frees.
    pub fn warm_up() -> Self {
        imp::enter(Kind::WarmUp);
        Phase(Kind::WarmUp)
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        imp::leave(self.0);
    }
}

/// Heaps (glibc arenas) for the whole process: [`few_arenas`] sets it.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
const ARENAS: libc::c_int = 2;

/// Caps glibc's malloc arenas at [`ARENAS`], before the daemon starts its threads.
///
/// Why: glibc gives each new thread that allocates a heap of its own (an arena), up to eight per
/// core, and an arena keeps what its threads freed. Every reload starts new engine threads, so
/// reloads kept adding arenas that each held a few megabytes: twenty reloads of the default
/// model took Private_Dirty from 17.8 to 32.4 MiB in steps of ~3.4 MiB, and Rss from 72.5 to
/// 87.1 MiB
/// (tests/daemon/reload.rs). With two arenas the same twenty reloads stay flat: 109–112
/// mappings, Rss 74.5–75.8 MiB, Private_Dirty ending at 19.6 MiB, below the first reload's.
/// Small allocations never lock an arena (glibc's per-thread cache serves them); the engine's
/// large ones are few per pass.
pub fn few_arenas() {
    imp::few_arenas();
}

/// Hands the heap's free pages back to the kernel: after a load and warm-up, and when a
/// retired engine is dropped.
pub fn trim() {
    imp::trim();
}
