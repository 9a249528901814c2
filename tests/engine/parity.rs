//! Parity with transformers: every fixture's golden logits (made by scripts/make_fixtures.py),
//! one text at a time and in one padded batch, in F32; F16 and BF16 finite with F32's argmax.

use candle_core::DType;
use classifyd::engine::tokenize::Encoded;
use serde_json::Value;

use crate::helpers::*;

const F32_TOL: f32 = 1e-4;
/// F32 margin below which a reduced-precision label may differ (see the half-precision loop).
const HALF_MARGIN: f32 = 0.05;

fn check_fixture(name: &str) {
    let dir = fixture(name);
    let golden = golden(&dir);
    let all = golden["cases"].as_array().expect("cases");
    // Inputs that tokenize to nothing are refused, not classified.
    for c in all.iter().filter(|c| c["refused"].as_bool() == Some(true)) {
        let engine = load(&dir, DType::F32);
        assert!(
            engine.tokenize(&case_input(c), true).is_err(),
            "{name}: {:?} should be refused",
            c["text"]
        );
    }
    let cases: Vec<&Value> = all
        .iter()
        .filter(|c| c["refused"].as_bool() != Some(true))
        .collect();
    assert!(cases.len() >= 8, "{name}: too few golden cases");
    let engine = load(&dir, DType::F32);
    let info = engine.info();
    assert_eq!(
        info.architecture,
        golden["architecture"].as_str().unwrap(),
        "{name}"
    );
    assert_eq!(
        info.max_length as u64,
        golden["max_length"].as_u64().unwrap(),
        "{name}"
    );
    let labels: Vec<String> = golden["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(info.labels, labels, "{name}");
    assert_eq!(
        info.problem_type,
        golden["problem_type"].as_str().unwrap(),
        "{name}"
    );

    // Tokenization matches transformers', id for id.
    let encoded: Vec<Encoded> = cases
        .iter()
        .map(|c| {
            let e = engine.tokenize(&case_input(c), true).expect("tokenizes");
            assert_eq!(
                e.ids,
                u32s(&c["input_ids"]),
                "{name}: ids of {:?}",
                c["text"]
            );
            e
        })
        .collect();
    assert!(
        encoded.iter().any(|e| e.len() == info.max_length),
        "{name}: no case reaches max_length, truncation untested"
    );

    // One at a time.
    for (c, e) in cases.iter().zip(&encoded) {
        let got = engine.logits(&[e]).expect("forward").remove(0);
        let want = f32s(&c["logits"]);
        let d = max_abs_diff(&got, &want);
        assert!(
            d <= F32_TOL,
            "{name}: {:?}: |Δ| {d} (got {got:?}, want {want:?})",
            c["text"]
        );
    }

    // One padded batch of every case, mixed lengths: the padding masks.
    let refs: Vec<&Encoded> = encoded.iter().collect();
    let batched = engine.logits_padded(&refs).expect("batched forward");
    // The CPU's default path groups equal lengths instead of padding: same answers.
    let grouped = engine.logits(&refs).expect("grouped forward");
    for (g, b) in grouped.iter().zip(&batched) {
        assert!(max_abs_diff(g, b) <= F32_TOL, "{name}: grouped vs padded");
    }
    for ((c, got), want) in cases
        .iter()
        .zip(&batched)
        .zip(golden["batch_logits"].as_array().unwrap())
    {
        let d = max_abs_diff(got, &f32s(&c["logits"]));
        assert!(d <= F32_TOL, "{name}: batched {:?}: |Δ| {d}", c["text"]);
        let d = max_abs_diff(got, &f32s(want));
        assert!(
            d <= F32_TOL,
            "{name}: batched vs transformers' batch {:?}: |Δ| {d}",
            c["text"]
        );
    }

    // Half precisions: finite, and the same decision where F32's is clear (top two logits
    // over HALF_MARGIN apart: closer than that, BF16's ~3 significant digits decide the toss;
    // tests/engine/half.rs holds the error itself to PyTorch's).
    for dtype in [DType::F16, DType::BF16] {
        let half = load(&dir, dtype);
        let got = half.logits_padded(&refs).expect("half forward");
        for ((c, g), f) in cases.iter().zip(&got).zip(&batched) {
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{name} {dtype:?}: {:?} gave {g:?}",
                c["text"]
            );
            let mut top = f.clone();
            top.sort_by(|a, b| b.total_cmp(a));
            if top.len() < 2 || top[0] - top[1] < HALF_MARGIN {
                continue;
            }
            assert_eq!(
                argmax(g),
                argmax(f),
                "{name} {dtype:?}: {:?}: {g:?} vs {f:?}",
                c["text"]
            );
        }
    }
}

macro_rules! parity {
    ($($test:ident => $fixture:literal),* $(,)?) => {
        $(#[test] fn $test() { check_fixture($fixture); })*
    };
}

parity! {
    bert => "bert",
    bert_scores_past_f16_range => "bert-hot",
    bert_multilabel_sharded => "bert-multilabel",
    distilbert_bf16_weights => "distilbert",
    roberta_f16_weights => "roberta",
    xlm_roberta => "xlm-roberta",
    electra => "electra",
    modernbert_cls => "modernbert",
    modernbert_mean => "modernbert-mean",
    deberta_v2 => "deberta-v2",
    deberta_v2_conv => "deberta-v2-conv",
    qwen3_gqa_qk_norm_sliding_no_bos => "qwen3",
    qwen2_mqa_qkv_bias_regression_bf16_weights => "qwen2",
    llama_rope_llama3_bos => "llama",
    mistral_sliding_rope_linear_multilabel_f16_weights => "mistral",
    gemma2_softcap_alternating_windows => "gemma2",
    gemma3_qk_norm_two_rope_bases_bf16_weights => "gemma3",
    gemma3_multimodal_class_read_as_text => "gemma3-mm",
}
