//! A byte stream from a peer through the frame codec, in arbitrary read sizes, as
//! `FramedRead` feeds it on a Unix socket; every frame it yields goes through request
//! decoding and validation. Input: 2 bytes of frame limit, 1 byte of read size, the stream.
//! The body is `classifyd::fuzzing::frame`, which `cargo test` also replays the seeds through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| classifyd::fuzzing::frame(data));
