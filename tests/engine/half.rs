//! Reduced precision against PyTorch's own: for every fixture, our F16 and BF16 logits are
//! measured against PyTorch's F32 exactly as PyTorch's F16 and BF16 are. scripts/half_goldens.py
//! wrote all three into half.json for the golden cases plus 100 tweets (token ids included), in
//! padded batches of 32 that we run the same way; ours may be no worse than
//! - mean |Δlogit| ≤ 1.25 × PyTorch's,
//! - max |Δlogit| ≤ 2 × PyTorch's,
//! - wrong labels (argmax ≠ F32's; of each token, for a token-classification fixture) ≤
//!   PyTorch's + 1 per 500 rows begun (a token fixture's ~1,500 token rows toss ten times the
//!   coins of 110 texts), counted over the inputs whose F32 margin
//!   (top logit minus the next) exceeds [`RESOLVABLE`] × PyTorch's mean |Δlogit| at that dtype.
//!   These are random models: some inputs' top two logits are 0.001 apart, closer than the
//!   dtype can tell, and which way such a label falls is a toss for PyTorch as for us (both
//!   counts, all inputs, are printed too).

use std::path::Path;

use candle_core::DType;
use classifyd::engine::tokenize::Encoded;
use serde_json::Value;

use crate::helpers::*;

const MEAN_RATIO: f64 = 1.25;
const MAX_RATIO: f64 = 2.0;
/// A label is one the dtype can resolve when its F32 margin is over this many times the
/// dtype's mean error (the difference of two logits errs by about √2 of one).
const RESOLVABLE: f64 = 4.0;

#[derive(Debug)]
struct Error {
    mean: f64,
    max: f64,
    /// Wrong labels over all inputs, and over those with a margin over `margin`.
    wrong: usize,
    wrong_resolvable: usize,
}

/// Top logit minus the next.
fn margin(w: &[f32]) -> f64 {
    let mut v: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
    v.sort_by(|a, b| b.total_cmp(a));
    v.first()
        .zip(v.get(1))
        .map_or(f64::INFINITY, |(a, b)| a - b)
}

fn error(got: &[Vec<f32>], want: &[Vec<f32>], resolvable: f64) -> Error {
    let (mut sum, mut n, mut max, mut wrong) = (0f64, 0usize, 0f64, 0usize);
    let mut wrong_resolvable = 0;
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
            wrong_resolvable += usize::from(margin(w) > resolvable);
        }
    }
    Error {
        mean: sum / n.max(1) as f64,
        max,
        wrong,
        wrong_resolvable,
    }
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().expect("rows").iter().map(f32s).collect()
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().expect("id rows").iter().map(u32s).collect()
}

/// Ours and PyTorch's error at each reduced dtype, one line per dtype; `Err` names what
/// misses a target.
fn measure(name: &str, dir: &Path, torch: &Value) -> Vec<(String, Result<(), String>)> {
    let want = rows(&torch["float32"]);
    let inputs: Vec<Encoded> = ids(&torch["input_ids"])
        .into_iter()
        .zip(ids(&torch["token_type_ids"]))
        .map(|(ids, type_ids)| Encoded {
            ids,
            type_ids,
            spans: None,
        })
        .collect();
    let batch = torch["batch"].as_u64().expect("batch") as usize;
    let mut out = Vec::new();
    for (dtype, key) in [(DType::F16, "float16"), (DType::BF16, "bfloat16")] {
        let engine = load(dir, dtype);
        let mut got = Vec::new();
        let labels = engine.info().labels.len();
        for chunk in inputs.chunks(batch) {
            let refs: Vec<&Encoded> = chunk.iter().collect();
            let logits = engine.logits_padded(&refs).expect("forward");
            if engine.info().task == "token" {
                // A token model's rows are its tokens, as half.json lists them.
                got.extend(
                    logits
                        .iter()
                        .flat_map(|r| r.chunks(labels).map(<[f32]>::to_vec)),
                );
            } else {
                got.extend(logits);
            }
        }
        let theirs = error(&rows(&torch[key]), &want, 0.0);
        let resolvable = RESOLVABLE * theirs.mean;
        let theirs = error(&rows(&torch[key]), &want, resolvable);
        let ours = error(&got, &want, resolvable);
        let line = format!(
            "{name:16} {key:9} mean {:.2e} / {:.2e} = {:.2}×   max {:.2e} / {:.2e} = {:.2}×   \
             wrong {} / {} (resolvable {} / {})",
            ours.mean,
            theirs.mean,
            ours.mean / theirs.mean,
            ours.max,
            theirs.max,
            ours.max / theirs.max,
            ours.wrong,
            theirs.wrong,
            ours.wrong_resolvable,
            theirs.wrong_resolvable
        );
        let verdict = if !ours.max.is_finite() {
            Err("not finite".into())
        } else if ours.mean > MEAN_RATIO * theirs.mean {
            Err(format!("mean over {MEAN_RATIO}×"))
        } else if ours.max > MAX_RATIO * theirs.max {
            Err(format!("max over {MAX_RATIO}×"))
        } else if ours.wrong_resolvable > theirs.wrong_resolvable + want.len().div_ceil(500) {
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
    let token = crate::token::TOKEN_FIXTURES;
    for name in FIXTURES.iter().chain(&["modernbert-mean"]).chain(&token) {
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

/// `--dtype auto` on a GPU, for every fixture (every family, sequence and token heads): the
/// checkpoint's half `torch_dtype` when it names one, else BF16 for a decoder and F16 for an
/// encoder. The fixtures were saved in F32, F16 and BF16, so each rule is met.
#[test]
fn dtype_auto_on_a_gpu_follows_each_fixture_s_checkpoint() {
    use classifyd::engine::device::{auto_on_gpu, checkpoint_dtype};
    use classifyd::model::families;
    let mut seen = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(crate::common::repo().join("tests/fixtures")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
            continue;
        };
        let config: Value = serde_json::from_str(&text).unwrap();
        let arch = config["architectures"][0].as_str().unwrap();
        let family = families::find(arch).unwrap_or_else(|| panic!("{arch}"));
        let decoder = family.decoder;
        let saved = config["dtype"].as_str().or(config["torch_dtype"].as_str());
        let want = match (saved, decoder) {
            (Some("bfloat16"), _) => DType::BF16,
            (Some("float16"), _) => DType::F16,
            (_, true) => DType::BF16,
            (_, false) => DType::F16,
        };
        let (got, why) = auto_on_gpu(checkpoint_dtype(&config), decoder);
        assert_eq!(got, want, "{}: {why}", dir.display());
        seen.insert((saved.unwrap_or("none").to_string(), decoder));
    }
    // Every rule met: a half checkpoint of each kind, and an F32 one of each kind.
    for case in [
        ("bfloat16", true),
        ("float16", false),
        ("float32", true),
        ("float32", false),
    ] {
        assert!(
            seen.contains(&(case.0.to_string(), case.1)),
            "{case:?}: {seen:?}"
        );
    }
}
