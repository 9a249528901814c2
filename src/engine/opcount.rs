//! How many tensors one forward pass creates: the measure of per-op overhead that a CPU can take
//! for a GPU. On CUDA every op that makes a new tensor from data is a kernel launch (5–20 µs of
//! host time at batch 1, more than the arithmetic of a small model), and every view (reshape,
//! narrow, transpose) still costs host bookkeeping. candle numbers each tensor it creates from
//! one process-wide counter, so the difference between the ids of two fresh tensors, one made
//! before and one after a pass, counts every tensor of the pass, uploads and views included.
//!
//! Process-wide: another thread creating tensors meanwhile is counted too, so measure with
//! nothing else running (the `inspect --ops` command, or a test binary of one test).

use candle_core::{DType, Device, Tensor};

/// candle's counter as it stands; `None` if the id cannot be read (its `Debug` form changed).
fn next_id() -> Option<usize> {
    // `TensorId` exposes its number only through `Debug` ("TensorId(42)").
    let t = Tensor::zeros((), DType::U8, &Device::Cpu).ok()?;
    let text = format!("{:?}", t.id());
    text.trim_start_matches("TensorId(")
        .trim_end_matches(')')
        .parse()
        .ok()
}

/// Runs `f` and returns its result with the number of tensors created meanwhile.
pub fn tensors_created<T>(f: impl FnOnce() -> T) -> (T, Option<usize>) {
    let before = next_id();
    let out = f();
    let after = next_id();
    let n = match (before, after) {
        // The probe tensor of `after` is not the pass's.
        (Some(b), Some(a)) => a.checked_sub(b + 1),
        _ => None,
    };
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_tensors_a_closure_creates() {
        let (_, n) = tensors_created(|| {
            let a = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
            let b = (&a + &a).unwrap();
            b.reshape((2, 2)).unwrap()
        });
        // Tests run in parallel threads, so other tensors may be counted: at least three.
        assert!(n.is_some_and(|n| n >= 3), "{n:?}");
        let (_, n) = tensors_created(|| ());
        assert!(n.is_some(), "the id is readable");
    }
}
