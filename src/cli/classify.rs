//! `classify`: texts through a model in this process or a running daemon, one JSON line each.

use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Map, Value};

use super::{LocalArgs, RemoteArgs};
use crate::client::Client;
use crate::engine::entities::{Aggregation, Entity, MinScore};
use crate::engine::tokenize::Input;
use crate::engine::{Answer, Engine, Prediction, TokenOptions, TokenPrediction};
use crate::wire::protocol::pb;

#[derive(Debug, Args)]
// At most one target; none at all falls back to $CLASSIFYD_SOCKET (RemoteArgs::remote).
#[command(group(clap::ArgGroup::new("target").args(["model", "uds", "quic"])))]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Read tab-separated text pairs (`premise<TAB>hypothesis`) from stdin.
    #[arg(long)]
    pub pair: bool,
    /// Refuse texts longer than the model's maximum instead of truncating them.
    #[arg(long)]
    pub no_truncate: bool,
    /// Token-classification models: how token labels become entities, as transformers'
    /// pipeline does it (none, simple, first, average, max).
    #[arg(long, default_value = "simple", value_parser = clap::value_parser!(Aggregation))]
    pub aggregation: Aggregation,
    /// Token-classification models: also print each text with every entity replaced by
    /// `[LABEL]` ("redacted"). Implies --no-truncate: a text over the model's maximum is
    /// refused, never returned with an unchecked tail.
    #[arg(long)]
    pub redact: bool,
    /// Token-classification models: the score an entity needs to be printed and redacted,
    /// for every label (`0.8`) or one (`PER=0.9`); repeat for several.
    #[arg(long, value_name = "[LABEL=]SCORE")]
    pub min_score: Vec<String>,
    /// Print only these keys of each line (an error line keeps its `input` and `error`).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "KEY,..",
        value_parser = clap::builder::PossibleValuesParser::new(FIELDS)
    )]
    pub fields: Vec<String>,
    /// Token-classification models: print entities with the keys transformers' pipeline
    /// uses (`entity_group`, or `entity` with --aggregation none) instead of `label`, the
    /// protocol's and the Python client's name.
    #[arg(long)]
    pub pipeline_keys: bool,
    /// Texts classified in one forward pass when reading stdin.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub batch_size: u16,
    /// No progress bar on stderr (shown only when stderr is a terminal and texts come from
    /// stdin).
    #[arg(long)]
    pub quiet: bool,
    /// Texts to classify; everything after `--` is taken literally.
    #[arg(value_name = "TEXT")]
    pub texts: Vec<String>,
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

/// The keys a result line can have, which `--fields` chooses from.
const FIELDS: [&str; 8] = [
    "label",
    "score",
    "scores",
    "logits",
    "tokens",
    "entities",
    "token_logits",
    "redacted",
];

/// The JSON of one entity, with the protocol's keys: `label`, and `index` with aggregation
/// none ([`pipeline_keys`] renames them).
fn entity_json(e: &Entity) -> Value {
    let mut m = Map::new();
    m.insert("label".into(), json!(e.label));
    if let Some(i) = e.index {
        m.insert("index".into(), json!(i));
    }
    for (k, v) in [
        ("score", json!(e.score)),
        ("word", json!(e.word)),
        ("start", json!(e.start)),
        ("end", json!(e.end)),
        ("start_byte", json!(e.start_byte)),
        ("end_byte", json!(e.end_byte)),
    ] {
        m.insert(k.into(), v);
    }
    Value::Object(m)
}

/// The JSON line printed for one token-classification answer.
pub fn token_json(t: &TokenPrediction) -> Value {
    let mut v = json!({
        "entities": t.entities.iter().map(entity_json).collect::<Vec<_>>(),
        "tokens": t.tokens,
        "token_logits": t.token_logits,
    });
    if let (Some(r), Some(o)) = (&t.redacted, v.as_object_mut()) {
        o.insert("redacted".into(), json!(r));
    }
    v
}

pub fn answer_json(a: &Answer) -> Value {
    match a {
        Answer::Sequence(p) => prediction_json(p),
        Answer::Token(t) => token_json(t),
    }
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
    Remote(Box<Remote>),
}

