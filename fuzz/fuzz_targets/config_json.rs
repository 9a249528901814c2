//! config.json as the loader reads it (the head: architecture, labels, problem type), then
//! every architecture family's own config deserialized from it and checked, as
//! `engine::build_model` does for the family that `architectures[0]` names. All families are
//! tried on every input so that one input reaches each family's checks.
#![no_main]

use std::path::Path;

use classifyd::loader;
use classifyd::model::families::{bert::EncoderConfig, deberta, distilbert::DistilBertConfig, modernbert};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

fuzz_target!(|data: &[u8]| {
    let Ok((config, head)) = loader::parse_config_json(Path::new("config.json"), data) else {
        return;
    };
    assert!(!head.labels.is_empty());
    if let Ok(c) = EncoderConfig::deserialize(&config) {
        if c.check().is_ok() {
            let _ = c.embedding_width();
        }
    }
    if let Ok(c) = DistilBertConfig::deserialize(&config) {
        let _ = c.check();
    }
    if let Ok(c) = modernbert::Config::deserialize(&config) {
        if c.check().is_ok() {
            let _ = (c.head_dim(), c.local_window(), c.sliding_layers());
        }
    }
    if let Ok(c) = deberta::Config::deserialize(&config) {
        let _ = c.check();
    }
});
