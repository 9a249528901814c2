//! The conversions between the wire's messages and the engine's types: a request's inputs and
//! options in, an answer's results out. Everything a peer sends is validated here, against
//! [`RequestLimits`], before it reaches a queue.

use crate::engine::entities::{Aggregation, Entity, MinScore};
use crate::engine::tokenize::Input;
use crate::engine::{Answer, Prediction, TokenOptions, TokenPrediction};
use crate::wire::protocol::{pb, RequestLimits};

/// Turns wire inputs into engine inputs, refusing what exceeds the limits.
pub fn inputs(req: &pb::ClassifyRequest, limits: &RequestLimits) -> Result<Vec<Input>, String> {
    if req.inputs.is_empty() {
        return Err("request has no inputs".into());
    }
    if req.inputs.len() > limits.max_inputs {
        return Err(format!(
            "request has {} inputs; the limit is {}",
            req.inputs.len(),
            limits.max_inputs
        ));
    }
    req.inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let (input, size) = match &input.kind {
                None => return Err(format!("input {i} is empty (no text, pair or ids)")),
                Some(pb::input::Kind::Text(t)) => (Input::Text(t.clone()), t.len()),
                Some(pb::input::Kind::Pair(p)) => (
                    Input::Pair(p.text.clone(), p.text_pair.clone()),
                    p.text.len() + p.text_pair.len(),
                ),
                Some(pb::input::Kind::Ids(ids)) => (Input::Ids(ids.ids.clone()), ids.ids.len()),
            };
            if size > limits.max_text_bytes {
                return Err(format!(
                    "input {i} is {size} bytes; the limit is {}",
                    limits.max_text_bytes
                ));
            }
            Ok(input)
        })
        .collect()
}

/// One result on the wire, whichever the task; `labels` are the model's, in label order.
pub fn result(answer: Answer, options: &pb::Options, labels: &[String]) -> pb::Result {
    match answer {
        Answer::Sequence(p) => sequence_result(p, options),
        Answer::Token(t) => token_result(t, options, labels),
    }
}

/// A sequence model's result: scores best first, cut to `top_k`, logits only on request.
fn sequence_result(p: Prediction, options: &pb::Options) -> pb::Result {
    let mut scores: Vec<pb::LabelScore> = p
        .scores
        .into_iter()
        .map(|(label, score)| pb::LabelScore { label, score })
        .collect();
    scores.sort_by(|a, b| b.score.total_cmp(&a.score));
    if options.top_k > 0 {
        scores.truncate(options.top_k as usize);
    }
    pb::Result {
        label: p.label,
        score: p.score,
        scores,
        logits: if options.return_logits {
            p.logits
        } else {
            Vec::new()
        },
        tokens: p.tokens as u32,
        ..Default::default()
    }
}

fn entity(e: Entity) -> pb::Entity {
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    pb::Entity {
        label: e.label,
        score: e.score,
        word: e.word,
        start: n(e.start),
        end: n(e.end),
        start_byte: n(e.start_byte),
        end_byte: n(e.end_byte),
        index: e.index.map(n),
    }
}

/// A token model's result: entities, the redacted text and per-token outputs on request.
fn token_result(t: TokenPrediction, options: &pb::Options, labels: &[String]) -> pb::Result {
    let token_outputs = if options.return_tokens {
        t.token_logits
            .into_iter()
            .zip(t.best)
            .map(|(logits, (best, score))| pb::TokenOutput {
                label: labels.get(best).cloned().unwrap_or_default(),
                score,
                logits: if options.return_logits {
                    logits
                } else {
                    Vec::new()
                },
            })
            .collect()
    } else {
        Vec::new()
    };
    pb::Result {
        tokens: t.tokens as u32,
        entities: t.entities.into_iter().map(entity).collect(),
        redacted: t.redacted,
        token_outputs,
        ..Default::default()
    }
}

/// The result of an input that could not be classified, in a request whose others were.
pub fn refused_result(message: String) -> pb::Result {
    pb::Result {
        status: pb::Status::InvalidArgument as i32,
        message,
        ..Default::default()
    }
}

/// A sequence model refuses the options only a token model can honour: asking one to redact
/// and answering OK without a `redacted` text would look like a clean text to a careless caller.
pub fn no_token_options(options: &pb::Options) -> Result<(), String> {
    let asked: Vec<&str> = [
        ("redact", options.redact),
        ("min_score", options.min_score != 0.0),
        ("min_scores", !options.min_scores.is_empty()),
        ("return_tokens", options.return_tokens),
        (
            "aggregation",
            options.aggregation != pb::Aggregation::Simple as i32,
        ),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if asked.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} {} only for token-classification models; this model classifies whole texts \
         (info.task = \"sequence\")",
        asked.join(", "),
        if asked.len() == 1 { "is" } else { "are" }
    ))
}

/// What a request's options ask of a token model.
pub fn token_options(options: &pb::Options) -> Result<TokenOptions, String> {
    let aggregation = match pb::Aggregation::try_from(options.aggregation) {
        Ok(pb::Aggregation::Simple) => Aggregation::Simple,
        Ok(pb::Aggregation::None) => Aggregation::None,
        Ok(pb::Aggregation::First) => Aggregation::First,
        Ok(pb::Aggregation::Average) => Aggregation::Average,
        Ok(pb::Aggregation::Max) => Aggregation::Max,
        Err(_) => return Err(format!("unknown aggregation {}", options.aggregation)),
    };
    let check = |what: &str, v: f32| {
        if (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(format!("{what} {v} is not a score from 0 to 1"))
        }
    };
    let mut min_score = MinScore {
        all: check("min_score", options.min_score)?,
        ..Default::default()
    };
    for (label, v) in &options.min_scores {
        min_score
            .by_label
            .insert(label.clone(), check(&format!("min_scores[{label:?}]"), *v)?);
    }
    Ok(TokenOptions {
        aggregation,
        redact: options.redact,
        min_score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced() {
        let limits = RequestLimits {
            max_inputs: 2,
            max_text_bytes: 4,
        };
        let text = |t: &str| pb::Input {
            kind: Some(pb::input::Kind::Text(t.into())),
        };
        let req = |inputs| pb::ClassifyRequest {
            inputs,
            ..Default::default()
        };
        assert!(inputs(&req(vec![]), &limits)
            .unwrap_err()
            .contains("no inputs"));
        assert!(inputs(&req(vec![text("a"); 3]), &limits)
            .unwrap_err()
            .contains("3 inputs"));
        assert!(inputs(&req(vec![text("abcde")]), &limits)
            .unwrap_err()
            .contains("5 bytes"));
        assert!(inputs(&req(vec![pb::Input { kind: None }]), &limits).is_err());
        assert_eq!(inputs(&req(vec![text("ab")]), &limits).unwrap().len(), 1);
    }
}
