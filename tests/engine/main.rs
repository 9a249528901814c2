//! Engine behaviour through the public surface: real model files, the real binary.

mod bad_models;
mod cli;
#[path = "../common/mod.rs"]
mod common;
mod default_model;
mod gpu_path;
mod half;
mod helpers;
mod int8;
mod parity;
mod token;
mod weights_cache;
