//! A classify request in stages: admit → tokenize → submit → answer (decoding is
//! [`Service::respond`]'s). Each stage takes what the one before produced and fails with a
//! [`ServiceError`], so [`Service::classify`] reads as the path a request takes.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::engine::entities::Spans;
use crate::engine::tokenize::{Encoded, Input};
use crate::engine::{Answer, TokenOptions};
use crate::model::Task;
use crate::sched::queue::{Job, JobError, JobOutput, Priority};
use crate::service::error::ServiceError;
use crate::service::{convert, Model, Service};
use crate::wire::protocol::{self, pb};

/// What a classify request that passed validation asks of the engine and of the answer (its
/// inputs travel apart, into the tokenizer).
struct Admitted {
    options: pb::Options,
    /// `Some` for a token model.
    token_options: Option<TokenOptions>,
    truncate: bool,
    deadline: Option<Instant>,
    /// As the peer gave it, to name it if it passes.
    deadline_us: u64,
    priority: Priority,
}

/// An input on its way to be computed: its length and, for a token model, its ids and spans.
struct Computed {
    tokens: usize,
    spans: Option<(Vec<u32>, Box<Spans>)>,
}

/// Tokenized inputs: each one's fate in input order, and the rows that go to the engine.
struct Planned {
    /// One entry per input: computed (one of `rows`, in order) or refused with a reason.
    plan: Vec<Result<Computed, String>>,
    rows: Vec<Encoded>,
    tokenized: Instant,
}

type Reply = oneshot::Receiver<Result<JobOutput, JobError>>;

impl Service {
    pub(super) async fn classify(
        &self,
        model: &Model,
        id: u64,
        req: pb::ClassifyRequest,
        received: Instant,
    ) -> Result<pb::Response, ServiceError> {
        let (inputs, admitted) = self.admit(model, req, received)?;
        let planned = self.tokenize(model, inputs, admitted.truncate).await?;
        let reply = submit(model, planned.rows, &admitted, received)?;
        let output = match reply.await {
            Ok(output) => output.map_err(|e| ServiceError::of_job(e, admitted.deadline_us))?,
            Err(_) => return Err(ServiceError::WorkerStopped),
        };
        Ok(answer(
            model,
            id,
            planned.plan,
            planned.tokenized,
            output,
            admitted,
            received,
        ))
    }

    /// Validates the inputs against the limits and the options against the model's task.
    fn admit(
        &self,
        model: &Model,
        mut req: pb::ClassifyRequest,
        received: Instant,
    ) -> Result<(Vec<Input>, Admitted), ServiceError> {
        let inputs = convert::inputs(&req, &self.limits).map_err(ServiceError::Invalid)?;
        // The engine threads wake while the texts are tokenized, not after.
        model.queue.wake();
        // From here on the texts live in `inputs` only.
        drop(std::mem::take(&mut req.inputs));
        let options = req.options.unwrap_or_default();
        let token_options = match model.engine.task() {
            Task::Token => {
                let t = convert::token_options(&options).map_err(ServiceError::Invalid)?;
                t.min_score
                    .check_labels(&model.engine.info().labels)
                    .map_err(ServiceError::Invalid)?;
                Some(t)
            }
            Task::Sequence => {
                convert::no_token_options(&options).map_err(ServiceError::Invalid)?;
                None
            }
        };
        // A redacted text must have had every character seen: a truncated one would come back
        // with its tail unredacted, so redaction refuses over-long texts instead.
        let truncate = !options.no_truncate && !token_options.as_ref().is_some_and(|t| t.redact);
        let deadline = (req.deadline_us > 0)
            .then(|| received.checked_add(Duration::from_micros(req.deadline_us)))
            .flatten();
        let priority = match pb::Priority::try_from(req.priority) {
            Ok(pb::Priority::High) => Priority::High,
            _ => Priority::Normal,
        };
        let admitted = Admitted {
            options,
            token_options,
            truncate,
            deadline,
            deadline_us: req.deadline_us,
            priority,
        };
        Ok((inputs, admitted))
    }

