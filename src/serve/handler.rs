//! What both listeners serve: a [`Handler`] answers one request frame with one response frame.
//! The Unix listener ([`crate::serve::unix`]) and the QUIC one ([`crate::serve::quic`]) take
//! any handler, so each is tested on its own with a stand-in, and the daemon hands both its
//! [`Service`].

use std::future::Future;

use bytes::Bytes;

use crate::service::metrics::{OpenConnection, Transport};
use crate::service::tokenize_pool::TokenizePool;
use crate::service::Service;
use crate::wire::frame::Framed;
use crate::wire::protocol::{self, pb};

/// Answers requests. Never fails: errors are answered as responses.
pub trait Handler: Send + Sync + 'static {
    /// Answers `payload`, one encoded request message without its length prefix, with one
    /// response frame.
    fn handle(&self, payload: Bytes) -> impl Future<Output = Framed> + Send;

    /// Whether `payload` is small enough to be answered on its connection's own task: no hop
    /// to a task of its own on the way in, and the engine's reply wakes the task that writes
    /// it. A larger one runs on a task of its own, so that its decoding cannot hold up the
    /// answers of the requests pipelined behind it.
    fn inline(&self, payload: &[u8]) -> bool {
        let _ = payload;
        true
    }

    /// Called once per established connection; the guard, if any, is held until it closes.
    fn connection_opened(&self, transport: Transport) -> Option<OpenConnection> {
        let _ = transport;
        None
    }

    /// The answer to a request refused unread because the listener's receive budget is spent.
    fn refused_busy(&self, message: String) -> Framed {
        Framed::message(&protocol::status(0, pb::Status::Overloaded, message))
    }
}

/// Frames up to this long are answered inline (see [`Handler::inline`]): room for the text a
/// request is tokenized inline with ([`TokenizePool::INLINE_BYTES`]) and the fields around it.
/// Decoding one costs about what tokenizing its text does, microseconds.
pub const INLINE_FRAME_BYTES: usize = 2 * TokenizePool::INLINE_BYTES;

impl Handler for Service {
    async fn handle(&self, payload: Bytes) -> Framed {
        Framed::message(&self.respond(payload).await)
    }

    fn inline(&self, payload: &[u8]) -> bool {
        payload.len() <= INLINE_FRAME_BYTES
    }

    fn connection_opened(&self, transport: Transport) -> Option<OpenConnection> {
        self.metrics().map(|m| m.connection_opened(transport))
    }

    fn refused_busy(&self, message: String) -> Framed {
        let status = pb::Status::Overloaded;
        if let Some(m) = self.metrics() {
            // Refused before it was read: counted against the default model.
            m.record(&self.model().identity.name, status, None);
        }
        Framed::message(&protocol::status(0, status, message))
    }
}
