//! tokenizer_config.json as the loader reads it: only `model_max_length` is used.
//! The body is `classifyd::fuzzing::tokenizer_config_json`, which `cargo test` also replays the seeds through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| classifyd::fuzzing::tokenizer_config_json(data));
