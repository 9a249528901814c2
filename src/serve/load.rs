//! Loading a model and warming it up, at start and on reload, on a blocking thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::ServerError;
use crate::engine::tokenize::Input;
use crate::engine::{DTypeChoice, DeviceChoice, Engine, LoadOptions};
use crate::sched::queue::SchedulerConfig;

/// Rows the CPU warm-up stops at. The CPU kernels have one code path whatever the batch: what
/// a warm-up pass buys there is the thread team's first fork, the allocator's first growth and
/// the weights' pages. Passes of 1, 2 and 4 rows take all of that (the matmul tiles of one row
/// and of many, split across threads) in ~25 ms; going on to 32 rows took ~210 ms of a
/// 250 ms start (BENCHMARKS.md) and bought the first large batch a few page faults.
const CPU_WARM_UP_ROWS: usize = 4;

/// Runs one forward pass per batch-size bucket the scheduler can form (on the CPU, up to
/// [`CPU_WARM_UP_ROWS`]), so the first real request finds every allocation and kernel path
/// already taken.
fn warm_up(engine: &Engine, max_batch: usize) -> Result<usize, ServerError> {
    let max_batch = if engine.pads_batches() {
        max_batch
    } else {
        max_batch.min(CPU_WARM_UP_ROWS)
    };
    let text =
        Input::Text("warm up the model with a short sentence of about sixteen tokens".into());
    let one = engine
        .tokenize(&text, true)
        .map_err(|e| ServerError::WarmUp(e.to_string()))?;
    let mut size = 1;
    let mut runs = 0;
    loop {
        let batch: Vec<_> = std::iter::repeat_n(&one, size).collect();
        engine
            .logits(&batch)
            .map_err(|e| ServerError::WarmUp(e.to_string()))?;
        runs += 1;
        if size >= max_batch {
            break;
        }
        size = (size * 2).min(max_batch);
    }
    if engine.pads_batches() {
        // A GPU picks GEMM algorithms per shape and its kernels per size class: one row at each
        // longer length too, so that the first long request does not pay for that choice.
        for len in GPU_WARM_UP_LENGTHS
            .into_iter()
            .filter(|&l| l <= engine.info().max_length)
        {
            let row = engine.synthetic_input(len);
            engine
                .logits(&[&row])
                .map_err(|e| ServerError::WarmUp(e.to_string()))?;
            runs += 1;
        }
    }
    Ok(runs)
}

/// Lengths a GPU warm-up also runs one row at (besides the ~16-token rows at every batch size).
const GPU_WARM_UP_LENGTHS: [usize; 4] = [64, 128, 256, 512];

/// Loads the model directory and warms it up, on a blocking thread.
pub(super) async fn load_warm(
    model: PathBuf,
    device: DeviceChoice,
    dtype: DTypeChoice,
    load: LoadOptions,
    sched: SchedulerConfig,
    beside: Option<Arc<Engine>>,
) -> Result<(Engine, usize), ServerError> {
    tokio::task::spawn_blocking(move || -> Result<(Engine, usize), ServerError> {
        // A reload on a GPU: the old model, the new one and the new one's warm-up share the
        // card for a while, so a model that would not fit is refused before anything loads
        // (engine::budget). Reading its weights' sizes is file I/O, hence here.
        if let Some(old) = beside {
            let rows = sched.for_device(old.pads_batches()).max_batch_size;
            old.room_for_reload(&model, rows)
                .map_err(ServerError::Config)?;
        }
        let warming = crate::engine::heap::Phase::warm_up();
        let t0 = Instant::now();
        let engine = Engine::load_with(&model, device, dtype, &load)?;
        let load_ms = t0.elapsed().as_millis() as u64;
        match engine.cache_status() {
            s @ (crate::engine::cache::CacheStatus::Unwritable { .. }
            | crate::engine::cache::CacheStatus::Untrusted { .. }) => {
                warn!(weights_cache = %s, load_ms, "weights cache not used")
            }
            s => {
                let (in_place, entries) = engine.cache_views();
                info!(weights_cache = %s, in_place, entries, load_ms, "loaded")
            }
        }
        let t1 = Instant::now();
        let max_batch = sched
            .for_device(engine.pads_batches())
            .max_batch_size
            .max(1);
        let runs = warm_up(&engine, max_batch)?;
        info!(
            batches = runs,
            warm_up_ms = t1.elapsed().as_millis() as u64,
            "warmed up"
        );
        drop(warming);
        // Loading and warming up free more than they keep: hand it back now, not at the next
        // reload (see `heap`).
        crate::engine::heap::trim();
        Ok((engine, runs))
    })
    .await
    .map_err(|e| ServerError::WarmUp(e.to_string()))?
}
