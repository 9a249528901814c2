//! `classifyd serve --config FILE`: one TOML file whose keys are the long names of the `serve`
//! flags (`-` written `_`). Flags win over the file, the file over the built-in defaults; paths
//! in the file are relative to the file's directory. [`Settings::resolve`] does the merge;
//! [`check`] is `classifyd check-config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use crate::cli::ServeArgs;
use crate::engine::{DTypeChoice, DeviceChoice, Engine};
use crate::protocol::RequestLimits;
use crate::queue::SchedulerConfig;
use crate::server::{QuicOptions, ServeConfig};
use crate::transport::{unix::UnixOptions, ConnectionLimits};

/// `uds_mode` in the file: `"660"` or `660`, both read as octal digits like the flag.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum FileMode {
    Int(u32),
    Str(String),
}

/// The config file as written: every key optional, no others allowed.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub model: Option<PathBuf>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub uds: Option<PathBuf>,
    pub uds_mode: Option<FileMode>,
    pub uds_group: Option<String>,
    pub allow_uid: Option<Vec<u32>>,
    pub allow_gid: Option<Vec<u32>>,
    pub quic: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub allow_anonymous_loopback: Option<bool>,
    pub queue_capacity: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub max_batch_size: Option<usize>,
    pub max_attention_mib: Option<usize>,
    pub max_frame_bytes: Option<usize>,
    pub max_inputs: Option<usize>,
    pub max_text_bytes: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_receive_bytes: Option<usize>,
    pub idle_timeout_secs: Option<u64>,
    pub frame_timeout_secs: Option<u64>,
    pub drain_timeout_secs: Option<u64>,
    pub metrics_addr: Option<String>,
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl FileConfig {
    /// Parses TOML text; errors are one line (`line N: message`), without the file name.
    pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', " ");
            match e.span() {
                Some(span) => anyhow!("line {}: {message}", line_of(text, span.start)),
                None => anyhow!("{message}"),
            }
        })
    }

    /// Reads and parses `path`, then makes its relative paths relative to the file's directory.
    /// Errors name the file.
    pub fn from_path(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
        let mut file = Self::parse(&text).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut file.model,
            &mut file.uds,
            &mut file.tls_cert,
            &mut file.tls_key,
            &mut file.client_ca,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(file)
    }
}

/// Parses an octal permission mode like `660`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal permission mode like 660"))
}

fn serialize_mode<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:o}"))
}

/// The effective `serve` settings: flags over file over defaults. Serializes to the same TOML
/// keys the file takes (`check-config` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The config file these came from, if any.
    #[serde(skip)]
    pub config: Option<PathBuf>,
    pub model: PathBuf,
    /// Set when the model path came from the config file (no `--model` flag), so a reload
    /// re-reads it there.
    #[serde(skip)]
    pub model_from_file: Option<PathBuf>,
    pub device: String,
    pub dtype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uds: Option<PathBuf>,
    #[serde(serialize_with = "serialize_mode")]
    pub uds_mode: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uds_group: Option<String>,
    pub allow_uid: Vec<u32>,
    pub allow_gid: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quic: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    pub allow_anonymous_loopback: bool,
    pub queue_capacity: usize,
    pub max_batch_tokens: usize,
    pub max_batch_size: usize,
    pub max_attention_mib: usize,
    pub max_frame_bytes: usize,
    pub max_inputs: usize,
    pub max_text_bytes: usize,
    pub max_in_flight: usize,
    pub max_connections: usize,
    pub max_receive_bytes: usize,
    pub idle_timeout_secs: u64,
    pub frame_timeout_secs: u64,
    pub drain_timeout_secs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    #[serde(skip)]
    pub test_stall_worker_after_secs: Option<f64>,
}

