//! The daemon under systemd, spoken from systemd's side: the sd_notify datagrams (`READY=1`,
//! `STATUS=`, `WATCHDOG=1`, `STOPPING=1`) arrive on a socket of our own named by
//! `NOTIFY_SOCKET`, and socket activation hands over a listening socket the test bound.

use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use classifyd::client::text;
use classifyd::wire::protocol::pb;

use crate::harness::*;

/// The watchdog interval given to the daemon: pings are due every 200 ms.
const WATCHDOG_USEC: &str = "400000";

/// The receiving end of sd_notify, as systemd holds it.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            sock,
            path,
            _dir: dir,
        }
    }

    /// The environment for a daemon that reports here, with a watchdog.
    fn env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("NOTIFY_SOCKET", self.path.clone().into_os_string()),
            ("WATCHDOG_USEC", WATCHDOG_USEC.into()),
        ]
    }

    /// The lines of the next datagram, or `None` when none comes within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<Vec<String>> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut got = self.sock.recv(&mut buf);
        // A signal to the test process (a child's exit) may interrupt the wait: wait again.
        while matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::Interrupted) {
            got = self.sock.recv(&mut buf);
        }
        match got {
            Ok(n) => Some(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string)
                    .collect(),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Reads until a datagram holds `line`; returns that datagram's lines. Panics when the
    /// daemon exits first or after `timeout` (hang guard).
    fn wait_for(&self, daemon: &mut Daemon, line: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(lines) = self.recv(Duration::from_millis(200)) {
                if lines.iter().any(|l| l == line) {
                    return lines;
                }
                seen.extend(lines);
            } else if let Some(status) = daemon.try_wait() {
                panic!(
                    "daemon exited ({}) before {line}; got {seen:?}: {}",
                    exit_code(status),
                    daemon.stderr()
                );
            }
        }
        panic!(
            "no {line} within {timeout:?}; got {seen:?}: {}",
            daemon.stderr()
        );
    }

    /// How many datagrams holding `line` arrive during `window`.
    fn count(&self, line: &str, window: Duration) -> usize {
        let end = Instant::now() + window;
        let mut n = 0;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return n;
            }
            if let Some(lines) = self.recv(left) {
                n += usize::from(lines.iter().any(|l| l == line));
            }
        }
    }
}

fn classify_ok(daemon: &Daemon) {
    runtime().block_on(async {
        let client = daemon.client().await;
        let r = client
            .classify(vec![text("what a wonderful film")], logits_opts())
            .await
            .unwrap();
        assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    });
}

