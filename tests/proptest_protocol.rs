//! Property tests of everything a peer's bytes go through before a request reaches a queue:
//! the frame codec and request decoding/validation. The fuzz targets (fuzz/) search deeper for
//! hours; these run the same promises in seconds on every `cargo test` (256 cases each, or
//! `PROPTEST_CASES`):
//! - no input panics, and every failure is typed (a `FrameError`, a `Refusal` with a reason);
//! - no frame is ever longer than the limit;
//! - a valid request, framed, comes back out of the decoder unchanged.
//!
//! `cargo test --test proptest_protocol -- --ignored write_fuzz_seeds` rewrites the fuzz seed
//! corpora made of real frames (fuzz/seeds/frame, fuzz/seeds/request).

use bytes::BytesMut;
use classifyd::engine::tokenize::Input;
use classifyd::service::convert;
use classifyd::wire::frame::{self, FrameError, PREFIX_LEN};
use classifyd::wire::protocol::{self, pb, RequestLimits};
use proptest::prelude::*;
use prost::Message;
use tokio_util::codec::Decoder;

/// What a stream of bytes turned into: the frames, then how it ended.
#[derive(Debug)]
enum End {
    /// Every byte was consumed by whole frames.
    Clean,
    /// A typed error: mid-stream (an oversized prefix) or at the end (a partial frame).
    Error(FrameError),
}

/// Feeds `stream` to the codec `read` bytes at a time, as `FramedRead` does from a socket, then
/// closes it. Asserts the codec's promises on the way.
fn run_stream(stream: &[u8], max: usize, read: usize) -> (Vec<Vec<u8>>, End) {
    let mut codec = frame::codec(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(read.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.len() <= max, "frame of {} over {max}", f.len());
                    frames.push(f.to_vec());
                }
                Ok(None) => break,
                Err(e) => {
                    let e = frame::classify_io_error(e, max, None);
                    // An oversized prefix is the only thing that stops a stream mid-way.
                    assert!(matches!(e, FrameError::TooLong { .. }), "{e}");
                    return (frames, End::Error(e));
                }
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(f)) => {
                assert!(f.len() <= max);
                frames.push(f.to_vec());
            }
            Ok(None) => return (frames, End::Clean),
            Err(e) => {
                let e = frame::classify_io_error(e, max, None);
                assert!(
                    matches!(e, FrameError::Truncated | FrameError::TooLong { .. }),
                    "{e}"
                );
                return (frames, End::Error(e));
            }
        }
    }
}

/// `decode_request` and `inputs` on one payload; a refusal must be INVALID_ARGUMENT and say why.
fn validate(payload: &[u8], limits: &RequestLimits) -> Result<pb::Request, protocol::Refusal> {
    let result = protocol::decode_request(payload);
    match &result {
        Err(r) => {
            assert_eq!(r.status, pb::Status::InvalidArgument);
            assert!(!r.message.is_empty());
        }
        Ok(req) => {
            assert_eq!(req.version, protocol::VERSION);
            if let Some(pb::request::Body::Classify(c)) = &req.body {
                if let Ok(inputs) = convert::inputs(c, limits) {
                    assert!(!inputs.is_empty() && inputs.len() <= limits.max_inputs);
                }
            }
        }
    }
    result
}

fn input() -> impl Strategy<Value = pb::Input> {
    let kind = prop_oneof![
        ".{0,40}".prop_map(pb::input::Kind::Text),
        (".{0,20}", ".{0,20}")
            .prop_map(|(text, text_pair)| pb::input::Kind::Pair(pb::TextPair { text, text_pair })),
        prop::collection::vec(any::<u32>(), 0..12)
            .prop_map(|ids| pb::input::Kind::Ids(pb::TokenIds { ids })),
    ];
    prop::option::weighted(0.95, kind).prop_map(|kind| pb::Input { kind })
}

/// Requests as a client may send them: mostly version 1 classify requests, some info probes,
/// some without a body, some with the wrong version.
fn request() -> impl Strategy<Value = pb::Request> {
    let classify = (
        prop::collection::vec(input(), 0..6),
        prop::option::of((
            (any::<u32>(), any::<bool>(), any::<bool>()),
            (-1i32..6, any::<bool>(), any::<f32>(), any::<bool>()),
            prop::collection::hash_map(".{0,6}", any::<f32>(), 0..3),
        )),
        any::<u64>(),
        0i32..3,
    )
        .prop_map(|(inputs, options, deadline_us, priority)| {
            pb::request::Body::Classify(pb::ClassifyRequest {
                inputs,
                options: options.map(
                    |(
                        (top_k, return_logits, no_truncate),
                        (aggregation, redact, min_score, return_tokens),
                        min_scores,
                    )| pb::Options {
                        top_k,
                        return_logits,
                        no_truncate,
                        aggregation,
                        redact,
                        min_score,
                        min_scores,
                        return_tokens,
                    },
                ),
                deadline_us,
                priority,
                model: String::new(),
            })
        });
    let body = prop_oneof![
        8 => classify.prop_map(Some),
        1 => Just(Some(pb::request::Body::Info(pb::InfoRequest {}))),
        1 => Just(None),
    ];
    let version = prop_oneof![9 => Just(protocol::VERSION), 1 => any::<u32>()];
    (version, any::<u64>(), body).prop_map(|(version, id, body)| pb::Request { version, id, body })
}

