//! Token logits → entities, exactly as transformers' token-classification pipeline computes them
//! (`TokenClassificationPipeline.postprocess` in transformers 5), then redaction.
//!
//! The pipeline's rules are kept to the letter, quirks included, because "what transformers
//! would have given" is the definition of correct here:
//! - special tokens are skipped; a token's word is its vocabulary string, or the text it covers
//!   when it is the unknown token;
//! - a token continues the previous word when the tokenizer is word-aware (its model has a
//!   `continuing_subword_prefix`, i.e. WordPiece) and the token's string is longer or shorter
//!   than the text it covers; otherwise when neither the character before it nor its own first
//!   character is a space (the pipeline's heuristic; a tab does not count as a space);
//! - `first`/`average`/`max` pick one label per word, then every strategy but `none` merges runs
//!   of tokens or words whose tags agree (`B-X` starts a group, `I-X` or a bare `X` continues
//!   one), naming a group by what follows the label's first `-`;
//! - groups and tokens labelled `O` are dropped.

use std::collections::HashMap;
use std::str::FromStr;

/// How token predictions become entities: the pipeline's `aggregation_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregation {
    /// One entity per token that is not `O`, with its full label and index.
    None,
    /// Runs of tokens with agreeing tags become one entity; score is their mean.
    #[default]
    Simple,
    /// Each word takes its first token's label.
    First,
    /// Each word takes the label of its averaged token scores.
    Average,
    /// Each word takes the label of its single most confident token.
    Max,
}

impl FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "simple" => Ok(Self::Simple),
            "first" => Ok(Self::First),
            "average" => Ok(Self::Average),
            "max" => Ok(Self::Max),
            _ => Err(format!(
                "unknown aggregation {s:?} (expected none, simple, first, average or max)"
            )),
        }
    }
}

/// What tokenizing one text for a token model keeps besides the ids: the text and where each
/// token sits in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spans {
    pub text: String,
    /// `(start, end)` of each token in characters (code points, as Python counts), `(0, 0)`
    /// for special tokens.
    pub offsets: Vec<(usize, usize)>,
    /// Whether each token is one the tokenizer added (`[CLS]`, `</s>`, …).
    pub special: Vec<bool>,
}

/// The tokenizer facts the pipeline reads.
pub trait Vocabulary {
    /// `convert_ids_to_tokens`.
    fn token(&self, id: u32) -> String;
    /// `convert_tokens_to_string`: the tokenizer's decoder over `tokens`.
    fn join(&self, tokens: &[String]) -> String;
    /// Whether the tokenizer's model marks sub-words itself (a `continuing_subword_prefix`).
    fn word_aware(&self) -> bool;
    fn unk_id(&self) -> Option<u32>;
}

/// One entity. Offsets are into the input text: `start`/`end` in characters, as Python slices
/// it; `start_byte`/`end_byte` in UTF-8 bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entity {
    /// The group (`PER` for `B-PER`…) or, with [`Aggregation::None`], the token's own label.
    pub label: String,
    pub score: f32,
    pub word: String,
    pub start: usize,
    pub end: usize,
    pub start_byte: usize,
    pub end_byte: usize,
    /// The token's position in the input, special tokens counted; [`Aggregation::None`] only.
    pub index: Option<usize>,
}

/// Minimum scores an entity needs to be reported and redacted: one for every label, and
/// per-label ones that override it (`PER=0.9`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinScore {
    pub all: f32,
    pub by_label: HashMap<String, f32>,
}

impl MinScore {
    /// `--min-score` values: `0.5` (every label) or `LABEL=0.5`.
    pub fn parse(values: &[String]) -> Result<Self, String> {
        let mut m = MinScore::default();
        for v in values {
            let (label, score) = match v.rsplit_once('=') {
                Some((l, s)) => (Some(l), s),
                None => (None, v.as_str()),
            };
            let score: f32 = score
                .trim()
                .parse()
                .ok()
                .filter(|s: &f32| (0.0..=1.0).contains(s))
                .ok_or_else(|| format!("min score {v:?}: expected a number from 0 to 1"))?;
            match label {
                Some(l) => {
                    m.by_label.insert(l.trim().to_string(), score);
                }
                None => m.all = score,
            }
        }
        Ok(m)
    }

