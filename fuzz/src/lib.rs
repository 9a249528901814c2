//! The targets' bodies live in the crate (`classifyd::fuzzing`, feature `fuzzing`), so that
//! `cargo test` replays the seeds through the same code; this library is left empty.
