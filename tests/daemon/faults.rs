//! Faults from outside and inside: bad input, clients that die, drip or never read, too many
//! connections, a failing forward pass. Each gets its typed error or a closed connection, and a
//! second, well-behaved client is served throughout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use classifyd::client::text;
use classifyd::wire::protocol::{pb, VERSION};
use prost::Message;

use crate::harness::*;

fn framed(msg: &[u8]) -> Vec<u8> {
    classifyd::wire::frame::encode(msg)
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

    // Garbage bytes: "ZZZZ" read as a length is far past the limit: one error, then closed.
    // (An HTTP request line is told what the socket speaks instead: tests/daemon/cli.rs.)
    let r = exchange(&daemon, b"ZZZZ garbage that is no frame\r\n", 9, false);
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
                ..Default::default()
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

#[test]
fn a_killed_client_s_queued_work_is_dropped_and_others_are_served() {
    let scratch = tempfile::tempdir().unwrap();
    let hold = scratch.path().join("hold");
    let metrics = metrics_addr();
    let daemon = Daemon::start(
        &fixture("bert"),
        &[
            "--metrics-addr",
            &metrics.to_string(),
            "--test-hold-batches-while",
            hold.to_str().unwrap(),
        ],
    );
    let computed_before = info(&daemon).computed;
    let rt = runtime();
    let bystander = rt.block_on(daemon.client());

    // The bystander's request is picked by the engine and held there, so whatever comes next
    // waits in the queue.
    std::fs::write(&hold, b"").unwrap();
    let held = {
        let c = rt.block_on(daemon.client());
        rt.spawn(async move { c.classify(vec![text("held")], logits_opts()).await })
    };
    wait_until(&daemon, "the held batch", Duration::from_secs(60), || {
        daemon.stderr().contains("test hook: holding a batch")
    });

    // A separate client process queues five requests and is killed while they wait.
    let mut victim = std::process::Command::new(env!("CARGO_BIN_EXE_classifyd"))
        .args(["classify", "--uds"])
        .arg(&daemon.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = victim.stdin.take().unwrap();
        for i in 0..5 {
            writeln!(stdin, "doomed request {i}").unwrap();
        }
        // End of input: the client sends what it has read and waits for the answers.
    }
    wait_until(
        &daemon,
        "five queued requests",
        Duration::from_secs(60),
        || metric(metrics, "classifyd_queue_depth") == 5.0,
    );
    assert_eq!(metric(metrics, "classifyd_requests_in_flight"), 6.0);
    victim.kill().unwrap();
    victim.wait().unwrap();
    // The daemon notices the closed socket and lets go of the victim's requests at once, while
    // the engine is still held.
    wait_until(
        &daemon,
        "the victim's requests dropped",
        Duration::from_secs(60),
        || metric(metrics, "classifyd_requests_in_flight") == 1.0,
    );
    // The victim's connection is closed; the bystander's two stay open.
    wait_until(
        &daemon,
        "the victim's connection closed",
        Duration::from_secs(60),
        || metric(metrics, "classifyd_connections{transport=\"unix\"}") == 2.0,
    );

    std::fs::remove_file(&hold).unwrap();
    let r = rt.block_on(held).unwrap().unwrap();
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    let r = rt
        .block_on(bystander.classify(vec![text("after the kill")], logits_opts()))
        .unwrap();
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    assert_eq!(metric(metrics, "classifyd_queue_depth"), 0.0);
    assert_eq!(
        info(&daemon).computed - computed_before,
        2,
        "only the bystander's two requests were computed"
    );
    assert_eq!(
        metric(metrics, "classifyd_requests_total{status=\"internal\"}"),
        0.0
    );
}

#[test]
fn a_slow_drip_client_is_timed_out_and_holds_no_worker() {
    let metrics = metrics_addr();
    // An idle timeout far away, so only the frame timeout can end the drip.
    let daemon = Daemon::start(
        &fixture("bert"),
        &[
            "--frame-timeout-secs",
            "2",
            "--idle-timeout-secs",
            "600",
            "--metrics-addr",
            &metrics.to_string(),
        ],
    );
    let rt = runtime();
    let good = rt.block_on(daemon.client());

    // A 100-byte frame, one byte a second: it would take 100 s to arrive.
    let mut drip = UnixStream::connect(&daemon.socket).unwrap();
    drip.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    drip.write_all(&100u32.to_be_bytes()).unwrap();
    let dripper = {
        let mut w = drip.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut sent = 0;
            while sent < 100 && w.write_all(&[0x0a]).is_ok() {
                sent += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            sent
        })
    };
    // Others are served while it drips: the drip holds neither the engine nor the listener.
    for i in 0..3 {
        let r = rt
            .block_on(good.classify(vec![text(format!("meanwhile {i}"))], logits_opts()))
            .unwrap();
        assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    }

    // The daemon gives up on the frame: one INVALID_ARGUMENT answer naming why, then EOF.
    let mut len = [0u8; 4];
    drip.read_exact(&mut len).unwrap();
    let mut body = vec![0; u32::from_be_bytes(len) as usize];
    drip.read_exact(&mut body).unwrap();
    let r = pb::Response::decode(&body[..]).unwrap();
    assert_eq!((r.id, status(&r)), (0, pb::Status::InvalidArgument));
    assert!(r.message.contains("not completed within"), "{}", r.message);
    // Closed after the answer: EOF, or a reset when a dripped byte was left unread.
    match drip.read(&mut len) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection stayed open: {other:?}"),
    }
    drop(drip);
    let sent = dripper.join().unwrap();
    assert!(sent < 100, "the frame was never completed ({sent} bytes)");
    assert!(
        daemon.stderr().contains("frame not completed within 2s"),
        "{}",
        daemon.stderr()
    );
    wait_until(
        &daemon,
        "the drip connection closed",
        Duration::from_secs(30),
        || metric(metrics, "classifyd_connections{transport=\"unix\"}") == 1.0,
    );
    let r = rt
        .block_on(good.classify(vec![text("after")], logits_opts()))
        .unwrap();
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
}

