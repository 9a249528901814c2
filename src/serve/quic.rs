//! The QUIC listener: one bidirectional stream per request.
//!
//! A client opens a stream, writes one length-prefixed request (see [`crate::wire::frame`]) and
//! finishes its side; the server answers with one length-prefixed response and finishes its
//! side. Streams run concurrently, so a slow request never holds up another; QUIC's stream limit
//! (`max_streams_per_connection`) bounds the requests in flight per connection, and a
//! listener-wide byte budget (`max_receive_bytes`) what all connections together are sending.
//!
//! TLS (mTLS, ALPN, no 0-RTT) is configured in [`crate::wire::tls`]; the stream and close codes
//! both ends use are in [`crate::wire::quic`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::serve::handler::Handler;
use crate::serve::limits::ConnectionLimits;
use crate::service::metrics::Transport;
use crate::wire::frame::PREFIX_LEN;
use crate::wire::quic::{
    read_exact, read_prefix, FrameReadError, QuicLimits, CLOSE_BUSY, CLOSE_IDLE, CLOSE_SHUTDOWN,
    STREAM_FRAME_TIMEOUT, STREAM_FRAME_TOO_LARGE, STREAM_OVERLOADED, STREAM_TRUNCATED,
};
use crate::wire::tls::TlsError;

/// QUIC listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicOptions {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub allow_anonymous_loopback: bool,
}

impl From<ConnectionLimits> for QuicLimits {
    fn from(l: ConnectionLimits) -> Self {
        Self {
            max_connections: l.max_connections,
            // As many handshakes as connections: enough to fill every slot at once.
            max_handshakes: l.max_connections,
            handshake_timeout: l.handshake_timeout,
            max_streams_per_connection: u32::try_from(l.max_in_flight.max(1)).unwrap_or(u32::MAX),
            max_frame_bytes: l.max_frame_bytes,
            max_receive_bytes: l.max_receive_bytes,
            idle_timeout: l.idle_timeout,
            frame_timeout: l.frame_timeout,
        }
    }
}

/// Why the QUIC listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind QUIC (UDP) on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds a UDP socket on `addr` and makes it a QUIC server endpoint. Needs a Tokio runtime.
pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> Result<Endpoint, QuicError> {
    Endpoint::server(config, addr).map_err(|source| QuicError::Bind { addr, source })
}

/// The QUIC server configuration `serve` would listen with: its TLS files read and checked
/// against the options. check-config builds it too, so both judge the files the same way.
pub fn server_config(
    opts: &QuicOptions,
    limits: &ConnectionLimits,
) -> Result<quinn::ServerConfig, TlsError> {
    crate::wire::tls::server_config(
        &opts.cert,
        &opts.key,
        opts.client_ca.as_deref(),
        opts.allow_anonymous_loopback,
        opts.listen,
        &QuicLimits::from(*limits),
    )
}

/// Builds the TLS configuration from the daemon's options and binds: what `serve` needs.
pub fn listen(opts: &QuicOptions, limits: &ConnectionLimits) -> Result<Endpoint, QuicError> {
    bind(opts.listen, server_config(opts, limits)?)
}

