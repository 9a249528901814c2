//! What both ends of a connection share: the length prefix, the protobuf messages, TLS and the
//! development PKI. Nothing here knows the engine.

pub mod cert;
pub mod frame;
pub mod protocol;
pub mod quic;
pub mod tls;
