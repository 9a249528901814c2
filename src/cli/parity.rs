//! `classifyd parity` (hidden): many model directories classified in one process, for
//! `scripts/gpu-check.sh`'s parity step.
//!
//! That step checks every test fixture at three dtypes. As one `classify` process per fixture,
//! dtype and input kind, it was a hundred processes, each opening the GPU and loading its kernels
//! again. Here one process per dtype reads jobs (a model directory and its inputs), one JSON line
//! each on stdin, and answers each with one line on stdout, as `classify` prints answers. A job
//! that takes longer than `--job-timeout-secs` is reported by name and ends the process: a
//! pass stuck on a device cannot be taken back, and the jobs after it are the caller's to
//! report as not run.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::engine::tokenize::Input;
use crate::engine::{Engine, LoadOptions};
use crate::settings::EngineArgs;

use super::classify::answer_json;

#[derive(Debug, Args)]
pub struct ParityArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Seconds one job (a model's load and all its inputs) may take before the process reports
    /// it and exits with status 3.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub job_timeout_secs: u64,
}

/// One line of stdin.
#[derive(Debug, serde::Deserialize)]
struct Job {
    /// Named again in the answer, so the caller can match them.
    id: String,
    model: PathBuf,
    /// `[text]` or `[text, text_pair]` each.
    inputs: Vec<Vec<String>>,
}

/// Inputs per `classify_with` call: `classify --batch-size`'s default.
const CHUNK: usize = 64;

/// Exit status when a job overran its time.
const TIMED_OUT: i32 = 3;

pub(crate) fn parity(a: ParityArgs) -> anyhow::Result<i32> {
    let jobs: Vec<Job> = std::io::stdin()
        .lock()
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.as_ref().is_ok_and(|l| l.trim().is_empty()))
        .map(|(i, l)| {
            let l = l.context("reading stdin")?;
            serde_json::from_str(&l).with_context(|| format!("stdin line {}", i + 1))
        })
        .collect::<anyhow::Result<_>>()?;
    let (device, dtype) = (a.engine.device, a.engine.dtype);
    let (tx, rx) = mpsc::channel::<Value>();
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    // The jobs run on a thread of their own so that this one can give up on a stuck one.
    std::thread::spawn(move || {
        for job in jobs {
            let started = Instant::now();
            let line = match run(&job, device, dtype) {
                Ok(answers) => json!({
                    "id": job.id,
                    "answers": answers,
                    "seconds": started.elapsed().as_secs_f64(),
                }),
                Err(e) => json!({ "id": job.id, "error": format!("{e:#}") }),
            };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let limit = Duration::from_secs(a.job_timeout_secs);
    let mut out = std::io::stdout().lock();
    for id in ids {
        match rx.recv_timeout(limit) {
            Ok(line) => writeln!(out, "{line}")?,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let error = format!("timed out after {} s", a.job_timeout_secs);
                writeln!(out, "{}", json!({ "id": id, "error": error }))?;
                out.flush()?;
                return Ok(TIMED_OUT);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the job thread stopped before job {id:?}")
            }
        }
        out.flush()?;
    }
    Ok(0)
}

/// One job: its model loaded on this process's device, and one answer per input (an
/// `{"error": …}` object where an input is refused), as `classify` prints them.
fn run(
    job: &Job,
    device: crate::engine::DeviceChoice,
    dtype: crate::engine::DTypeChoice,
) -> anyhow::Result<Vec<Value>> {
    let engine = Engine::load_with(&job.model, device, dtype, &LoadOptions::default())?;
    let inputs = job
        .inputs
        .iter()
        .map(|i| match i.as_slice() {
            [text] => Ok(Input::Text(text.clone())),
            [text, pair] => Ok(Input::Pair(text.clone(), pair.clone())),
            _ => anyhow::bail!(
                "an input is [text] or [text, text_pair], not {} strings",
                i.len()
            ),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = crate::engine::TokenOptions::default();
    let mut answers = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(CHUNK) {
        answers.extend(
            engine
                .classify_with(chunk, true, &opts)?
                .into_iter()
                .map(|r| match r {
                    Ok(a) => answer_json(&a),
                    Err(e) => json!({ "error": e.to_string() }),
                }),
        );
    }
    Ok(answers)
}
