//! One frame's payload (a protobuf `Request`) through decoding and validation, under the
//! default limits and under small ones.
//! The body is `classifyd::fuzzing::request`, which `cargo test` also replays the seeds through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| classifyd::fuzzing::request(data));
