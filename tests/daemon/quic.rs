//! Classification over QUIC with mTLS on loopback.

use std::net::SocketAddr;
use std::path::Path;

use classifyd::client::quic::{QuicClient, QuicClientConfig};
use classifyd::client::{text, Client};
use classifyd::protocol::pb;

use crate::harness::*;

fn free_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn dev_pki(dir: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_classifyd"))
        .args(["cert", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn quic_daemon(pki: &Path, addr: SocketAddr) -> Daemon {
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    Daemon::start(
        &fixture("bert"),
        &[
            "--quic",
            &addr.to_string(),
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server-key.pem"),
            "--client-ca",
            &p("ca.pem"),
        ],
    )
}

#[test]
fn quic_with_mtls_answers_like_the_engine_and_refuses_strangers() {
    let pki = tempfile::tempdir().unwrap();
    dev_pki(pki.path());
    let addr = free_udp_port();
    let daemon = quic_daemon(pki.path(), addr);
    let engine = in_process(&fixture("bert"));
    let rt = runtime();
    let cfg = |cert: bool| QuicClientConfig {
        addr,
        server_name: "localhost".into(),
        ca: pki.path().join("ca.pem"),
        cert: cert.then(|| pki.path().join("client.pem")),
        key: cert.then(|| pki.path().join("client-key.pem")),
    };
    rt.block_on(async {
        let client = Client::Quic(QuicClient::connect(&cfg(true)).await.unwrap());
        let info = info_body(client.info().await.unwrap());
        assert!(info.ready);
        let texts = mixed_texts();
        let calls = texts
            .iter()
            .map(|t| client.classify(vec![text(t.as_str())], logits_opts()));
        let answers = futures::future::join_all(calls).await;
        for (t, r) in texts.iter().zip(answers) {
            let r = r.unwrap();
            assert_eq!(status(&r), pb::Status::Ok, "{}", r.message);
            let got = classify_body(r).results.remove(0).logits;
            assert!(
                max_abs_diff(&got, &local_logits(&engine, t)) <= 1e-5,
                "{t:?}"
            );
        }

        // No client certificate: the handshake or the first request fails.
        let anonymous = async {
            let c = Client::Quic(
                QuicClient::connect(&cfg(false))
                    .await
                    .map_err(|e| e.to_string())?,
            );
            c.info().await.map_err(|e| e.to_string())
        };
        assert!(
            anonymous.await.is_err(),
            "a client without a certificate was served"
        );
    });
    // The refusal is logged with its reason; a moment for the log line to land.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !daemon.stderr().contains("handshake") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(daemon.stderr().contains("handshake"), "{}", daemon.stderr());
}

#[test]
fn classify_cli_over_uds_and_quic_prints_the_in_process_json() {
    let pki = tempfile::tempdir().unwrap();
    dev_pki(pki.path());
    let addr = free_udp_port();
    let daemon = quic_daemon(pki.path(), addr);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_classifyd"))
            .arg("classify")
            .args(args)
            .args(["--", "a fine film", ""])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let local: Vec<serde_json::Value> = run(&["--model", fixture("bert").to_str().unwrap()])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let p = |f: &str| pki.path().join(f).to_str().unwrap().to_string();
    for remote in [
        run(&["--uds", daemon.socket.to_str().unwrap()]),
        run(&[
            "--quic",
            &addr.to_string(),
            "--ca",
            &p("ca.pem"),
            "--cert",
            &p("client.pem"),
            "--key",
            &p("client-key.pem"),
        ]),
    ] {
        let remote: Vec<serde_json::Value> = remote
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(remote.len(), 2);
        for (r, l) in remote.iter().zip(&local) {
            assert_eq!(r["label"], l["label"]);
            assert_eq!(r["tokens"], l["tokens"]);
            let keys = |v: &serde_json::Value| {
                v["scores"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(r), keys(l));
            let f = |v: &serde_json::Value| {
                v["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect::<Vec<_>>()
            };
            assert!(max_abs_diff(&f(r), &f(l)) <= 1e-5);
        }
    }
}