    /// The threshold for an entity labelled `label` (a full label like `B-PER` also matches a
    /// threshold set for its group `PER`).
    fn of(&self, label: &str) -> f32 {
        self.by_label
            .get(label)
            .or_else(|| self.by_label.get(group_name(label)))
            .copied()
            .unwrap_or(self.all)
    }

    /// A threshold set for a label the model does not have would silently never apply (a typo
    /// keeps every entity of the label meant): the model's labels and their groups are the
    /// names a threshold may use.
    pub fn check_labels(&self, labels: &[String]) -> Result<(), String> {
        let mut unknown: Vec<&str> = self
            .by_label
            .keys()
            .filter(|k| {
                !labels
                    .iter()
                    .any(|l| l == *k || group_name(l) == k.as_str())
            })
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        unknown.sort_unstable();
        let mut known: Vec<&str> = labels.iter().map(|l| group_name(l)).collect();
        known.sort_unstable();
        known.dedup();
        Err(format!(
            "min score for {}: this model has no such label (its labels: {})",
            unknown.join(", "),
            known.join(", ")
        ))
    }

    pub fn keeps(&self, e: &Entity) -> bool {
        e.score >= self.of(&e.label)
    }
}

/// A token as the pipeline's `gather_pre_entities` describes it.
struct Pre {
    word: String,
    scores: Vec<f32>,
    start: usize,
    end: usize,
    index: usize,
    is_subword: bool,
}

/// A token or word with one label, before grouping.
struct Tagged {
    label: String,
    score: f32,
    word: String,
    start: usize,
    end: usize,
    index: usize,
}

/// numpy's argmax: the index of the first of equal maxima (0 for an empty slice).
pub(crate) fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

/// What a label's group is called: what follows its first `-` (`B-PER` → `PER`, and also
/// `ID-NUM` → `NUM`, as transformers' `split("-", 1)[-1]` has it).
fn group_name(label: &str) -> &str {
    label.split_once('-').map_or(label, |(_, rest)| rest)
}

/// `(is B, tag)` as the pipeline's `get_tag` reads a label: no B-/I- prefix continues.
fn tag(label: &str) -> (bool, &str) {
    if let Some(t) = label.strip_prefix("B-") {
        (true, t)
    } else if let Some(t) = label.strip_prefix("I-") {
        (false, t)
    } else {
        (false, label)
    }
}

