//! Who may talk to the daemon, and what it never says: socket permissions and peer
//! credentials on the Unix socket, and no private key material in its log at any level.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use classifyd::client::quic::{QuicClient, QuicClientConfig};
use classifyd::client::{text, Client};
use classifyd::wire::protocol::pb;

use crate::harness::*;

fn classify_ok(daemon: &Daemon) -> bool {
    let rt = runtime();
    rt.block_on(async {
        let c = daemon.client().await;
        matches!(c.classify(vec![text("x")], logits_opts()).await, Ok(r) if status(&r) == pb::Status::Ok)
    })
}

#[test]
fn the_socket_group_and_the_gid_allow_list() {
    let gid = std::fs::metadata("/proc/self").unwrap().gid();
    let grouped = Daemon::start(
        &fixture("bert"),
        &[
            "--uds-group",
            &gid.to_string(),
            "--allow-gid",
            &gid.to_string(),
        ],
    );
    let meta = std::fs::metadata(&grouped.socket).unwrap();
    assert_eq!(meta.gid(), gid);
    assert_eq!(meta.mode() & 0o777, 0o660, "the default mode");
    assert!(classify_ok(&grouped), "{}", grouped.stderr());

    // Neither our uid nor our gid is listed: refused, and the log names the peer.
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let fenced = Daemon::start(
        &fixture("bert"),
        &[
            "--allow-gid",
            &(gid + 4242).to_string(),
            "--allow-uid",
            &(uid + 4242).to_string(),
        ],
    );
    assert!(!classify_ok(&fenced));
    wait_until(
        &fenced,
        "the refusal logged",
        Duration::from_secs(10),
        || {
            fenced
                .stderr()
                .contains(&format!("refused unix peer: uid {uid} gid {gid}"))
        },
    );
}

#[test]
fn private_key_material_never_reaches_the_log() {
    let pki = tempfile::tempdir().unwrap();
    dev_pki(pki.path());
    let addr = free_udp_port();
    let quic = quic_flags(pki.path(), addr);
    let quic: Vec<&str> = quic.iter().map(String::as_str).collect();
    let mut daemon = Daemon::spawn(
        &fixture("bert"),
        None,
        &quic,
        Launch {
            env: vec![("CLASSIFYD_LOG", "debug".into())],
            ..Launch::default()
        },
    );
    daemon.wait_ready();
    // Every path that touches TLS: a served client, a refused one, a reload, a stop.
    let cfg = |cert: &str, key: &str| QuicClientConfig {
        addr,
        server_name: "localhost".into(),
        ca: pki.path().join("ca.pem"),
        cert: Some(pki.path().join(cert)),
        key: Some(pki.path().join(key)),
    };
    runtime().block_on(async {
        let c = Client::Quic(
            QuicClient::connect(&cfg("client.pem", "client-key.pem"))
                .await
                .unwrap(),
        );
        let r = c
            .classify(vec![text("secret?")], logits_opts())
            .await
            .unwrap();
        assert_eq!(status(&r), pb::Status::Ok);
        // The server's own certificate offered as a client one: refused (wrong key usage).
        let refused = async {
            let c = QuicClient::connect(&cfg("server.pem", "server-key.pem")).await?;
            c.call(b"x").await
        };
        assert!(refused.await.is_err());
    });
    daemon.signal(1);
    wait_until(&daemon, "the reload", Duration::from_secs(120), || {
        daemon.stderr().contains("reloaded")
    });
    daemon.signal(15);
    assert!(daemon.wait().success(), "{}", daemon.stderr());
    // check-config prints the effective settings, TLS files included.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_classifyd"))
        .arg("check-config")
        .args(["--model", fixture("bert").to_str().unwrap()])
        .args(quic)
        .env("CLASSIFYD_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let log = daemon.stderr()
        + &String::from_utf8_lossy(&check.stdout)
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        log.lines().any(|l| l.contains("DEBUG")),
        "debug logging was on"
    );
    for key in ["server-key.pem", "client-key.pem", "ca-key.pem"] {
        let pem = std::fs::read_to_string(pki.path().join(key)).unwrap();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!log.contains(line), "{key}: PEM line {line:?} in the log");
        }
        let der = classifyd::wire::tls::load_key(&pki.path().join(key)).unwrap();
        // The private scalar sits past the PKCS#8 and algorithm headers, which are the same
        // in every P-256 key.
        let secret = &der.secret_der()[36..60];
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let listed = format!("{secret:?}");
        let listed = listed.trim_matches(|c| c == '[' || c == ']');
        assert!(!log.contains(&hex), "{key}: key bytes as hex in the log");
        assert!(
            !log.contains(listed),
            "{key}: key bytes as a list in the log"
        );
    }
}