impl Settings {
    /// Merges the flags in `a` over `--config` (when given) over the built-in defaults.
    /// Errors about file values name the file.
    pub fn resolve(a: &ServeArgs) -> anyhow::Result<Settings> {
        let file = match &a.config {
            Some(path) => FileConfig::from_path(path)?,
            None => FileConfig::default(),
        };
        // Prefixes errors about values that came from the file with the file's name.
        let in_file = |key: &str, e: String| match &a.config {
            Some(p) => anyhow!("{}: {key}: {e}", p.display()),
            None => anyhow!("{key}: {e}"),
        };
        let model = match (&a.model, &file.model) {
            (Some(m), _) | (None, Some(m)) => m.clone(),
            (None, None) => match &a.config {
                Some(p) => bail!(
                    "{}: no model: give --model DIR or `model = \"DIR\"` in the file",
                    p.display()
                ),
                None => bail!("no model: give --model DIR or --config FILE"),
            },
        };
        let device = match (&a.device, &file.device) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => {
                d.parse::<DeviceChoice>()
                    .map_err(|e| in_file("device", e))?;
                d.clone()
            }
            (None, None) => "auto".to_string(),
        };
        let dtype = match (&a.dtype, &file.dtype) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => {
                d.parse::<DTypeChoice>().map_err(|e| in_file("dtype", e))?;
                d.clone()
            }
            (None, None) => "auto".to_string(),
        };
        let uds_mode = match (a.uds_mode, &file.uds_mode) {
            (Some(m), _) => m,
            (None, Some(FileMode::Int(n))) => {
                parse_mode(&n.to_string()).map_err(|e| in_file("uds_mode", e))?
            }
            (None, Some(FileMode::Str(s))) => parse_mode(s).map_err(|e| in_file("uds_mode", e))?,
            (None, None) => 0o660,
        };
        let addr = |key: &str, flag: Option<SocketAddr>, file: &Option<String>| match (flag, file) {
            (Some(x), _) => Ok(Some(x)),
            (None, Some(s)) => s
                .parse::<SocketAddr>()
                .map(Some)
                .map_err(|e| in_file(key, format!("{s:?}: {e} (expected HOST:PORT)"))),
            (None, None) => Ok(None),
        };
        let list = |flag: &Vec<u32>, file: &Option<Vec<u32>>| {
            if flag.is_empty() {
                file.clone().unwrap_or_default()
            } else {
                flag.clone()
            }
        };
        let model_from_file = if a.model.is_none() {
            a.config.clone()
        } else {
            None
        };
        let s = Settings {
            config: a.config.clone(),
            model,
            model_from_file,
            device,
            dtype,
            uds: a.uds.clone().or(file.uds),
            uds_mode,
            uds_group: a.uds_group.clone().or(file.uds_group),
            allow_uid: list(&a.allow_uids, &file.allow_uid),
            allow_gid: list(&a.allow_gids, &file.allow_gid),
            quic: addr("quic", a.quic, &file.quic)?,
            tls_cert: a.tls_cert.clone().or(file.tls_cert),
            tls_key: a.tls_key.clone().or(file.tls_key),
            client_ca: a.client_ca.clone().or(file.client_ca),
            allow_anonymous_loopback: a.allow_anonymous_loopback
                || file.allow_anonymous_loopback.unwrap_or(false),
            queue_capacity: a.queue_capacity.or(file.queue_capacity).unwrap_or(256),
            max_batch_tokens: a.max_batch_tokens.or(file.max_batch_tokens).unwrap_or(8192),
            max_batch_size: a.max_batch_size.or(file.max_batch_size).unwrap_or(32),
            max_attention_mib: a
                .max_attention_mib
                .or(file.max_attention_mib)
                .unwrap_or(crate::queue::DEFAULT_MAX_ATTENTION_BYTES >> 20),
            max_frame_bytes: a
                .max_frame_bytes
                .or(file.max_frame_bytes)
                .unwrap_or(1 << 20),
            max_inputs: a.max_inputs.or(file.max_inputs).unwrap_or(64),
            max_text_bytes: a
                .max_text_bytes
                .or(file.max_text_bytes)
                .unwrap_or(64 * 1024),
            max_in_flight: a.max_in_flight.or(file.max_in_flight).unwrap_or(64),
            max_connections: a.max_connections.or(file.max_connections).unwrap_or(256),
            max_receive_bytes: a
                .max_receive_bytes
                .or(file.max_receive_bytes)
                .unwrap_or(128 << 20),
            idle_timeout_secs: a.idle_timeout_secs.or(file.idle_timeout_secs).unwrap_or(60),
            frame_timeout_secs: a
                .frame_timeout_secs
                .or(file.frame_timeout_secs)
                .unwrap_or(10),
            drain_timeout_secs: a
                .drain_timeout_secs
                .or(file.drain_timeout_secs)
                .unwrap_or(10),
            metrics_addr: addr("metrics_addr", a.metrics_addr, &file.metrics_addr)?,
            test_stall_worker_after_secs: a.test_stall_worker_after_secs,
        };
        Ok(s)
    }

    pub fn device_choice(&self) -> anyhow::Result<DeviceChoice> {
        self.device.parse().map_err(|e: String| anyhow!("{e}"))
    }

    pub fn dtype_choice(&self) -> anyhow::Result<DTypeChoice> {
        self.dtype.parse().map_err(|e: String| anyhow!("{e}"))
    }

    /// The QUIC listener, checked for its certificate, key and client authentication.
    fn quic_options(&self) -> anyhow::Result<Option<QuicOptions>> {
        match (self.quic, &self.tls_cert, &self.tls_key) {
            (Some(listen), Some(cert), Some(key)) => {
                if self.client_ca.is_none() && !self.allow_anonymous_loopback {
                    bail!("--quic needs --client-ca (mTLS) or --allow-anonymous-loopback");
                }
                Ok(Some(QuicOptions {
                    listen,
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.client_ca.clone(),
                    allow_anonymous_loopback: self.allow_anonymous_loopback,
                }))
            }
            (Some(_), _, _) => bail!("--quic needs --tls-cert and --tls-key"),
            (None, _, _) => Ok(None),
        }
    }

    /// What the server runs with.
    pub fn serve_config(&self) -> anyhow::Result<ServeConfig> {
        let unix = match &self.uds {
            None => None,
            Some(path) => Some(UnixOptions {
                path: path.clone(),
                mode: self.uds_mode,
                group: match &self.uds_group {
                    None => None,
                    Some(g) => Some(
                        crate::transport::unix::group_id(g)
                            .with_context(|| format!("--uds-group: no group named {g:?}"))?,
                    ),
                },
                allow_uids: self.allow_uid.clone(),
                allow_gids: self.allow_gid.clone(),
            }),
        };
        Ok(ServeConfig {
            model: self.model.clone(),
            model_from_file: self.model_from_file.clone(),
            device: self.device_choice()?,
            dtype: self.dtype_choice()?,
            unix,
            quic: self.quic_options()?,
            connections: ConnectionLimits {
                max_connections: self.max_connections.max(1),
                max_in_flight: self.max_in_flight.max(1),
                max_frame_bytes: self.max_frame_bytes,
                // At least one frame of the largest size must fit.
                max_receive_bytes: self.max_receive_bytes.max(self.max_frame_bytes),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
                frame_timeout: Duration::from_secs(self.frame_timeout_secs.max(1)),
            },
            requests: RequestLimits {
                max_inputs: self.max_inputs.max(1),
                max_text_bytes: self.max_text_bytes,
            },
            scheduler: SchedulerConfig {
                queue_capacity: self.queue_capacity.max(1),
                max_batch_tokens: self.max_batch_tokens.max(1),
                // A job of more than a quarter of a full pass is bulk work.
                bulk_tokens: (self.max_batch_tokens / 4).max(1),
                max_batch_size: self.max_batch_size.max(1),
                max_attention_bytes: self.max_attention_mib.max(1).saturating_mul(1 << 20),
                stall_worker_after: self
                    .test_stall_worker_after_secs
                    .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                ..SchedulerConfig::default()
            },
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            metrics_addr: self.metrics_addr,
        })
    }
}

