//! What each listener allows a connection.

use std::time::Duration;

/// Limits every listener applies to its connections; filled from the settings, and defaulted
/// to what `serve` runs with, in [`crate::serve::config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Requests read but not yet answered, per connection; past it the connection is not read.
    pub max_in_flight: usize,
    pub max_frame_bytes: usize,
    /// Request bytes being received at once over all of a QUIC listener's streams, from a
    /// frame's length prefix until it is decoded. A stream whose frame would go over is
    /// answered OVERLOADED without being read. It bounds what many connections together can
    /// make the server hold (each alone is bounded by `max_in_flight` × `max_frame_bytes`).
    /// A Unix listener needs none: it reads one frame at a time per connection.
    pub max_receive_bytes: usize,
    /// A connection with nothing in flight and nothing received for this long is closed.
    pub idle_timeout: Duration,
    /// QUIC only: a handshake must complete within this long of its (address-validated)
    /// Initial, or it is dropped. Until then it holds a place among the pending handshakes,
    /// not a connection slot.
    pub handshake_timeout: Duration,
    /// A frame must arrive whole within this long of its first byte, and a response must be
    /// taken by the peer within this long; otherwise the connection (UDS) or the stream (QUIC)
    /// is closed. Receiving bytes does not extend it, so a peer dripping a frame cannot hold a
    /// connection open the way it could hold off the idle timeout.
    pub frame_timeout: Duration,
}
