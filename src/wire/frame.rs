//! Framing: every protobuf message on a stream is preceded by its length as a 4-byte big-endian
//! unsigned integer. A length above the configured limit means the peer is broken or hostile;
//! the stream cannot be resynchronised, so the connection is closed after one error response.

use tokio_util::codec::LengthDelimitedCodec;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// The codec for one direction of a stream, refusing frames longer than `max_frame` bytes.
pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(PREFIX_LEN)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Prefixes one encoded message with its length.
pub fn encode(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + message.len());
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// One message with its length prefix, in one buffer: encoded in place behind room left for the
/// prefix, so that an answer is written to its stream as it was encoded, never copied to be
/// framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed(Vec<u8>);

impl Framed {
    /// Encodes `message` behind its prefix.
    pub fn message(message: &impl prost::Message) -> Self {
        let len = message.encoded_len();
        let mut out = Vec::with_capacity(PREFIX_LEN + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        // Cannot fail: the buffer grows as needed.
        let _ = message.encode(&mut out);
        Framed(out)
    }

    /// Frames bytes already encoded (a copy; for peers that are not protobuf, as in tests).
    pub fn raw(message: &[u8]) -> Self {
        Framed(encode(message))
    }

    /// Bytes written as they are, with no prefix: for a peer that does not speak the protocol
    /// at all (an HTTP client on the socket), told so once before the connection closes.
    pub fn unframed(bytes: &[u8]) -> Self {
        Framed(bytes.to_vec())
    }

    /// The frame as it goes on the wire, prefix first.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The message without its prefix.
    pub fn payload(&self) -> &[u8] {
        &self.0[PREFIX_LEN..]
    }
}

/// Why a stream stopped yielding frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether the first bytes of a stream are an HTTP/1 request line or HTTP/2's preface rather
/// than a length prefix: read as a length, each would be a frame of over a gigabyte.
pub fn looks_like_http(start: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"PRI * HTTP/2",
    ];
    // Four bytes are a whole length prefix; each method is longer, so its first four decide.
    start.len() >= 4
        && METHODS.iter().any(|m| {
            let n = m.len().min(start.len());
            start[..n] == m[..n]
        })
}

/// What an HTTP client on the socket is told, as an HTTP answer so that curl shows it.
pub const HTTP_REFUSAL: &str = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
    Connection: close\r\n\r\nclassifyd: this socket speaks the length-prefixed protobuf protocol \
    (docs/PROTOCOL.md), not HTTP; /metrics, /healthz and /readyz are served over HTTP on \
    --metrics-addr\n";

/// Classifies an error from [`codec`] so callers can answer before closing.
pub fn classify_io_error(e: std::io::Error, max: usize, declared: Option<usize>) -> FrameError {
    // LengthDelimitedCodec reports an oversized frame as InvalidData and a mid-frame EOF as
    // "bytes remaining on stream" (also an io::Error of kind Other).
    match e.kind() {
        std::io::ErrorKind::InvalidData => FrameError::TooLong {
            len: declared.unwrap_or(max + 1),
            max,
        },
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ if e.to_string().contains("bytes remaining") => FrameError::Truncated,
        _ => FrameError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    #[test]
    fn round_trip_and_partial_frames() {
        let mut c = codec(16);
        let framed = encode(b"hello");
        let mut buf = BytesMut::from(&framed[..3]);
        assert!(
            c.decode(&mut buf).unwrap().is_none(),
            "incomplete prefix is not an error"
        );
        buf.extend_from_slice(&framed[3..]);
        assert_eq!(&c.decode(&mut buf).unwrap().unwrap()[..], b"hello");
        assert!(buf.is_empty());
    }

    #[test]
    fn a_message_is_framed_in_place_as_encode_frames_it() {
        let msg = crate::wire::protocol::status(3, crate::wire::protocol::pb::Status::Ok, "hi");
        let framed = Framed::message(&msg);
        assert_eq!(
            framed.as_bytes(),
            &encode(&prost::Message::encode_to_vec(&msg))[..]
        );
        assert_eq!(framed, Framed::raw(framed.payload()));
    }

    #[test]
    fn http_request_lines_are_told_apart_from_length_prefixes() {
        assert!(looks_like_http(b"GET /metrics HTTP/1.1\r\n"));
        assert!(looks_like_http(b"POST"));
        assert!(looks_like_http(b"PRI * HTTP/2.0\r\n"));
        // Too little to tell yet, and frames of any length a client would send.
        assert!(!looks_like_http(b"GE"));
        assert!(!looks_like_http(&encode(b"x")));
        assert!(!looks_like_http(&1_000_000u32.to_be_bytes()));
    }

    #[test]
    fn oversized_prefix_is_refused_before_reading_the_body() {
        let mut c = codec(16);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(matches!(
            classify_io_error(err, 16, None),
            FrameError::TooLong { .. }
        ));
    }
}