struct Remote {
    runtime: tokio::runtime::Runtime,
    client: Client,
    /// The daemon's model asked (`""`: its default).
    model: String,
    labels: Vec<String>,
    /// The served model classifies tokens.
    tokens: bool,
}

/// What `info` says of the model `name` (the default when `None`), or which ones are served.
/// A daemon from before several models were served lists none: its top-level fields are its
/// one model.
pub(crate) fn served_model(
    info: &pb::InfoResponse,
    name: Option<&str>,
) -> anyhow::Result<pb::ModelInfo> {
    let top = || pb::ModelInfo {
        name: info.model.clone(),
        revision: info.revision.clone(),
        architecture: info.architecture.clone(),
        labels: info.labels.clone(),
        max_length: info.max_length,
        device: info.device.clone(),
        dtype: info.dtype.clone(),
        ready: info.ready,
        problem_type: info.problem_type.clone(),
        task: info.task.clone(),
        batches: info.batches,
        computed: info.computed,
        default: true,
    };
    match name {
        None => Ok(info.models.first().cloned().unwrap_or_else(top)),
        Some(n) => {
            if let Some(m) = info.models.iter().find(|m| m.name == n) {
                return Ok(m.clone());
            }
            if info.models.is_empty() && info.model == n {
                return Ok(top());
            }
            let served: Vec<&str> = match info.models.as_slice() {
                [] => vec![info.model.as_str()],
                all => all.iter().map(|m| m.name.as_str()).collect(),
            };
            bail!(
                "--name {n}: the daemon serves no model of that name (it serves {})",
                served.join(", ")
            )
        }
    }
}

impl Backend {
    fn open(a: &ClassifyArgs) -> anyhow::Result<Self> {
        if let Some(model) = &a.local.model {
            return Ok(Backend::Local(Box::new(Engine::load_with(
                model,
                a.local.engine.device,
                a.local.engine.dtype,
                &a.local.load_options(),
            )?)));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let remote = a.remote.remote()?.context(
            "give --model DIR, --uds PATH or --quic HOST:PORT (or set CLASSIFYD_SOCKET)",
        )?;
        let client = runtime.block_on(remote.connect_with(a.remote.patience()))?;
        let info = runtime.block_on(client.info())?;
        let m = match info.body {
            Some(pb::response::Body::Info(i)) => served_model(&i, a.remote.name.as_deref())?,
            _ => bail!(
                "server answered the info request with {}: {}",
                info.status,
                info.message
            ),
        };
        Ok(Backend::Remote(Box::new(Remote {
            runtime,
            client,
            model: a.remote.name.clone().unwrap_or_default(),
            tokens: m.task == "token",
            labels: m.labels,
        })))
    }

    /// The model's labels.
    fn labels(&self) -> &[String] {
        match self {
            Backend::Local(engine) => &engine.info().labels,
            Backend::Remote(remote) => &remote.labels,
        }
    }

    /// One JSON line per input, in input order; an error object where an input failed.
    fn classify(
        &self,
        inputs: &[Input],
        truncate: bool,
        opts: &TokenOptions,
    ) -> anyhow::Result<Vec<Value>> {
        match self {
            Backend::Local(engine) => Ok(engine
                .classify_with(inputs, truncate, opts)?
                .into_iter()
                .map(|r| match r {
                    Ok(a) => answer_json(&a),
                    Err(e) => json!({ "error": e.to_string() }),
                })
                .collect()),
            Backend::Remote(remote) => {
                let Remote {
                    runtime,
                    client,
                    model,
                    labels,
                    tokens,
                } = &**remote;
                let options = pb::Options {
                    top_k: 0,
                    return_logits: true,
                    no_truncate: !truncate,
                    aggregation: wire_aggregation(opts.aggregation) as i32,
                    redact: opts.redact,
                    min_score: opts.min_score.all,
                    min_scores: opts.min_score.by_label.clone().into_iter().collect(),
                    return_tokens: *tokens,
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
                    client.classify_model(model, vec![wire], options.clone())
                });
                let responses = runtime.block_on(futures::future::join_all(calls));
                Ok(responses
                    .into_iter()
                    .map(|r| match r {
                        Err(e) => json!({ "error": e.to_string() }),
                        Ok(resp) => remote_json(resp, labels, *tokens),
                    })
                    .collect())
            }
        }
    }
}

