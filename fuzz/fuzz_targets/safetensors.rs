//! A model.safetensors file as the loader maps it (`ModelDir::map_weights`: candle's
//! `MmapedSafetensors`, i.e. the `safetensors` crate's header parsing and offset checks), then
//! what the engine does with the mapped file: the parameter summary, and every tensor read and
//! converted to the compute dtype as the model code's `VarBuilder` does.
//! The body is `classifyd::fuzzing::safetensors`, which `cargo test` also replays the seeds through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| classifyd::fuzzing::safetensors(data));
