//! Start, refuse, stop: socket ownership, peer allow-list, SIGTERM draining.

use classifyd::client::{text, UnixClient};
use classifyd::wire::protocol::pb;

use crate::harness::*;

#[test]
fn sigterm_with_requests_in_flight_answers_all_and_exits_zero() {
    use prost::Message;
    use std::io::{Read, Write};
    let mut daemon = Daemon::start(
        &default_model(),
        &[
            "--max-in-flight",
            "256",
            "--queue-capacity",
            "256",
            "--drain-timeout-secs",
            "120",
        ],
    );
    let long = "the acting is fine but the story drags on and on ".repeat(6);
    // All 100 frames in one write, so every one of them is on the wire before the signal.
    let mut bytes = Vec::new();
    for id in 1..=100u64 {
        let mut req = classifyd::client::classify_request(vec![text(long.clone())], logits_opts());
        req.id = id;
        bytes.extend(classifyd::wire::frame::encode(&req.encode_to_vec()));
    }
    let mut s = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    s.write_all(&bytes).unwrap();
    let mut read_one = || {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).ok()?;
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).ok()?;
        pb::Response::decode(&body[..]).ok()
    };
    let mut answers = vec![read_one().expect("first answer")];
    daemon.signal(15);
    while let Some(r) = read_one() {
        answers.push(r);
    }
    assert_eq!(
        answers.len(),
        100,
        "every request answered before the connection closed"
    );
    let mut ids: Vec<u64> = answers.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=100).collect::<Vec<_>>());
    for r in &answers {
        assert_eq!(status(r), pb::Status::Ok, "{}", r.message);
    }
    let exit = daemon.wait();
    assert_eq!(
        exit.code(),
        Some(0),
        "{}: {}",
        exit_code(exit),
        daemon.stderr()
    );
    assert!(daemon.stderr().contains("draining"));
    assert!(!daemon.socket.exists(), "socket file removed on exit");
}

#[test]
fn a_live_daemon_keeps_its_socket_and_a_stale_file_is_replaced() {
    let daemon = Daemon::start(&fixture("bert"), &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_classifyd"))
        .args(["serve", "--model"])
        .arg(fixture("bert"))
        .arg("--uds")
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already serving"), "{stderr}");
    // The first daemon still answers.
    let rt = runtime();
    let c = rt.block_on(daemon.client());
    assert_eq!(
        status(
            &rt.block_on(c.classify(vec![text("x")], logits_opts()))
                .unwrap()
        ),
        pb::Status::Ok
    );

    // A socket file nobody listens on is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut second = Daemon::start_at(&fixture("bert"), Some(&stale), &[]);
    let c = rt.block_on(async {
        classifyd::client::Client::Unix(UnixClient::connect(&stale).await.unwrap())
    });
    assert_eq!(
        status(
            &rt.block_on(c.classify(vec![text("x")], logits_opts()))
                .unwrap()
        ),
        pb::Status::Ok
    );
    second.signal(15);
    assert_eq!(second.wait().code(), Some(0));
}

#[test]
fn socket_mode_and_peer_allow_list() {
    use std::os::unix::fs::PermissionsExt;
    let daemon = Daemon::start(&fixture("bert"), &[]);
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);

    // We are not uid 4242: refused, with a log line saying why.
    let fenced = Daemon::start(
        &fixture("bert"),
        &["--allow-uid", "4242", "--uds-mode", "600"],
    );
    let mode = std::fs::metadata(&fenced.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let rt = runtime();
    let c = rt.block_on(fenced.client());
    assert!(rt
        .block_on(c.classify(vec![text("x")], logits_opts()))
        .is_err());
    let log = fenced.stderr();
    assert!(
        log.contains("refused unix peer") && log.contains("not in the allow-list"),
        "{log}"
    );

    // Our own uid is allowed.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let open = Daemon::start(&fixture("bert"), &["--allow-uid", &uid.to_string()]);
    let c = rt.block_on(open.client());
    assert_eq!(
        status(
            &rt.block_on(c.classify(vec![text("x")], logits_opts()))
                .unwrap()
        ),
        pb::Status::Ok
    );
}

/// `(thread name, CPUs it may run on)` for every thread of `pid`.
fn thread_cpus(pid: i32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = match std::fs::read_to_string(task.unwrap().path().join("status")) {
            Ok(s) => s,
            Err(_) => continue, // the thread has just ended
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Cpus_allowed_list:")));
    }
    out
}

#[test]
fn pinned_busy_polling_engine_threads_answer_alike_and_stop_on_sigterm() {
    use classifyd::settings::Scalar;
    let allowed = classifyd::sched::hot::allowed_cpus();
    let engine_cpu = allowed[0].to_string();
    let mut daemon = Daemon::start(
        &default_model(),
        &["--cpus", &engine_cpu, "--threads", "2", "--busy-poll"],
    );
    let local = in_process(&default_model());
    let rt = runtime();
    rt.block_on(async {
        let c = daemon.client().await;
        for t in ["what a wonderful film", "the plot was dull and slow", "meh"] {
            let r = c
                .classify(vec![text(t.to_string())], logits_opts())
                .await
                .unwrap();
            let got = &classify_body(r).results[0].logits;
            let want = local_logits(&local, t);
            assert!(max_abs_diff(got, &want) <= 1e-5, "{t}: {got:?} vs {want:?}");
        }
    });
    let threads = thread_cpus(daemon.pid());
    // Both lanes' pools (names cut to 15 bytes by the kernel): two threads each, on the one CPU.
    let engine: Vec<_> = threads
        .iter()
        .filter(|(n, _)| n.starts_with("classifyd-engin") || n.starts_with("classifyd-bulk-"))
        .collect();
    assert_eq!(engine.len(), 4, "{threads:?}");
    for (name, cpus) in &engine {
        assert_eq!(cpus, &engine_cpu, "{name}");
    }
    if allowed.len() > 1 {
        // The I/O threads were moved off it.
        let io: Vec<_> = threads
            .iter()
            .filter(|(n, _)| n == "classifyd-io")
            .collect();
        assert!(!io.is_empty(), "{threads:?}");
        for (name, cpus) in io {
            let list = classifyd::settings::CpuList::parse_one(cpus).unwrap();
            assert!(!list.0.contains(&allowed[0]), "{name} on {cpus}");
        }
    }
    // Spinning for good must not keep the daemon from draining and exiting.
    daemon.signal(15);
    assert_eq!(exit_code(daemon.wait()), "exit 0");
}
