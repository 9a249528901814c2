//! A whole model directory load with a fuzzed config.json (and, optionally, a fuzzed
//! tokenizer_config.json) over one of the committed test fixtures' real weights and tokenizer,
//! then one batch classified: a config the loader accepts must not panic, blow up memory or
//! hang later in the forward pass. Input: 1 byte choosing the fixture, config.json, then
//! optionally a NUL byte (never valid inside JSON) and tokenizer_config.json.
//! The body is `classifyd::fuzzing::model_dir`, which `cargo test` also replays the seeds through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| classifyd::fuzzing::model_dir(data));
