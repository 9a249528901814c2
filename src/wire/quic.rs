//! QUIC as both ends speak it: one bidirectional stream per request, the application's stream
//! and close codes, and reading one length-prefixed frame from a stream.

use std::time::Duration;

use bytes::Bytes;
use quinn::{RecvStream, VarInt};

use crate::wire::frame::PREFIX_LEN;

/// Application close code: the client is done with the connection.
pub const CLOSE_DONE: VarInt = VarInt::from_u32(0);
/// Application close code: the server is shutting down.
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(1);
/// Application close code: no request for the idle timeout.
pub const CLOSE_IDLE: VarInt = VarInt::from_u32(2);
/// Application close code: the connection completed its handshake while the server already had
/// `max_connections` open (more handshakes were under way than free slots).
pub const CLOSE_BUSY: VarInt = VarInt::from_u32(3);
/// Stream error code: the request frame is longer than the server's `max_frame_bytes`, or the
/// response longer than the client's limit.
pub const STREAM_FRAME_TOO_LARGE: VarInt = VarInt::from_u32(1);
/// Stream error code: the peer finished the stream in the middle of a frame.
pub const STREAM_TRUNCATED: VarInt = VarInt::from_u32(2);
/// Stream error code: the request frame did not arrive whole within the frame timeout, or the
/// peer did not take the response within it.
pub const STREAM_FRAME_TIMEOUT: VarInt = VarInt::from_u32(3);
/// Stream error code (on the request side only): the listener is receiving its budget of
/// request bytes; the stream carries an OVERLOADED response instead of reading the request.
pub const STREAM_OVERLOADED: VarInt = VarInt::from_u32(4);

/// Limits of the QUIC listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicLimits {
    /// Established connections. While all are taken, new ones are refused before the
    /// handshake; a handshake takes a slot only once it completes.
    pub max_connections: usize,
    /// Handshakes under way at once (from address-validated clients); past it new ones are
    /// refused before any crypto work.
    pub max_handshakes: usize,
    /// A handshake must complete within this long, or it is dropped.
    pub handshake_timeout: Duration,
    /// Concurrent bidirectional streams, i.e. requests in flight, per connection. A client
    /// opening more waits for a slot (QUIC flow control), it is not refused.
    pub max_streams_per_connection: u32,
    /// Largest request message accepted, prefix excluded; a longer one resets its stream.
    pub max_frame_bytes: usize,
    /// Request bytes received at once over the whole listener (see
    /// `--max-receive-bytes`).
    pub max_receive_bytes: usize,
    /// A connection that receives nothing for this long is closed (QUIC idle timeout), and so
    /// is one with no request open for this long, even if the peer keeps it alive with pings.
    pub idle_timeout: Duration,
    /// A request frame must arrive whole within this long of its stream opening, and the
    /// response must be taken within this long; else the stream is reset.
    pub frame_timeout: Duration,
}

/// Why one frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameReadError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("stream finished after {read} bytes, in the middle of a frame")]
    Truncated { read: usize },
    #[error(transparent)]
    Read(#[from] quinn::ReadError),
}

/// Reads one length-prefixed frame, refusing a declared length above `max` before reading it.
pub(crate) async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Bytes, FrameReadError> {
    let len = read_prefix(recv, max).await?;
    let mut body = vec![0u8; len];
    read_exact(recv, &mut body, PREFIX_LEN).await?;
    Ok(Bytes::from(body))
}

/// The declared length of the frame that follows, if it is at most `max`.
pub(crate) async fn read_prefix(
    recv: &mut RecvStream,
    max: usize,
) -> Result<usize, FrameReadError> {
    let mut prefix = [0u8; PREFIX_LEN];
    read_exact(recv, &mut prefix, 0).await?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameReadError::TooLarge { len, max });
    }
    Ok(len)
}

pub(crate) async fn read_exact(
    recv: &mut RecvStream,
    buf: &mut [u8],
    already: usize,
) -> Result<(), FrameReadError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(n) => FrameReadError::Truncated { read: already + n },
        quinn::ReadExactError::ReadError(e) => FrameReadError::Read(e),
    })
}
