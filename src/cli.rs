//! The `classifyd` command line: flags parsed here, turned into engine calls; errors go back to
//! `main` as `anyhow` for one line on stderr and a non-zero exit.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::engine::{DTypeChoice, DeviceChoice, Engine, Prediction};
use crate::tokenize::Input;

#[derive(Debug, Parser)]
#[command(
    name = "classifyd",
    version,
    about = "Low-latency transformer text classification"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what a model directory holds: architecture, labels, parameters, limits, dtypes.
    Inspect(InspectArgs),
    /// Classify the texts given as arguments, or each line of stdin when none are given.
    Classify(ClassifyArgs),
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

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
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

fn classify(a: ClassifyArgs) -> anyhow::Result<i32> {
    if a.pair && !a.texts.is_empty() {
        bail!("--pair reads its pairs from stdin; give no TEXT arguments with it");
    }
    let engine = load(&a.model)?;
    let truncate = !a.no_truncate;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failures = 0usize;
    let mut emit = |chunk: Vec<Result<Input, String>>, out: &mut dyn Write| -> anyhow::Result<()> {
        let inputs: Vec<Input> = chunk
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut results = engine.classify(&inputs, truncate)?.into_iter();
        for c in chunk {
            let line = match c {
                Err(msg) => json!({ "error": msg }),
                Ok(_) => match results.next() {
                    Some(Ok(p)) => prediction_json(&p),
                    Some(Err(e)) => json!({ "error": e.to_string() }),
                    None => json!({ "error": "no result" }),
                },
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
