//! Token classification (NER/PII) against transformers: per-token logits within 1e-4 of
//! PyTorch's, one at a time and batched, and the token-classification pipeline's entities for
//! every aggregation strategy (scripts/make_token_fixtures.py wrote the goldens).

use candle_core::DType;
use classifyd::engine::entities::{Aggregation, Entity};
use classifyd::engine::error::InputError;
use classifyd::engine::tokenize::{Encoded, Input};
use classifyd::engine::{Answer, Engine, TokenOptions, TokenPrediction};
use serde_json::Value;

use crate::helpers::*;

/// One fixture per encoder family's `*ForTokenClassification`, and one per decoder family's
/// (`GenericForTokenClassification`: Qwen3 without special tokens, Llama with a BOS, Qwen2's
/// biases, Mistral's window, Gemma 2's norms and softcapping).
pub const TOKEN_FIXTURES: [&str; 12] = [
    "tok-bert",
    "tok-distilbert",
    "tok-roberta",
    "tok-xlm-roberta",
    "tok-electra",
    "tok-modernbert",
    "tok-deberta-v2",
    "tok-qwen3",
    "tok-llama",
    "tok-qwen2",
    "tok-mistral",
    "tok-gemma2",
];

const STRATEGIES: [(&str, Aggregation); 5] = [
    ("none", Aggregation::None),
    ("simple", Aggregation::Simple),
    ("first", Aggregation::First),
    ("average", Aggregation::Average),
    ("max", Aggregation::Max),
];

fn predict(engine: &Engine, text: &str, opts: &TokenOptions) -> TokenPrediction {
    let answers = engine
        .classify_with(&[Input::Text(text.into())], true, opts)
        .expect("forward pass");
    match answers.into_iter().next() {
        Some(Ok(Answer::Token(t))) => t,
        other => panic!("{text:?}: expected a token answer, got {other:?}"),
    }
}

fn same_entity(ours: &Entity, theirs: &Value, strategy: &str) -> Result<(), String> {
    let key = if strategy == "none" {
        "entity"
    } else {
        "entity_group"
    };
    let label = theirs[key].as_str().unwrap_or_default();
    let word = theirs["word"].as_str().unwrap_or_default();
    let start = theirs["start"].as_u64().unwrap_or(u64::MAX) as usize;
    let end = theirs["end"].as_u64().unwrap_or(u64::MAX) as usize;
    let score = theirs["score"].as_f64().unwrap_or(f64::NAN) as f32;
    let index = theirs
        .get("index")
        .and_then(Value::as_u64)
        .map(|i| i as usize);
    if ours.label != label
        || ours.word != word
        || (ours.start, ours.end) != (start, end)
        || ours.index != index
        || (ours.score - score).abs() > 1e-4
    {
        return Err(format!("ours {ours:?}, transformers' {theirs}"));
    }
    Ok(())
}

fn check_fixture(name: &str) {
    let dir = fixture(name);
    let golden = golden(&dir);
    let engine = load(&dir, DType::F32);
    assert_eq!(engine.info().task, "token");
    assert_eq!(engine.info().pooling, "every token");
    let cases = golden["cases"].as_array().expect("cases");
    let mut worst = 0f32;
    let mut entities = 0;
    let cases: Vec<&Value> = cases
        .iter()
        .filter(|c| {
            if c.get("refused").is_none() {
                return true;
            }
            // No tokens (a tokenizer that adds none, on ""): refused, never classified.
            let text = c["text"].as_str().expect("text");
            let r = engine
                .classify_with(&[Input::Text(text.into())], true, &TokenOptions::default())
                .expect("forward pass");
            assert_eq!(r[0], Err(InputError::NoTokens), "{name} {text:?}");
            false
        })
        .collect();
    for case in &cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<Vec<f32>> = case["token_logits"]
            .as_array()
            .expect("token_logits")
            .iter()
            .map(f32s)
            .collect();
        for (strategy, aggregation) in STRATEGIES {
            let opts = TokenOptions {
                aggregation,
                ..Default::default()
            };
            let got = predict(&engine, text, &opts);
            assert_eq!(got.tokens, want.len(), "{name} {text:?}");
            for (g, w) in got.token_logits.iter().zip(&want) {
                for (a, b) in g.iter().zip(w) {
                    worst = worst.max((a - b).abs());
                }
            }
            let theirs = case["entities"][strategy].as_array().expect("entities");
            assert_eq!(
                got.entities.len(),
                theirs.len(),
                "{name} {strategy} {text:?}: ours {:?}\ntransformers' {theirs:?}",
                got.entities
            );
            for (o, t) in got.entities.iter().zip(theirs) {
                same_entity(o, t, strategy)
                    .unwrap_or_else(|e| panic!("{name} {strategy} {text:?}: {e}"));
                // Byte offsets cut the same text the character offsets do.
                let by_chars: String = text.chars().skip(o.start).take(o.end - o.start).collect();
                assert_eq!(&text[o.start_byte..o.end_byte], by_chars, "{name} {text:?}");
            }
            entities += theirs.len();
        }
    }
    assert!(worst <= 1e-4, "{name}: max |Δ token logit| {worst:.3e}");
    assert!(entities > 50, "{name}: only {entities} entities compared");
    eprintln!("{name}: max |Δ| {worst:.2e}, {entities} entities equal transformers'");

    // Batched with padding equals one at a time.
    let encoded: Vec<Encoded> = cases
        .iter()
        .map(|c| {
            engine
                .tokenize(&Input::Text(c["text"].as_str().unwrap().into()), true)
                .expect("tokenizes")
        })
        .collect();
    let refs: Vec<&Encoded> = encoded.iter().collect();
    let batched = engine.logits_padded(&refs).expect("batch");
    for (b, e) in batched.iter().zip(&encoded) {
        let single = engine.logits_padded(&[e]).expect("single");
        assert_eq!(b.len(), single[0].len());
        let d = b
            .iter()
            .zip(&single[0])
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d <= 1e-4, "{name}: batch vs single {d:.3e}");
    }
}