/// Entities of one text. `ids`, `spans` and `scores` (softmax per token) have one entry per
/// token, special tokens included.
pub fn entities(
    vocab: &dyn Vocabulary,
    labels: &[String],
    ids: &[u32],
    spans: &Spans,
    scores: &[Vec<f32>],
    strategy: Aggregation,
) -> Vec<Entity> {
    let chars: Vec<char> = spans.text.chars().collect();
    let mut bytes: Vec<usize> = spans.text.char_indices().map(|(b, _)| b).collect();
    bytes.push(spans.text.len());
    let label = |i: usize| {
        labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{i}"))
    };

    let word_aware = vocab.word_aware();
    let unk = vocab.unk_id();
    let pre: Vec<Pre> = (0..ids.len().min(scores.len()))
        .filter(|&i| !spans.special.get(i).copied().unwrap_or(false))
        .map(|i| {
            let (start, end) = spans.offsets.get(i).copied().unwrap_or((0, 0));
            let (start, end) = (start.min(chars.len()), end.min(chars.len()));
            let word_ref: String = chars[start..end.max(start)].iter().collect();
            let mut word = vocab.token(ids[i]);
            let mut is_subword = if word_aware {
                word.chars().count() != word_ref.chars().count()
            } else {
                start > 0 && chars[start - 1] != ' ' && chars.get(start) != Some(&' ')
            };
            if Some(ids[i]) == unk {
                word = word_ref;
                is_subword = false;
            }
            Pre {
                word,
                scores: scores[i].clone(),
                start,
                end,
                index: i,
                is_subword,
            }
        })
        .collect();

    let tagged: Vec<Tagged> = match strategy {
        Aggregation::None | Aggregation::Simple => pre
            .into_iter()
            .map(|p| {
                let best = argmax(&p.scores);
                Tagged {
                    label: label(best),
                    score: p.scores[best],
                    word: p.word,
                    start: p.start,
                    end: p.end,
                    index: p.index,
                }
            })
            .collect(),
        _ => {
            let mut words: Vec<Vec<Pre>> = Vec::new();
            for p in pre {
                match words.last_mut() {
                    Some(w) if p.is_subword => w.push(p),
                    _ => words.push(vec![p]),
                }
            }
            words
                .into_iter()
                .map(|w| aggregate_word(vocab, &w, strategy, &label))
                .collect()
        }
    };

    let at = |start: usize, end: usize| (bytes[start], bytes[end.max(start)]);
    if strategy == Aggregation::None {
        return tagged
            .into_iter()
            .filter(|t| t.label != "O")
            .map(|t| {
                let (start_byte, end_byte) = at(t.start, t.end);
                Entity {
                    label: t.label,
                    score: t.score,
                    word: t.word,
                    start: t.start,
                    end: t.end,
                    start_byte,
                    end_byte,
                    index: Some(t.index),
                }
            })
            .collect();
    }

    // group_entities
    let mut groups: Vec<Vec<Tagged>> = Vec::new();
    for t in tagged {
        let joins = groups.last().is_some_and(|g| {
            let (b, tg) = tag(&t.label);
            let (_, last) = tag(&g[g.len() - 1].label);
            tg == last && !b
        });
        match groups.last_mut() {
            Some(g) if joins => g.push(t),
            _ => groups.push(vec![t]),
        }
    }
    groups
        .into_iter()
        .filter_map(|g| {
            let name = group_name(&g[0].label).to_string();
            if name == "O" {
                return None;
            }
            let score = (g.iter().map(|t| t.score as f64).sum::<f64>() / g.len() as f64) as f32;
            let words: Vec<String> = g.iter().map(|t| t.word.clone()).collect();
            let (start, end) = (g[0].start, g[g.len() - 1].end);
            let (start_byte, end_byte) = at(start, end);
            Some(Entity {
                label: name,
                score,
                word: vocab.join(&words),
                start,
                end,
                start_byte,
                end_byte,
                index: None,
            })
        })
        .collect()
}

/// The pipeline's `aggregate_word`: one label for the tokens of one word.
fn aggregate_word(
    vocab: &dyn Vocabulary,
    tokens: &[Pre],
    strategy: Aggregation,
    label: &dyn Fn(usize) -> String,
) -> Tagged {
    let words: Vec<String> = tokens.iter().map(|p| p.word.clone()).collect();
    let (best, score) = match strategy {
        Aggregation::Max => {
            // Python's max(): the first token of the highest top score.
            let top = |p: &Pre| p.scores[argmax(&p.scores)];
            let pick = tokens.iter().fold(
                &tokens[0],
                |best, p| if top(p) > top(best) { p } else { best },
            );
            let i = argmax(&pick.scores);
            (i, pick.scores[i])
        }
        Aggregation::Average => {
            let n = tokens[0].scores.len();
            let avg: Vec<f32> = (0..n)
                .map(|j| {
                    let (sum, count) = tokens
                        .iter()
                        .map(|p| p.scores[j] as f64)
                        .filter(|s| !s.is_nan())
                        .fold((0.0, 0usize), |(s, c), x| (s + x, c + 1));
                    (sum / count.max(1) as f64) as f32
                })
                .collect();
            let i = argmax(&avg);
            (i, avg[i])
        }
        _ => {
            let i = argmax(&tokens[0].scores);
            (i, tokens[0].scores[i])
        }
    };
    Tagged {
        label: label(best),
        score,
        word: vocab.join(&words),
        start: tokens[0].start,
        end: tokens[tokens.len() - 1].end,
        index: tokens[0].index,
    }
}

