//! A byte stream from a peer through the frame codec, in arbitrary read sizes, as
//! `FramedRead` feeds it on a Unix socket; every frame it yields goes through request
//! decoding and validation. Input: 2 bytes of frame limit, 1 byte of read size, the stream.
#![no_main]

use bytes::BytesMut;
use classifyd::wire::frame::{self, FrameError};
use classifyd::wire::protocol::{pb, RequestLimits};
use classifyd_fuzz::check_request;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let [a, b, c, stream @ ..] = data else {
        return;
    };
    let max = u16::from_be_bytes([*a, *b]) as usize;
    let read_size = *c as usize % 97 + 1;
    let limits = RequestLimits {
        max_inputs: 4,
        max_text_bytes: 64,
    };
    let mut codec = frame::codec(max);
    let mut buf = BytesMut::new();
    let on_frame = |payload: &[u8]| {
        assert!(
            payload.len() <= max,
            "frame of {} over {max}",
            payload.len()
        );
        check_request(payload, &limits);
        // What a client does with a server's frame.
        let _ = pb::Response::decode(payload);
    };
    for piece in stream.chunks(read_size) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(payload)) => on_frame(&payload),
                Ok(None) => break,
                Err(e) => {
                    // Mid-stream, the codec's only error is an oversized prefix: the server
                    // answers it and closes.
                    let e = frame::classify_io_error(e, max, None);
                    assert!(matches!(e, FrameError::TooLong { .. }), "{e}");
                    return;
                }
            }
        }
    }
    // The peer closes: what is left must be a typed truncation, never a frame or a panic.
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(payload)) => on_frame(&payload),
            Ok(None) => break,
            Err(e) => {
                let e = frame::classify_io_error(e, max, None);
                assert!(
                    matches!(e, FrameError::Truncated | FrameError::TooLong { .. }),
                    "{e}"
                );
                break;
            }
        }
    }
});
