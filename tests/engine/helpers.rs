//! Shared helpers: fixture paths and golden files.

use std::path::Path;

use candle_core::DType;
use classifyd::engine::tokenize::Input;
use classifyd::engine::{DTypeChoice, DeviceChoice, Engine};
use serde_json::Value;

pub use crate::common::*;

/// Every tiny random fixture of tests/fixtures (one or more per architecture and head).
pub const FIXTURES: [&str; 17] = [
    "bert",
    "bert-hot",
    "bert-multilabel",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "electra",
    "modernbert",
    "deberta-v2",
    "deberta-v2-conv",
    "qwen3",
    "qwen2",
    "llama",
    "mistral",
    "gemma2",
    "gemma3",
    "gemma3-mm",
];

pub fn load(dir: &Path, dtype: DType) -> Engine {
    Engine::load(dir, DeviceChoice::Cpu, DTypeChoice::Fixed(dtype))
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

pub fn golden(dir: &Path) -> Value {
    let path = dir.join("golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden.json parses")
}

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as u32)
        .collect()
}

/// The input a golden case describes.
pub fn case_input(case: &Value) -> Input {
    let text = case["text"].as_str().expect("text").to_string();
    match case.get("text_pair").and_then(|p| p.as_str()) {
        Some(pair) => Input::Pair(text, pair.to_string()),
        None => Input::Text(text),
    }
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, x)| if *x > v[best] { i } else { best })
}

/// A scratch copy of a fixture directory that a test may break.
pub fn scratch_copy(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(fixture(name)).expect("fixture exists") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).expect("copy");
    }
    tmp
}

/// The golden cases a model classifies: all but those it must refuse (`"refused": true`, texts
/// that tokenize to nothing).
pub fn classified_cases(golden: &Value) -> Vec<&Value> {
    golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c["refused"].as_bool() != Some(true))
        .collect()
}

/// Sets every value of `tensor` in `dir`'s model.safetensors to NaN (a model whose head was
/// broken by training or conversion), keeping its shape and dtype.
pub fn poison_weight(dir: &std::path::Path, tensor: &str) {
    let path = dir.join("model.safetensors");
    let mut all = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).expect("load");
    let t = all.get(tensor).expect("tensor in fixture");
    let nan = (t.to_dtype(DType::F32).unwrap() * f64::NAN)
        .unwrap()
        .to_dtype(t.dtype())
        .unwrap();
    all.insert(tensor.to_string(), nan);
    candle_core::safetensors::save(&all, &path).expect("save");
}
