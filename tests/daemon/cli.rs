//! The command line as a newcomer meets it (issue #34): the README's serving block pasted into
//! a shell, `--wait` for a daemon that is still starting, `$CLASSIFYD_SOCKET`, and the exact
//! line each common mistake prints.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::common::{default_model, repo};
use super::harness::{free_udp_port, Daemon, Launch};

fn classifyd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_classifyd"));
    c.env_remove("CLASSIFYD_SOCKET").stdin(Stdio::null());
    c
}

fn stderr_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim_end().to_string()
}

/// The first ```sh block under "## Serving" in README.md.
fn readme_serving_block() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme.find("## Serving").expect("a Serving section")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let len = section[start..].find("```").expect("the block's end");
    section[start..start + len].to_string()
}

/// The block as written, but for its paths: /tmp/ becomes a temporary directory, the QUIC port
/// a free one, and the build line (`cargo build --release`, which the test's own build stands
/// for) puts this test's binary first on PATH instead.
#[test]
fn the_readme_serving_block_runs_as_pasted() {
    let block = readme_serving_block();
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port().port().to_string();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_classifyd")).parent().unwrap();
    let mut script = String::new();
    for line in block.lines() {
        if line.starts_with("cargo build") {
            assert!(
                line.contains("export PATH=\"$PWD/target/release:$PATH\""),
                "the build line no longer puts the binary on PATH: {line}"
            );
            script.push_str(&format!("export PATH={}:$PATH\n", bin_dir.display()));
            continue;
        }
        let line = line
            .replace("/tmp/", &format!("{}/", dir.path().display()))
            .replace("4433", &port);
        script.push_str(&line);
        script.push('\n');
    }
    assert!(
        script.contains("classifyd classify --wait"),
        "the block's classify lines no longer wait for the daemon:\n{script}"
    );
    // The daemons the block leaves running end with the shell's process group.
    script.push_str("kill $(jobs -p)\nwait\n");
    let mut child = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .current_dir(repo())
        .env_remove("CLASSIFYD_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            // SAFETY: signals a process group this test created; no memory is involved.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            panic!("the README block did not finish in 180 s:\n{script}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    // SAFETY: as above; the group may already be gone.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(
        answers.len(),
        2,
        "one answer over the socket and one over QUIC:\nstdout: {stdout}\nstderr: {}\nscript:\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    for a in answers {
        assert!(a.contains(r#""label":"POSITIVE""#), "{a}");
    }
}

#[test]
fn wait_finds_a_daemon_that_starts_after_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("late.sock");
    let client = classifyd()
        .args(["classify", "--wait", "60", "--uds"])
        .arg(&socket)
        .arg("what a wonderful film")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut daemon = Daemon::spawn(&default_model(), Some(&socket), &[], Launch::default());
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""label":"POSITIVE""#),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    daemon.wait_ready();
    // Its log went to a file, not a terminal: plain text, no colour codes.
    assert!(
        !daemon.stderr().contains('\u{1b}'),
        "ANSI escapes in a log written to a file:\n{}",
        daemon.stderr()
    );
}

#[test]
fn the_socket_env_var_stands_for_uds() {
    let daemon = Daemon::start(&default_model(), &[]);
    let out = classifyd()
        .env("CLASSIFYD_SOCKET", &daemon.socket)
        .args(["classify", "a dull, tedious film"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""label":"NEGATIVE""#),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Each mistake's whole line: the OS error once, then what to do.
#[test]
fn connection_mistakes_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let classify = |socket: &Path, extra: &[&str]| {
        let out = classifyd()
            .arg("classify")
            .args(extra)
            .arg("--uds")
            .arg(socket)
            .arg("hi")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr_line(&out));
        stderr_line(&out)
    };
    let m = missing.display();
    assert_eq!(
        classify(&missing, &[]),
        format!(
            "classifyd: error: connecting to {m}: No such file or directory (os error 2); \
             no socket there: start `classifyd serve --uds {m}`, or add --wait SECS to wait for it"
        )
    );
    assert_eq!(
        classify(&missing, &["--wait", "0.3"]),
        format!(
            "classifyd: error: no daemon answered within 0.3 s (--wait): connecting to {m}: \
             No such file or directory (os error 2); nothing bound that socket in time: is \
             `classifyd serve` starting (a large model takes a while to load; raise --wait), \
             and on this path?"
        )
    );
    assert_eq!(
        classify(&stale, &[]),
        format!(
            "classifyd: error: connecting to {}: Connection refused (os error 111); no daemon \
             listens on that socket (the file is left from one that exited): start `classifyd \
             serve` again, which replaces it",
            stale.display()
        )
    );
    let out = classifyd().args(["classify", "hi"]).output().unwrap();
    assert_eq!(
        stderr_line(&out),
        "classifyd: error: give --model DIR, --uds PATH or --quic HOST:PORT (or set CLASSIFYD_SOCKET)"
    );
    let out = classifyd()
        .args(["classify", "--quic", "127.0.0.1", "--ca", "ca.pem", "hi"])
        .output()
        .unwrap();
    assert_eq!(
        stderr_line(&out),
        "classifyd: error: --quic \"127.0.0.1\": expected HOST:PORT, e.g. localhost:4433"
    );
}

/// A user who may not open the socket, or not even enter its directory, is told whose they
/// are. Needs root, to run the client as another user (CI runs as root).
#[test]
fn permission_denied_names_the_owner_and_mode() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run the client as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("private.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let as_nobody = || {
        let out = classifyd()
            .arg("classify")
            .arg("--uds")
            .arg(&socket)
            .arg("hi")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        stderr_line(&out)
    };
    let perms = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    perms(dir.path(), 0o755);
    perms(&socket, 0o660);
    assert_eq!(
        as_nobody(),
        format!(
            "classifyd: error: connecting to {}: Permission denied (os error 13); the socket is \
             mode 0660, owner root, group root: join group root (`sudo usermod -aG root $USER`, \
             then log in again) or run as its owner",
            socket.display()
        )
    );
    perms(dir.path(), 0o700);
    assert_eq!(
        as_nobody(),
        format!(
            "classifyd: error: connecting to {}: Permission denied (os error 13); its directory \
             {} is mode 0700, owner root, group root: this user cannot enter it; ask for access, \
             or serve the socket from a directory clients can reach",
            socket.display(),
            dir.path().display()
        )
    );
}

/// `--quic` with nothing listening gives up after --connect-timeout, not a minute later.
#[test]
fn quic_with_nothing_listening_times_out_after_the_flag() {
    let pki = tempfile::tempdir().unwrap();
    super::harness::dev_pki(pki.path());
    let addr = free_udp_port();
    let started = Instant::now();
    let out = classifyd()
        .args(["classify", "--connect-timeout", "1", "--quic"])
        .arg(format!("localhost:{}", addr.port()))
        .arg("--ca")
        .arg(pki.path().join("ca.pem"))
        .arg("hi")
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let line = stderr_line(&out);
    assert!(
        line.starts_with(&format!(
            "classifyd: error: no answer from 127.0.0.1:{} within 1 s; is `classifyd serve --quic` listening",
            addr.port()
        )) || line.starts_with(&format!(
            "classifyd: error: no answer from [::1]:{} within 1 s; is `classifyd serve --quic` listening",
            addr.port()
        )),
        "{line}"
    );
}

/// An over-long input in the middle is named by its own place, over a socket and in process.
#[test]
fn a_refused_input_is_named_by_its_place() {
    let daemon = Daemon::start(&default_model(), &[]);
    let long = "word ".repeat(1000);
    let texts = ["good film", long.as_str(), "bad film"];
    let uds = ["--uds", daemon.socket.to_str().unwrap()];
    let dir = default_model();
    let model = ["--model", dir.to_str().unwrap()];
    for target in [&uds[..], &model[..]] {
        let out = classifyd()
            .arg("classify")
            .args(target)
            .arg("--no-truncate")
            .arg("--")
            .args(texts)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr_line(&out));
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].get("label").is_some(), "{}", lines[0]);
        assert_eq!(lines[1]["input"], 1, "{}", lines[1]);
        assert_eq!(
            lines[1]["error"],
            "input 1: input is 1002 tokens long but the model accepts at most 512, and \
             truncation is off (no_truncate, or redact: a redacted text is never cut, since its \
             tail would go unredacted)",
            "{target:?}"
        );
        assert!(lines[2].get("label").is_some(), "{}", lines[2]);
        if target[0] == "--uds" {
            assert_eq!(lines[1]["status"], "INVALID_ARGUMENT", "{}", lines[1]);
        }
    }
}

