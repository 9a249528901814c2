//! Tensors made from host data while a pass runs: on a GPU each is a host-to-device copy, which
//! costs a launch's worth of host time and, under a captured CUDA graph, must come from a buffer
//! that stays put (docs/GPU.md). Every such tensor in the engine and the model code goes through
//! here, so `inspect --ops` can count them on any device. Tensors built at load (RoPE and
//! relative-position tables, weights) are not per-pass and do not count.
//!
//! What this does not see: candle's own parameter uploads on CUDA (the dims and strides of a
//! non-contiguous input, one small copy per such launch), which only a GPU run can count.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Result, Shape, Tensor, WithDType};

/// Uploads since the process started. Process-wide, as candle's tensor ids are: measure with
/// nothing else running (see `engine::opcount`).
static UPLOADS: AtomicUsize = AtomicUsize::new(0);

/// How many tensors have been made from host data so far.
pub fn count() -> usize {
    UPLOADS.load(Ordering::Relaxed)
}

/// `Tensor::from_vec`, counted.
pub fn from_vec<D: WithDType, S: Into<Shape>>(
    data: Vec<D>,
    shape: S,
    device: &Device,
) -> Result<Tensor> {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
    Tensor::from_vec(data, shape, device)
}

/// `Tensor::arange_step` (candle builds the values on the host and copies them), counted.
pub fn arange_step(start: u32, end: u32, step: u32, device: &Device) -> Result<Tensor> {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
    Tensor::arange_step(start, end, step, device)
}
