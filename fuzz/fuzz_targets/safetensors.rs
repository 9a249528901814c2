//! A model.safetensors file as the loader maps it (`ModelDir::map_weights`: candle's
//! `MmapedSafetensors`, i.e. the `safetensors` crate's header parsing and offset checks), then
//! what the engine does with the mapped file: the parameter summary, and every tensor read and
//! converted to the compute dtype as the model code's `VarBuilder` does.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use classifyd::loader::{self, HeadConfig, ModelDir, ProblemType};
use classifyd_fuzz::scratch_dir;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| scratch_dir("safetensors"))
}

fuzz_target!(|data: &[u8]| {
    let root = dir();
    let weights = root.join("model.safetensors");
    std::fs::write(&weights, data).expect("write model.safetensors");
    let model_dir = ModelDir {
        root: root.clone(),
        config_path: root.join("config.json"),
        config: serde_json::Value::Null,
        head: HeadConfig {
            architecture: "BertForSequenceClassification".into(),
            labels: vec!["LABEL_0".into(), "LABEL_1".into()],
            problem_type: ProblemType::SingleLabel,
            pad_token_id: None,
        },
        weight_files: vec![weights],
        tokenizer_path: root.join("tokenizer.json"),
        model_max_length: None,
    };
    let Ok(st) = model_dir.map_weights() else {
        return;
    };
    let _ = loader::weight_summary(&st);
    for (name, _) in st.tensors() {
        if let Ok(t) = st.load(&name, &Device::Cpu) {
            let _ = t.to_dtype(DType::F32);
        }
    }
});
