//! The Unix-domain-socket listener: many connections, many pipelined requests per connection,
//! answers in completion order. Peers may be restricted by uid/gid (SO_PEERCRED).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::serve::limits::ConnectionLimits;
use crate::service::metrics::Transport;
use crate::service::Service;
use crate::wire::frame::{self, FrameError};
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
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket, replacing a stale socket file but never a live daemon's.
pub fn bind(opts: &UnixOptions) -> Result<UnixListener, BindError> {
    let path = &opts.path;
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
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
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

/// Accepts connections until `shutdown` fires, then waits for every connection to answer what
/// it had read and close. Removes the socket file at the end when `owns_path` (it was bound by
/// [`bind`]); one inherited from systemd belongs to the socket unit and stays.
pub async fn serve(
    listener: UnixListener,
    service: Arc<Service>,
    opts: UnixOptions,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    owns_path: bool,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let opts = Arc::new(opts);
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
        let service = service.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            handle_connection(stream, service, limits, shutdown).await;
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

/// Why the read side of a connection stopped.
enum Stop {
    /// Shutdown, an oversized or overdue frame: what was read is still answered.
    Answer,
    /// The peer is gone or cannot take answers: what it has in flight is cancelled.
    PeerGone,
}

/// Reads frames and answers each on its own task, so a slow request never holds up the next.
/// The connection's write side is owned by one writer task fed through a channel.
async fn handle_connection(
    stream: UnixStream,
    service: Arc<Service>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let _open = service
        .metrics()
        .map(|m| m.connection_opened(Transport::Unix));
    let (mut read, mut write) = stream.into_split();
    let max_in_flight = limits.max_in_flight.max(1);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(max_in_flight);
    // Cancelled when the writer gives up, so the reader stops computing answers nobody takes.
    let writer_gone = CancellationToken::new();
    let writer = {
        let gone = writer_gone.clone();
        let frame_timeout = limits.frame_timeout;
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                // A peer that stops reading would otherwise park this task, and with it every
                // request task waiting to queue its answer, for as long as it stays connected.
                match tokio::time::timeout(frame_timeout, write.write_all(&bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!("unix connection write error: {e}");
                        gone.cancel();
                        return;
                    }
                    Err(_) => {
                        info!(
                            "unix connection: peer took no answer for {frame_timeout:?}; closing"
                        );
                        gone.cancel();
                        return;
                    }
                }
            }
            let _ = write.shutdown().await;
        })
    };
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut requests = JoinSet::new();
    let stop = read_loop(
        &mut read,
        &service,
        &limits,
        &shutdown,
        &writer_gone,
        &in_flight,
        &mut requests,
        &tx,
    )
    .await;
    if matches!(stop, Stop::PeerGone) {
        // Dropping the tasks drops their queue receivers, which the worker then skips.
        requests.abort_all();
    }
    while requests.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
}

/// The read side of [`handle_connection`]: frames in, one task per request, until the peer
/// leaves, misbehaves or the daemon stops.
#[allow(clippy::too_many_arguments)]
async fn read_loop(
    read: &mut OwnedReadHalf,
    service: &Arc<Service>,
    limits: &ConnectionLimits,
    shutdown: &CancellationToken,
    writer_gone: &CancellationToken,
    in_flight: &Arc<Semaphore>,
    requests: &mut JoinSet<()>,
    tx: &mpsc::Sender<Vec<u8>>,
) -> Stop {
    let mut codec = frame::codec(limits.max_frame_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Last byte received or last answer completed: the idle clock starts from the later.
    let mut last_activity = Instant::now();
    loop {
        // Backpressure: at the in-flight limit, stop reading until an answer goes out.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return Stop::Answer,
            _ = writer_gone.cancelled() => return Stop::PeerGone,
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Stop::Answer,
            },
        };
        // The frame clock runs only while this side reads: time spent at the in-flight limit is
        // the server's, not the peer's.
        let mut frame_started = (!buf.is_empty()).then(Instant::now);
        let payload = loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => break frame.freeze(),
                Ok(None) => {}
                Err(e) => {
                    let FrameError::TooLong { max, .. } =
                        frame::classify_io_error(e, limits.max_frame_bytes, None)
                    else {
                        // The codec fails on nothing but the length limit.
                        return Stop::PeerGone;
                    };
                    // The stream cannot be resynchronised; say why, then close.
                    let msg = format!("frame exceeds the limit of {max} bytes; closing");
                    info!("unix connection: {msg}");
                    answer_and_close(tx, msg).await;
                    return Stop::Answer;
                }
            }
            let (deadline, overdue) = match frame_started {
                Some(t) => (Some(t + limits.frame_timeout), true),
                // Idle only with nothing in flight: a client waiting for a slow answer is not.
                None if requests.is_empty() => (Some(last_activity + limits.idle_timeout), false),
                None => (None, false),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Stop::Answer,
                _ = writer_gone.cancelled() => return Stop::PeerGone,
                // Reaped here so that the idle clock starts when the last answer goes out.
                Some(_) = requests.join_next(), if !requests.is_empty() => {
                    if requests.is_empty() {
                        last_activity = Instant::now();
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    if !overdue {
                        debug!("closing idle unix connection");
                        return Stop::Answer;
                    }
                    let msg = format!(
                        "frame not completed within {:?} of its first byte; closing",
                        limits.frame_timeout
                    );
                    info!("unix connection: {msg}");
                    answer_and_close(tx, msg).await;
                    return Stop::Answer;
                }
                r = read_some(read, &mut buf) => match r {
                    Ok(0) if buf.is_empty() => return Stop::PeerGone,
                    Ok(0) => {
                        info!("unix connection closed in the middle of a frame");
                        return Stop::PeerGone;
                    }
                    Ok(_) => {
                        last_activity = Instant::now();
                        frame_started.get_or_insert(last_activity);
                    }
                    Err(e) => {
                        info!("unix connection read error: {e}");
                        return Stop::PeerGone;
                    }
                },
            }
        };
        let service = service.clone();
        let tx = tx.clone();
        requests.spawn(async move {
            let response = prost::Message::encode_to_vec(&service.respond(payload).await);
            let _ = tx.send(frame::encode(&response)).await;
            drop(permit);
        });
    }
}

/// Bytes read per system call at most, and the buffer's spare room before each.
const READ_CHUNK: usize = 8 * 1024;

/// One read into `buf`. Room for a whole frame is reserved by the codec once it has read the
/// length prefix, so the buffer grows to one frame and no further.
async fn read_some(read: &mut OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() == buf.len() {
        buf.reserve(READ_CHUNK);
    }
    read.read_buf(buf).await
}

/// Sends the one `INVALID_ARGUMENT` answer (id 0) that explains why the server closes.
async fn answer_and_close(tx: &mpsc::Sender<Vec<u8>>, msg: String) {
    let r = protocol::status_response(0, pb::Status::InvalidArgument, msg);
    let _ = tx.send(frame::encode(&r)).await;
}

/// The default socket path when none is configured: $RUNTIME_DIRECTORY (systemd) or /run.
pub fn default_path() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("/run/classifyd").to_path_buf())
        .join("classifyd.sock")
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
}