    /// Tokenizes the inputs (a short request on the calling task, a long one on the tokenizer
    /// pool: the engine thread only ever runs the model, and the I/O threads stay free for
    /// other connections and the health probes), then decides which can be computed. Each input
    /// is computed or refused on its own; the request fails only when none can be.
    async fn tokenize(
        &self,
        model: &Model,
        inputs: Vec<Input>,
        truncate: bool,
    ) -> Result<Planned, ServiceError> {
        // Only token ids wait in the queue, not the texts they came from (a token model's
        // spans wait here).
        let encoded = self
            .tokenizer
            .encode(model.engine.clone(), inputs, truncate)
            .await?;
        let budget = model.queue.config().max_attention_bytes;
        let mut plan = Vec::with_capacity(encoded.len());
        let mut rows = Vec::with_capacity(encoded.len());
        for (i, e) in encoded.into_iter().enumerate() {
            let mut e = match e {
                Ok(e) => e,
                Err(why) => {
                    plan.push(Err(format!("input {i}: {why}")));
                    continue;
                }
            };
            // Rows are never split, so an input whose attention alone is over the pass budget
            // could never run within it.
            let need = model.engine.attention_bytes(1, e.len());
            if need > budget {
                plan.push(Err(format!(
                    "input {i}: {} tokens need {} MiB of attention memory, over the limit of \
                     {} MiB (--max-attention-mib)",
                    e.len(),
                    need.div_ceil(1 << 20),
                    budget >> 20
                )));
                continue;
            }
            plan.push(Ok(Computed {
                tokens: e.len(),
                spans: e.spans.take().map(|s| (e.ids.clone(), s)),
            }));
            rows.push(e);
        }
        if rows.is_empty() {
            let first = plan.into_iter().find_map(Result::err);
            return Err(ServiceError::Invalid(
                first.unwrap_or_else(|| "no input to classify".into()),
            ));
        }
        Ok(Planned {
            plan,
            rows,
            tokenized: Instant::now(),
        })
    }
}

/// Queues the rows as one job; the reply comes back on the returned receiver.
fn submit(
    model: &Model,
    rows: Vec<Encoded>,
    admitted: &Admitted,
    received: Instant,
) -> Result<Reply, ServiceError> {
    let job = Job {
        inputs: rows,
        priority: admitted.priority,
        deadline: admitted.deadline,
        received,
    };
    Ok(model.queue.submit(job)?)
}

/// The logits turned into results, one per input in input order, refused inputs included.
fn answer(
    model: &Model,
    id: u64,
    plan: Vec<Result<Computed, String>>,
    tokenized: Instant,
    output: JobOutput,
    admitted: Admitted,
    received: Instant,
) -> pb::Response {
    let mut logits = output.logits.into_iter();
    let token_options = admitted.token_options.unwrap_or_default();
    let labels = &model.engine.info().labels;
    let mut first_refusal = None;
    let mut answered = 0usize;
    let results = plan
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let answer = p.and_then(|c| {
                let l = logits.next().unwrap_or_default();
                // Scores that are not finite refuse the input here (never an argmax on label
                // 0 and a "redacted" text equal to the input).
                match c.spans {
                    Some((ids, spans)) => model
                        .engine
                        .predict_tokens(l, &ids, &spans, &token_options)
                        .map(Answer::Token),
                    None => model.engine.predict(l, c.tokens).map(Answer::Sequence),
                }
                .map_err(|why| format!("input {i}: {why}"))
            });
            match answer {
                Ok(a) => {
                    answered += 1;
                    convert::result(a, &admitted.options, labels)
                }
                Err(message) => {
                    first_refusal.get_or_insert_with(|| message.clone());
                    convert::refused_result(message)
                }
            }
        })
        .collect();
    // As before the pass: a request none of whose inputs could be answered is refused whole.
    if answered == 0 {
        let message = first_refusal.unwrap_or_else(|| "no input to classify".into());
        return protocol::status(id, pb::Status::InvalidArgument, message);
    }
    let micros = |d: Duration| d.as_micros() as u64;
    pb::Response {
        version: protocol::VERSION,
        id,
        status: pb::Status::Ok as i32,
        message: String::new(),
        body: Some(pb::response::Body::Classify(pb::ClassifyResponse {
            results,
            model: model.identity.name.clone(),
            revision: model.identity.revision.clone(),
            timings: Some(pb::Timings {
                queue_us: output.queue_us,
                tokenize_us: micros(tokenized - received),
                inference_us: output.inference_us,
                total_us: micros(received.elapsed()),
                batch_size: output.batch_size,
            }),
        })),
    }
}
