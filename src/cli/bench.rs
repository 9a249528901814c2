//! `bench`: load a daemon or the engine in this process and report latency.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use serde_json::json;

use super::{LocalArgs, RemoteArgs};
use crate::bench::{self, Arrival, Load, Plan, Remote};
use crate::engine::Engine;
use crate::wire::protocol::pb;

#[derive(Debug, Args)]
// At most one target; none at all falls back to $CLASSIFYD_SOCKET (RemoteArgs::remote).
#[command(group(clap::ArgGroup::new("target").args(["model", "uds", "quic"])))]
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
    /// Open loop: how sends are spaced: constant (exactly 1/rate apart) or poisson
    /// (exponential gaps with mean 1/rate, as independent users produce).
    #[arg(long, value_enum, default_value = "poisson", value_name = "KIND")]
    pub arrival: Arrival,
    /// Open loop: connections the requests are spread over.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub connections: usize,
    /// Open loop: requests in flight past which sends are counted as CLIENT_BACKLOG instead.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_outstanding: usize,
    /// Measured seconds per load level.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration_secs: f64,
    /// Unrecorded seconds before each load level's measurement.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub warmup_secs: f64,
    /// Texts to send, one per line [default: a built-in sample of 40 reviews].
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// Inputs each request carries.
    #[arg(long, default_value_t = 1, value_name = "N")]
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

fn secs(flag: &str, v: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("{flag} {v}: must be a number of seconds, 0 or more"))
}

pub(crate) fn bench(a: BenchArgs) -> anyhow::Result<i32> {
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
        model: a.remote.name.clone().unwrap_or_default(),
    };
    bench::validate(&plan)?;
    let remote = match &a.local.model {
        Some(_) => None,
        None => a.remote.remote()?,
    };
    let (target, runs) = match (&a.local.model, remote) {
        (Some(dir), _) => {
            let engine = Engine::load_with(
                dir,
                a.local.engine.device,
                a.local.engine.dtype,
                &a.local.load_options(),
            )?;
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
                let probe = remote.connect_with(a.remote.patience()).await?;
                let info = match probe.info().await?.body {
                    Some(pb::response::Body::Info(i)) => i,
                    _ => bail!("the daemon did not answer the info request"),
                };
                let m = super::classify::served_model(&info, a.remote.name.as_deref())?;
                let target = format!(
                    "{} ({} revision {}, {} {})",
                    match &remote {
                        Remote::Uds(p) => format!("uds {}", p.display()),
                        Remote::Quic(c) => format!("quic {}", c.addr),
                    },
                    m.name,
                    m.revision,
                    m.device,
                    m.dtype
                );
                anyhow::Ok((target, bench::run_remote(&remote, &plan).await?))
            })?
        }
        (None, None) => {
            bail!("give --model DIR, --uds PATH or --quic HOST:PORT (or set CLASSIFYD_SOCKET)")
        }
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
