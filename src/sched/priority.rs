//! Background work at a lower CPU priority: the bulk lane's engine and tokenizer threads run
//! at nice 19, so that when they and the request path want the same cores, the kernel gives the
//! request path ~98 % of them (CFS weighs nice 0 against nice 19 as 1024 to 15), and when the
//! request path is idle they have every core to themselves.

/// The niceness of background threads.
pub const BACKGROUND_NICE: libc::c_int = 19;

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`]. Raising one's own
/// niceness needs no privilege; a refusal (a seccomp filter, say) only costs the isolation,
/// so it is logged, not fatal.
pub fn lower_current_thread() {
    // SAFETY: plain syscalls on the calling thread's own id.
    let rc = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            BACKGROUND_NICE,
        )
    };
    if rc != 0 {
        tracing::warn!(
            "cannot lower a background thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A rayon pool of `threads` background threads named `name-N`.
pub fn background_pool(name: &'static str, threads: usize) -> std::io::Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(move |i| format!("{name}-{i}"))
        .start_handler(|_| lower_current_thread())
        .build()
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_current_thread() -> libc::c_int {
        // SAFETY: as above.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn background_pool_threads_run_at_the_background_niceness() {
        let pool = background_pool("test-bg", 1).unwrap();
        assert_eq!(pool.install(nice_of_current_thread), BACKGROUND_NICE);
        // The caller's own priority is untouched.
        assert_ne!(nice_of_current_thread(), BACKGROUND_NICE);
    }
}
