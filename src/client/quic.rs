//! The QUIC client: one connection, one bidirectional stream per call.
//!
//! [`QuicClient`] is cheap to clone and every clone shares the connection, so many tasks can
//! call concurrently; the server's stream limit queues calls past it (in `open_bi`) rather than
//! failing them.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;

use crate::wire::frame::encode;
use crate::wire::quic::{
    read_frame, FrameReadError, CLOSE_DONE, STREAM_FRAME_TOO_LARGE, STREAM_OVERLOADED,
    STREAM_TRUNCATED,
};
use crate::wire::tls::{client_config, TlsError};

/// Largest response a client accepts.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicClientConfig {
    pub addr: SocketAddr,
    /// The name the server's certificate must carry (DNS name or IP address).
    pub server_name: String,
    /// PEM bundle of the CA(s) that issued the server's certificate.
    pub ca: PathBuf,
    /// The client's certificate and key for mTLS; both or neither.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum QuicClientError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot open a local UDP socket: {0}")]
    Bind(#[source] std::io::Error),
    #[error("cannot connect to {addr} as {server_name:?}: {source}")]
    Connect {
        addr: SocketAddr,
        server_name: String,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("quic handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("quic connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("sending the request failed: {0}")]
    Write(#[source] quinn::WriteError),
    #[error("reading the response failed: {0}")]
    Read(#[source] quinn::ReadError),
    #[error("the server refused the request: {0}")]
    Refused(&'static str),
    #[error("the server reset the request stream with code {0}")]
    Reset(VarInt),
    #[error("the server finished the stream in the middle of a response ({read} bytes read)")]
    Truncated { read: usize },
    #[error("response of {len} bytes exceeds the client's limit of {max}")]
    ResponseTooLarge { len: usize, max: usize },
    #[error("request of {0} bytes cannot be framed (limit 4 GiB)")]
    RequestTooLarge(usize),
}

/// Maps a stream error code from the server to an error.
fn stream_code(code: VarInt) -> QuicClientError {
    if code == STREAM_FRAME_TOO_LARGE {
        QuicClientError::Refused("request larger than the server's frame limit")
    } else if code == STREAM_TRUNCATED {
        QuicClientError::Refused("request frame truncated")
    } else if code == STREAM_OVERLOADED {
        QuicClientError::Refused("the server is receiving its limit of request bytes; retry later")
    } else {
        QuicClientError::Reset(code)
    }
}

impl From<quinn::WriteError> for QuicClientError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => stream_code(code),
            quinn::WriteError::ConnectionLost(e) => QuicClientError::Connection(e),
            e => QuicClientError::Write(e),
        }
    }
}

impl From<quinn::ReadError> for QuicClientError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => stream_code(code),
            quinn::ReadError::ConnectionLost(e) => QuicClientError::Connection(e),
            e => QuicClientError::Read(e),
        }
    }
}

/// A connection to a classifyd QUIC listener. Clones share the connection.
#[derive(Debug, Clone)]
pub struct QuicClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl QuicClient {
    /// Loads the TLS material, connects and completes the client's side of the handshake.
    ///
    /// With TLS 1.3 the server checks the client's certificate after the client considers the
    /// handshake done, so a refused certificate shows up as an error of the first call.
    pub async fn connect(cfg: &QuicClientConfig) -> Result<QuicClient, QuicClientError> {
        let config = client_config(&cfg.ca, cfg.cert.as_deref(), cfg.key.as_deref())?;
        let local: SocketAddr = if cfg.addr.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(local).map_err(QuicClientError::Bind)?;
        let connecting = endpoint
            .connect_with(config, cfg.addr, &cfg.server_name)
            .map_err(|source| QuicClientError::Connect {
                addr: cfg.addr,
                server_name: cfg.server_name.clone(),
                source,
            })?;
        let conn = match connecting.await {
            Ok(conn) => conn,
            Err(source) => {
                // Give the endpoint a moment to tell the server why (e.g. an unknown server
                // certificate), so that the server's log says so too.
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
                return Err(QuicClientError::Handshake {
                    addr: cfg.addr,
                    source,
                });
            }
        };
        Ok(QuicClient { endpoint, conn })
    }

    /// Sends one encoded request message (without prefix) on a new stream and returns the
    /// encoded response message (without prefix).
    pub async fn call(&self, request: &[u8]) -> Result<Bytes, QuicClientError> {
        if u32::try_from(request.len()).is_err() {
            return Err(QuicClientError::RequestTooLarge(request.len()));
        }
        let (mut send, mut recv) = self.conn.open_bi().await?;
        let wrote = send.write_all(&encode(request)).await;
        // Only fails if the stream is already closed, which the read below reports better.
        let _ = send.finish();
        let read = read_frame(&mut recv, DEFAULT_MAX_RESPONSE_BYTES).await;
        // An answer wins over a failed write: a server with no room to receive a request stops
        // the stream and answers OVERLOADED without reading it.
        if let (Err(e), Err(_)) = (wrote, &read) {
            return Err(e.into());
        }
        match read {
            Ok(response) => Ok(response),
            Err(FrameReadError::TooLarge { len, max }) => {
                let _ = recv.stop(STREAM_FRAME_TOO_LARGE);
                Err(QuicClientError::ResponseTooLarge { len, max })
            }
            Err(FrameReadError::Truncated { read }) => Err(QuicClientError::Truncated { read }),
            Err(FrameReadError::Read(e)) => Err(e.into()),
        }
    }

    /// The server's address as the connection sees it now.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Closes the connection (every clone's) and waits until the close has been sent.
    pub async fn close(&self) {
        self.conn.close(CLOSE_DONE, b"client done");
        self.endpoint.wait_idle().await;
    }
}
