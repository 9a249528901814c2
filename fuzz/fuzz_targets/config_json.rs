//! config.json as the loader reads it (the head: architecture, labels, problem type), then
//! every architecture family's own config deserialized from it and checked, as
//! `engine::build_model` does for the family that `architectures[0]` names. All families are
//! tried on every input so that one input reaches each family's checks.
//! The body is `classifyd::fuzzing::config_json`, which `cargo test` also replays the seeds through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| classifyd::fuzzing::config_json(data));
