//! Starting and stopping a real daemon, and talking to it.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use classifyd::client::{Client, UnixClient};
use classifyd::engine::tokenize::Input;
use classifyd::engine::{DTypeChoice, DeviceChoice, Engine};
use classifyd::wire::protocol::pb;

pub use crate::common::*;

/// What [`Daemon::spawn`] adds to a plain start.
#[derive(Default)]
pub struct Launch<'a> {
    /// Extra environment variables.
    pub env: Vec<(&'static str, OsString)>,
    /// A listening socket handed over as systemd's socket activation does.
    pub listen_fd: Option<BorrowedFd<'a>>,
}

/// A `classifyd serve` child process; killed on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub stderr_path: PathBuf,
}

impl Daemon {
    /// Starts a daemon on a fresh socket in a temp dir and waits until it answers ready.
    pub fn start(model: &Path, extra: &[&str]) -> Daemon {
        Self::start_at(model, None, extra)
    }

    /// As [`Daemon::start`], listening on `socket` when given.
    pub fn start_at(model: &Path, socket: Option<&Path>, extra: &[&str]) -> Daemon {
        let mut d = Self::spawn(model, socket, extra, Launch::default());
        d.wait_ready();
        d
    }

    /// Starts a daemon as [`Daemon::start_at`] does, with `launch`'s additions, and returns at
    /// once, without waiting for it to be ready.
    pub fn spawn(model: &Path, socket: Option<&Path>, extra: &[&str], launch: Launch) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = socket.map_or_else(|| dir.path().join("classifyd.sock"), Path::to_path_buf);
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let bin = env!("CARGO_BIN_EXE_classifyd");
        let mut cmd = match launch.listen_fd {
            None => Command::new(bin),
            Some(fd) => {
                // systemd's socket activation: the socket at fd 3, LISTEN_FDS=1 and LISTEN_PID
                // the daemon's pid, which only the child knows; `sh` learns it as $$ and execs
                // the daemon in its place.
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
                    .arg(bin)
                    .env("LISTEN_FDS", "1");
                let raw = fd.as_raw_fd();
                // SAFETY: dup2 and fcntl are async-signal-safe; nothing is allocated.
                unsafe {
                    c.pre_exec(move || {
                        let rc = if raw == 3 {
                            // dup2 onto itself would keep close-on-exec set.
                            libc::fcntl(3, libc::F_SETFD, 0)
                        } else {
                            libc::dup2(raw, 3)
                        };
                        if rc < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                c
            }
        };
        // Hermetic, even where the tests themselves run under systemd.
        for var in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
        ] {
            cmd.env_remove(var);
        }
        if launch.listen_fd.is_none() {
            cmd.env_remove("LISTEN_FDS");
        }
        // The weights cache in the daemon's own directory, as systemd's CacheDirectory= gives
        // it: every daemon test runs the cached load (written at start, mapped on reload), and
        // none writes outside its temp dir.
        cmd.env_remove("XDG_CACHE_HOME")
            .env("CACHE_DIRECTORY", dir.path().join("cache"));
        cmd.arg("serve");
        // With a config file the model comes from the file, as it would in production.
        if !extra.contains(&"--config") {
            cmd.arg("--model").arg(model);
        }
        let child = cmd
            .arg("--uds")
            .arg(&socket)
            .args(extra)
            .env("CLASSIFYD_LOG", "info")
            .envs(launch.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            _dir: dir,
            socket,
            stderr_path,
        }
    }

    /// Waits until the daemon logged `ready` and its socket exists (hang guard: 120 s).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited early with {status}: {}", self.stderr());
            }
            if self.stderr().contains("ready") && self.socket.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon not ready in time: {}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The exit status, if the daemon has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (hang guard: 60 s).
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not exit: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn client(&self) -> Client {
        Client::Unix(UnixClient::connect(&self.socket).await.unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn exit_code(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown".into(),
    }
}

pub fn in_process(model: &Path) -> Engine {
    Engine::load(model, DeviceChoice::Cpu, DTypeChoice::Auto).unwrap()
}

pub fn local_logits(engine: &Engine, text: &str) -> Vec<f32> {
    let e = engine.tokenize(&Input::Text(text.into()), true).unwrap();
    engine.logits(&[&e]).unwrap().remove(0)
}

pub fn logits_opts() -> pb::Options {
    pb::Options {
        top_k: 0,
        return_logits: true,
        no_truncate: false,
        ..Default::default()
    }
}

pub fn status(r: &pb::Response) -> pb::Status {
    pb::Status::try_from(r.status).unwrap()
}

pub fn classify_body(r: pb::Response) -> pb::ClassifyResponse {
    match r.body {
        Some(pb::response::Body::Classify(c)) => c,
        other => panic!(
            "not a classify response ({}: {}): {other:?}",
            r.status, r.message
        ),
    }
}

pub fn info_body(r: pb::Response) -> pb::InfoResponse {
    match r.body {
        Some(pb::response::Body::Info(i)) => i,
        other => panic!("not an info response: {other:?}"),
    }
}

/// Texts of mixed lengths, from the fixtures' golden cases and a few of our own.
pub fn mixed_texts() -> Vec<String> {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("bert").join("golden.json")).unwrap(),
    )
    .unwrap();
    let mut texts: Vec<String> = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["text_pair"].is_null())
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    texts.push("short".into());
    texts.push("a somewhat longer sentence about the weather and the film we saw".into());
    texts
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` and the daemon's log after
/// `limit` (a hang guard, not a speed requirement).
pub fn wait_until(daemon: &Daemon, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} not within {limit:?}: {}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback address for `--metrics-addr` on a free port.
pub fn metrics_addr() -> std::net::SocketAddr {
    ([127, 0, 0, 1], crate::metrics::free_port()).into()
}

/// The value of `series` (a name and some of its labels, as a query would select them, e.g.
/// `classifyd_connections{transport="quic"}`) in a scrape of `addr`'s `/metrics`: the sum of
/// the samples it selects, as `sum()` would give it.
pub fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    let (code, body) = crate::metrics::get(addr, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    sample(&body, series).unwrap_or_else(|| panic!("no {series} in {body}"))
}

/// The sum of the samples in a scrape `body` whose name is `series`' and whose labels include
/// each of its labels; `None` when none does.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    let (name, want) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let want: Vec<&str> = want.split(',').filter(|l| !l.is_empty()).collect();
    let mut total = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let have: Vec<&str> = labels.split(',').collect();
        if n == name && want.iter().all(|w| have.contains(w)) {
            *total.get_or_insert(0.0) += value.trim().parse::<f64>().ok()?;
        }
    }
    total
}

/// The daemon's Info response over a fresh connection.
pub fn info(daemon: &Daemon) -> pb::InfoResponse {
    runtime().block_on(async { info_body(daemon.client().await.info().await.unwrap()) })
}

/// A loopback UDP address free at the time of the call, for a daemon's QUIC listener.
pub fn free_udp_port() -> std::net::SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// `classifyd cert --out DIR`: a development CA with a server and a client certificate.
pub fn dev_pki(dir: &Path) {
    succeeded(
        Command::new(env!("CARGO_BIN_EXE_classifyd"))
            .args(["cert", "--out"])
            .arg(dir)
            .output()
            .unwrap(),
    );
}

/// A QUIC client of the daemon [`quic_flags`] starts: `addr`, its CA and the client
/// certificate from `pki` (as [`dev_pki`] names the files).
pub fn quic_client(
    pki: &Path,
    addr: std::net::SocketAddr,
) -> classifyd::client::quic::QuicClientConfig {
    classifyd::client::quic::QuicClientConfig {
        addr,
        server_name: "localhost".into(),
        ca: pki.join("ca.pem"),
        cert: Some(pki.join("client.pem")),
        key: Some(pki.join("client-key.pem")),
    }
}

/// `serve` flags for QUIC on `addr` with the server certificate in `pki` (as [`dev_pki`] names
/// the files), requiring client certificates from its CA.
pub fn quic_flags(pki: &Path, addr: std::net::SocketAddr) -> Vec<String> {
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    vec![
        "--quic".into(),
        addr.to_string(),
        "--tls-cert".into(),
        p("server.pem"),
        "--tls-key".into(),
        p("server-key.pem"),
        "--client-ca".into(),
        p("ca.pem"),
    ]
}
