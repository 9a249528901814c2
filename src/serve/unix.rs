//! The Unix-domain-socket listener: many connections, many pipelined requests per connection,
//! answers in completion order. Peers may be restricted by uid/gid (SO_PEERCRED).
//!
//! The listener accepts under a connection limit; each connection is served by one task that
//! reads its frames, polls its requests and writes their answers ([`handle_connection`]), over
//! the buffered reads and queued writes of a [`Connection`].

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::serve::connection::{Connection, Unframed};
use crate::serve::handler::Handler;
use crate::serve::limits::ConnectionLimits;
use crate::service::metrics::Transport;
use crate::wire::frame::{self, Framed};
use crate::wire::protocol::{self, pb};

/// Who may connect, and how the socket file is published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixOptions {
    pub path: PathBuf,
    /// Permission bits of the socket file (0o660 unless configured).
    pub mode: u32,
    pub group: Option<u32>,
    /// When either list is non-empty, a peer must match one of its entries.
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{path}: another classifyd is already serving on this socket")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("{path}: directory {dir} does not exist (create it, or give another --uds)")]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The socket's directory exists (`check-config` asks too, without binding).
pub fn check_dir(path: &std::path::Path) -> Result<(), BindError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(BindError::NoDirectory {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Whether something accepts connections on the socket at `path` now.
pub fn answers(path: &std::path::Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Binds the socket, replacing a stale socket file but never a live daemon's.
pub fn bind(opts: &UnixOptions) -> Result<UnixListener, BindError> {
    let path = &opts.path;
    check_dir(path)?;
    let io = |what| {
        move |source| BindError::Io {
            path: path.clone(),
            what,
            source,
        }
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket { path: path.clone() });
        }
        // Someone answering means a live daemon; a refused connect means a stale file.
        if answers(path) {
            return Err(BindError::InUse { path: path.clone() });
        }
        std::fs::remove_file(path).map_err(io("removing stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.mode))
        .map_err(io("setting socket mode"))?;
    if let Some(gid) = opts.group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io("setting socket group"))?;
    }
    Ok(listener)
}

/// Resolves a group name (or a number) to a gid through NSS (`getgrnam_r`), so groups from
/// LDAP or sssd resolve as well as those in /etc/group.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// A bound socket and what it was bound with.
#[derive(Debug)]
pub struct Listener {
    pub socket: UnixListener,
    pub opts: UnixOptions,
    /// The socket file was bound by [`bind`], so [`serve`] removes it at the end; one
    /// inherited from systemd belongs to the socket unit and stays.
    pub owns_path: bool,
}

/// Accepts connections until `shutdown` fires, then waits for every connection to answer what
/// it had read and close, and removes the socket file if it owns it.
pub async fn serve<H: Handler>(
    listener: Listener,
    handler: Arc<H>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let Listener {
        socket: listener,
        opts,
        owns_path,
    } = listener;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of fds and the like: back off instead of spinning on the error.
                warn!("unix accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(
                "refused unix connection: {} connections open (the limit)",
                limits.max_connections
            );
            drop(stream);
            continue;
        };
        if let Err(why) = admit(&stream, &opts) {
            warn!("refused unix peer: {why}");
            continue;
        }
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            handle_connection(stream, handler, limits, shutdown).await;
            drop(permit);
        });
        // Reap finished connections so the set does not grow for the daemon's lifetime.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    if !owns_path {
        return;
    }
    if let Err(e) = std::fs::remove_file(&opts.path) {
        debug!("removing {}: {e}", opts.path.display());
    }
}

fn admit(stream: &UnixStream, opts: &UnixOptions) -> Result<(), String> {
    if opts.allow_uids.is_empty() && opts.allow_gids.is_empty() {
        return Ok(());
    }
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let (uid, gid) = (cred.uid(), cred.gid());
    if opts.allow_uids.contains(&uid) || opts.allow_gids.contains(&gid) {
        Ok(())
    } else {
        Err(format!(
            "uid {uid} gid {gid} pid {} is not in the allow-list",
            cred.pid().map_or("?".into(), |p| p.to_string())
        ))
    }
}

/// Why a connection stopped reading.
enum Stop {
    /// Shutdown, idle, or an oversized or overdue frame: what was read is still answered.
    Answer,
    /// The peer is gone or sent what cannot be read: what it has in flight is cancelled, and
    /// the answers already queued are still offered.
    Cancel,
    /// The peer takes no answers: nothing more is written.
    Deaf,
}

