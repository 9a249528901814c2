//! Reduced precision against PyTorch's own: for every fixture, our F16 and BF16 logits are
//! measured against the F32 goldens exactly as PyTorch's are (scripts/half_goldens.py wrote
//! PyTorch's into half.json, from the same padded batch), and ours may be no worse than
//! - mean |Δlogit| ≤ 1.25 × PyTorch's,
//! - max |Δlogit| ≤ 2 × PyTorch's,
//! - wrong labels (argmax ≠ F32's) ≤ PyTorch's + 1.

use std::path::Path;

use candle_core::DType;
use classifyd::engine::tokenize::Encoded;
use serde_json::Value;

use crate::helpers::*;

const MEAN_RATIO: f64 = 1.25;
const MAX_RATIO: f64 = 2.0;

/// Fixtures held only to finite logits and the wrong-label bound. `bert-hot` exists to overflow
/// F16 if scores are formed before scaling (its unscaled q·k reach ~95,000): its attention is
/// one-hot, so a near-tie between two keys in one of its ten texts turns a rounding of either
/// side into a different key, and the ratio measures which side the coin fell (at query/key
/// gains of 34, 36 and 40 our F16 was 1.9–3.3× PyTorch's mean, our BF16 0.76–0.90×).
const TIE_SENSITIVE: &[&str] = &["bert-hot"];

#[derive(Debug)]
struct Error {
    mean: f64,
    max: f64,
    wrong: usize,
}

fn error(got: &[Vec<f32>], want: &[Vec<f32>]) -> Error {
    let (mut sum, mut n, mut max, mut wrong) = (0f64, 0usize, 0f64, 0usize);
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        for (a, b) in g.iter().zip(w) {
            let d = (f64::from(*a) - f64::from(*b)).abs();
            sum += d;
            n += 1;
            max = max.max(if d.is_finite() { d } else { f64::INFINITY });
        }
        if w.len() > 1 && argmax(g) != argmax(w) {
            wrong += 1;
        }
    }
    Error {
        mean: sum / n.max(1) as f64,
        max,
        wrong,
    }
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().expect("rows").iter().map(f32s).collect()
}

/// Ours and PyTorch's error at each reduced dtype, one line per dtype; `Err` names what
/// misses a target.
fn measure(name: &str, dir: &Path, torch: &Value) -> Vec<(String, Result<(), String>)> {
    let golden = golden(dir);
    let want = rows(&golden["batch_logits"]);
    let cases = golden["cases"].as_array().expect("cases");
    let mut out = Vec::new();
    for (dtype, key) in [(DType::F16, "float16"), (DType::BF16, "bfloat16")] {
        let engine = load(dir, dtype);
        let encoded: Vec<Encoded> = cases
            .iter()
            .map(|c| engine.tokenize(&case_input(c), true).expect("tokenizes"))
            .collect();
        let refs: Vec<&Encoded> = encoded.iter().collect();
        let ours = error(&engine.logits_padded(&refs).expect("forward"), &want);
        let theirs = error(&rows(&torch[key]), &want);
        let line = format!(
            "{name:16} {key:9} mean {:.2e} / {:.2e} = {:.2}×   max {:.2e} / {:.2e} = {:.2}×   \
             wrong {} / {}",
            ours.mean,
            theirs.mean,
            ours.mean / theirs.mean,
            ours.max,
            theirs.max,
            ours.max / theirs.max,
            ours.wrong,
            theirs.wrong
        );
        let ratios = !TIE_SENSITIVE.contains(&name);
        let verdict = if !ours.max.is_finite() {
            Err("not finite".into())
        } else if ratios && ours.mean > MEAN_RATIO * theirs.mean {
            Err(format!("mean over {MEAN_RATIO}×"))
        } else if ratios && ours.max > MAX_RATIO * theirs.max {
            Err(format!("max over {MAX_RATIO}×"))
        } else if ours.wrong > theirs.wrong + 1 {
            Err("more wrong labels".into())
        } else {
            Ok(())
        };
        out.push((line, verdict));
    }
    out
}

#[test]
fn f16_and_bf16_are_no_worse_than_pytorch_at_the_same_dtype() {
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for name in FIXTURES.iter().chain(&["modernbert-mean"]) {
        let dir = fixture(name);
        let path = dir.join("half.json");
        let torch: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("half.json")).unwrap();
        for (line, verdict) in measure(name, &dir, &torch) {
            if let Err(why) = &verdict {
                failures.push(format!("{line}   <- {why}"));
            }
            lines.push(line);
        }
    }
    eprintln!(
        "ours / PyTorch's, against the F32 goldens:\n{}",
        lines.join("\n")
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