#[test]
fn a_failed_batch_answers_internal_and_the_worker_recovers() {
    let metrics = metrics_addr();
    let mut daemon = Daemon::start(
        &fixture("bert"),
        &[
            "--test-fail-batches",
            "1",
            "--metrics-addr",
            &metrics.to_string(),
        ],
    );
    let rt = runtime();
    let client = std::sync::Arc::new(rt.block_on(daemon.client()));
    // Every input of the failing batch gets the one INTERNAL answer.
    let r = rt
        .block_on(client.classify(vec![text("one"), text("two"), text("three")], logits_opts()))
        .unwrap();
    assert_eq!(status(&r), pb::Status::Internal, "{}", r.message);
    assert!(r.message.contains("engine panicked"), "{}", r.message);
    assert!(
        daemon.stderr().contains("batch failed"),
        "{}",
        daemon.stderr()
    );

    // The same engine thread goes on: later requests, pipelined, all succeed.
    let engine = in_process(&fixture("bert"));
    let answers = rt.block_on(futures::future::join_all((0..8).map(|i| {
        let client = client.clone();
        async move {
            client
                .classify(vec![text(format!("later {i}"))], logits_opts())
                .await
        }
    })));
    for (i, r) in answers.into_iter().enumerate() {
        let r = r.unwrap();
        assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
        let got = classify_body(r).results.remove(0).logits;
        let want = local_logits(&engine, &format!("later {i}"));
        assert!(max_abs_diff(&got, &want) <= 1e-5);
    }
    // Health shows the failure and the recovery.
    assert_eq!(
        metric(metrics, "classifyd_requests_total{status=\"internal\"}"),
        1.0
    );
    assert_eq!(
        metric(metrics, "classifyd_requests_total{status=\"ok\"}"),
        8.0
    );
    assert_eq!(crate::metrics::get(metrics, "/readyz").unwrap().0, 200);
    daemon.signal(15);
    let s = daemon.wait();
    assert!(s.success(), "{}: {}", exit_code(s), daemon.stderr());
}