#[test]
fn ready_then_watchdog_then_reloading_ready_on_sighup_then_stopping_on_sigterm() {
    let notify = NotifySocket::new();
    let mut daemon = Daemon::spawn(
        &fixture("bert"),
        None,
        &[],
        Launch {
            env: notify.env(),
            ..Launch::default()
        },
    );
    let ready = notify.wait_for(&mut daemon, "READY=1", Duration::from_secs(120));
    // Ready means answering: the very next request succeeds.
    classify_ok(&daemon);
    let status = ready
        .iter()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= with READY=1: {ready:?}"));
    assert!(status.contains("bert"), "{status}");
    assert!(status.contains("cpu"), "{status}");
    assert!(
        status.contains(&format!("serving on {}", daemon.socket.display())),
        "{status}"
    );
    // Due every 200 ms; at least 3 in 2 s leaves room for a loaded machine.
    let pings = notify.count("WATCHDOG=1", Duration::from_secs(2));
    assert!(pings >= 3, "{pings} WATCHDOG=1 in 2 s: {}", daemon.stderr());

    // A reload is framed by RELOADING=1 (with the monotonic time systemd asks for) and READY=1.
    daemon.signal(1);
    let reloading = notify.wait_for(&mut daemon, "RELOADING=1", Duration::from_secs(60));
    assert!(
        reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    notify.wait_for(&mut daemon, "READY=1", Duration::from_secs(120));
    classify_ok(&daemon);

    daemon.signal(15);
    notify.wait_for(&mut daemon, "STOPPING=1", Duration::from_secs(60));
    let exit = daemon.wait();
    assert_eq!(exit.code(), Some(0), "{}", daemon.stderr());
}

#[test]
fn a_stalled_engine_thread_stops_the_watchdog_pings() {
    let notify = NotifySocket::new();
    // The stall comes 2 s after the scheduler starts, which is before READY=1.
    let mut daemon = Daemon::spawn(
        &fixture("bert"),
        None,
        &["--test-stall-worker-after-secs", "2"],
        Launch {
            env: notify.env(),
            ..Launch::default()
        },
    );
    notify.wait_for(&mut daemon, "READY=1", Duration::from_secs(120));
    // Healthy for up to 2 s: the first second alone holds about 5 pings.
    let before = notify.count("WATCHDOG=1", Duration::from_secs(1));
    assert!(before >= 3, "{before} WATCHDOG=1 before the stall");
    // By 2 s after READY=1 the worker has stalled and by 2.4 s its heartbeat is older than the
    // interval; from 3.5 s no ping may come.
    let _ = notify.count("WATCHDOG=1", Duration::from_millis(2500));
    let after = notify.count("WATCHDOG=1", Duration::from_secs(2));
    assert_eq!(after, 0, "WATCHDOG=1 after the stall: {}", daemon.stderr());
    assert!(
        daemon.stderr().contains("withholding WATCHDOG=1"),
        "{}",
        daemon.stderr()
    );

    // A stalled idle worker holds no work, so the drain still ends.
    daemon.signal(15);
    notify.wait_for(&mut daemon, "STOPPING=1", Duration::from_secs(60));
    let exit = daemon.wait();
    assert_eq!(exit.code(), Some(0), "{}", daemon.stderr());
}

#[test]
fn an_unhealthy_engine_stops_the_watchdog_pings_and_says_why_in_status() {
    let notify = NotifySocket::new();
    // The batch fails and so does the probe after it: a sticky device fault.
    let mut daemon = Daemon::spawn(
        &fixture("bert"),
        None,
        &["--test-fail-batches", "1", "--test-fail-probes", "1"],
        Launch {
            env: notify.env(),
            ..Launch::default()
        },
    );
    notify.wait_for(&mut daemon, "READY=1", Duration::from_secs(120));
    daemon.wait_ready();
    let before = notify.count("WATCHDOG=1", Duration::from_secs(1));
    assert!(before >= 3, "{before} WATCHDOG=1 while healthy");
    let r = runtime().block_on(async {
        let client = daemon.client().await;
        client
            .classify(vec![text("x")], logits_opts())
            .await
            .unwrap()
    });
    assert_eq!(status(&r), pb::Status::Internal, "{}", r.message);
    // Pings already queued on the notify socket were sent before or while the fault was being
    // probed (many of them on a busy machine): only those sent after it count.
    while notify.recv(Duration::from_millis(1)).is_some() {}
    // STATUS= is refreshed every 5 s; it names the fault.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status_line = None;
    let mut pings = 0;
    while Instant::now() < deadline && status_line.is_none() {
        if let Some(lines) = notify.recv(Duration::from_millis(200)) {
            pings += usize::from(lines.iter().any(|l| l == "WATCHDOG=1"));
            status_line = lines
                .into_iter()
                .find(|l| l.starts_with("STATUS=engine unhealthy"));
        }
    }
    assert!(
        status_line.is_some(),
        "no unhealthy STATUS=: {}",
        daemon.stderr()
    );
    assert!(pings <= 1, "{pings} WATCHDOG=1 after the fault");
    assert_eq!(notify.count("WATCHDOG=1", Duration::from_secs(1)), 0);
    daemon.signal(15);
    let exit = daemon.wait();
    assert_eq!(exit.code(), Some(0), "{}", daemon.stderr());
}

#[test]
fn socket_activation_serves_the_inherited_socket_and_leaves_it_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Not the daemon's default 0660: it must not touch what systemd set up.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut daemon = Daemon::spawn(
        &fixture("bert"),
        Some(&path),
        &[],
        Launch {
            listen_fd: Some(listener.as_fd()),
            ..Launch::default()
        },
    );
    // A client that connects before the daemon is up waits in the backlog, then is answered.
    let early = runtime().block_on(async {
        let client = daemon.client().await;
        tokio::time::timeout(
            Duration::from_secs(120),
            client.classify(vec![text("what a wonderful film")], logits_opts()),
        )
        .await
        .expect("answered within 120 s")
        .unwrap()
    });
    assert_eq!(status(&early), pb::Status::Ok, "{}", early.message);
    daemon.wait_ready();
    assert!(
        daemon.stderr().contains("(from systemd)"),
        "{}",
        daemon.stderr()
    );
    classify_ok(&daemon);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the daemon changed the socket's mode");

    daemon.signal(15);
    let exit = daemon.wait();
    assert_eq!(exit.code(), Some(0), "{}", daemon.stderr());
    // systemd owns the socket: the file stays, and still takes connections for the next start.
    let meta = std::fs::symlink_metadata(&path).expect("socket file kept");
    assert!(meta.file_type().is_socket());
    UnixStream::connect(&path).expect("the socket still listens");
    drop(listener);
}
