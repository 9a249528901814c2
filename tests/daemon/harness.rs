//! Starting and stopping a real daemon, and talking to it.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use classifyd::client::{Client, UnixClient};
use classifyd::engine::{DTypeChoice, DeviceChoice, Engine};
use classifyd::protocol::pb;
use classifyd::tokenize::Input;

pub use crate::common::*;

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
        let dir = tempfile::tempdir().unwrap();
        let socket = socket.map_or_else(|| dir.path().join("classifyd.sock"), Path::to_path_buf);
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_classifyd"))
            .arg("serve")
            .arg("--model")
            .arg(model)
            .arg("--uds")
            .arg(&socket)
            .args(extra)
            .env("CLASSIFYD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            _dir: dir,
            socket,
            stderr_path,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
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
