//! The `classifyd` command line: flags parsed here, turned into engine calls; errors go back to
//! `main` as `anyhow` for one line on stderr and a non-zero exit.

mod bench;
mod classify;
mod inspect;
mod man;
mod parity;
mod report;
pub(crate) mod serve;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::bench::Remote;
use crate::client::quic::QuicClientConfig;
use crate::engine::Engine;
use crate::settings::{CacheArgs, EngineArgs, ServeArgs};

pub use bench::BenchArgs;
pub use classify::{prediction_json, ClassifyArgs};
pub use report::error_line;

#[derive(Debug, Parser)]
#[command(
    name = "classifyd",
    version,
    about = "Low-latency transformer text classification"
)]
pub struct Cli {
    /// Log lines as `text` (compact; plain under the journal) or `json` (one object a line);
    /// also CLASSIFYD_LOG_FORMAT.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what a model directory holds: architecture, labels, parameters, limits, dtypes.
    Inspect(InspectArgs),
    /// Classify the texts given as arguments, or each line of stdin when none are given.
    Classify(Box<ClassifyArgs>),
    /// Serve classification over a Unix socket and/or QUIC until SIGTERM/SIGINT.
    Serve(Box<ServeArgs>),
    /// Check a `serve` configuration (--config FILE and/or flags) without serving: the file,
    /// the model, the TLS files and the addresses; prints the effective settings.
    CheckConfig(Box<ServeArgs>),
    /// Write a development CA, server and client certificate for trying QUIC with mTLS.
    Cert(CertArgs),
    /// Load a running daemon (closed or open loop) and report throughput and latency
    /// percentiles; with --model, the same texts through the engine in this process.
    Bench(Box<BenchArgs>),
    /// Write the man pages (classifyd.1 and one per subcommand) into a directory; for packaging.
    #[command(hide = true)]
    Manpages(ManpagesArgs),
    /// Classify the inputs of many model directories in one process, from JSON lines on stdin;
    /// for scripts/gpu-check.sh's parity step (see src/cli/parity.rs).
    #[command(hide = true)]
    Parity(parity::ParityArgs),
}

#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// Directory to write the pages into (created when missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct CertArgs {
    /// Directory to write ca.pem, server.pem, server-key.pem, client.pem, client-key.pem into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// DNS names or IP addresses the server certificate is valid for.
    #[arg(long = "name", value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print one JSON object instead of aligned text.
    #[arg(long)]
    pub json: bool,
    /// Also run one forward pass of one row of N tokens and count the tensors it creates
    /// (kernel launches and views on a GPU) and those it makes from host data (uploads on a
    /// GPU); see docs/GPU.md.
    #[arg(long, value_name = "N")]
    pub ops: Option<usize>,
    /// Also list every matmul weight the CPU kernels run and in which: int8 or f32, its
    /// shape, and its checkpoint names (fused projections list each part).
    #[arg(long)]
    pub weights: bool,
}