/// Serves QUIC connections on `endpoint` until `shutdown` is cancelled, then drains: no new
/// connections or streams are accepted, streams already accepted are answered, every
/// connection is closed with [`CLOSE_SHUTDOWN`], and this returns once the endpoint is idle.
///
/// An incoming connection is decided on before the handshake. A client whose address is not
/// yet validated gets a Retry, which costs the server no state and no crypto: only a peer that
/// receives at the address it sends from can come back with the token. A validated one is
/// refused while every connection slot is taken or `max_handshakes` handshakes are under way;
/// otherwise its handshake runs, for at most `handshake_timeout`, holding a place among the
/// handshakes, and it takes a connection slot only once the handshake has completed.
pub async fn serve<H: Handler>(
    endpoint: Endpoint,
    handler: Arc<H>,
    limits: QuicLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let budget = ReceiveBudget::new(limits.max_receive_bytes);
    let mut connections = JoinSet::new();
    let logs = Arc::new(Logs::default());
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => log_join(done),
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if !incoming.remote_address_validated() {
                    // Never fails here: a client that is not validated may always be retried.
                    if let Err(e) = incoming.retry() {
                        e.into_incoming().ignore();
                    }
                    continue;
                }
                let remote = incoming.remote_address();
                let full = if slots.available_permits() == 0 {
                    Some(format!("{} connections open", limits.max_connections))
                } else {
                    None
                };
                let handshake = match full {
                    Some(why) => Err(why),
                    None => handshakes.clone().try_acquire_owned().map_err(|_| {
                        format!("{} handshakes under way", limits.max_handshakes)
                    }),
                };
                let handshake = match handshake {
                    Ok(permit) => permit,
                    Err(why) => {
                        logs.refused(remote, &why);
                        incoming.refuse();
                        continue;
                    }
                };
                let span = info_span!("quic", remote = %remote);
                connections.spawn(
                    connection(
                        incoming,
                        handler.clone(),
                        limits,
                        budget.clone(),
                        shutdown.clone(),
                        Places {
                            slots: slots.clone(),
                            handshake,
                            logs: logs.clone(),
                        },
                    )
                    .instrument(span),
                );
            }
        }
    }

    // Draining: refuse newcomers promptly rather than letting their handshakes time out.
    loop {
        tokio::select! {
            done = connections.join_next() => match done {
                Some(done) => log_join(done),
                None => break,
            },
            Some(incoming) = endpoint.accept() => incoming.refuse(),
        }
    }
    endpoint.close(CLOSE_SHUTDOWN, b"server shutting down");
    endpoint.wait_idle().await;
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            error!("quic task panicked: {e}");
        }
    }
}

/// How long a window of [`Throttle`] lasts.
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Lets the first `burst` warnings of each ten-second window through and counts the rest, so a
/// flood of refused peers or failed handshakes writes a few lines per window, not one per
/// attempt; the next line let through says how many were held back.
struct Throttle {
    burst: u32,
    state: Mutex<ThrottleState>,
}

struct ThrottleState {
    window: Option<Instant>,
    in_window: u32,
    held: u64,
}

impl Throttle {
    const fn new(burst: u32) -> Self {
        Self {
            burst,
            state: Mutex::new(ThrottleState {
                window: None,
                in_window: 0,
                held: 0,
            }),
        }
    }

    /// `Some(held back since the previous line)` when this warning may be written.
    fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if s.window.is_none_or(|t| now.duration_since(t) >= LOG_WINDOW) {
            s.window = Some(now);
            s.in_window = 0;
        }
        if s.in_window < self.burst {
            s.in_window += 1;
            Some(std::mem::take(&mut s.held))
        } else {
            s.held += 1;
            None
        }
    }
}

/// ", and N more not logged" for a line that stands for `held` warnings held back before it.
fn held_back(held: u64) -> String {
    if held == 0 {
        String::new()
    } else {
        format!(" ({held} more since the previous warning, not logged)")
    }
}

/// The listener's rate-limited warnings.
struct Logs {
    refusals: Throttle,
    handshakes: Throttle,
}

impl Default for Logs {
    fn default() -> Self {
        Self {
            refusals: Throttle::new(1),
            handshakes: Throttle::new(5),
        }
    }
}

impl Logs {
    fn refused(&self, remote: SocketAddr, why: &str) {
        if let Some(held) = self.refusals.admit() {
            warn!(
                "refusing quic connection from {remote}: {why}{}",
                held_back(held)
            );
        }
    }

    fn handshake_failed(&self, remote: SocketAddr, why: &dyn std::fmt::Display) {
        if let Some(held) = self.handshakes.admit() {
            warn!(
                "quic handshake from {remote} failed: {why}{}",
                held_back(held)
            );
        } else {
            debug!("quic handshake from {remote} failed: {why}");
        }
    }
}

/// What a connection holds: a place among the handshakes until its handshake ends, then a
/// connection slot taken from `slots`.
struct Places {
    slots: Arc<Semaphore>,
    handshake: OwnedSemaphorePermit,
    logs: Arc<Logs>,
}

