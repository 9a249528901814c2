//! What each listener allows a connection.

use std::time::Duration;

use crate::settings::Settings;

/// Limits every listener applies to its connections.
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
    /// A frame must arrive whole within this long of its first byte, and a response must be
    /// taken by the peer within this long; otherwise the connection (UDS) or the stream (QUIC)
    /// is closed. Receiving bytes does not extend it, so a peer dripping a frame cannot hold a
    /// connection open the way it could hold off the idle timeout.
    pub frame_timeout: Duration,
}

impl ConnectionLimits {
    pub fn of(s: &Settings) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: s.max_connections.max(1),
            max_in_flight: s.max_in_flight.max(1),
            max_frame_bytes: s.max_frame_bytes,
            // At least one frame of the largest size must fit.
            max_receive_bytes: s.max_receive_bytes.max(s.max_frame_bytes),
            idle_timeout: Duration::from_secs(s.idle_timeout_secs.max(1)),
            frame_timeout: Duration::from_secs(s.frame_timeout_secs.max(1)),
        }
    }
}

impl Default for ConnectionLimits {
    /// The limits at the default settings.
    fn default() -> Self {
        ConnectionLimits::of(&Settings::defaults())
    }
}