/// `curl --unix-socket` (or any HTTP client) on the socket is told, in one line, what the
/// socket speaks and where HTTP is; the connection closes and the daemon serves on.
#[test]
fn http_on_the_socket_gets_one_line_saying_what_it_speaks() {
    use std::io::{Read, Write};
    let daemon = Daemon::start(&default_model(), &[]);
    let mut s = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert_eq!(
        body,
        "classifyd: this socket speaks the length-prefixed protobuf protocol (docs/PROTOCOL.md), \
         not HTTP; /metrics, /healthz and /readyz are served over HTTP on --metrics-addr\n"
    );
    still_serves(&daemon);
}

/// `check-config` and `serve` refuse the same listener and TLS mistakes with the same words,
/// and `serve` refuses them before it loads the model (its log has no "loaded" line).
#[test]
fn check_config_and_serve_agree_on_listener_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    super::harness::dev_pki(&pki);
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let sock = dir.path().join("ok.sock").to_str().unwrap().to_string();
    let missing_dir = dir
        .path()
        .join("no/such/dir/s.sock")
        .to_str()
        .unwrap()
        .to_string();
    let quic = free_udp_port().to_string();
    let quic_any = format!("0.0.0.0:{}", free_udp_port().port());
    // Ports another program holds for the whole test.
    let busy_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_metrics = busy_tcp.local_addr().unwrap().to_string();
    let busy_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy_quic = busy_udp.local_addr().unwrap().to_string();
    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (
            "socket directory missing",
            vec!["--uds".into(), missing_dir.clone()],
            format!("{missing_dir}: directory {} does not exist", dir.path().join("no/such/dir").display()),
        ),
        (
            "metrics on a public address",
            vec!["--uds".into(), sock.clone(), "--metrics-addr".into(), "0.0.0.0:9464".into()],
            "--metrics-addr 0.0.0.0:9464 is not a loopback address".into(),
        ),
        (
            "TLS certificate missing",
            vec![
                "--uds".into(), sock.clone(), "--quic".into(), quic.clone(),
                "--tls-cert".into(), p("missing.pem"), "--tls-key".into(), p("server-key.pem"),
                "--client-ca".into(), p("ca.pem"),
            ],
            format!("cannot read server certificate {}", p("missing.pem")),
        ),
        (
            "anonymous QUIC on a public address",
            vec![
                "--uds".into(), sock.clone(), "--quic".into(), quic_any.clone(),
                "--tls-cert".into(), p("server.pem"), "--tls-key".into(), p("server-key.pem"),
                "--allow-anonymous-loopback".into(),
            ],
            format!("anonymous QUIC clients are allowed only on a loopback listen address, and {quic_any} is not loopback"),
        ),
        (
            "metrics port busy",
            vec!["--uds".into(), sock.clone(), "--metrics-addr".into(), busy_metrics.clone()],
            format!("--metrics-addr {busy_metrics}: Address already in use (os error 98)"),
        ),
        (
            "QUIC port busy",
            vec![
                "--uds".into(), sock.clone(), "--quic".into(), busy_quic.clone(),
                "--tls-cert".into(), p("server.pem"), "--tls-key".into(), p("server-key.pem"),
                "--client-ca".into(), p("ca.pem"),
            ],
            format!("{busy_quic}: Address already in use (os error 98)"),
        ),
    ];
    let model = default_model();
    for (what, flags, says) in cases {
        let run = |cmd: &str| {
            let out = classifyd()
                .arg(cmd)
                .arg("--model")
                .arg(&model)
                .args(&flags)
                .env("CLASSIFYD_LOG", "info")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (check_code, check) = run("check-config");
        let (serve_code, serve) = run("serve");
        assert_eq!(check_code, Some(1), "{what}: check-config: {check}");
        assert_eq!(serve_code, Some(1), "{what}: serve: {serve}");
        assert!(check.contains(&says), "{what}: check-config said: {check}");
        assert!(serve.contains(&says), "{what}: serve said: {serve}");
        assert!(
            !serve.contains("loaded"),
            "{what}: serve loaded the model before refusing: {serve}"
        );
    }
}