async fn connection<H: Handler>(
    incoming: quinn::Incoming,
    handler: Arc<H>,
    limits: QuicLimits,
    budget: ReceiveBudget,
    shutdown: CancellationToken,
    places: Places,
) {
    let remote = incoming.remote_address();
    let logs = places.logs;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            logs.handshake_failed(remote, &e);
            return;
        }
    };
    // Dropping the handshake (timed out, or on shutdown) closes the connection.
    let conn = tokio::select! {
        res = tokio::time::timeout(limits.handshake_timeout, connecting) => match res {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                logs.handshake_failed(remote, &e);
                return;
            }
            Err(_) => {
                let why = format!("not complete within {:?}", limits.handshake_timeout);
                logs.handshake_failed(remote, &why);
                return;
            }
        },
        _ = shutdown.cancelled() => return,
    };
    drop(places.handshake);
    // Free when the handshake began, but other handshakes may have completed meanwhile.
    let Ok(_slot) = places.slots.try_acquire_owned() else {
        logs.refused(
            remote,
            &format!("{} connections open", limits.max_connections),
        );
        conn.close(CLOSE_BUSY, b"too many connections");
        return;
    };
    debug!("quic connection established");
    let _open = handler.connection_opened(Transport::Quic);

    let mut streams = JoinSet::new();
    // When the last stream was opened or finished. QUIC's own idle timeout counts any packet,
    // keep-alive pings included, so it alone would let a peer hold a connection slot forever.
    let mut last_activity = tokio::time::Instant::now();
    loop {
        let idle_at = last_activity + limits.idle_timeout;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = streams.join_next(), if !streams.is_empty() => {
                log_join(done);
                last_activity = tokio::time::Instant::now();
            }
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    last_activity = tokio::time::Instant::now();
                    streams.spawn(
                        stream(send, recv, handler.clone(), limits, budget.clone())
                            .in_current_span(),
                    );
                }
                Err(quinn::ConnectionError::TimedOut) => {
                    // The peer vanished without closing; one line, as for a failed handshake.
                    info!("quic connection from {remote} timed out: no packets for too long");
                    break;
                }
                Err(e) => {
                    debug!("quic connection ended: {e}");
                    break;
                }
            },
            // After accept_bi, so that a stream arriving as the clock runs out is served.
            _ = tokio::time::sleep_until(idle_at), if streams.is_empty() => {
                debug!("closing idle quic connection");
                conn.close(CLOSE_IDLE, b"idle");
                break;
            }
        }
    }
    let draining = shutdown.is_cancelled();
    if draining {
        // The peer may not open further streams; those it already opened and we have not
        // accepted fail with the connection close below.
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(0));
    }
    while let Some(done) = streams.join_next().await {
        log_join(done);
    }
    if draining {
        conn.close(CLOSE_SHUTDOWN, b"server shutting down");
    }
}

/// One request: read its frame, answer it, and wait until the peer has the whole answer.
async fn stream<H: Handler>(
    mut send: SendStream,
    mut recv: RecvStream,
    handler: Arc<H>,
    limits: QuicLimits,
    budget: ReceiveBudget,
) {
    // From the stream's opening, which the peer signals with its first bytes: dripping a frame
    // keeps QUIC's idle timer fed, so only a deadline on the frame itself ends it.
    let read = tokio::time::timeout(
        limits.frame_timeout,
        read_request(&mut recv, limits.max_frame_bytes, &budget),
    );
    let response = match read.await {
        Ok(Ok(request)) => {
            drop(recv);
            handler.handle(request).await
        }
        Ok(Err(RequestError::Busy { len })) => {
            // Answered, not reset: OVERLOADED is the status a client already retries on.
            debug!("quic request of {len} bytes refused: receive budget spent");
            let _ = recv.stop(STREAM_OVERLOADED);
            handler.refused_busy(format!(
                "the server is receiving its limit of {} request bytes at once \
                 (max_receive_bytes); retry after a back-off",
                budget.total
            ))
        }
        Ok(Err(RequestError::Frame(e))) => {
            debug!("quic request stream refused: {e}");
            let code = match e {
                FrameReadError::TooLarge { .. } => STREAM_FRAME_TOO_LARGE,
                FrameReadError::Truncated { .. } => STREAM_TRUNCATED,
                FrameReadError::Read(_) => return,
            };
            let _ = recv.stop(code);
            let _ = send.reset(code);
            return;
        }
        Err(_) => {
            info!(
                "quic request frame not completed within {:?}; resetting its stream",
                limits.frame_timeout
            );
            let _ = recv.stop(STREAM_FRAME_TIMEOUT);
            let _ = send.reset(STREAM_FRAME_TIMEOUT);
            return;
        }
    };
    match tokio::time::timeout(limits.frame_timeout, send.write_all(response.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!("quic response not sent: {e}");
            return;
        }
        Err(_) => {
            debug!("quic response not taken within {:?}", limits.frame_timeout);
            let _ = send.reset(STREAM_FRAME_TIMEOUT);
            return;
        }
    }
    let _ = send.finish();
    // Resolves once the peer acknowledged every byte, so that a connection closed right after
    // (shutdown) cannot discard an answer still in flight. Bounded like the write: a peer that
    // never acknowledges must not pin the stream's task.
    let _ = tokio::time::timeout(limits.frame_timeout, send.stopped()).await;
}

