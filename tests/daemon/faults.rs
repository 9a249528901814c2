//! Bad input from the outside: each gets its typed error or a closed connection, and a second,
//! well-behaved client is served throughout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use classifyd::client::text;
use classifyd::protocol::{pb, VERSION};
use prost::Message;

use crate::harness::*;

fn framed(msg: &[u8]) -> Vec<u8> {
    classifyd::frame::encode(msg)
}

/// Sends raw bytes and reads `expect` answers, or fewer if the daemon closes first. Closing our
/// side early would cancel what is still queued, so `half_close` is only for truncated frames.
fn exchange(daemon: &Daemon, bytes: &[u8], expect: usize, half_close: bool) -> Vec<pb::Response> {
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    let mut len = [0u8; 4];
    while out.len() < expect && s.read_exact(&mut len).is_ok() {
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        out.push(pb::Response::decode(&body[..]).unwrap());
    }
    out
}

fn request(id: u64, version: u32, inputs: Vec<pb::Input>) -> Vec<u8> {
    pb::Request {
        version,
        id,
        body: Some(pb::request::Body::Classify(pb::ClassifyRequest {
            inputs,
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

#[test]
fn malformed_input_gets_typed_errors_and_others_are_served() {
    let model = fixture("bert");
    let daemon = Daemon::start(&model, &["--max-frame-bytes", "4096"]);
    let rt = runtime();
    let good = rt.block_on(daemon.client());
    let still_served = || {
        let r = rt
            .block_on(good.classify(vec![text("still here")], logits_opts()))
            .unwrap();
        assert_eq!(status(&r), pb::Status::Ok);
    };

    // Garbage bytes: "GET " read as a length is far past the limit: one error, then closed.
    let r = exchange(&daemon, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 9, false);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].id, status(&r[0])), (0, pb::Status::InvalidArgument));
    assert!(r[0].message.contains("limit of 4096"), "{}", r[0].message);
    still_served();

    // An oversized length prefix, with the pipelined request before it still answered.
    let mut bytes = framed(&request(1, VERSION, vec![text("first")]));
    bytes.extend_from_slice(&(1u32 << 30).to_be_bytes());
    let r = exchange(&daemon, &bytes, 9, false);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().any(|r| r.id == 1 && status(r) == pb::Status::Ok));
    assert!(r
        .iter()
        .any(|r| r.id == 0 && status(r) == pb::Status::InvalidArgument));
    still_served();

    // A truncated frame: the connection is closed without an answer.
    let mut bytes = 100u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[1, 2, 3]);
    assert!(exchange(&daemon, &bytes, 9, true).is_empty());
    still_served();

    // Framing intact, message not: each answered INVALID_ARGUMENT under its id, connection kept.
    let mut bad_utf8 = request(5, VERSION, vec![text("abc")]);
    let at = bad_utf8.windows(3).position(|w| w == b"abc").unwrap();
    bad_utf8[at + 1] = 0xff;
    let cases: Vec<(u64, Vec<u8>, &str)> = vec![
        (5, bad_utf8, "malformed"),
        (6, request(6, VERSION, vec![]), "no inputs"),
        (
            7,
            request(7, 99, vec![text("x")]),
            "unsupported protocol version 99",
        ),
        (0, vec![0xff; 16], "malformed"),
        (
            8,
            request(8, VERSION, vec![pb::Input { kind: None }]),
            "input 0 is empty",
        ),
        (
            9,
            request(
                9,
                VERSION,
                vec![pb::Input {
                    kind: Some(pb::input::Kind::Ids(pb::TokenIds {
                        ids: vec![1, 99_999],
                    })),
                }],
            ),
            "outside the model's vocabulary",
        ),
    ];
    let mut bytes = Vec::new();
    for (_, msg, _) in &cases {
        bytes.extend(framed(msg));
    }
    bytes.extend(framed(&request(10, VERSION, vec![text("fine")])));
    let answers = exchange(&daemon, &bytes, cases.len() + 1, false);
    assert_eq!(answers.len(), cases.len() + 1, "{answers:?}");
    for (id, _, expect) in &cases {
        let a = answers
            .iter()
            .find(|a| a.id == *id)
            .unwrap_or_else(|| panic!("no answer for {id}"));
        assert_eq!(status(a), pb::Status::InvalidArgument);
        assert!(
            a.message.contains(expect),
            "{id}: {:?} lacks {expect:?}",
            a.message
        );
    }
    assert_eq!(
        status(answers.iter().find(|a| a.id == 10).unwrap()),
        pb::Status::Ok
    );
    still_served();

    // Too long with truncation refused.
    let r = rt
        .block_on(good.classify(
            vec![text("word ".repeat(200))],
            pb::Options {
                top_k: 0,
                return_logits: false,
                no_truncate: true,
            },
        ))
        .unwrap();
    assert_eq!(status(&r), pb::Status::InvalidArgument);
    assert!(r.message.contains("at most 64"), "{}", r.message);
    still_served();
}

#[test]
fn connections_past_the_limit_are_refused_and_others_unaffected() {
    let daemon = Daemon::start(&fixture("bert"), &["--max-connections", "2"]);
    let rt = runtime();
    let a = rt.block_on(daemon.client());
    let b = rt.block_on(daemon.client());
    for c in [&a, &b] {
        assert_eq!(
            status(
                &rt.block_on(c.classify(vec![text("x")], logits_opts()))
                    .unwrap()
            ),
            pb::Status::Ok
        );
    }
    let third = rt.block_on(daemon.client());
    assert!(rt
        .block_on(third.classify(vec![text("x")], logits_opts()))
        .is_err());
    assert!(
        daemon.stderr().contains("refused unix connection"),
        "{}",
        daemon.stderr()
    );
    assert_eq!(
        status(
            &rt.block_on(a.classify(vec![text("y")], logits_opts()))
                .unwrap()
        ),
        pb::Status::Ok
    );
}
