//! The Unix-domain-socket listener: many connections, many pipelined requests per connection,
//! answers in completion order. Peers may be restricted by uid/gid (SO_PEERCRED).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ConnectionLimits;
use crate::frame::{self, FrameError};
use crate::protocol::{self, pb};
use crate::service::Service;

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

/// Resolves a group name (or a number) to a gid through /etc/group.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
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

/// Reads frames and answers each on its own task, so a slow request never holds up the next.
/// The connection's write side is owned by one writer task fed through a channel.
async fn handle_connection(
    stream: UnixStream,
    service: Arc<Service>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(read, frame::codec(limits.max_frame_bytes));
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(limits.max_in_flight.max(1));
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if write.write_all(&bytes).await.is_err() {
                return false;
            }
        }
        let _ = write.shutdown().await;
        true
    });
    let max_in_flight = limits.max_in_flight.max(1);
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut requests = JoinSet::new();
    let mut peer_gone = false;
    loop {
        // Backpressure: at the in-flight limit, stop reading until an answer goes out.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let idle = tokio::time::sleep(limits.idle_timeout);
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            // Idle only when the permit just taken is the only one out.
            _ = idle, if in_flight.available_permits() + 1 == max_in_flight => {
                debug!("closing idle unix connection");
                break;
            }
            n = frames.next() => n,
        };
        match next {
            Some(Ok(payload)) => {
                let service = service.clone();
                let tx = tx.clone();
                requests.spawn(async move {
                    let response = service.handle(Bytes::from(payload)).await;
                    let _ = tx.send(frame::encode(&response)).await;
                    drop(permit);
                });
            }
            Some(Err(e)) => {
                match frame::classify_io_error(e, limits.max_frame_bytes, None) {
                    FrameError::TooLong { max, .. } => {
                        // The stream cannot be resynchronised; say why, then close.
                        let msg = format!("frame exceeds the limit of {max} bytes; closing");
                        info!("unix connection: {msg}");
                        let r = protocol::status_response(0, pb::Status::InvalidArgument, msg);
                        let _ = tx.send(frame::encode(&r)).await;
                    }
                    FrameError::Truncated => {
                        info!("unix connection closed in the middle of a frame");
                        peer_gone = true;
                    }
                    FrameError::Io(e) => {
                        info!("unix connection read error: {e}");
                        peer_gone = true;
                    }
                }
                break;
            }
            // The peer closed: requests it has not been answered are cancelled (docs/PROTOCOL.md).
            None => {
                peer_gone = true;
                break;
            }
        }
        while requests.try_join_next().is_some() {}
    }
    if peer_gone {
        // Dropping the tasks drops their queue receivers, which the worker then skips.
        requests.abort_all();
    }
    while requests.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
}

/// The default socket path when none is configured: $RUNTIME_DIRECTORY (systemd) or /run.
pub fn default_path() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("/run/classifyd").to_path_buf())
        .join("classifyd.sock")
}