/// The model to run in this process instead of asking a daemon; shared by `classify` and
/// `bench` (for `bench`, the baseline the transport's cost is measured against).
#[derive(Debug, Args)]
#[command(next_help_heading = "Model")]
pub struct LocalArgs {
    /// Run in this process with the model in DIR.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

impl LocalArgs {
    /// How this process's own load uses the weights cache.
    pub fn load_options(&self) -> crate::engine::LoadOptions {
        let c = &self.cache;
        crate::engine::LoadOptions::from_settings(c.cache_dir.as_deref(), c.no_weights_cache)
    }
}

/// How to reach a running daemon; shared by `classify` and `bench`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Daemon")]
pub struct RemoteArgs {
    /// Ask a running daemon on this Unix socket; without --model, --uds or --quic,
    /// $CLASSIFYD_SOCKET names it (as for the Python client).
    #[arg(long, value_name = "PATH")]
    pub uds: Option<PathBuf>,
    /// Ask a running daemon over QUIC at this address; HOST may be a name or an IP address.
    #[arg(long, value_name = "HOST:PORT", requires = "ca")]
    pub quic: Option<String>,
    /// CA (PEM) that the QUIC server's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name the server certificate must carry [default: the host of --quic when it is a name,
    /// else localhost].
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Wait up to SECS for the daemon to answer (its socket to appear, a restart to end)
    /// instead of failing at once.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub wait: Option<std::time::Duration>,
    /// Give up on a QUIC connection attempt that gets no answer within SECS.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "5")]
    pub connect_timeout: std::time::Duration,
    /// Which of the daemon's models answers, by the name it serves it under (`serve --model
    /// NAME=DIR`) [default: the daemon's default model].
    #[arg(long, value_name = "NAME", conflicts_with = "model")]
    pub name: Option<String>,
}

/// Seconds as a duration: a finite number, 0 or more.
fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .and_then(|v| std::time::Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds (0 or more)"))
}

/// The environment variable that names the daemon's socket, for the CLI and the Python client.
const SOCKET_ENV: &str = "CLASSIFYD_SOCKET";

impl RemoteArgs {
    /// The daemon these flags name: --uds, else --quic, else the socket $CLASSIFYD_SOCKET names;
    /// None when none of them is given.
    pub fn remote(&self) -> anyhow::Result<Option<Remote>> {
        if let Some(path) = &self.uds {
            return Ok(Some(Remote::Uds(path.clone())));
        }
        if let Some(quic) = &self.quic {
            let (host, addr) = resolve(quic)?;
            let server_name = self.server_name.clone().unwrap_or_else(|| {
                if host.parse::<std::net::IpAddr>().is_ok() {
                    "localhost".to_string()
                } else {
                    host
                }
            });
            return Ok(Some(Remote::Quic(QuicClientConfig {
                addr,
                server_name,
                ca: self.ca.clone().context("--quic needs --ca")?,
                cert: self.cert.clone(),
                key: self.key.clone(),
            })));
        }
        Ok(std::env::var_os(SOCKET_ENV)
            .filter(|v| !v.is_empty())
            .map(|v| Remote::Uds(PathBuf::from(v))))
    }

    /// How the first connection waits for the daemon.
    pub fn patience(&self) -> crate::client::Patience {
        crate::client::Patience {
            wait: self.wait,
            attempt: self.connect_timeout,
        }
    }
}

/// `HOST:PORT` (HOST a name, an IPv4 address or a bracketed IPv6 one) → the host as written
/// and its first address.
fn resolve(quic: &str) -> anyhow::Result<(String, std::net::SocketAddr)> {
    use std::net::ToSocketAddrs;
    let (host, port) = quic
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && !p.is_empty())
        .with_context(|| format!("--quic {quic:?}: expected HOST:PORT, e.g. localhost:4433"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("--quic {quic:?}: {port:?} is not a port number"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (bare, port)
        .to_socket_addrs()
        .with_context(|| format!("--quic {quic:?}: cannot resolve {bare:?}"))?
        .next()
        .with_context(|| format!("--quic {quic:?}: {bare:?} has no address"))?;
    Ok((bare.to_string(), addr))
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Inspect(a) => inspect::inspect(a),
        Command::Classify(a) => classify::classify(*a),
        Command::Serve(a) => serve::serve(*a),
        Command::Bench(a) => bench::bench(*a),
        Command::Parity(a) => parity::parity(a),
        Command::CheckConfig(a) => {
            print!("{}", serve::check_config(&a)?);
            Ok(0)
        }
        Command::Manpages(a) => {
            for page in man::write_pages(&a.out)? {
                println!("{}", page.display());
            }
            Ok(0)
        }
        Command::Cert(a) => {
            let pki = crate::wire::cert::write_dev_pki(&a.out, &a.names)?;
            for (what, path) in [
                ("ca", &pki.ca),
                ("server certificate", &pki.server),
                ("server key", &pki.server_key),
                ("client certificate", &pki.client),
                ("client key", &pki.client_key),
            ] {
                println!("{what:<20} {}", path.display());
            }
            Ok(0)
        }
    }
}

pub(crate) fn load(m: &ModelArgs) -> anyhow::Result<Engine> {
    Ok(Engine::load(&m.model, m.engine.device, m.engine.dtype)?)
}