/// `check-config` before a restart, with the daemon still serving its socket and metrics port:
/// ok, saying that it bound nothing because a daemon serves there; and it leaves that daemon's
/// socket in place.
#[test]
fn check_config_beside_a_running_daemon_is_ok_and_says_so() {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = metrics.local_addr().unwrap().to_string();
    drop(metrics);
    let daemon = Daemon::start(&default_model(), &["--metrics-addr", &addr]);
    let out = classifyd()
        .arg("check-config")
        .arg("--model")
        .arg(default_model())
        .arg("--uds")
        .arg(&daemon.socket)
        .args(["--metrics-addr", &addr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr_line(&out));
    let note = format!(
        "note: a daemon serves {} now, so its ports were not bound; `serve` starts once it stops",
        daemon.socket.display()
    );
    assert!(stdout.contains(&note), "{stdout}");
    assert!(
        stdout
            .lines()
            .next()
            .unwrap()
            .ends_with(&format!("metrics {addr}")),
        "{stdout}"
    );
    still_serves(&daemon);
}

/// A socket another daemon serves is refused at once, before the model loads, and the other
/// daemon keeps its socket.
#[test]
fn serve_refuses_a_socket_in_use_before_loading() {
    let daemon = Daemon::start(&default_model(), &[]);
    let out = classifyd()
        .arg("serve")
        .arg("--model")
        .arg(default_model())
        .arg("--uds")
        .arg(&daemon.socket)
        .env("CLASSIFYD_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another classifyd is already serving on this socket"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("loaded"),
        "loaded before refusing: {stderr}"
    );
    still_serves(&daemon);
}

/// The daemon answers a classify over its socket: it kept serving whatever the test did.
fn still_serves(daemon: &Daemon) {
    let out = classifyd()
        .args(["classify", "--uds", daemon.socket.to_str().unwrap(), "fine"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_line(&out));
}