#[test]
fn a_failed_batch_whose_probe_fails_too_turns_the_engine_unhealthy() {
    // The batch fails, and so does the health probe after it, as every pass does after a sticky
    // device fault (a poisoned CUDA context).
    let metrics = metrics_addr();
    let scratch = tempfile::tempdir().unwrap();
    let hold = scratch.path().join("hold");
    let daemon = Daemon::start(
        &fixture("bert"),
        &[
            "--test-fail-batches",
            "1",
            "--test-fail-probes",
            "1",
            "--metrics-addr",
            &metrics.to_string(),
            "--test-hold-batches-while",
            hold.to_str().unwrap(),
        ],
    );
    assert_eq!(crate::metrics::get(metrics, "/readyz").unwrap().0, 200);
    let rt = runtime();
    std::fs::write(&hold, b"").unwrap();
    let first = {
        let c = rt.block_on(daemon.client());
        rt.spawn(async move { c.classify(vec![text("first")], logits_opts()).await })
    };
    wait_until(&daemon, "the held batch", Duration::from_secs(60), || {
        daemon.stderr().contains("test hook: holding a batch")
    });
    // Two more wait in the queue behind the failing batch.
    let queued: Vec<_> = (0..2)
        .map(|i| {
            let c = rt.block_on(daemon.client());
            rt.spawn(async move {
                c.classify(vec![text(format!("queued {i}"))], logits_opts())
                    .await
            })
        })
        .collect();
    wait_until(&daemon, "two queued", Duration::from_secs(30), || {
        metric(metrics, "classifyd_queue_depth") >= 2.0
    });
    std::fs::remove_file(&hold).unwrap();

    let r = rt.block_on(first).unwrap().unwrap();
    assert_eq!(status(&r), pb::Status::Internal, "{}", r.message);
    for q in queued {
        let r = rt.block_on(q).unwrap().unwrap();
        assert_eq!(status(&r), pb::Status::Unavailable, "{}", r.message);
        assert!(r.message.contains("engine unhealthy"), "{}", r.message);
    }
    // Later requests are refused the same way; nothing reports ready any more.
    let c = rt.block_on(daemon.client());
    let r = rt
        .block_on(c.classify(vec![text("later")], logits_opts()))
        .unwrap();
    assert_eq!(status(&r), pb::Status::Unavailable, "{}", r.message);
    assert_eq!(crate::metrics::get(metrics, "/readyz").unwrap().0, 503);
    assert!(!info(&daemon).ready);
    assert!(
        daemon.stderr().contains("engine unhealthy"),
        "{}",
        daemon.stderr()
    );
}

#[test]
fn a_client_that_never_reads_its_answers_is_disconnected() {
    let metrics = metrics_addr();
    let daemon = Daemon::start(
        &fixture("bert"),
        &[
            "--frame-timeout-secs",
            "2",
            "--metrics-addr",
            &metrics.to_string(),
        ],
    );
    // Answers of 64 inputs with logits, a few KiB each: a few hundred fill the socket's
    // buffers, the connection's answer queue and its in-flight slots.
    let inputs: Vec<pb::Input> = (0..64).map(|i| text(format!("input {i}"))).collect();
    let mut bytes = Vec::new();
    for id in 1..=400 {
        let msg = pb::Request {
            version: VERSION,
            id,
            body: Some(pb::request::Body::Classify(pb::ClassifyRequest {
                inputs: inputs.clone(),
                options: Some(logits_opts()),
                ..Default::default()
            })),
        };
        bytes.extend(framed(&msg.encode_to_vec()));
    }
    let deaf = UnixStream::connect(&daemon.socket).unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let writer = {
        let mut w = deaf.try_clone().unwrap();
        // May block once the daemon stops reading, until it hangs up.
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        })
    };
    wait_until(
        &daemon,
        "the deaf client dropped",
        Duration::from_secs(60),
        || daemon.stderr().contains("peer took no answer for 2s"),
    );
    wait_until(
        &daemon,
        "its connection closed",
        Duration::from_secs(60),
        || metric(metrics, "classifyd_connections{transport=\"unix\"}") == 0.0,
    );
    let rt = runtime();
    let good = rt.block_on(daemon.client());
    let r = rt
        .block_on(good.classify(vec![text("still served")], logits_opts()))
        .unwrap();
    assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
    drop(deaf);
    writer.join().unwrap();
}