fn limits() -> impl Strategy<Value = RequestLimits> {
    (1usize..8, 0usize..64).prop_map(|(max_inputs, max_text_bytes)| RequestLimits {
        max_inputs,
        max_text_bytes,
    })
}

/// How the limits judge one wire input: its size as `inputs` counts it.
fn size(input: &pb::Input) -> Option<usize> {
    match input.kind.as_ref()? {
        pb::input::Kind::Text(t) => Some(t.len()),
        pb::input::Kind::Pair(p) => Some(p.text.len() + p.text_pair.len()),
        pb::input::Kind::Ids(ids) => Some(ids.ids.len()),
    }
}

proptest! {
    #[test]
    fn arbitrary_streams_yield_bounded_frames_or_typed_errors(
        stream in prop::collection::vec(any::<u8>(), 0..512),
        max in 0usize..300,
        read in 1usize..64,
        limits in limits(),
    ) {
        let (frames, _) = run_stream(&stream, max, read);
        for f in &frames {
            let _ = validate(f, &limits);
        }
    }

    #[test]
    fn arbitrary_payloads_are_refused_with_a_reason_or_accepted(
        payload in prop::collection::vec(any::<u8>(), 0..256),
        limits in limits(),
    ) {
        let _ = validate(&payload, &limits);
    }

    #[test]
    fn declared_lengths_are_honoured(
        declared in prop_oneof![0u32..200, any::<u32>()],
        body in prop::collection::vec(any::<u8>(), 0..256),
        max in 0usize..256,
        read in 1usize..32,
    ) {
        let mut stream = declared.to_be_bytes().to_vec();
        stream.extend_from_slice(&body);
        let (frames, end) = run_stream(&stream, max, read);
        let declared = declared as usize;
        if declared > max {
            prop_assert!(frames.is_empty());
            let too_long = matches!(end, End::Error(FrameError::TooLong { .. }));
            prop_assert!(too_long, "{end:?}");
        } else if body.len() < declared {
            prop_assert!(frames.is_empty());
            // tokio-util's `decode_eof` only sees the bytes still buffered: a stream cut right
            // after a whole length prefix (already consumed) looks like a clean close. A reader
            // that must tell the two apart cannot rely on `decode_eof` alone.
            if body.is_empty() {
                prop_assert!(matches!(end, End::Clean), "{end:?}");
            } else {
                prop_assert!(matches!(end, End::Error(FrameError::Truncated)), "{end:?}");
            }
        } else {
            prop_assert_eq!(&frames[0][..], &body[..declared]);
        }
    }

    #[test]
    fn valid_requests_round_trip_through_frames(
        requests in prop::collection::vec(request(), 1..5),
        read in 1usize..64,
        limits in limits(),
    ) {
        let stream: Vec<u8> = requests
            .iter()
            .flat_map(|r| frame::encode(&r.encode_to_vec()))
            .collect();
        let (frames, end) = run_stream(&stream, 1 << 20, read);
        prop_assert!(matches!(end, End::Clean), "{end:?}");
        prop_assert_eq!(frames.len(), requests.len());
        for (sent, payload) in requests.iter().zip(&frames) {
            match validate(payload, &limits) {
                Ok(got) => prop_assert_eq!(&got, sent),
                // Refused only for its version, and under its own id.
                Err(r) => {
                    prop_assert_ne!(sent.version, protocol::VERSION);
                    prop_assert_eq!(r.id, sent.id);
                }
            }
            let Some(pb::request::Body::Classify(c)) = &sent.body else { continue };
            let sizes: Vec<Option<usize>> = c.inputs.iter().map(size).collect();
            let acceptable = !sizes.is_empty()
                && sizes.len() <= limits.max_inputs
                && sizes.iter().all(|s| s.is_some_and(|s| s <= limits.max_text_bytes));
            match convert::inputs(c, &limits) {
                Ok(inputs) => {
                    prop_assert!(acceptable);
                    for (wire, input) in c.inputs.iter().zip(&inputs) {
                        let same = match (wire.kind.as_ref(), input) {
                            (Some(pb::input::Kind::Text(a)), Input::Text(b)) => a == b,
                            (Some(pb::input::Kind::Pair(p)), Input::Pair(a, b)) => {
                                &p.text == a && &p.text_pair == b
                            }
                            (Some(pb::input::Kind::Ids(a)), Input::Ids(b)) => &a.ids == b,
                            _ => false,
                        };
                        prop_assert!(same, "{wire:?} became {input:?}");
                    }
                }
                Err(message) => {
                    prop_assert!(!acceptable);
                    prop_assert!(!message.is_empty());
                }
            }
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        request in request(),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        read in 1usize..64,
        limits in limits(),
    ) {
        let mut stream = frame::encode(&request.encode_to_vec());
        for (at, byte, op) in mutations {
            if stream.is_empty() {
                stream.push(byte);
                continue;
            }
            let i = at.index(stream.len());
            match op {
                0 => stream[i] = byte,
                1 => stream[i] ^= 1 << (byte % 8),
                2 => stream.insert(i, byte),
                _ => stream.truncate(i),
            }
        }
        let (frames, _) = run_stream(&stream, 4096, read);
        for f in &frames {
            let _ = validate(f, &limits);
        }
        // The payload alone, as QUIC hands it over after its own length check.
        if stream.len() >= PREFIX_LEN {
            let _ = validate(&stream[PREFIX_LEN..], &limits);
        }
    }
}

/// A request that is all valid, for the seeds.
fn classify(id: u64, inputs: Vec<pb::input::Kind>, options: Option<pb::Options>) -> pb::Request {
    pb::Request {
        version: protocol::VERSION,
        id,
        body: Some(pb::request::Body::Classify(pb::ClassifyRequest {
            inputs: inputs
                .into_iter()
                .map(|kind| pb::Input { kind: Some(kind) })
                .collect(),
            options,
            deadline_us: 0,
            priority: 0,
            model: String::new(),
        })),
    }
}

/// Writes the seed corpora of the `frame` and `request` fuzz targets from real requests.
#[test]
#[ignore = "writes fuzz/seeds; run by hand when the protocol changes"]
fn write_fuzz_seeds() {
    let text = |t: &str| pb::input::Kind::Text(t.into());
    let requests = [
        classify(1, vec![text("what a wonderful film")], None),
        classify(
            2,
            vec![text("great"), text("awful"), text("")],
            Some(pb::Options {
                top_k: 2,
                return_logits: true,
                no_truncate: true,
                ..Default::default()
            }),
        ),
        classify(
            3,
            vec![pb::input::Kind::Pair(pb::TextPair {
                text: "A man is eating.".into(),
                text_pair: "Someone eats.".into(),
            })],
            None,
        ),
        classify(
            4,
            vec![pb::input::Kind::Ids(pb::TokenIds {
                ids: vec![101, 2054, 1037, 6919, 2143, 102],
            })],
            None,
        ),
        pb::Request {
            version: protocol::VERSION,
            id: 5,
            body: Some(pb::request::Body::Info(pb::InfoRequest {})),
        },
        pb::Request {
            version: protocol::VERSION,
            id: u64::MAX,
            body: Some(pb::request::Body::Classify(pb::ClassifyRequest {
                inputs: vec![pb::Input {
                    kind: Some(text("urgent")),
                }],
                options: None,
                deadline_us: 50_000,
                priority: pb::Priority::High as i32,
                model: "ner".into(),
            })),
        },
        pb::Request {
            version: 2,
            id: 6,
            body: None,
        },
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let (frames_dir, requests_dir) = (root.join("frame"), root.join("request"));
    std::fs::create_dir_all(&frames_dir).unwrap();
    std::fs::create_dir_all(&requests_dir).unwrap();
    // The frame target reads 2 bytes of frame limit and 1 of read size before the stream.
    let header = |max: u16, read: u8| {
        let mut h = max.to_be_bytes().to_vec();
        h.push(read);
        h
    };
    let mut pipelined = header(u16::MAX, 7);
    for (i, r) in requests.iter().enumerate() {
        let payload = r.encode_to_vec();
        std::fs::write(requests_dir.join(format!("request-{i}.bin")), &payload).unwrap();
        let mut one = header(4096, 64);
        one.extend_from_slice(&frame::encode(&payload));
        std::fs::write(frames_dir.join(format!("frame-{i}.bin")), &one).unwrap();
        pipelined.extend_from_slice(&frame::encode(&payload));
    }
    std::fs::write(frames_dir.join("pipelined.bin"), &pipelined).unwrap();
    // An oversized prefix, and a frame cut short.
    let mut oversized = header(16, 4);
    oversized.extend_from_slice(&1000u32.to_be_bytes());
    std::fs::write(frames_dir.join("oversized.bin"), &oversized).unwrap();
    let mut cut = header(4096, 3);
    cut.extend_from_slice(&frame::encode(&requests[0].encode_to_vec())[..10]);
    std::fs::write(frames_dir.join("truncated.bin"), &cut).unwrap();
}
