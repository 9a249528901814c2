//! The `classifyd` command line: flags parsed here, turned into engine calls; errors go back to
//! `main` as `anyhow` for one line on stderr and a non-zero exit.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::bench::{self, Arrival, Load, Plan, Remote};
use crate::client::quic::QuicClientConfig;
use crate::client::Client;
use crate::engine::{DTypeChoice, DeviceChoice, Engine, Prediction};
use crate::protocol::pb;
use crate::server;
use crate::tokenize::Input;

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
    Classify(ClassifyArgs),
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
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["model", "uds", "quic"])))]
pub struct BenchArgs {
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Closed loop: clients each keeping one request in flight; a list sweeps [default: 1].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "N,..",
        conflicts_with = "rate"
    )]
    pub concurrency: Vec<usize>,
    /// Open loop: requests per second sent on schedule whatever the answers do; a list sweeps.
    /// Latency counts from the scheduled send time.
    #[arg(long, value_delimiter = ',', value_name = "R,..")]
    pub rate: Vec<f64>,
    /// Open loop: how sends are spaced.
    #[arg(long, value_enum, default_value = "poisson")]
    pub arrival: Arrival,
    /// Open loop: connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Open loop: requests in flight past which sends are counted as CLIENT_BACKLOG instead.
    #[arg(long, default_value_t = 10_000)]
    pub max_outstanding: usize,
    /// Measured seconds per load level.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Unrecorded seconds before each load level's measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Texts to send, one per line [default: a built-in sample of 40 reviews].
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// Inputs each request carries.
    #[arg(long, default_value_t = 1)]
    pub inputs_per_request: usize,
    /// Closed loop: pause this many milliseconds before each request (the next request after
    /// a quiet spell); 0 sends back to back.
    #[arg(long, default_value_t = 0.0, value_name = "MS")]
    pub gap_ms: f64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
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
pub struct ServeArgs {
    /// TOML file whose keys are these flags' long names with `_` for `-`; flags win over it,
    /// and relative paths in it are relative to its directory.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json); required
    /// unless the config file names it.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// auto (CUDA when built with it and present), cpu, cuda or cuda:N [default: auto].
    #[arg(long, value_parser = parse_device)]
    pub device: Option<String>,
    /// auto (F32 on CPU, F16 on CUDA), f32, f16 or bf16 [default: auto].
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<String>,
    /// Unix socket path to listen on.
    #[arg(long, value_name = "PATH")]
    pub uds: Option<PathBuf>,
    /// Permission bits of the socket file, in octal [default: 660].
    #[arg(long, value_parser = crate::config::parse_mode)]
    pub uds_mode: Option<u32>,
    /// Group (name or gid) to give the socket file.
    #[arg(long, value_name = "GROUP")]
    pub uds_group: Option<String>,
    /// Only peers with this uid may connect (repeatable; with --allow-gid, either matches).
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uids: Vec<u32>,
    /// Only peers with this gid may connect (repeatable).
    #[arg(long = "allow-gid", value_name = "GID")]
    pub allow_gids: Vec<u32>,
    /// QUIC address to listen on, e.g. 127.0.0.1:4433 (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "HOST:PORT")]
    pub quic: Option<std::net::SocketAddr>,
    /// PEM certificate chain for QUIC.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for QUIC.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that QUIC client certificates must chain to.
    #[arg(long, value_name = "FILE", conflicts_with = "allow_anonymous_loopback")]
    pub client_ca: Option<PathBuf>,
    /// Accept QUIC clients without a certificate; only on a loopback address.
    #[arg(long)]
    pub allow_anonymous_loopback: bool,
    /// Requests waiting for the engine before new ones are answered OVERLOADED [default: 256].
    #[arg(long)]
    pub queue_capacity: Option<usize>,
    /// Padded tokens (rows × longest row) one forward pass may take [default: 8192].
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Rows one forward pass may take [default: 32].
    #[arg(long)]
    pub max_batch_size: Option<usize>,
    /// Attention working set one forward pass may take, in MiB: batches are cut into passes
    /// under it, and a single input over it is refused [default: 512].
    #[arg(long)]
    pub max_attention_mib: Option<usize>,
    /// Largest request frame accepted, in bytes [default: 1048576].
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    /// Inputs one request may carry [default: 64].
    #[arg(long)]
    pub max_inputs: Option<usize>,
    /// Bytes of text one input may carry [default: 65536].
    #[arg(long)]
    pub max_text_bytes: Option<usize>,
    /// Requests in flight per connection; past it the connection is not read [default: 64].
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Connections open at once, per listener [default: 256].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds before an idle connection is closed [default: 60].
    #[arg(long)]
    pub idle_timeout_secs: Option<u64>,
    /// Request bytes a QUIC listener receives at once over all its streams; a request that
    /// would go over is answered OVERLOADED without being read [default: 134217728].
    #[arg(long)]
    pub max_receive_bytes: Option<usize>,
    /// Seconds a request frame may take to arrive once its first byte has, and a response to be
    /// taken by the peer; past it the connection (Unix socket) or stream (QUIC) is closed
    /// [default: 10].
    #[arg(long)]
    pub frame_timeout_secs: Option<u64>,
    /// Seconds in-flight requests get to finish after SIGTERM before they are answered
    /// UNAVAILABLE [default: 10].
    #[arg(long)]
    pub drain_timeout_secs: Option<u64>,
    /// Serve Prometheus metrics, /healthz and /readyz over HTTP on this (loopback) address.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Test-only hook for the systemd watchdog tests (tests/daemon/systemd.rs): the engine
    /// thread stops beating for good this many seconds after start, like a hung device.
    #[arg(long, value_name = "SECS", hide = true)]
    pub test_stall_worker_after_secs: Option<f64>,
    /// Test-only hook for the fault tests (tests/daemon/faults.rs): the next N forward passes
    /// panic in the engine call.
    #[arg(long, value_name = "N", hide = true)]
    pub test_fail_batches: Option<u64>,
    /// Test-only hook for the fault tests: the engine thread holds each batch it has picked
    /// while this file exists.
    #[arg(long, value_name = "PATH", hide = true)]
    pub test_hold_batches_while: Option<PathBuf>,
    /// Test-only hook: the bulk lane's engine thread holds each batch it has picked while this
    /// file exists (the fast lane goes on).
    #[arg(long, value_name = "PATH", hide = true)]
    pub test_hold_bulk_while: Option<PathBuf>,
}

