//! The committed default model agrees with transformers on its whole held-out split
//! (golden logits written by scripts/train_default_model.py).

use candle_core::DType;
use classifyd::engine::tokenize::{Encoded, Input};

use crate::helpers::*;

#[test]
fn default_model_matches_transformers_on_held_out_split() {
    let golden = golden(&fixture("sentiment-minilm-heldout"));
    let cases = golden["cases"].as_array().expect("cases");
    assert!(
        cases.len() > 1000,
        "held-out split is {} texts",
        cases.len()
    );
    let engine = load(&default_model(), DType::F32);
    assert_eq!(engine.info().labels, ["NEGATIVE", "POSITIVE"]);

    let encoded: Vec<Encoded> = cases
        .iter()
        .map(|c| {
            let text = c["text"].as_str().unwrap().to_string();
            let e = engine.tokenize(&Input::Text(text), true).unwrap();
            assert_eq!(e.ids, u32s(&c["input_ids"]), "ids of {:?}", c["text"]);
            e
        })
        .collect();

    // Batches of similar length, as the daemon forms them, to keep the run short.
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| encoded[i].len());
    let (mut agree, mut worst, mut human) = (0usize, 0f32, 0usize);
    for chunk in order.chunks(32) {
        let refs: Vec<&Encoded> = chunk.iter().map(|&i| &encoded[i]).collect();
        let logits = engine.logits(&refs).unwrap();
        for (&i, got) in chunk.iter().zip(&logits) {
            let want = f32s(&cases[i]["logits"]);
            worst = worst.max(max_abs_diff(got, &want));
            agree += usize::from(argmax(got) == argmax(&want));
            human += usize::from(argmax(got) as u64 == cases[i]["label"].as_u64().unwrap());
        }
    }
    let agreement = agree as f64 / cases.len() as f64;
    let accuracy = human as f64 / cases.len() as f64;
    eprintln!(
        "held-out: agreement {agreement:.5}, max |Δlogit| {worst:.2e}, accuracy {accuracy:.4}"
    );
    assert!(agreement >= 0.999, "agreement {agreement}");
    assert!(worst <= 1e-3, "max |Δlogit| {worst}");
    assert!(accuracy > 0.8, "accuracy {accuracy}");
}

#[test]
fn default_model_reads_sentiment() {
    let engine = load(&default_model(), DType::F32);
    let texts = ["what a wonderful film", "a dull, lifeless and boring mess"];
    let inputs: Vec<Input> = texts.iter().map(|t| Input::Text(t.to_string())).collect();
    let got = engine.classify(&inputs, true).unwrap();
    let labels: Vec<&str> = got
        .iter()
        .map(|p| p.as_ref().unwrap().label.as_str())
        .collect();
    assert_eq!(labels, ["POSITIVE", "NEGATIVE"]);
}

#[test]
fn over_long_text_is_truncated_or_refused_on_request() {
    let engine = load(&default_model(), DType::F32);
    let long = Input::Text("good ".repeat(600));
    let e = engine.tokenize(&long, true).unwrap();
    assert_eq!(e.len(), engine.info().max_length);
    let err = engine.tokenize(&long, false).unwrap_err();
    assert!(err.to_string().contains("at most 512"), "{err}");
    // One pass of the untruncated tokenizer measures it exactly: 600 words, [CLS] and [SEP].
    assert!(err.to_string().contains("602"), "{err}");
    let pair = Input::Pair("good ".repeat(400), "bad ".repeat(400));
    assert_eq!(engine.tokenize(&pair, true).unwrap().len(), 512);
    let err = engine.tokenize(&pair, false).unwrap_err();
    assert!(err.to_string().contains("803"), "{err}");
    // Within the limit, refusing and truncating tokenize alike.
    for fits in [
        Input::Text("good ".repeat(510)),
        Input::Pair("a fine film".into(), "not bad at all".into()),
    ] {
        assert_eq!(
            engine.tokenize(&fits, false).unwrap(),
            engine.tokenize(&fits, true).unwrap()
        );
    }
}