/// The bytes of request frames a listener holds between reading a frame's length prefix and
/// decoding it, over all its connections. Without it, every connection filling every stream
/// with a maximum-size frame would make the server hold `max_connections × max_in_flight ×
/// max_frame_bytes` (16 GiB at the defaults).
#[derive(Clone)]
struct ReceiveBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl ReceiveBudget {
    fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Room for a frame body of `len` bytes, returned when the frame is dropped; `None` when
    /// the budget does not have it now. Never waits: a waiting stream would hold its
    /// connection's flow-control window and the client would see only a stall.
    fn charge(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(len).ok()?;
        self.bytes.clone().try_acquire_many_owned(n).ok()
    }
}

/// A request frame's bytes together with their share of the receive budget, so the share goes
/// back exactly when the last reference to the bytes is dropped (the service drops the frame
/// once it has decoded and tokenized it).
struct Charged {
    body: Vec<u8>,
    _share: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(transparent)]
    Frame(#[from] FrameReadError),
    #[error("request of {len} bytes does not fit the receive budget now")]
    Busy { len: usize },
}

/// [`read_frame`] for a request: the body is charged to `budget` before it is allocated.
async fn read_request(
    recv: &mut RecvStream,
    max: usize,
    budget: &ReceiveBudget,
) -> Result<Bytes, RequestError> {
    let len = read_prefix(recv, max).await?;
    let share = budget.charge(len).ok_or(RequestError::Busy { len })?;
    let mut body = vec![0u8; len];
    read_exact(recv, &mut body, PREFIX_LEN).await?;
    Ok(Bytes::from_owner(Charged {
        body,
        _share: share,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::quic::{QuicClient, QuicClientConfig, QuicClientError};
    use crate::wire::cert::{write_dev_pki, DevPki};
    use crate::wire::frame::{encode, Framed};
    use crate::wire::tls::{self, server_config};
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tempfile::TempDir;
    use tokio::sync::{mpsc, Notify};

    const GUARD: Duration = Duration::from_secs(20);

    async fn guard<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(GUARD, f).await.expect("hang guard")
    }

    /// Answers "echo:" + the request; requests starting with "hold" wait for `release`.
    #[derive(Default)]
    struct Echo {
        started: AtomicUsize,
        started_tx: Option<mpsc::UnboundedSender<()>>,
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
            if payload.starts_with(b"hold") {
                if let Some(tx) = &self.started_tx {
                    let _ = tx.send(());
                }
                loop {
                    let notified = self.release.notified();
                    if self.released.load(Ordering::SeqCst) {
                        break;
                    }
                    notified.await;
                }
            }
            let mut out = b"echo:".to_vec();
            out.extend_from_slice(&payload);
            Framed::raw(&out)
        }
    }

    struct Server {
        addr: SocketAddr,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn new_pki() -> (TempDir, DevPki) {
        // Shows the server's log lines (handshake failures, refusals) with --nocapture.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("classifyd=debug")
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let pki = write_dev_pki(dir.path(), &[]).unwrap();
        (dir, pki)
    }

    fn start(config: quinn::ServerConfig, handler: Arc<Echo>, limits: QuicLimits) -> Server {
        let endpoint = bind("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(endpoint, handler, limits, shutdown.clone()));
        Server {
            addr,
            shutdown,
            task,
        }
    }

    fn start_mtls(pki: &DevPki, handler: Arc<Echo>, limits: QuicLimits) -> Server {
        let listen = "127.0.0.1:0".parse().unwrap();
        let config = server_config(
            &pki.server,
            &pki.server_key,
            Some(&pki.ca),
            false,
            listen,
            &limits,
        )
        .unwrap();
        start(config, handler, limits)
    }

    fn client_cfg(pki: &DevPki, addr: SocketAddr) -> QuicClientConfig {
        QuicClientConfig {
            addr,
            server_name: "localhost".into(),
            ca: pki.ca.clone(),
            cert: Some(pki.client.clone()),
            key: Some(pki.client_key.clone()),
        }
    }

    /// Connects and makes one call: with TLS 1.3 the client may finish its handshake before
    /// the server has checked the client's certificate, so a refusal can surface on either.
    async fn connect_and_call(cfg: &QuicClientConfig) -> Result<Bytes, QuicClientError> {
        let client = QuicClient::connect(cfg).await?;
        client.call(b"hi").await
    }

    #[test]
    fn warnings_past_the_burst_are_counted_not_written() {
        let t = Throttle::new(2);
        assert_eq!(
            (t.admit(), t.admit(), t.admit(), t.admit()),
            (Some(0), Some(0), None, None)
        );
        // The next window's first line carries the count of those held back.
        t.state.lock().unwrap().window = Some(Instant::now() - LOG_WINDOW);
        assert_eq!((t.admit(), t.admit()), (Some(2), Some(0)));
        assert_eq!(held_back(0), "");
        assert!(held_back(3).contains("3 more"));
    }

    #[tokio::test]
    async fn quic_round_trip_and_concurrent_calls_with_mtls() {
        let (_dir, pki) = new_pki();
        // Fewer streams than calls: the calls past the limit wait for a stream, none fails.
        let limits = QuicLimits {
            max_streams_per_connection: 8,
            ..QuicLimits::from(ConnectionLimits::default())
        };
        let server = start_mtls(&pki, Arc::default(), limits);
        let client = guard(QuicClient::connect(&client_cfg(&pki, server.addr)))
            .await
            .unwrap();
        assert_eq!(
            &guard(client.call(b"hello")).await.unwrap()[..],
            b"echo:hello"
        );
        assert_eq!(&guard(client.call(b"")).await.unwrap()[..], b"echo:");

        let mut calls = JoinSet::new();
        for i in 0..50 {
            let client = client.clone();
            calls.spawn(async move {
                let request = format!("request {i}");
                let answer = client.call(request.as_bytes()).await.unwrap();
                assert_eq!(answer, format!("echo:{request}").as_bytes());
            });
        }
        let answered = guard(async {
            let mut n = 0;
            while let Some(done) = calls.join_next().await {
                done.unwrap();
                n += 1;
            }
            n
        })
        .await;
        assert_eq!(answered, 50);
        client.close().await;
        server.shutdown.cancel();
        guard(server.task).await.unwrap();
    }

    #[tokio::test]
    async fn quic_oversized_request_resets_its_stream_only() {
        let (_dir, pki) = new_pki();
        let limits = QuicLimits {
            max_frame_bytes: 16,
            ..QuicLimits::from(ConnectionLimits::default())
        };
        let server = start_mtls(&pki, Arc::default(), limits);
        let client = guard(QuicClient::connect(&client_cfg(&pki, server.addr)))
            .await
            .unwrap();
        let err = guard(client.call(&[b'x'; 17])).await.unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        assert_eq!(
            &guard(client.call(b"small")).await.unwrap()[..],
            b"echo:small"
        );
        server.shutdown.cancel();
        guard(server.task).await.unwrap();
    }

    #[tokio::test]
    async fn quic_receive_budget_answers_overloaded_unread_then_recovers() {
        use crate::wire::protocol::pb;
        use prost::Message;

        let (_dir, pki) = new_pki();
        let limits = QuicLimits {
            max_frame_bytes: 64,
            max_receive_bytes: 100,
            ..QuicLimits::from(ConnectionLimits::default())
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let echo = Arc::new(Echo {
            started_tx: Some(tx),
            ..Echo::default()
        });
        let server = start_mtls(&pki, echo.clone(), limits);
        let client = guard(QuicClient::connect(&client_cfg(&pki, server.addr)))
            .await
            .unwrap();
        // 60 bytes held by the handler stay charged until the frame is dropped.
        let mut big = b"hold".to_vec();
        big.resize(60, b'.');
        let held = tokio::spawn({
            let (client, big) = (client.clone(), big.clone());
            async move { client.call(&big).await }
        });
        guard(rx.recv()).await.unwrap();

        // 60 + 50 > 100: answered OVERLOADED without being read or handled.
        let busy = guard(client.call(&[b'y'; 50])).await.unwrap();
        let busy = pb::Response::decode(busy).unwrap();
        assert_eq!(busy.status(), pb::Status::Overloaded);
        assert!(
            busy.message.contains("max_receive_bytes"),
            "{}",
            busy.message
        );
        assert_eq!(echo.started.load(Ordering::SeqCst), 1);
        // 60 + 40 fits.
        let small = guard(client.call(&[b'z'; 40])).await.unwrap();
        assert_eq!(&small[..5], b"echo:");

        echo.open();
        let answered = guard(held).await.unwrap().unwrap();
        assert_eq!(&answered[5..], &big[..]);
        // The held frame's share came back with it: a whole 64-byte frame fits again.
        let full = guard(client.call(&[b'w'; 64])).await.unwrap();
        assert_eq!(full.len(), 5 + 64);
        server.shutdown.cancel();
        guard(server.task).await.unwrap();
    }

    #[tokio::test]
    async fn quic_client_without_certificate_is_refused() {
        let (_dir, pki) = new_pki();
        let server = start_mtls(
            &pki,
            Arc::default(),
            QuicLimits::from(ConnectionLimits::default()),
        );
        let mut cfg = client_cfg(&pki, server.addr);
        cfg.cert = None;
        cfg.key = None;
        let err = guard(connect_and_call(&cfg)).await.unwrap_err();
        assert!(err.to_string().contains("no certificates"), "{err}");
        // The server still serves authenticated clients.
        let good = guard(connect_and_call(&client_cfg(&pki, server.addr)))
            .await
            .unwrap();
        assert_eq!(&good[..], b"echo:hi");
        server.shutdown.cancel();
        guard(server.task).await.unwrap();
    }

    #[tokio::test]
    async fn quic_client_cert_from_another_ca_is_refused() {
        let (_dir, pki) = new_pki();
        let (_other_dir, other) = new_pki();
        let server = start_mtls(
            &pki,
            Arc::default(),
            QuicLimits::from(ConnectionLimits::default()),
        );
        let mut cfg = client_cfg(&pki, server.addr);
        cfg.cert = Some(other.client.clone());
        cfg.key = Some(other.client_key.clone());
        let err = guard(connect_and_call(&cfg)).await.unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        // And a client that does not trust the server's CA refuses the server.
        let mut cfg = client_cfg(&pki, server.addr);
        cfg.ca = other.ca.clone();
        let err = guard(connect_and_call(&cfg)).await.unwrap_err();
        assert!(matches!(err, QuicClientError::Handshake { .. }), "{err}");
        server.shutdown.cancel();
        guard(server.task).await.unwrap();
    }

    #[tokio::test]
    async fn quic_wrong_alpn_is_refused() {
        let (_dir, pki) = new_pki();
        let server = start_mtls(
            &pki,
            Arc::default(),
            QuicLimits::from(ConnectionLimits::default()),
        );
        let mut tls = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(tls::load_roots("ca", &pki.ca).unwrap())
            .with_client_auth_cert(
                tls::load_certs("client", &pki.client).unwrap(),
                tls::load_key(&pki.client_key).unwrap(),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                server.addr,
                "localhost",
            )
            .unwrap();
        let result = guard(async {
            let conn = connecting.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&encode(b"hi"))
                .await
                .map_err(std::io::Error::from)?;
            let mut buf = [0u8; 4];
            recv.read_exact(&mut buf)
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .await;
        let err = result.unwrap_err();
        assert!(err.to_string().contains("protocol"), "{err}");
        server.shutdown.cancel();
        guard(server.task).await.unwrap();
    }

    #[tokio::test]
    async fn quic_anonymous_loopback() {
        let (_dir, pki) = new_pki();
        let limits = QuicLimits::from(ConnectionLimits::default());
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config =
            server_config(&pki.server, &pki.server_key, None, true, listen, &limits).unwrap();
        let server = start(config, Arc::default(), limits);
        let mut cfg = client_cfg(&pki, server.addr);
        cfg.cert = None;
        cfg.key = None;
        let answer = guard(connect_and_call(&cfg)).await.unwrap();
        assert_eq!(&answer[..], b"echo:hi");
        server.shutdown.cancel();
        guard(server.task).await.unwrap();

        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let err =
            server_config(&pki.server, &pki.server_key, None, true, any, &limits).unwrap_err();
        assert!(
            matches!(err, TlsError::AnonymousNotLoopback { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn quic_connections_past_the_limit_are_refused() {
        let (_dir, pki) = new_pki();
        let limits = QuicLimits {
            max_connections: 2,
            ..QuicLimits::from(ConnectionLimits::default())
        };
        let server = start_mtls(&pki, Arc::default(), limits);
        let cfg = client_cfg(&pki, server.addr);
        let a = guard(QuicClient::connect(&cfg)).await.unwrap();
        let b = guard(QuicClient::connect(&cfg)).await.unwrap();
        // Both established (server side) once each has been answered.
        assert_eq!(&guard(a.call(b"a")).await.unwrap()[..], b"echo:a");
        assert_eq!(&guard(b.call(b"b")).await.unwrap()[..], b"echo:b");
        let err = guard(connect_and_call(&cfg)).await.unwrap_err();
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
        assert_eq!(&guard(a.call(b"a2")).await.unwrap()[..], b"echo:a2");
        assert_eq!(&guard(b.call(b"b2")).await.unwrap()[..], b"echo:b2");
        server.shutdown.cancel();
        guard(server.task).await.unwrap();
    }

    #[tokio::test]
    async fn quic_shutdown_answers_requests_in_flight_then_returns() {
        let (_dir, pki) = new_pki();
        let (tx, mut started) = mpsc::unbounded_channel();
        let handler = Arc::new(Echo {
            started_tx: Some(tx),
            ..Echo::default()
        });
        let server = start_mtls(
            &pki,
            handler.clone(),
            QuicLimits::from(ConnectionLimits::default()),
        );
        let client = guard(QuicClient::connect(&client_cfg(&pki, server.addr)))
            .await
            .unwrap();
        let mut calls = JoinSet::new();
        for i in 0..5 {
            let client = client.clone();
            calls.spawn(async move { client.call(format!("hold {i}").as_bytes()).await });
        }
        for _ in 0..5 {
            guard(started.recv()).await.unwrap();
        }
        server.shutdown.cancel();
        // serve() cannot return while its requests are held.
        tokio::task::yield_now().await;
        assert!(!server.task.is_finished());
        handler.open();
        let mut answers = guard(async {
            let mut answers = Vec::new();
            while let Some(done) = calls.join_next().await {
                answers.push(done.unwrap().unwrap());
            }
            answers
        })
        .await;
        answers.sort();
        let expected: Vec<Bytes> = (0..5)
            .map(|i| Bytes::from(format!("echo:hold {i}")))
            .collect();
        assert_eq!(answers, expected);
        guard(server.task).await.unwrap();
        // The connection was closed by the server; further calls fail.
        assert!(guard(client.call(b"late")).await.is_err());
        assert_eq!(handler.started.load(Ordering::SeqCst), 5);
    }
}