fn wire_aggregation(a: Aggregation) -> pb::Aggregation {
    match a {
        Aggregation::None => pb::Aggregation::None,
        Aggregation::Simple => pb::Aggregation::Simple,
        Aggregation::First => pb::Aggregation::First,
        Aggregation::Average => pb::Aggregation::Average,
        Aggregation::Max => pb::Aggregation::Max,
    }
}

/// [`token_json`] from a daemon's result.
fn remote_token_json(r: pb::Result) -> Value {
    let t = TokenPrediction {
        entities: r
            .entities
            .into_iter()
            .map(|e| Entity {
                label: e.label,
                score: e.score,
                word: e.word,
                start: e.start as usize,
                end: e.end as usize,
                start_byte: e.start_byte as usize,
                end_byte: e.end_byte as usize,
                index: e.index.map(|i| i as usize),
            })
            .collect(),
        tokens: r.tokens as usize,
        best: Vec::new(),
        token_logits: r.token_outputs.into_iter().map(|t| t.logits).collect(),
        redacted: r.redacted,
    };
    token_json(&t)
}

/// The same JSON as [`prediction_json`], from a daemon's response (scores back in label order).
fn remote_json(resp: pb::Response, labels: &[String], tokens: bool) -> Value {
    let status = pb::Status::try_from(resp.status).unwrap_or(pb::Status::Internal);
    let result = match resp.body {
        Some(pb::response::Body::Classify(mut c)) if status == pb::Status::Ok => c.results.pop(),
        _ => None,
    };
    let Some(r) = result else {
        return json!({ "status": status.as_str_name(), "error": resp.message });
    };
    if r.status != pb::Status::Ok as i32 {
        return json!({ "error": r.message });
    }
    if tokens {
        return remote_token_json(r);
    }
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

/// Feedback while `classify` works through stdin, for a person at a terminal: texts done, their
/// rate and, when stdin is a file whose size is known, the share read and an ETA. Nothing is
/// drawn when stderr is not a terminal (or with `--quiet`), so pipes and logs stay clean.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    texts: std::cell::Cell<u64>,
}

impl Progress {
    fn start(quiet: bool) -> Progress {
        use std::io::IsTerminal;
        let on_terminal = !quiet && std::io::stderr().is_terminal();
        let bar = on_terminal.then(|| {
            // stdin redirected from a file: its size, to show the share read and an ETA.
            let size = std::fs::metadata("/proc/self/fd/0")
                .ok()
                .filter(|m| m.is_file() && m.len() > 0)
                .map(|m| m.len());
            let (bar, template) = match size {
                Some(len) => (
                    indicatif::ProgressBar::new(len),
                    "{spinner} {msg} [{bar:30}] {percent:>3}% ETA {eta}",
                ),
                None => (
                    indicatif::ProgressBar::new_spinner(),
                    "{spinner} {msg}, {elapsed} elapsed",
                ),
            };
            let style = indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
                .progress_chars("=> ");
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(style);
            bar.set_message("0 texts");
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            texts: std::cell::Cell::new(0),
        }
    }

    /// `bytes` more of stdin read.
    fn read(&self, bytes: usize) {
        if let Some(bar) = &self.bar {
            if bar.length().is_some() {
                bar.inc(bytes as u64);
            }
        }
    }

    /// `n` more texts answered.
    fn done(&self, n: usize) {
        self.texts.set(self.texts.get() + n as u64);
        if let Some(bar) = &self.bar {
            let texts = self.texts.get();
            let rate = texts as f64 / bar.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{texts} texts, {rate:.0}/s"));
        }
    }

    /// Leaves one summary line on the terminal.
    fn finish(self) {
        if let Some(bar) = self.bar {
            let secs = bar.elapsed().as_secs_f64();
            let texts = self.texts.get();
            bar.finish_and_clear();
            eprintln!(
                "{texts} texts in {secs:.1} s ({:.0}/s)",
                texts as f64 / secs.max(1e-9)
            );
        }
    }
}

/// `--pipeline-keys`: each entity's `label` under the pipeline's name for it, `entity` for a
/// token (with its `index`), else `entity_group`.
fn pipeline_keys(line: &mut Value) {
    let Some(entities) = line.get_mut("entities").and_then(Value::as_array_mut) else {
        return;
    };
    for e in entities.iter_mut().filter_map(Value::as_object_mut) {
        if let Some(label) = e.remove("label") {
            let key = if e.contains_key("index") {
                "entity"
            } else {
                "entity_group"
            };
            // The pipeline's key first, as it prints it.
            let rest = std::mem::take(e);
            e.insert(key.into(), label);
            e.extend(rest);
        }
    }
}

/// `--fields`: only the keys asked for, and on an error line its place and reason.
fn only_fields(line: Value, fields: &[String]) -> Value {
    if fields.is_empty() {
        return line;
    }
    match line {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| {
                    fields.contains(k) || matches!(k.as_str(), "input" | "error" | "status")
                })
                .collect(),
        ),
        other => other,
    }
}

