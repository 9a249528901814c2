//! Logits to answers: labels and scores as transformers' pipelines give them, and a token
//! model's entities and redaction.

use crate::engine::entities::{self, Aggregation, Entity, MinScore, Spans};
use crate::engine::error::InputError;
use crate::engine::loader::HeadConfig;
use crate::engine::loader::ProblemType;
use crate::engine::tokenize::Encoded;
use crate::engine::tokenize::TextTokenizer;
use crate::model::Task;

/// One input's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub label: String,
    pub score: f32,
    /// Per-label scores in label order.
    pub scores: Vec<(String, f32)>,
    pub logits: Vec<f32>,
    pub tokens: usize,
}

/// One token-classification input's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenPrediction {
    pub entities: Vec<Entity>,
    pub tokens: usize,
    /// Each token's best label (an index into the model's labels) and its softmax score.
    #[serde(skip)]
    pub best: Vec<(usize, f32)>,
    /// One row per token, special tokens included, in label order.
    pub token_logits: Vec<Vec<f32>>,
    /// The text with each entity replaced by `[LABEL]`, when asked for.
    pub redacted: Option<String>,
}

/// What a token-classification answer is made of: the pipeline's aggregation, whether to
/// redact, and the scores an entity needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenOptions {
    pub aggregation: Aggregation,
    pub redact: bool,
    pub min_score: MinScore,
}

/// One input's answer, whichever the task.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Sequence(Prediction),
    Token(TokenPrediction),
}

/// What turning logits into answers reads of a loaded model: its head (labels, problem type),
/// its tokenizer (for entity words) and its task. The engine lends it per answer.
pub(super) struct Answerer<'a> {
    pub head: &'a HeadConfig,
    pub tokenizer: &'a TextTokenizer,
    pub task: Task,
}

impl Answerer<'_> {
    /// Turns logits into labels and scores as transformers' pipelines do.
    pub fn predict(&self, logits: Vec<f32>, tokens: usize) -> Result<Prediction, InputError> {
        finite(&logits)?;
        let scores = scores(&logits, self.head.problem_type);
        let best = entities::argmax(&scores);
        let labels = &self.head.labels;
        Ok(Prediction {
            label: labels.get(best).cloned().unwrap_or_default(),
            score: scores.get(best).copied().unwrap_or(f32::NAN),
            scores: labels.iter().cloned().zip(scores.iter().copied()).collect(),
            logits,
            tokens,
        })
    }

    /// A token model's answer from one input's flattened token logits (as
    /// [`crate::engine::Engine::logits_padded`] returns them), its ids and its spans.
    pub fn predict_tokens(
        &self,
        logits: Vec<f32>,
        ids: &[u32],
        spans: &Spans,
        opts: &TokenOptions,
    ) -> Result<TokenPrediction, InputError> {
        // Before anything is read from them: a NaN argmax falls on label 0 (usually `O`), every
        // entity is dropped, and the "redacted" text would be the input itself.
        finite(&logits)?;
        let n = self.head.labels.len().max(1);
        let token_logits: Vec<Vec<f32>> = logits.chunks(n).map(<[f32]>::to_vec).collect();
        let probs: Vec<Vec<f32>> = token_logits
            .iter()
            .map(|l| scores(l, ProblemType::SingleLabel))
            .collect();
        let mut found = entities::entities(
            self.tokenizer,
            &self.head.labels,
            ids,
            spans,
            &probs,
            opts.aggregation,
        );
        found.retain(|e| opts.min_score.keeps(e));
        Ok(TokenPrediction {
            redacted: opts.redact.then(|| entities::redact(&spans.text, &found)),
            entities: found,
            tokens: ids.len(),
            best: probs
                .iter()
                .map(|p| {
                    let i = entities::argmax(p);
                    (i, p.get(i).copied().unwrap_or(f32::NAN))
                })
                .collect(),
            token_logits,
        })
    }

    /// One input's answer from its logits: a [`Prediction`] or, for a token model, a
    /// [`TokenPrediction`] (which needs the input's spans; without them it has no entities).
    pub fn answer(
        &self,
        logits: Vec<f32>,
        encoded: &Encoded,
        opts: &TokenOptions,
    ) -> Result<Answer, InputError> {
        Ok(match (self.task, &encoded.spans) {
            (Task::Token, Some(spans)) => {
                Answer::Token(self.predict_tokens(logits, &encoded.ids, spans, opts)?)
            }
            (Task::Token, None) => {
                let spans = Spans {
                    text: String::new(),
                    offsets: Vec::new(),
                    special: vec![true; encoded.len()],
                };
                Answer::Token(self.predict_tokens(logits, &encoded.ids, &spans, opts)?)
            }
            (Task::Sequence, _) => Answer::Sequence(self.predict(logits, encoded.len())?),
        })
    }
}

/// Logits that can be read: every one finite, or the count of those that are not.
fn finite(logits: &[f32]) -> Result<(), InputError> {
    match logits.iter().filter(|x| !x.is_finite()).count() {
        0 => Ok(()),
        n => Err(InputError::NotFinite(n)),
    }
}

/// Softmax (shifted by the true maximum, so large negative logits cannot overflow), sigmoid for
/// multi-label models, identity for regression.
pub fn scores(logits: &[f32], problem: ProblemType) -> Vec<f32> {
    match problem {
        ProblemType::Regression => logits.to_vec(),
        ProblemType::MultiLabel => logits
            .iter()
            .map(|&x| (1.0 / (1.0 + (-(x as f64)).exp())) as f32)
            .collect(),
        ProblemType::SingleLabel => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.iter().map(|e| (e / sum) as f32).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_survives_huge_negative_logits() {
        let s = scores(&[-1.0e30, 0.0, -5.0], ProblemType::SingleLabel);
        assert!(s.iter().all(|v| v.is_finite()));
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[1] > s[2] && s[2] > s[0]);
    }

    #[test]
    fn sigmoid_for_multi_label_is_independent() {
        let s = scores(&[0.0, 100.0], ProblemType::MultiLabel);
        assert!((s[0] - 0.5).abs() < 1e-6 && (s[1] - 1.0).abs() < 1e-6);
    }
}