fn parse_device(s: &str) -> Result<String, String> {
    s.parse::<DeviceChoice>().map(|_| s.to_string())
}

fn parse_dtype(s: &str) -> Result<String, String> {
    s.parse::<DTypeChoice>().map(|_| s.to_string())
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// auto (CUDA when built with it and present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// auto (F32 on CPU, F16 on CUDA), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: DTypeChoice,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print one JSON object instead of aligned text.
    #[arg(long)]
    pub json: bool,
}

/// The model to run in this process instead of asking a daemon; shared by `classify` and
/// `bench` (for `bench`, the baseline the transport's cost is measured against).
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Run in this process with the model in DIR.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, default_value = "auto")]
    pub dtype: DTypeChoice,
}

/// How to reach a running daemon; shared by `classify` and `bench`.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// Ask a running daemon on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub uds: Option<PathBuf>,
    /// Ask a running daemon over QUIC at this address.
    #[arg(long, value_name = "HOST:PORT", requires = "ca")]
    pub quic: Option<std::net::SocketAddr>,
    /// CA (PEM) that the QUIC server's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name the server certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

impl RemoteArgs {
    /// The daemon these flags name, or None when neither --uds nor --quic was given.
    pub fn remote(&self) -> anyhow::Result<Option<Remote>> {
        Ok(match (&self.uds, &self.quic) {
            (Some(path), _) => Some(Remote::Uds(path.clone())),
            (None, Some(addr)) => Some(Remote::Quic(QuicClientConfig {
                addr: *addr,
                server_name: self.server_name.clone(),
                ca: self.ca.clone().context("--quic needs --ca")?,
                cert: self.cert.clone(),
                key: self.key.clone(),
            })),
            (None, None) => None,
        })
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["model", "uds", "quic"])))]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Read tab-separated text pairs (premise<TAB>hypothesis) from stdin.
    #[arg(long)]
    pub pair: bool,
    /// Refuse texts longer than the model's maximum instead of truncating them.
    #[arg(long)]
    pub no_truncate: bool,
    /// Texts classified in one forward pass when reading stdin.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub batch_size: u16,
    /// Texts to classify; everything after `--` is taken literally.
    #[arg(value_name = "TEXT")]
    pub texts: Vec<String>,
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Inspect(a) => inspect(a),
        Command::Classify(a) => classify(a),
        Command::Serve(a) => serve(*a),
        Command::Bench(a) => bench_cmd(*a),
        Command::CheckConfig(a) => {
            print!("{}", crate::config::check(&a)?);
            Ok(0)
        }
        Command::Cert(a) => {
            let pki = crate::cert::write_dev_pki(&a.out, &a.names)?;
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

fn load(m: &ModelArgs) -> anyhow::Result<Engine> {
    Ok(Engine::load(&m.model, m.device, m.dtype)?)
}

fn inspect(a: InspectArgs) -> anyhow::Result<i32> {
    let engine = load(&a.model)?;
    let info = engine.info();
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(info)?)?;
    } else {
        writeln!(out, "architecture   {}", info.architecture)?;
        writeln!(out, "labels         {}", info.labels.join(", "))?;
        writeln!(out, "problem type   {}", info.problem_type)?;
        writeln!(out, "parameters     {}", info.parameters)?;
        writeln!(out, "max length     {} tokens", info.max_length)?;
        writeln!(out, "weight dtype   {}", info.weight_dtype)?;
        writeln!(out, "compute dtype  {}", info.compute_dtype)?;
        writeln!(out, "device         {}", info.device)?;
    }
    Ok(0)
}