/// `text` with each entity's span replaced by `[LABEL]`. Entities are taken in text order; one
/// that overlaps a span already replaced widens it instead of nesting.
///
/// A span first widens to the words it touches (Unicode word boundaries, UAX #29): a model
/// that tags part of a word (`Jo` of `John`, with a sub-word left `O` by SIMPLE aggregation)
/// still redacts the whole word, never leaving `[PER]hn`. Redaction may hide more than the
/// entity, never less of the word it falls in.
pub fn redact(text: &str, entities: &[Entity]) -> String {
    use unicode_segmentation::UnicodeSegmentation;
    // Words only: whitespace and punctuation segments are not widened into.
    let words: Vec<(usize, usize)> = text
        .split_word_bound_indices()
        .filter(|(_, w)| w.chars().any(char::is_alphanumeric))
        .map(|(at, w)| (at, at + w.len()))
        .collect();
    let widen = |(start, end): (usize, usize)| {
        let start = words
            .iter()
            .find(|w| w.0 <= start && start < w.1)
            .map_or(start, |w| w.0);
        let end = words
            .iter()
            .find(|w| w.0 < end && end <= w.1)
            .map_or(end, |w| w.1);
        (start, end)
    };
    let mut spans: Vec<(usize, usize, &str)> = entities
        .iter()
        .filter(|e| e.start_byte < e.end_byte && e.end_byte <= text.len())
        .filter(|e| text.is_char_boundary(e.start_byte) && text.is_char_boundary(e.end_byte))
        .map(|e| {
            let (s, t) = widen((e.start_byte, e.end_byte));
            (s, t, e.label.as_str())
        })
        .collect();
    spans.sort_by_key(|s| (s.0, s.1));
    let mut merged: Vec<(usize, usize, &str)> = Vec::new();
    for s in spans {
        match merged.last_mut() {
            Some(last) if s.0 < last.1 => last.1 = last.1.max(s.1),
            _ => merged.push(s),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, label) in merged {
        out.push_str(&text[at..start]);
        out.push('[');
        out.push_str(label);
        out.push(']');
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WordPiece-like vocabulary over a few ids.
    struct Wp;
    impl Vocabulary for Wp {
        fn token(&self, id: u32) -> String {
            [
                "[CLS]", "[SEP]", "[UNK]", "jo", "##hn", "smith", "lives", "in", "paris",
            ][id as usize]
                .to_string()
        }
        fn join(&self, tokens: &[String]) -> String {
            // As tokenizers' WordPiece decoder: a first token keeps its "##".
            let mut s = String::new();
            for t in tokens {
                match t.strip_prefix("##") {
                    _ if s.is_empty() => s.push_str(t),
                    Some(rest) => s.push_str(rest),
                    None => {
                        s.push(' ');
                        s.push_str(t)
                    }
                }
            }
            s
        }
        fn word_aware(&self) -> bool {
            true
        }
        fn unk_id(&self) -> Option<u32> {
            Some(2)
        }
    }

    fn labels() -> Vec<String> {
        ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
            .map(String::from)
            .to_vec()
    }

    fn one_hot(i: usize, p: f32) -> Vec<f32> {
        let mut v = vec![(1.0 - p) / 4.0; 5];
        v[i] = p;
        v
    }

    /// "John Smith lives in Paris ü": jo ##hn smith lives in paris [UNK].
    fn case() -> (Vec<u32>, Spans) {
        let text = "John Smith lives in Paris ü".to_string();
        let ids = vec![0, 3, 4, 5, 6, 7, 8, 2, 1];
        let offsets = vec![
            (0, 0),
            (0, 2),
            (2, 4),
            (5, 10),
            (11, 16),
            (17, 19),
            (20, 25),
            (26, 27),
            (0, 0),
        ];
        let mut special = vec![false; 9];
        special[0] = true;
        special[8] = true;
        (
            ids,
            Spans {
                text,
                offsets,
                special,
            },
        )
    }

    #[test]
    fn strategies_group_as_the_pipeline_does() {
        let (ids, spans) = case();
        // jo=B-PER, ##hn=I-LOC (disagrees inside the word), smith=I-PER, lives=O, in=O,
        // paris=B-LOC, [UNK]=I-LOC.
        let scores = vec![
            one_hot(0, 0.9),
            one_hot(1, 0.8),
            one_hot(4, 0.9),
            one_hot(2, 0.7),
            one_hot(0, 0.9),
            one_hot(0, 0.9),
            one_hot(3, 0.6),
            one_hot(4, 0.5),
            one_hot(0, 0.9),
        ];
        let simple = entities(&Wp, &labels(), &ids, &spans, &scores, Aggregation::Simple);
        let words: Vec<(&str, &str)> = simple
            .iter()
            .map(|e| (e.label.as_str(), e.word.as_str()))
            .collect();
        // Simple splits "john" where the tag changes; the unknown token keeps its text.
        assert_eq!(
            words,
            [
                ("PER", "jo"),
                ("LOC", "##hn"),
                ("PER", "smith"),
                ("LOC", "paris ü")
            ]
        );
        let first = entities(&Wp, &labels(), &ids, &spans, &scores, Aggregation::First);
        assert_eq!(first[0].word, "john smith");
        assert_eq!((first[0].start, first[0].end), (0, 10));
        assert!((first[0].score - 0.75).abs() < 1e-6, "{}", first[0].score);
        let max = entities(&Wp, &labels(), &ids, &spans, &scores, Aggregation::Max);
        // ##hn's 0.9 beats jo's 0.8: the word is I-LOC, a group of its own.
        assert_eq!(max[0].label, "LOC");
        assert_eq!(max[0].word, "john");
        let none = entities(&Wp, &labels(), &ids, &spans, &scores, Aggregation::None);
        assert_eq!(none.len(), 5);
        assert_eq!((none[0].label.as_str(), none[0].index), ("B-PER", Some(1)));
        let last = none.last().unwrap();
        // "ü" is two bytes at byte 26.
        assert_eq!(
            (last.start, last.end, last.start_byte, last.end_byte),
            (26, 27, 26, 28)
        );
    }

    /// An entity of `label` over bytes `s..t`, for the redaction tests.
    fn e(label: &str, s: usize, t: usize) -> Entity {
        Entity {
            label: label.into(),
            score: 1.0,
            word: String::new(),
            start: 0,
            end: 0,
            start_byte: s,
            end_byte: t,
            index: None,
        }
    }

    #[test]
    fn redaction_replaces_spans_and_merges_overlaps() {
        let text = "Mail ana@x.io from Köln";
        // "ö" is two bytes: "Köln" is bytes 19..24.
        let got = redact(
            text,
            &[e("LOC", 19, 24), e("EMAIL", 5, 11), e("EMAIL", 9, 13)],
        );
        assert_eq!(got, "Mail [EMAIL] from [LOC]");
        assert_eq!(redact(text, &[]), text);
    }

    /// A span that covers part of a word redacts the whole word, whatever the aggregation left
    /// out of the entity; spaces and punctuation around it are kept.
    #[test]
    fn redaction_widens_to_whole_words() {
        let text = "John Smith wired 5000 dollars to Acme Bank, Köln.";
        // "Jo" of John, "mit" inside Smith, "Kö" of Köln (ö is two bytes).
        let got = redact(text, &[e("PER", 0, 2), e("PER", 6, 9), e("LOC", 44, 47)]);
        assert_eq!(got, "[PER] [PER] wired 5000 dollars to Acme Bank, [LOC].");
        // A span ending at a word's end, or starting at its start, is unchanged.
        assert_eq!(
            redact(text, &[e("ORG", 33, 42)]),
            "John Smith wired 5000 dollars to [ORG], Köln."
        );
        // Ideographs are words of their own: widening does not swallow the sentence.
        let cjk = "我住在东京市";
        assert_eq!(
            redact(cjk, &[e("LOC", 9, 15)])
                .chars()
                .filter(|&c| c == '我')
                .count(),
            1
        );
    }

    #[test]
    fn min_scores_parse_and_match_groups() {
        let m = MinScore::parse(&["0.5".into(), "PER=0.9".into()]).unwrap();
        assert_eq!(m.of("B-PER"), 0.9);
        assert_eq!(m.of("LOC"), 0.5);
        assert!(MinScore::parse(&["PER=2".into()]).is_err());
        assert!(MinScore::parse(&["x".into()]).is_err());
    }

    #[test]
    fn label_quirks_match_transformers() {
        assert_eq!(group_name("ID-NUM"), "NUM");
        assert_eq!(group_name("EMAIL"), "EMAIL");
        assert_eq!(tag("ID-NUM"), (false, "ID-NUM"));
        assert_eq!(tag("B-PER"), (true, "PER"));
    }
}