macro_rules! token_parity {
    ($($test:ident => $fixture:literal),* $(,)?) => {
        $(#[test] fn $test() { check_fixture($fixture); })*
    };
}

token_parity! {
    bert_tokens => "tok-bert",
    distilbert_tokens => "tok-distilbert",
    roberta_tokens => "tok-roberta",
    xlm_roberta_tokens => "tok-xlm-roberta",
    electra_tokens => "tok-electra",
    modernbert_tokens => "tok-modernbert",
    deberta_v2_tokens => "tok-deberta-v2",
    qwen3_tokens => "tok-qwen3",
    llama_tokens => "tok-llama",
    qwen2_tokens => "tok-qwen2",
    mistral_tokens => "tok-mistral",
    gemma2_tokens => "tok-gemma2",
}

#[test]
fn redaction_and_min_scores() {
    let engine = load(&fixture("tok-bert"), DType::F32);
    let text = "Maria Lopez flew from Madrid to New York on Tuesday.";
    let mut opts = TokenOptions {
        redact: true,
        ..Default::default()
    };
    let all = predict(&engine, text, &opts);
    assert!(!all.entities.is_empty());
    let redacted = all.redacted.clone().expect("redacted");
    // Every entity's text is gone and its label stands in its place, in order.
    let mut rest = redacted.as_str();
    for e in &all.entities {
        let tag = format!("[{}]", e.label);
        let at = rest
            .find(&tag)
            .unwrap_or_else(|| panic!("{tag} in {redacted:?}"));
        rest = &rest[at + tag.len()..];
    }
    // Text outside the words the entities touch is kept as it was (a span widens to whole
    // words, #30).
    let first = &all.entities[0];
    let word_start = text[..first.start_byte]
        .trim_end_matches(char::is_alphanumeric)
        .len();
    assert!(redacted.starts_with(&text[..word_start]), "{redacted:?}");
    let last = all.entities.last().unwrap();
    let after = text[last.end_byte..].trim_start_matches(char::is_alphanumeric);
    assert!(redacted.ends_with(after), "{redacted:?}");

    // A threshold above every score keeps nothing; one per label keeps the others.
    let top = all.entities.iter().map(|e| e.score).fold(0f32, f32::max);
    opts.min_score.all = top + 1e-3;
    let none = predict(&engine, text, &opts);
    assert!(none.entities.is_empty());
    assert_eq!(none.redacted.as_deref(), Some(text));
    let label = all.entities[0].label.clone();
    opts.min_score.all = 0.0;
    opts.min_score.by_label.insert(label.clone(), 1.1);
    let some = predict(&engine, text, &opts);
    assert!(some.entities.iter().all(|e| e.label != label));
    assert_eq!(
        some.entities.len(),
        all.entities.iter().filter(|e| e.label != label).count()
    );
}

#[test]
fn token_models_refuse_pairs_and_ids() {
    let engine = load(&fixture("tok-roberta"), DType::F32);
    let r = engine
        .classify_with(
            &[
                Input::Pair("a".into(), "b".into()),
                Input::Ids(vec![0, 5, 2]),
                Input::Text("fine".into()),
            ],
            true,
            &TokenOptions::default(),
        )
        .unwrap();
    assert_eq!(r[0], Err(InputError::NeedsText));
    assert_eq!(r[1], Err(InputError::NeedsText));
    assert!(matches!(r[2], Ok(Answer::Token(_))));
}

#[test]
fn token_models_in_int8_keep_the_f32_labels() {
    // As tests/engine/int8.rs holds the sequence fixtures: per token, logits within 15 % of
    // the largest, and a label flips only where f32's top two are within twice the worst error.
    for name in TOKEN_FIXTURES {
        let dir = fixture(name);
        let f32_engine = load(&dir, DType::F32);
        let int8 = Engine::load(
            &dir,
            classifyd::engine::DeviceChoice::Cpu,
            classifyd::engine::DTypeChoice::Int8,
        )
        .unwrap();
        let (mut rows, mut flips, mut worst, mut scale) = (0, 0, 0f32, 0f32);
        let mut pairs = Vec::new();
        for case in golden(&dir)["cases"].as_array().unwrap() {
            if case.get("refused").is_some() {
                continue;
            }
            let text = case["text"].as_str().unwrap();
            let a = predict(&f32_engine, text, &TokenOptions::default()).token_logits;
            let b = predict(&int8, text, &TokenOptions::default()).token_logits;
            for (x, y) in a.into_iter().zip(b) {
                worst = x
                    .iter()
                    .zip(&y)
                    .fold(worst, |m, (p, q)| m.max((p - q).abs()));
                scale = x.iter().fold(scale, |m, p| m.max(p.abs()));
                pairs.push((x, y));
            }
        }
        for (x, y) in &pairs {
            rows += 1;
            if argmax(x) != argmax(y) {
                flips += 1;
                let mut s = x.clone();
                s.sort_by(|p, q| q.total_cmp(p));
                assert!(s[0] - s[1] < 2.0 * worst, "{name}: a clear label flipped");
            }
        }
        eprintln!(
            "{name} int8: {flips} of {rows} token labels flipped, max |Δ| {worst:.3} of {scale:.2}"
        );
        assert!(
            worst <= 0.15 * scale,
            "{name}: max |Δlogit| {worst} of {scale}"
        );
        assert!(flips * 10 <= rows, "{name}: {flips} of {rows} flipped");
    }
}

/// Scores that are not finite are never read as an answer: a token model whose classifier is
/// NaN refuses each input with its own error (no entities, no "redacted" equal to the input),
/// in process and through `classify --redact`, which exits 2 with the reason; a sequence model
/// likewise refuses rather than naming label 0.
#[test]
fn non_finite_scores_are_refused_never_redacted_as_clean() {
    let text = "John Smith wired 5000 dollars to Acme Bank in Paris.";
    let dir = scratch_copy("tok-bert");
    poison_weight(dir.path(), "classifier.weight");
    let engine = Engine::load(
        dir.path(),
        classifyd::engine::DeviceChoice::Cpu,
        classifyd::engine::DTypeChoice::Auto,
    )
    .unwrap();
    let opts = TokenOptions {
        redact: true,
        ..Default::default()
    };
    let answers = engine
        .classify_with(&[Input::Text(text.into())], true, &opts)
        .expect("the pass itself runs");
    assert!(
        matches!(answers[0], Err(InputError::NotFinite(n)) if n > 0),
        "{:?}",
        answers[0]
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_classifyd"))
        .args(["classify", "--redact", "--model"])
        .arg(dir.path())
        .arg(text)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(line.get("redacted").is_none(), "{line}");
    assert!(
        line["error"].as_str().unwrap_or("").contains("not finite"),
        "{line}"
    );

    let seq = scratch_copy("bert");
    poison_weight(seq.path(), "classifier.weight");
    let engine = Engine::load(
        seq.path(),
        classifyd::engine::DeviceChoice::Cpu,
        classifyd::engine::DTypeChoice::Auto,
    )
    .unwrap();
    let r = engine
        .classify(&[Input::Text("a fine film".into())], true)
        .unwrap();
    assert!(matches!(r[0], Err(InputError::NotFinite(_))), "{:?}", r[0]);
}

/// A threshold for a label the model lacks would never apply, so it is refused, naming the
/// labels there are; a group (`PER`) or a full label (`B-PER`) is accepted.
#[test]
fn min_score_for_a_label_the_model_lacks_is_refused() {
    let dir = fixture("tok-bert");
    let engine = load(&dir, DType::F32);
    let labels = engine.info().labels.clone();
    let group = labels
        .iter()
        .find_map(|l| l.strip_prefix("B-"))
        .expect("a B- label")
        .to_string();
    let run = |min_score: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_classifyd"))
            .args(["classify", "--min-score", min_score, "--model"])
            .arg(&dir)
            .arg("John lives in Paris")
            .output()
            .unwrap()
    };
    for ok in [
        format!("{group}=0.5"),
        format!("B-{group}=0.5"),
        "0.5".to_string(),
    ] {
        let out = run(&ok);
        assert!(
            out.status.success(),
            "{ok}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run("NOSUCH=0.5");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "classifyd: error: --min-score: min score for NOSUCH: this model has no such label (its labels: "
        ) && stderr.contains(&group),
        "{stderr}"
    );
}
