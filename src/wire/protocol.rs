//! The wire messages (generated from proto/classifyd.proto) and the conversions between them
//! and the engine's types. Everything a peer sends is validated here before it reaches a queue.

use prost::Message;

use crate::engine::entities::{Aggregation, Entity, MinScore};
use crate::engine::tokenize::Input;
use crate::engine::{Answer, Prediction, TokenOptions, TokenPrediction};

/// Generated from proto/classifyd.proto.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/classifyd.v1.rs"));
}

/// The protocol version this build speaks.
pub const VERSION: u32 = pb::ProtocolVersion::ProtocolVersion1 as u32;

/// The first two fields of every request. Decoded on its own first so that even a request whose
/// body is malformed (e.g. invalid UTF-8 in a text) is answered under its own id.
#[derive(Clone, PartialEq, Message)]
struct Header {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    id: u64,
}

/// Why a request was refused before any work was done on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub id: u64,
    pub status: pb::Status,
    pub message: String,
}

impl Refusal {
    pub fn invalid(id: u64, message: impl Into<String>) -> Self {
        Self {
            id,
            status: pb::Status::InvalidArgument,
            message: message.into(),
        }
    }
}

/// Decodes a request and checks its version; the error carries the id to answer under.
pub fn decode_request(payload: &[u8]) -> Result<pb::Request, Refusal> {
    let header = Header::decode(payload)
        .map_err(|e| Refusal::invalid(0, format!("malformed request: {e}")))?;
    let request = pb::Request::decode(payload)
        .map_err(|e| Refusal::invalid(header.id, format!("malformed request: {e}")))?;
    match request.version {
        VERSION => Ok(request),
        0 => Err(Refusal::invalid(
            request.id,
            format!("request has no version; this server speaks version {VERSION}"),
        )),
        v => Err(Refusal::invalid(
            request.id,
            format!("unsupported protocol version {v}; this server speaks version {VERSION}"),
        )),
    }
}

/// Limits on what one classify request may carry. Its `Default` (the `serve` defaults) is
/// in `serve::config`, where the settings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_inputs: usize,
    /// Bytes of text per input (both texts of a pair together), or ids per pre-tokenized input.
    pub max_text_bytes: usize,
}

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

/// An encoded response carrying only a status.
pub fn status_response(id: u64, status: pb::Status, message: impl Into<String>) -> Vec<u8> {
    pb::Response {
        version: VERSION,
        id,
        status: status as i32,
        message: message.into(),
        body: None,
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(inputs: Vec<pb::Input>) -> Vec<u8> {
        pb::Request {
            version: VERSION,
            id: 7,
            body: Some(pb::request::Body::Classify(pb::ClassifyRequest {
                inputs,
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn invalid_utf8_is_refused_under_the_request_id() {
        let mut bytes = classify(vec![pb::Input {
            kind: Some(pb::input::Kind::Text("abc".into())),
        }]);
        let at = bytes.windows(3).position(|w| w == b"abc").unwrap();
        bytes[at] = 0xff;
        let r = decode_request(&bytes).unwrap_err();
        assert_eq!((r.id, r.status), (7, pb::Status::InvalidArgument));
        assert!(r.message.contains("malformed"), "{}", r.message);
    }

    #[test]
    fn versions_are_checked() {
        let mut req = pb::Request {
            version: 9,
            id: 3,
            body: None,
        };
        let r = decode_request(&req.encode_to_vec()).unwrap_err();
        assert!(r.message.contains("unsupported protocol version 9"));
        req.version = 0;
        assert!(decode_request(&req.encode_to_vec())
            .unwrap_err()
            .message
            .contains("no version"));
    }

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
