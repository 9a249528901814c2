//! What systemd asks of a `Type=notify` service (systemd/classifyd.service): `READY=1` once the
//! daemon answers, `STATUS=` lines for `systemctl status`, `STOPPING=1` at the start of the
//! drain, `WATCHDOG=1` fed by the engine thread's heartbeat, and the listening socket of
//! classifyd.socket taken over from `LISTEN_FDS`.
//!
//! Everything here does nothing outside systemd: without `NOTIFY_SOCKET` no message is sent,
//! without `WATCHDOG_USEC` (or with a `WATCHDOG_PID` naming another process) there is no
//! watchdog, and without `LISTEN_FDS`/`LISTEN_PID` naming this process no socket is inherited.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often `STATUS=` is refreshed with the request rate.
const STATUS_EVERY: Duration = Duration::from_secs(5);

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("sd_notify to $NOTIFY_SOCKET failed: {e}");
    }
}

fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// `READY=1` with a human-readable `STATUS=`.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (which `Type=notify-reload` requires): a reload
/// begins. It ends with [`ready`] again, whether it worked or not.
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the model"),
    ];
    match NotifyState::monotonic_usec_now() {
        Ok(now) => states.push(now),
        Err(e) => debug!("no monotonic clock for MONOTONIC_USEC: {e}"),
    }
    notify(&states);
}

/// `STOPPING=1`: the stop signal arrived and the drain begins.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("draining after a stop signal"),
    ]);
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Sends `WATCHDOG=1` every half `interval`, but only while the engine is not unhealthy (see
/// [`crate::sched::ModelQueue::unhealthy`]) and its thread's heartbeat is younger than `interval`: a forward pass stuck on a hung device or a wedged worker stops the
/// pings, and systemd kills and restarts the service. (So `WatchdogSec=` must exceed the
/// longest forward pass of the fast lane; the bulk lane's passes, at background priority, are
/// not timed, only its loop between them: see [`crate::sched::Scheduler::heartbeat_age`].)
/// `current` gives why every model is unhealthy, when every one is (one model's fault alone
/// leaves the others serving), and the engine threads' heartbeat age.
pub fn spawn_watchdog(
    current: impl Fn() -> (Option<String>, Duration) + Send + 'static,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stale = false;
        loop {
            tick.tick().await;
            let (unhealthy, age) = current();
            if let Some(why) = unhealthy {
                if !stale {
                    warn!("engine unhealthy ({why}); withholding WATCHDOG=1 so systemd restarts the service");
                    stale = true;
                }
                continue;
            }
            if age < interval {
                if stale {
                    info!("engine heartbeat is back; feeding the systemd watchdog again");
                    stale = false;
                }
                notify(&[NotifyState::Watchdog]);
            } else if !stale {
                warn!(
                    "engine thread silent for {age:?} (watchdog {interval:?}); withholding \
                     WATCHDOG=1 so systemd restarts the service"
                );
                stale = true;
            }
        }
    })
}

/// What `STATUS=` says now.
pub struct StatusNow {
    /// The models and where they serve.
    pub base: String,
    /// Requests computed since start, every model's.
    pub computed: u64,
    pub queued: usize,
    /// The unhealthy models and why, if any.
    pub unhealthy: Option<String>,
}

/// Refreshes `STATUS=` every few seconds with the base and the rate of computed requests, when
/// running under systemd. `current` gives the state now.
pub fn spawn_status(current: impl Fn() -> StatusNow + Send + 'static) -> Option<JoinHandle<()>> {
    if !under_systemd() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut last = (Instant::now(), current().computed);
        loop {
            tokio::time::sleep(STATUS_EVERY).await;
            let now_state = current();
            let now = Instant::now();
            let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
            let rate = now_state.computed.saturating_sub(last.1) as f64 / secs;
            last = (now, now_state.computed);
            let (base, queued) = (now_state.base, now_state.queued);
            let status = match now_state.unhealthy {
                Some(why) => format!("engine unhealthy, not ready: {why}; {base}"),
                None => format!("{base}; {rate:.1} requests/s, {queued} queued"),
            };
            notify(&[NotifyState::Status(&status)]);
        }
    }))
}

/// The listening Unix stream socket systemd passed (socket activation: `LISTEN_FDS`, first fd
/// 3), or `None` when there is none for this process. Call at most once.
pub fn inherited_unix_listener() -> io::Result<Option<std::os::unix::net::UnixListener>> {
    let mut fds = sd_notify::listen_fds()?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        warn!(
            "systemd passed {} sockets; using the first (fd {fd}) only",
            fds.len() + 1
        );
    }
    // SAFETY: `fd` is a descriptor systemd handed to this process (LISTEN_PID is ours) and
    // nothing else in the process owns it; it is taken only once.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    check_listening_stream(borrowed)
        .map_err(|e| io::Error::new(e.kind(), format!("fd {fd} from systemd: {e}")))?;
    // SAFETY: as above; from here on the listener owns and eventually closes it.
    let listener = std::os::unix::net::UnixListener::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // Also rejects a socket of another family: the address must be a Unix one.
    let addr = listener
        .local_addr()
        .map_err(|e| io::Error::new(e.kind(), format!("fd {fd} from systemd: {e}")))?;
    listener.set_nonblocking(true)?;
    debug!("inherited unix listener fd {fd} bound to {addr:?}");
    Ok(Some(listener))
}

/// A stream socket that listens (`Accept=no` in the socket unit), not a datagram socket or a
/// connection.
fn check_listening_stream(fd: BorrowedFd<'_>) -> io::Result<()> {
    let get = |opt: libc::c_int| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes of an int, as the option expects.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(value)
        } else {
            Err(io::Error::last_os_error())
        }
    };
    if get(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a stream socket (ListenStream= is needed)",
        ));
    }
    if get(libc::SO_ACCEPTCONN)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening socket (Accept=no is needed)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_unix_stream_socket_passes_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        use std::os::fd::AsFd;
        assert!(check_listening_stream(listener.as_fd()).is_ok());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(check_listening_stream(a.as_fd()).is_err());
        let d = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert!(check_listening_stream(d.as_fd()).is_err());
        let f = std::fs::File::open(dir.path()).unwrap();
        assert!(check_listening_stream(f.as_fd()).is_err());
    }
}
