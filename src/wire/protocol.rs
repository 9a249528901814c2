//! The wire messages (generated from proto/classifyd.proto), the request header every answer
//! is addressed by, and the limits a request is held to. What the messages mean to the engine
//! is the service's business ([`crate::service::convert`]): a client needs none of it.

use prost::Message;

/// Generated from proto/classifyd.proto.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/classifyd.v1.rs"));
}

/// The protocol version this build speaks.
pub const VERSION: u32 = pb::ProtocolVersion::ProtocolVersion1 as u32;

/// The first two fields of every request. Decoded on its own first so that even a request whose
/// body is malformed (e.g. invalid UTF-8 in a text) is answered under its own id.
#[derive(Clone, PartialEq, Message)]
struct Header {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    id: u64,
}

/// Why a request was refused before any work was done on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub id: u64,
    pub status: pb::Status,
    pub message: String,
}

impl Refusal {
    pub fn invalid(id: u64, message: impl Into<String>) -> Self {
        Self {
            id,
            status: pb::Status::InvalidArgument,
            message: message.into(),
        }
    }
}

/// Decodes a request and checks its version; the error carries the id to answer under.
pub fn decode_request(payload: &[u8]) -> Result<pb::Request, Refusal> {
    let header = Header::decode(payload)
        .map_err(|e| Refusal::invalid(0, format!("malformed request: {e}")))?;
    let request = pb::Request::decode(payload)
        .map_err(|e| Refusal::invalid(header.id, format!("malformed request: {e}")))?;
    match request.version {
        VERSION => Ok(request),
        0 => Err(Refusal::invalid(
            request.id,
            format!("request has no version; this server speaks version {VERSION}"),
        )),
        v => Err(Refusal::invalid(
            request.id,
            format!("unsupported protocol version {v}; this server speaks version {VERSION}"),
        )),
    }
}

/// Limits on what one classify request may carry. Its `Default` (the `serve` defaults) is
/// in `serve::config`, where the settings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_inputs: usize,
    /// Bytes of text per input (both texts of a pair together), or ids per pre-tokenized input.
    pub max_text_bytes: usize,
}

/// A response carrying only a status.
pub fn status(id: u64, status: pb::Status, message: impl Into<String>) -> pb::Response {
    pb::Response {
        version: VERSION,
        id,
        status: status as i32,
        message: message.into(),
        body: None,
    }
}

/// [`status`], encoded.
pub fn status_response(id: u64, status: pb::Status, message: impl Into<String>) -> Vec<u8> {
    self::status(id, status, message).encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(inputs: Vec<pb::Input>) -> Vec<u8> {
        pb::Request {
            version: VERSION,
            id: 7,
            body: Some(pb::request::Body::Classify(pb::ClassifyRequest {
                inputs,
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn invalid_utf8_is_refused_under_the_request_id() {
        let mut bytes = classify(vec![pb::Input {
            kind: Some(pb::input::Kind::Text("abc".into())),
        }]);
        let at = bytes.windows(3).position(|w| w == b"abc").unwrap();
        bytes[at] = 0xff;
        let r = decode_request(&bytes).unwrap_err();
        assert_eq!((r.id, r.status), (7, pb::Status::InvalidArgument));
        assert!(r.message.contains("malformed"), "{}", r.message);
    }

    #[test]
    fn versions_are_checked() {
        let mut req = pb::Request {
            version: 9,
            id: 3,
            body: None,
        };
        let r = decode_request(&req.encode_to_vec()).unwrap_err();
        assert!(r.message.contains("unsupported protocol version 9"));
        req.version = 0;
        assert!(decode_request(&req.encode_to_vec())
            .unwrap_err()
            .message
            .contains("no version"));
    }
}