/// `classifyd check-config`: everything `serve` would check before it binds, without serving.
/// Prints `ok: ...` and the effective settings (as TOML) on success.
pub fn check(a: &ServeArgs) -> anyhow::Result<String> {
    let s = Settings::resolve(a)?;
    let prefix = |e: anyhow::Error| match &s.config {
        Some(p) => anyhow!("{}: {}", p.display(), one_line(&e)),
        None => anyhow!("{}", one_line(&e)),
    };
    let summary = validate(&s).map_err(prefix)?;
    let effective = toml::to_string(&s).context("printing the effective settings")?;
    let source = match &s.config {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    };
    Ok(format!("ok: {source}{summary}\n{effective}"))
}

/// The error and its causes joined by `: `, leaving out a cause the text already holds (the
/// TLS and load errors print their source themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn validate(s: &Settings) -> anyhow::Result<String> {
    let cfg = s.serve_config()?;
    if cfg.unix.is_none() && cfg.quic.is_none() {
        bail!("no listener: give uds and/or quic");
    }
    if !s.model.is_dir() {
        bail!("model: {}: not a directory", s.model.display());
    }
    // Loaded on the CPU, so the check runs where the daemon's GPU is absent or busy.
    let engine = Engine::load(&s.model, DeviceChoice::Cpu, DTypeChoice::Auto)?;
    let info = engine.info();
    let mut listeners = Vec::new();
    if let Some(u) = &cfg.unix {
        match u.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => bail!(
                "uds: {}: directory {} does not exist",
                u.path.display(),
                dir.display()
            ),
            _ => {}
        }
        listeners.push(format!("uds {}", u.path.display()));
    }
    if let Some(q) = &cfg.quic {
        crate::transport::tls::server_config(
            &q.cert,
            &q.key,
            q.client_ca.as_deref(),
            q.allow_anonymous_loopback,
            q.listen,
            &crate::transport::quic::QuicLimits::from(cfg.connections),
        )?;
        listeners.push(format!("quic {}", q.listen));
    }
    if let Some(m) = cfg.metrics_addr {
        listeners.push(format!("metrics {m}"));
    }
    Ok(format!(
        "model {} ({}, {} labels), {}",
        s.model.display(),
        info.architecture,
        info.labels.len(),
        listeners.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn unknown_key_is_named() {
        let e = FileConfig::parse("model = \"m\"\nqueue_capacty = 3\n").unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("queue_capacty") && e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn modes_parse_as_octal() {
        let f = FileConfig::parse("uds_mode = 660").unwrap();
        assert_eq!(f.uds_mode, Some(FileMode::Int(660)));
        let f = FileConfig::parse("uds_mode = \"640\"").unwrap();
        assert_eq!(f.uds_mode, Some(FileMode::Str("640".into())));
    }

    #[test]
    fn frame_timeout_comes_from_the_file_unless_a_flag_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "model = \"m\"\nframe_timeout_secs = 3\n").unwrap();
        let limits = |flags: &[&str]| {
            let argv = ["classifyd", "serve", "--config", path.to_str().unwrap()];
            let cli = crate::cli::Cli::try_parse_from(argv.iter().chain(flags)).unwrap();
            let crate::cli::Command::Serve(a) = cli.command else {
                panic!("not serve");
            };
            Settings::resolve(&a)
                .unwrap()
                .serve_config()
                .unwrap()
                .connections
        };
        assert_eq!(limits(&[]).frame_timeout, Duration::from_secs(3));
        assert_eq!(limits(&[]).max_receive_bytes, 128 << 20);
        // Never below one largest frame, or no request of that size could ever be read.
        let tight = limits(&["--max-receive-bytes", "10", "--max-frame-bytes", "4096"]);
        assert_eq!(tight.max_receive_bytes, 4096);
        let flagged = limits(&["--frame-timeout-secs", "7"]);
        assert_eq!(flagged.frame_timeout, Duration::from_secs(7));
        // Unrelated to the idle timeout, which keeps its default.
        assert_eq!(flagged.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/classifyd.toml");
        let f = FileConfig::from_path(&path).unwrap();
        assert_eq!(
            f.model.as_deref(),
            Some(Path::new("/var/lib/classifyd/model"))
        );
    }
}
