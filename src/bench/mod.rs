//! `classifyd bench`: a load generator for a running daemon (or, for reference, the engine in
//! this process), modelled on perf_analyzer.
//!
//! Two kinds of load:
//! - closed loop: N clients, each sending its next request when the previous one is answered;
//!   latency counts from the send.
//! - open loop: requests sent on a schedule (constant or Poisson arrivals) whatever the answers
//!   do; latency counts from the *scheduled* send time, so a server that falls behind shows its
//!   queueing instead of slowing the generator down and hiding it (coordinated omission).
//!
//! Each load level runs a warm-up (not recorded), then the measured window.

mod load;
mod report;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use load::{run_local, run_remote, Remote};
pub use report::{table, Recorder, RunReport};

/// Texts used when none are given: short product and film reviews of 8 to 40 tokens.
pub const SAMPLE_TEXTS: &str = include_str!("sample.txt");

/// How the open loop spaces its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrival {
    // Plain comments: a documented variant would switch `bench --help` to clap's long layout,
    // unlike every other command's; `--arrival`'s own help says what each does.
    // Exactly 1/rate apart.
    Constant,
    // Exponential gaps with mean 1/rate, as independent users produce.
    Poisson,
}

impl Arrival {
    pub fn as_str(self) -> &'static str {
        match self {
            Arrival::Constant => "constant",
            Arrival::Poisson => "poisson",
        }
    }
}

/// One load level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    Closed { concurrency: usize },
    Open { rate: f64, arrival: Arrival },
}

impl Load {
    pub fn label(&self) -> String {
        match self {
            Load::Closed { concurrency } => format!("c={concurrency}"),
            Load::Open { rate, .. } => format!("{rate} req/s"),
        }
    }
}

/// Everything but the target.
#[derive(Debug, Clone)]
pub struct Plan {
    pub loads: Vec<Load>,
    pub warmup: Duration,
    pub duration: Duration,
    pub texts: Arc<Vec<String>>,
    pub inputs_per_request: usize,
    /// Closed loop: each client pauses this long before each request, the way a caller with
    /// quiet spells between its requests lives (zero: back to back). Latency counts from the
    /// send, after the pause.
    pub gap: Duration,
    /// Open loop: connections the requests are spread over (each pipelines).
    pub connections: usize,
    /// Open loop: requests in flight past which new ones are counted as `CLIENT_BACKLOG`
    /// instead of sent, so a dead server cannot make the generator eat all memory.
    pub max_outstanding: usize,
    pub progress: bool,
    /// The daemon's model the requests name (`""`: its default).
    pub model: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("reading texts from {path}: {source}")]
    Texts {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has no non-empty lines")]
    NoTexts(String),
    #[error("{0}")]
    Plan(String),
}

/// The texts to send: one per non-empty line of `path`, or the built-in sample.
pub fn load_texts(path: Option<&Path>) -> Result<Vec<String>, BenchError> {
    let (name, body) = match path {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|source| BenchError::Texts {
                path: p.display().to_string(),
                source,
            })?,
        ),
        None => ("the built-in sample".to_string(), SAMPLE_TEXTS.to_string()),
    };
    let texts: Vec<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if texts.is_empty() {
        return Err(BenchError::NoTexts(name));
    }
    Ok(texts)
}

/// Checks a plan before any connection is made, so a typo fails in milliseconds.
pub fn validate(plan: &Plan) -> Result<(), BenchError> {
    if plan.loads.is_empty() {
        return Err(BenchError::Plan("no load level given".into()));
    }
    for l in &plan.loads {
        match l {
            Load::Closed { concurrency: 0 } => {
                return Err(BenchError::Plan("--concurrency must be at least 1".into()))
            }
            Load::Open { rate, .. } if !(rate.is_finite() && *rate > 0.0 && *rate <= 1e6) => {
                return Err(BenchError::Plan(format!(
                    "--rate {rate}: must be above 0 and at most 1000000 req/s"
                )))
            }
            _ => {}
        }
    }
    if plan.duration.is_zero() {
        return Err(BenchError::Plan("--duration-secs must be above 0".into()));
    }
    if !plan.gap.is_zero() && plan.loads.iter().any(|l| matches!(l, Load::Open { .. })) {
        return Err(BenchError::Plan(
            "--gap-ms paces the closed loop; the open loop's pacing is --rate".into(),
        ));
    }
    if plan.inputs_per_request == 0 || plan.connections == 0 || plan.max_outstanding == 0 {
        return Err(BenchError::Plan(
            "--inputs-per-request, --connections and --max-outstanding must be at least 1".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_texts_load_and_blank_lines_are_skipped() {
        assert!(load_texts(None).unwrap().len() >= 40);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        std::fs::write(&p, "a\n\n  \nb\n").unwrap();
        assert_eq!(load_texts(Some(&p)).unwrap(), vec!["a", "b"]);
        std::fs::write(&p, "\n\n").unwrap();
        assert!(matches!(load_texts(Some(&p)), Err(BenchError::NoTexts(_))));
        assert!(matches!(
            load_texts(Some(&dir.path().join("missing"))),
            Err(BenchError::Texts { .. })
        ));
    }

    #[test]
    fn bad_plans_are_refused() {
        let base = Plan {
            loads: vec![Load::Closed { concurrency: 1 }],
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            texts: Arc::new(vec!["x".into()]),
            inputs_per_request: 1,
            gap: Duration::ZERO,
            connections: 1,
            max_outstanding: 1,
            progress: false,
            model: String::new(),
        };
        assert!(validate(&base).is_ok());
        for loads in [
            vec![],
            vec![Load::Closed { concurrency: 0 }],
            vec![Load::Open {
                rate: f64::NAN,
                arrival: Arrival::Poisson,
            }],
            vec![Load::Open {
                rate: 0.0,
                arrival: Arrival::Constant,
            }],
        ] {
            let p = Plan {
                loads,
                ..base.clone()
            };
            assert!(validate(&p).is_err(), "{:?}", p.loads);
        }
        let paced_open = Plan {
            loads: vec![Load::Open {
                rate: 10.0,
                arrival: Arrival::Poisson,
            }],
            gap: Duration::from_millis(50),
            ..base.clone()
        };
        assert!(validate(&paced_open).is_err());
        let paced = Plan {
            gap: Duration::from_millis(50),
            ..base
        };
        assert!(validate(&paced).is_ok());
    }
}
