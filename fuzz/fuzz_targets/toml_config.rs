//! The `serve --config` TOML file: parsed alone (its errors must stay one line), then read
//! from disk and merged as `classifyd check-config --config FILE` does, turned into the
//! server's configuration, and printed back as TOML.
//! The body is `classifyd::fuzzing::toml_config`, which `cargo test` also replays the seeds through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| classifyd::fuzzing::toml_config(data));