/// An error line names the input by its place in the whole run: a daemon numbers the inputs
/// of its own request (one input each here, so always 0), the engine in process not at all.
fn numbered(mut line: Value, position: usize) -> Value {
    let Some(msg) = line.get("error").and_then(Value::as_str) else {
        return line;
    };
    let why = msg
        .strip_prefix("input ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .map_or(msg, |(_, why)| why);
    let error = format!("input {position}: {why}");
    if let Some(fields) = line.as_object_mut() {
        fields.insert("input".into(), json!(position));
        fields.insert("error".into(), json!(error));
    }
    line
}

pub(crate) fn classify(a: ClassifyArgs) -> anyhow::Result<i32> {
    if a.pair && !a.texts.is_empty() {
        bail!("--pair reads its pairs from stdin; give no TEXT arguments with it");
    }
    let backend = Backend::open(&a)?;
    // As the daemon does: a redacted text is never truncated (its tail would go unredacted).
    let truncate = !a.no_truncate && !a.redact;
    let opts = TokenOptions {
        aggregation: a.aggregation,
        redact: a.redact,
        min_score: MinScore::parse(&a.min_score).map_err(anyhow::Error::msg)?,
    };
    opts.min_score
        .check_labels(backend.labels())
        .map_err(|e| anyhow::anyhow!("--min-score: {e}"))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failures = 0usize;
    // Each input's place in the whole run (arguments, or stdin's lines), which an error names.
    let mut position = 0usize;
    let mut emit = |chunk: Vec<Result<Input, String>>, out: &mut dyn Write| -> anyhow::Result<()> {
        let inputs: Vec<Input> = chunk
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut results = backend.classify(&inputs, truncate, &opts)?.into_iter();
        for c in chunk {
            let line = match c {
                Err(msg) => json!({ "error": msg }),
                Ok(_) => results
                    .next()
                    .unwrap_or_else(|| json!({ "error": "no result" })),
            };
            let mut line = numbered(line, position);
            if line.get("error").is_some() {
                failures += 1;
            }
            if a.pipeline_keys {
                pipeline_keys(&mut line);
            }
            let line = only_fields(line, &a.fields);
            writeln!(out, "{line}")?;
            position += 1;
        }
        Ok(())
    };
    if !a.texts.is_empty() {
        let chunk = a.texts.iter().map(|t| Ok(Input::Text(t.clone()))).collect();
        emit(chunk, &mut out)?;
    } else {
        let progress = Progress::start(a.quiet);
        let stdin = std::io::stdin().lock();
        let mut chunk = Vec::new();
        for (n, line) in stdin.split(b'\n').enumerate() {
            let line = line.context("reading stdin")?;
            progress.read(line.len() + 1);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            let item = match std::str::from_utf8(line) {
                Err(e) => Err(format!("line {}: not UTF-8 ({e})", n + 1)),
                Ok(s) if a.pair => parse_pair(s).map_err(|m| format!("line {}: {m}", n + 1)),
                Ok(s) => Ok(Input::Text(s.to_string())),
            };
            chunk.push(item);
            if chunk.len() == a.batch_size as usize {
                let n = chunk.len();
                emit(std::mem::take(&mut chunk), &mut out)?;
                out.flush()?;
                progress.done(n);
            }
        }
        if !chunk.is_empty() {
            let n = chunk.len();
            emit(chunk, &mut out)?;
            progress.done(n);
        }
        progress.finish();
    }
    out.flush()?;
    Ok(if failures > 0 { 2 } else { 0 })
}