/// One connection's task: reads frames, answers them in the order they complete, and writes
/// the answers, all on this one task. A small request is decoded, tokenized and submitted here
/// and its answer written from here (see [`Handler::inline`]); a large one runs on a task of
/// its own. Either way a slow request never holds up the next.
async fn handle_connection<H: Handler>(
    stream: UnixStream,
    handler: Arc<H>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let _open = handler.connection_opened(Transport::Unix);
    let mut conn = Connection::new(stream, limits.max_frame_bytes);
    let mut requests = Requests::new(handler);
    let stop = read_loop(&mut conn, &mut requests, &limits, &shutdown).await;
    if !matches!(stop, Stop::Deaf) {
        if matches!(stop, Stop::Cancel) {
            // Dropping the requests drops their queue receivers, which the worker then skips.
            requests.cancel();
        }
        finish(&mut conn, &mut requests, limits.frame_timeout).await;
    }
    conn.writer.shutdown().await;
}

/// A connection's requests in flight, polled by the connection's own task.
struct Requests<H> {
    handler: Arc<H>,
    pending: FuturesUnordered<BoxFuture<'static, Option<Framed>>>,
}

impl<H: Handler> Requests<H> {
    fn new(handler: Arc<H>) -> Self {
        Self {
            handler,
            pending: FuturesUnordered::new(),
        }
    }

