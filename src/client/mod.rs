//! The client side of the protocol, for both transports. Used by `classifyd classify --uds/--quic`
//! and by `classifyd bench`; also the reference for writing clients in other languages.

pub mod quic;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;

use crate::wire::frame;
use crate::wire::protocol::{pb, VERSION};

/// Largest response a client accepts.
const MAX_RESPONSE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("quic: {0}")]
    Quic(String),
    #[error("no answer from {target} within {} s", after.as_secs_f64())]
    Timeout { target: String, after: Duration },
    #[error("no daemon answered within {} s (--wait)", waited.as_secs_f64())]
    GaveUp {
        waited: Duration,
        #[source]
        source: Box<ClientError>,
    },
}

impl ClientError {
    /// Whether the daemon may yet answer: nothing listens at the path (not started, or
    /// restarting: its socket is gone or left behind), or a QUIC attempt got no answer.
    /// A refusal, a TLS failure or a broken answer is not worth another try.
    fn may_come_up(&self) -> bool {
        match self {
            ClientError::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            ClientError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// How a first connection waits for the daemon (`--wait`, `--connect-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// Keep trying this long while nothing answers; `None` tries once.
    pub wait: Option<Duration>,
    /// How long one QUIC attempt may go unanswered.
    pub attempt: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            wait: None,
            attempt: Duration::from_secs(5),
        }
    }
}

/// Runs `attempt` (given the time one attempt may take) until it succeeds, fails in a way
/// another try cannot mend, or `patience.wait` has passed (the last try at the deadline);
/// between tries it backs off from 50 ms to 500 ms, so a daemon that comes up is found within
/// half a second.
pub async fn patiently<T, F, Fut>(patience: Patience, mut attempt: F) -> Result<T, ClientError>
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        let err = match attempt(patience.attempt).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(waited) = patience.wait else {
            return Err(err);
        };
        let deadline = started + waited;
        if !err.may_come_up() {
            return Err(err);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(ClientError::GaveUp {
                waited,
                source: Box::new(err),
            });
        }
        // The last try falls at the deadline, not a back-off short of it.
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<pb::Response>>>>;

/// A pipelining Unix-socket client: many requests in flight on one connection, matched to
/// their answers by id. Cheap to share behind an `Arc`.
pub struct UnixClient {
    write: tokio::sync::Mutex<OwnedWriteHalf>,
    waiters: Waiters,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl UnixClient {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                target: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let waiters: Waiters = Arc::default();
        let w = waiters.clone();
        let reader = tokio::spawn(async move {
            let mut frames = FramedRead::new(read, frame::codec(MAX_RESPONSE));
            while let Some(Ok(bytes)) = frames.next().await {
                let Ok(resp) = pb::Response::decode(bytes.freeze()) else {
                    break;
                };
                let waiter = w.lock().ok().and_then(|mut m| m.remove(&resp.id));
                if let Some(tx) = waiter {
                    let _ = tx.send(resp);
                }
            }
            // Connection gone: dropping the senders wakes every waiter with an error.
            if let Ok(mut m) = w.lock() {
                m.clear();
            }
        });
        Ok(Self {
            write: tokio::sync::Mutex::new(write),
            waiters,
            next_id: AtomicU64::new(1),
            reader,
        })
    }

    /// Sends `request` under a fresh id and waits for its answer.
    pub async fn call(&self, mut request: pb::Request) -> Result<pb::Response, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id;
        request.version = VERSION;
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .map_err(|_| ClientError::Lost("client state poisoned".into()))?
            .insert(id, tx);
        let bytes = frame::encode(&request.encode_to_vec());
        let written = self.write.lock().await.write_all(&bytes).await;
        if let Err(e) = written {
            if let Ok(mut m) = self.waiters.lock() {
                m.remove(&id);
            }
            return Err(ClientError::Lost(e.to_string()));
        }
        rx.await
            .map_err(|_| ClientError::Lost("connection closed before the answer".into()))
    }
}