/// The JSON line printed for one prediction.
pub fn prediction_json(p: &Prediction) -> Value {
    let scores: Map<String, Value> = p
        .scores
        .iter()
        .map(|(l, s)| (l.clone(), json!(s)))
        .collect();
    json!({
        "label": p.label,
        "score": p.score,
        "scores": scores,
        "logits": p.logits,
        "tokens": p.tokens,
    })
}

fn parse_pair(line: &str) -> Result<Input, String> {
    match line.split_once('\t') {
        Some((a, b)) => Ok(Input::Pair(a.to_string(), b.to_string())),
        None => Err("expected two texts separated by a tab".to_string()),
    }
}

/// Where `classify` sends its inputs.
enum Backend {
    Local(Box<Engine>),
    Remote {
        runtime: tokio::runtime::Runtime,
        client: Client,
        labels: Vec<String>,
    },
}

impl Backend {
    fn open(a: &ClassifyArgs) -> anyhow::Result<Self> {
        if let Some(model) = &a.local.model {
            return Ok(Backend::Local(Box::new(Engine::load(
                model,
                a.local.device,
                a.local.dtype,
            )?)));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let remote = a
            .remote
            .remote()?
            .context("give --model, --uds or --quic")?;
        let client = runtime.block_on(remote.connect())?;
        let info = runtime.block_on(client.info())?;
        let labels = match info.body {
            Some(pb::response::Body::Info(i)) => i.labels,
            _ => bail!(
                "server answered the info request with {}: {}",
                info.status,
                info.message
            ),
        };
        Ok(Backend::Remote {
            runtime,
            client,
            labels,
        })
    }

    /// One JSON line per input, in input order; an error object where an input failed.
    fn classify(&self, inputs: &[Input], truncate: bool) -> anyhow::Result<Vec<Value>> {
        match self {
            Backend::Local(engine) => Ok(engine
                .classify(inputs, truncate)?
                .into_iter()
                .map(|r| match r {
                    Ok(p) => prediction_json(&p),
                    Err(e) => json!({ "error": e.to_string() }),
                })
                .collect()),
            Backend::Remote {
                runtime,
                client,
                labels,
            } => {
                let options = pb::Options {
                    top_k: 0,
                    return_logits: true,
                    no_truncate: !truncate,
                };
                // One request per input, pipelined, so one bad input fails alone.
                let calls = inputs.iter().map(|input| {
                    let wire = match input {
                        Input::Text(t) => crate::client::text(t.clone()),
                        Input::Pair(a, b) => crate::client::pair(a.clone(), b.clone()),
                        Input::Ids(ids) => pb::Input {
                            kind: Some(pb::input::Kind::Ids(pb::TokenIds { ids: ids.clone() })),
                        },
                    };
                    client.classify(vec![wire], options)
                });
                let responses = runtime.block_on(futures::future::join_all(calls));
                Ok(responses
                    .into_iter()
                    .map(|r| match r {
                        Err(e) => json!({ "error": e.to_string() }),
                        Ok(resp) => remote_json(resp, labels),
                    })
                    .collect())
            }
        }
    }
}

/// The same JSON as [`prediction_json`], from a daemon's response (scores back in label order).
fn remote_json(resp: pb::Response, labels: &[String]) -> Value {
    let status = pb::Status::try_from(resp.status).unwrap_or(pb::Status::Internal);
    let result = match resp.body {
        Some(pb::response::Body::Classify(mut c)) if status == pb::Status::Ok => c.results.pop(),
        _ => None,
    };
    let Some(r) = result else {
        return json!({ "error": format!("{}: {}", status.as_str_name(), resp.message) });
    };
    let scores: Map<String, Value> = labels
        .iter()
        .filter_map(|l| {
            r.scores
                .iter()
                .find(|s| &s.label == l)
                .map(|s| (l.clone(), json!(s.score)))
        })
        .collect();
    json!({
        "label": r.label,
        "score": r.score,
        "scores": scores,
        "logits": r.logits,
        "tokens": r.tokens,
    })
}

fn classify(a: ClassifyArgs) -> anyhow::Result<i32> {
    if a.pair && !a.texts.is_empty() {
        bail!("--pair reads its pairs from stdin; give no TEXT arguments with it");
    }
    let backend = Backend::open(&a)?;
    let truncate = !a.no_truncate;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failures = 0usize;
    let mut emit = |chunk: Vec<Result<Input, String>>, out: &mut dyn Write| -> anyhow::Result<()> {
        let inputs: Vec<Input> = chunk
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut results = backend.classify(&inputs, truncate)?.into_iter();
        for c in chunk {
            let line = match c {
                Err(msg) => json!({ "error": msg }),
                Ok(_) => results
                    .next()
                    .unwrap_or_else(|| json!({ "error": "no result" })),
            };
            if line.get("error").is_some() {
                failures += 1;
            }
            writeln!(out, "{line}")?;
        }
        Ok(())
    };
    if !a.texts.is_empty() {
        let chunk = a.texts.iter().map(|t| Ok(Input::Text(t.clone()))).collect();
        emit(chunk, &mut out)?;
    } else {
        let stdin = std::io::stdin().lock();
        let mut chunk = Vec::new();
        for (n, line) in stdin.split(b'\n').enumerate() {
            let line = line.context("reading stdin")?;
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            let item = match std::str::from_utf8(line) {
                Err(e) => Err(format!("line {}: not UTF-8 ({e})", n + 1)),
                Ok(s) if a.pair => parse_pair(s).map_err(|m| format!("line {}: {m}", n + 1)),
                Ok(s) => Ok(Input::Text(s.to_string())),
            };
            chunk.push(item);
            if chunk.len() == a.batch_size as usize {
                emit(std::mem::take(&mut chunk), &mut out)?;
                out.flush()?;
            }
        }
        if !chunk.is_empty() {
            emit(chunk, &mut out)?;
        }
    }
    out.flush()?;
    Ok(if failures > 0 { 2 } else { 0 })
}

fn serve(a: ServeArgs) -> anyhow::Result<i32> {
    let cfg = crate::config::Settings::resolve(&a)?.serve_config()?;
    if a.test_fail_batches.is_some()
        || a.test_hold_batches_while.is_some()
        || a.test_hold_bulk_while.is_some()
    {
        crate::worker::arm_test_hooks(crate::worker::TestHooks {
            fail_batches: a.test_fail_batches.unwrap_or(0).into(),
            hold_while: a.test_hold_batches_while.clone(),
            hold_bulk_while: a.test_hold_bulk_while.clone(),
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("classifyd-io")
        .enable_all()
        .build()?;
    runtime.block_on(server::run(cfg, server::stop_signal()))?;
    Ok(0)
}

fn secs(flag: &str, v: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("{flag} {v}: must be a number of seconds, 0 or more"))
}

fn bench_cmd(a: BenchArgs) -> anyhow::Result<i32> {
    let loads: Vec<Load> = if a.rate.is_empty() {
        let levels = if a.concurrency.is_empty() {
            vec![1]
        } else {
            a.concurrency.clone()
        };
        levels
            .into_iter()
            .map(|concurrency| Load::Closed { concurrency })
            .collect()
    } else {
        a.rate
            .iter()
            .map(|&rate| Load::Open {
                rate,
                arrival: a.arrival,
            })
            .collect()
    };
    let plan = Plan {
        loads,
        warmup: secs("--warmup-secs", a.warmup_secs)?,
        duration: secs("--duration-secs", a.duration_secs)?,
        texts: std::sync::Arc::new(bench::load_texts(a.texts.as_deref())?),
        inputs_per_request: a.inputs_per_request,
        gap: std::time::Duration::try_from_secs_f64(a.gap_ms / 1000.0).map_err(|_| {
            anyhow::anyhow!(
                "--gap-ms {}: must be a number of milliseconds, 0 or more",
                a.gap_ms
            )
        })?,
        connections: a.connections,
        max_outstanding: a.max_outstanding,
        progress: !a.quiet,
    };
    bench::validate(&plan)?;
    let (target, runs) = match (&a.local.model, a.remote.remote()?) {
        (Some(dir), _) => {
            let engine = Engine::load(dir, a.local.device, a.local.dtype)?;
            let i = engine.info();
            let target = format!(
                "in-process {} ({}, {} {})",
                dir.display(),
                i.architecture,
                i.device,
                i.compute_dtype
            );
            (target, bench::run_local(&engine, &plan)?)
        }
        (None, Some(remote)) => {
            // One thread: the generator should take as little CPU from a daemon on the same
            // host as it can; the open loop's schedule is kept by its own thread anyway.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let probe = remote.connect().await?;
                let info = match probe.info().await?.body {
                    Some(pb::response::Body::Info(i)) => i,
                    _ => bail!("the daemon did not answer the info request"),
                };
                let target = format!(
                    "{} ({} revision {}, {} {})",
                    match &remote {
                        Remote::Uds(p) => format!("uds {}", p.display()),
                        Remote::Quic(c) => format!("quic {}", c.addr),
                    },
                    info.model,
                    info.revision,
                    info.device,
                    info.dtype
                );
                anyhow::Ok((target, bench::run_remote(&remote, &plan).await?))
            })?
        }
        (None, None) => bail!("give --model, --uds or --quic"),
    };
    if a.json {
        let doc = json!({
            "target": target,
            "texts": plan.texts.len(),
            "inputs_per_request": plan.inputs_per_request,
            "gap_ms": plan.gap.as_secs_f64() * 1000.0,
            "warmup_s": plan.warmup.as_secs_f64(),
            "runs": runs.iter().map(bench::RunReport::json).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else {
        print!("{}", bench::table(&target, &runs));
    }
    let failed = runs.iter().any(|r| r.rec.ok == 0);
    Ok(if failed { 2 } else { 0 })
}