    fn len(&self) -> usize {
        self.pending.len()
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Starts answering `payload`. Its first poll (on this connection's task) runs as far as
    /// the request can go without waiting: for a small one, through submitting it to the queue.
    fn start(&mut self, payload: Bytes) {
        let handler = self.handler.clone();
        if self.handler.inline(&payload) {
            // A panicking request costs its own answer, not the connection's task.
            let answer = AssertUnwindSafe(async move { handler.handle(payload).await })
                .catch_unwind()
                .map(Result::ok);
            self.pending.push(Box::pin(answer));
        } else {
            let task = tokio::spawn(async move { handler.handle(payload).await });
            self.pending.push(Box::pin(Spawned(task)));
        }
    }

    /// The next answer to complete; `None` inside when its request panicked (it is not
    /// answered, as a request task that panicked never was).
    async fn next(&mut self) -> Option<Option<Framed>> {
        self.pending.next().await
    }

    fn cancel(&mut self) {
        self.pending.clear();
    }
}

/// A request answered on a task of its own, aborted when its connection drops it.
struct Spawned(tokio::task::JoinHandle<Framed>);

impl Future for Spawned {
    type Output = Option<Framed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the connection's clock is waiting for while it reads.
enum Clock {
    /// The frame begun at the given instant must be whole by then.
    Frame,
    /// Nothing in flight, nothing received: the connection is idle.
    Idle,
}

/// Frames in, answers out, until the peer leaves, misbehaves, idles, or the daemon stops.
async fn read_loop<H: Handler>(
    conn: &mut Connection,
    requests: &mut Requests<H>,
    limits: &ConnectionLimits,
    shutdown: &CancellationToken,
) -> Stop {
    let max_in_flight = limits.max_in_flight.max(1);
    // Last byte received or last answer completed: the idle clock starts from the later.
    let mut last_activity = Instant::now();
    // When the frame being read began. The frame clock runs only while this side reads: time
    // spent at the in-flight limit is the server's, not the peer's.
    let mut frame_started: Option<Instant> = None;
    loop {
        // Backpressure: at the in-flight limit (answers not yet taken included), stop reading
        // until an answer goes out.
        let room = |requests: &Requests<H>, conn: &Connection| {
            requests.len() + conn.writer.queued() < max_in_flight
        };
        while room(requests, conn) {
            match conn.reader.frame() {
                Ok(Some(payload)) => {
                    requests.start(payload);
                    frame_started = None;
                }
                Ok(None) => break,
                Err(Unframed::TooLong { max }) => {
                    // The stream cannot be resynchronised; say why, then close.
                    let msg = format!("frame exceeds the limit of {max} bytes; closing");
                    info!("unix connection: {msg}");
                    answer_and_close(conn, msg);
                    return Stop::Answer;
                }
                Err(Unframed::Broken(e)) => {
                    debug!("unix connection: {e}");
                    return Stop::Cancel;
                }
                Err(Unframed::Http) => {
                    info!("unix connection: an HTTP request, answered with what the socket speaks");
                    conn.writer
                        .queue(Framed::unframed(frame::HTTP_REFUSAL.as_bytes()));
                    return Stop::Answer;
                }
            }
        }
        let reading = room(requests, conn);
        if !reading {
            frame_started = None;
        } else if conn.reader.has_partial() {
            frame_started.get_or_insert_with(Instant::now);
        }
        let clock = match frame_started {
            Some(t) if reading => Some((t + limits.frame_timeout, Clock::Frame)),
            // Idle only with nothing in flight: a client waiting for a slow answer is not.
            None if reading && requests.is_empty() && conn.writer.queued() == 0 => {
                Some((last_activity + limits.idle_timeout, Clock::Idle))
            }
            _ => None,
        };
        let overdue = conn.writer.overdue_at(limits.frame_timeout);
        tokio::select! {
            _ = shutdown.cancelled() => return Stop::Answer,
            Some(answer) = requests.next(), if !requests.is_empty() => {
                if let Some(answer) = answer {
                    conn.writer.queue(answer);
                }
                if requests.is_empty() {
                    last_activity = Instant::now();
                }
            }
            written = conn.writer.write_some(), if overdue.is_some() => {
                if let Err(e) = written {
                    debug!("unix connection write error: {e}");
                    return Stop::Deaf;
                }
            }
            _ = sleep_until(overdue.unwrap_or_else(Instant::now)), if overdue.is_some() => {
                info!(
                    "unix connection: peer took no answer for {:?}; closing",
                    limits.frame_timeout
                );
                return Stop::Deaf;
            }
            _ = sleep_until(clock.as_ref().map_or_else(Instant::now, |c| c.0)),
                if clock.is_some() =>
            {
                if matches!(clock, Some((_, Clock::Idle))) {
                    debug!("closing idle unix connection");
                    return Stop::Answer;
                }
                let msg = format!(
                    "frame not completed within {:?} of its first byte; closing",
                    limits.frame_timeout
                );
                info!("unix connection: {msg}");
                answer_and_close(conn, msg);
                return Stop::Answer;
            }
            read = conn.reader.read_some(), if reading => match read {
                Ok(0) if !conn.reader.has_partial() => return Stop::Cancel,
                Ok(0) => {
                    info!("unix connection closed in the middle of a frame");
                    return Stop::Cancel;
                }
                Ok(_) => {
                    last_activity = Instant::now();
                    frame_started.get_or_insert(last_activity);
                }
                Err(e) => {
                    info!("unix connection read error: {e}");
                    return Stop::Cancel;
                }
            },
        }
    }
}

/// Answers what is still in flight and writes every answer out, each within `frame_timeout`
/// of being ready.
async fn finish<H: Handler>(
    conn: &mut Connection,
    requests: &mut Requests<H>,
    frame_timeout: std::time::Duration,
) {
    loop {
        let overdue = conn.writer.overdue_at(frame_timeout);
        if requests.is_empty() && overdue.is_none() {
            return;
        }
        tokio::select! {
            Some(answer) = requests.next(), if !requests.is_empty() => {
                if let Some(answer) = answer {
                    conn.writer.queue(answer);
                }
            }
            written = conn.writer.write_some(), if overdue.is_some() => {
                if let Err(e) = written {
                    debug!("unix connection write error: {e}");
                    return;
                }
            }
            _ = sleep_until(overdue.unwrap_or_else(Instant::now)), if overdue.is_some() => {
                info!("unix connection: peer took no answer for {frame_timeout:?}; closing");
                return;
            }
        }
    }
}

/// Queues the one `INVALID_ARGUMENT` answer (id 0) that explains why the server closes.
fn answer_and_close(conn: &mut Connection, msg: String) {
    let r = protocol::status(0, pb::Status::InvalidArgument, msg);
    conn.writer.queue(Framed::message(&r));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("4242"), Some(4242));
        assert_eq!(group_id("no-such-group-classifyd"), None);
    }

    use crate::wire::frame;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Notify;

    /// Answers "echo:" + the request; a request starting with "hold" waits for `open`. Frames
    /// of more than 8 bytes run on tasks of their own.
    #[derive(Default)]
    struct Echo {
        started: AtomicUsize,
        /// Requests answered or dropped unanswered.
        ended: Arc<AtomicUsize>,
        release: Notify,
        released: std::sync::atomic::AtomicBool,
    }

    impl Echo {
        fn open(&self) {
            self.released.store(true, Ordering::SeqCst);
            self.release.notify_waiters();
        }
    }

    impl Handler for Echo {
        async fn handle(&self, payload: Bytes) -> Framed {
            self.started.fetch_add(1, Ordering::SeqCst);
            struct Ended(Arc<AtomicUsize>);
            impl Drop for Ended {
                fn drop(&mut self) {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
            let _ended = Ended(self.ended.clone());
            while payload.starts_with(b"hold") && !self.released.load(Ordering::SeqCst) {
                let notified = self.release.notified();
                if self.released.load(Ordering::SeqCst) {
                    break;
                }
                notified.await;
            }
            let mut out = b"echo:".to_vec();
            out.extend_from_slice(&payload);
            Framed::raw(&out)
        }

        fn inline(&self, payload: &[u8]) -> bool {
            payload.len() <= 8
        }
    }

    struct Server {
        _dir: tempfile::TempDir,
        path: PathBuf,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(echo: Arc<Echo>, max_in_flight: usize) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let opts = UnixOptions {
            path: dir.path().join("s.sock"),
            mode: 0o600,
            ..UnixOptions::default()
        };
        let listener = Listener {
            socket: bind(&opts).unwrap(),
            opts: opts.clone(),
            owns_path: true,
        };
        let limits = ConnectionLimits {
            max_in_flight,
            ..ConnectionLimits::default()
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, echo, limits, shutdown.clone()));
        Server {
            _dir: dir,
            path: opts.path,
            shutdown,
            task,
        }
    }

    async fn send(stream: &mut UnixStream, msg: &[u8]) {
        stream.write_all(&frame::encode(msg)).await.unwrap();
    }

    /// The next answer, or `None` at EOF.
    async fn answer(stream: &mut UnixStream) -> Option<String> {
        let read = async {
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).await.ok()?;
            let mut body = vec![0; u32::from_be_bytes(len) as usize];
            stream.read_exact(&mut body).await.ok()?;
            Some(String::from_utf8(body).unwrap())
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("hang guard")
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_once_each_in_completion_order() {
        let echo = Arc::new(Echo::default());
        let server = start(echo.clone(), 16);
        let mut c = UnixStream::connect(&server.path).await.unwrap();
        // Inline and held, inline, on a task of its own.
        send(&mut c, b"hold a").await;
        send(&mut c, b"b").await;
        send(&mut c, b"a longer request").await;
        let mut first = vec![answer(&mut c).await.unwrap(), answer(&mut c).await.unwrap()];
        first.sort();
        assert_eq!(first, ["echo:a longer request", "echo:b"]);
        echo.open();
        assert_eq!(answer(&mut c).await.unwrap(), "echo:hold a");
        assert_eq!(echo.started.load(Ordering::SeqCst), 3);
        server.shutdown.cancel();
        assert_eq!(answer(&mut c).await, None, "one answer each, then EOF");
        server.task.await.unwrap();
        assert!(!server.path.exists(), "the socket file it bound is removed");
    }

    #[tokio::test]
    async fn reading_stops_at_the_in_flight_limit_and_shutdown_answers_what_was_read() {
        let echo = Arc::new(Echo::default());
        let server = start(echo.clone(), 2);
        let mut c = UnixStream::connect(&server.path).await.unwrap();
        for msg in [&b"hold 1"[..], b"hold 2", b"hold 3"] {
            send(&mut c, msg).await;
        }
        until("two requests started", || {
            echo.started.load(Ordering::SeqCst) == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            echo.started.load(Ordering::SeqCst),
            2,
            "the third is not read"
        );
        server.shutdown.cancel();
        tokio::task::yield_now().await;
        assert!(!server.task.is_finished(), "serve waits for what it read");
        echo.open();
        let mut got = vec![answer(&mut c).await.unwrap(), answer(&mut c).await.unwrap()];
        got.sort();
        assert_eq!(got, ["echo:hold 1", "echo:hold 2"]);
        assert_eq!(answer(&mut c).await, None);
        server.task.await.unwrap();
        assert_eq!(echo.started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_peer_that_leaves_cancels_its_requests() {
        let echo = Arc::new(Echo::default());
        let server = start(echo.clone(), 16);
        let mut c = UnixStream::connect(&server.path).await.unwrap();
        send(&mut c, b"hold x").await;
        send(&mut c, b"hold: on a task of its own").await;
        until("both started", || echo.started.load(Ordering::SeqCst) == 2).await;
        drop(c);
        // Held forever (never opened): they end only by being cancelled.
        until("both cancelled", || echo.ended.load(Ordering::SeqCst) == 2).await;
        server.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), server.task)
            .await
            .expect("cancelled requests do not hold the drain")
            .unwrap();
    }
}