impl Drop for UnixClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Either transport behind one interface.
pub enum Client {
    Unix(UnixClient),
    Quic(quic::QuicClient),
}

impl Client {
    pub async fn call(&self, request: pb::Request) -> Result<pb::Response, ClientError> {
        match self {
            Client::Unix(c) => c.call(request).await,
            Client::Quic(c) => {
                let mut request = request;
                request.version = VERSION;
                let bytes = c
                    .call(&request.encode_to_vec())
                    .await
                    .map_err(|e| ClientError::Quic(e.to_string()))?;
                pb::Response::decode(bytes).map_err(|e| ClientError::Malformed(e.to_string()))
            }
        }
    }

    /// One classify request. The response's own status covers the request; each of its
    /// results carries its input's status too (see [`per_input`]): one refused input among
    /// others does not fail the request.
    pub async fn classify(
        &self,
        inputs: Vec<pb::Input>,
        options: pb::Options,
    ) -> Result<pb::Response, ClientError> {
        self.call(classify_request(inputs, options)).await
    }

    /// One classify request to the model the daemon serves as `model` (`""`: its default).
    pub async fn classify_model(
        &self,
        model: &str,
        inputs: Vec<pb::Input>,
        options: pb::Options,
    ) -> Result<pb::Response, ClientError> {
        self.call(for_model(classify_request(inputs, options), model))
            .await
    }

    pub async fn info(&self) -> Result<pb::Response, ClientError> {
        self.call(pb::Request {
            version: VERSION,
            id: 0,
            body: Some(pb::request::Body::Info(pb::InfoRequest {})),
        })
        .await
    }
}

/// A classify response's results, one per input in input order: the result, or the reason the
/// server gave for refusing that input (`input N: …`). `Err` when the request as a whole was not
/// answered OK (its status name and message) or the answer is not a classify response.
pub fn per_input(
    response: pb::Response,
) -> Result<Vec<Result<pb::Result, String>>, (pb::Status, String)> {
    let status = pb::Status::try_from(response.status).unwrap_or(pb::Status::Internal);
    match response.body {
        Some(pb::response::Body::Classify(c)) if status == pb::Status::Ok => Ok(c
            .results
            .into_iter()
            .map(|r| {
                if r.status == pb::Status::Ok as i32 {
                    Ok(r)
                } else {
                    Err(r.message)
                }
            })
            .collect()),
        _ if status == pb::Status::Ok => {
            Err((pb::Status::Internal, "not a classify response".into()))
        }
        _ => Err((status, response.message)),
    }
}

/// Options for a token-classification model: `aggregation` as transformers' pipeline names it,
/// and whether to return each text redacted (which refuses, rather than truncates, an
/// over-long text).
pub fn token_options(aggregation: pb::Aggregation, redact: bool) -> pb::Options {
    pb::Options {
        aggregation: aggregation as i32,
        redact,
        ..Default::default()
    }
}

/// A classify request for `inputs` with `options` and no deadline, to the default model.
pub fn classify_request(inputs: Vec<pb::Input>, options: pb::Options) -> pb::Request {
    pb::Request {
        version: VERSION,
        id: 0,
        body: Some(pb::request::Body::Classify(pb::ClassifyRequest {
            inputs,
            options: Some(options),
            deadline_us: 0,
            priority: pb::Priority::Normal as i32,
            model: String::new(),
        })),
    }
}

/// `request` addressed to the model the daemon serves as `model` (`""`: its default); an
/// info request is left as it is.
pub fn for_model(mut request: pb::Request, model: &str) -> pb::Request {
    if let Some(pb::request::Body::Classify(c)) = &mut request.body {
        c.model = model.to_string();
    }
    request
}

pub fn text(t: impl Into<String>) -> pb::Input {
    pb::Input {
        kind: Some(pb::input::Kind::Text(t.into())),
    }
}

pub fn pair(a: impl Into<String>, b: impl Into<String>) -> pb::Input {
    pb::Input {
        kind: Some(pb::input::Kind::Pair(pb::TextPair {
            text: a.into(),
            text_pair: b.into(),
        })),
    }
}
