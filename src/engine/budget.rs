//! What a GPU's memory allows: whether a reload fits beside the model that serves, and how
//! large an attention chunk may be.
//!
//! A SIGHUP loads the new model, on a context of its own, while the old one keeps serving, and
//! warms it up to the GPU's batch sizes: for a while both models and the new one's warm-up
//! activations share the card. On a 24 GB card with a decoder that ends in an out-of-memory
//! error, which can hit the serving model's passes too. So before it loads anything, a reload
//! on a GPU compares what the new model will need with the device's free memory
//! (`cuMemGetInfo`) and, when it does not fit, is refused with the figures. The old model keeps
//! serving. To swap a model that does not fit beside the old one, restart the service. A drain
//! of the old model first would leave the daemon without a model for the load's duration.

use std::path::Path;

use super::loader::{weight_summary, ModelDir};
use super::Engine;
use crate::model::layers::ATTENTION_CHUNK_BYTES;

/// A CUDA context, candle's kernels loaded in it, and cuBLAS's handle and workspace: an
/// allowance, not a measurement. The first GPU run is to measure it (docs/GPU.md).
pub const CONTEXT_BYTES: u64 = 768 << 20;

/// What the new model will take on the device, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadNeed {
    /// Its weights at the compute dtype.
    pub weights: u64,
    /// Its largest warm-up pass's working set.
    pub activations: u64,
    /// [`CONTEXT_BYTES`].
    pub context: u64,
}

impl ReloadNeed {
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.activations)
            .saturating_add(self.context)
    }
}

/// Refuses `need` when it is more than `free` bytes, naming every figure in MiB.
pub fn fits(free: u64, need: &ReloadNeed) -> Result<(), String> {
    if need.total() <= free {
        return Ok(());
    }
    let mib = |b: u64| b >> 20;
    Err(format!(
        "the new model needs about {} MiB of GPU memory (weights {}, warm-up {}, context {}) \
         and {} MiB are free beside the serving model; the old model keeps serving. Restart the \
         service to swap it for one this large",
        mib(need.total()),
        mib(need.weights),
        mib(need.activations),
        mib(need.context),
        mib(free)
    ))
}

impl Engine {
    /// Whether the model at `root` fits on this engine's GPU beside this engine, with `rows`
    /// the warm-up's largest batch (see the module comment). Always fine on the CPU, where a
    /// reload's memory is the host's, and when the free memory cannot be read.
    pub fn room_for_reload(&self, root: &Path, rows: usize) -> Result<(), String> {
        let Some(free) = free_device_memory(&self.device) else {
            return Ok(());
        };
        let dir = ModelDir::open(root).map_err(|e| e.to_string())?;
        let (params, _) = weight_summary(&dir.map_weights().map_err(|e| e.to_string())?);
        let dtype_bytes = match self.info.compute_dtype.as_str() {
            "f16" | "bf16" => 2,
            _ => 4,
        };
        // The warm-up's passes: every batch size at ~16 tokens, and one row at up to 512.
        // Attention's working set is the part that grows fastest; twice it stands for the
        // other activations of the same pass.
        let attention = self
            .attention_bytes(rows.max(1), 16)
            .max(self.attention_bytes(1, 512)) as u64;
        let need = ReloadNeed {
            weights: (params as u64).saturating_mul(dtype_bytes),
            activations: attention.saturating_mul(2),
            context: CONTEXT_BYTES,
        };
        fits(free, &need)
    }
}

/// What a sixteenth of the memory free beside the weights buys: three chunk tensors and the
/// pass's other activations stay under a fifth of it, which leaves a reload room beside.
const CHUNK_SHARE_OF_FREE: u64 = 16;

/// Bytes of scores per attention query chunk for a model of `weights` bytes on `device`.
///
/// On the CPU, [`ATTENTION_CHUNK_BYTES`]: chunks sized for the caches, and the host's memory.
/// On a GPU a chunk is a handful of kernel launches, each 5–20 µs of host time, so it is
/// sized from the memory free once the weights are in ([`gpu_chunk_bytes`]): BERT-base at
/// 128 rows × 512 tokens was ~52 chunks a layer at 32 MiB. When the free memory cannot be
/// read, the CPU's figure.
pub fn chunk_bytes(device: &candle_core::Device, weights: u64, max_attention: usize) -> usize {
    match free_device_memory(device) {
        Some(free) => gpu_chunk_bytes(free, weights, max_attention),
        None => ATTENTION_CHUNK_BYTES,
    }
}

/// [`chunk_bytes`] on a GPU with `free` bytes free before a model of `weights` bytes loads: a
/// sixteenth of what remains, at least [`ATTENTION_CHUNK_BYTES`], and at most a third of the
/// scheduler's `max_attention` (a pass's three chunk tensors under `--max-attention-mib`, or
/// the scheduler would cut into passes what chunks were meant to hold).
pub fn gpu_chunk_bytes(free: u64, weights: u64, max_attention: usize) -> usize {
    let share = free.saturating_sub(weights) / CHUNK_SHARE_OF_FREE;
    let share = usize::try_from(share).unwrap_or(usize::MAX);
    share.min(max_attention / 3).max(ATTENTION_CHUNK_BYTES)
}

/// The device's free memory in bytes, where it can be read: a CUDA device (`cuMemGetInfo` in
/// its context); `None` on the CPU or when the driver does not answer.
fn free_device_memory(device: &candle_core::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(cuda) = device {
        use candle_core::cuda_backend::cudarc::driver::result;
        // The query answers for the context bound to this thread: bind the device's own first.
        cuda.cuda_stream().context().bind_to_thread().ok()?;
        return result::mem_get_info()
            .ok()
            .map(|(free, _total)| free as u64);
    }
    let _ = device;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GPU's chunk budget with made-up figures: an H100 with room, a 24 GB card with a
    /// large model, a nearly full card, and a raised `--max-attention-mib`.
    #[test]
    fn a_gpu_s_attention_chunks_grow_with_its_free_memory_within_the_scheduler_s_cap() {
        let mib = |m: u64| m << 20;
        let cap = crate::engine::passes::DEFAULT_MAX_ATTENTION_BYTES;
        // 78 GiB free, BERT-base in F16: a third of the 512 MiB cap.
        assert_eq!(gpu_chunk_bytes(mib(78 << 10), mib(210), cap), cap / 3);
        // 2 GiB left beside the weights: a sixteenth of it.
        assert_eq!(
            gpu_chunk_bytes(mib(18 << 10), mib(16 << 10), cap),
            128 << 20
        );
        // Nearly full, or weights larger than what is free: never under the CPU's budget.
        assert_eq!(
            gpu_chunk_bytes(mib(300), mib(100), cap),
            ATTENTION_CHUNK_BYTES
        );
        assert_eq!(
            gpu_chunk_bytes(mib(100), mib(300), cap),
            ATTENTION_CHUNK_BYTES
        );
        // --max-attention-mib 6144 on an H100: 2 GiB chunks.
        assert_eq!(gpu_chunk_bytes(mib(78 << 10), mib(210), 6 << 30), 2 << 30);
        // BERT-base at 128 × 512 (12 heads, f32 scores, 3 MiB a query row): 52 chunks a layer
        // at the CPU's budget, 10 at the default cap's.
        let chunks = |budget| {
            let rows = crate::model::layers::attention_chunk(budget, 128, 12, 512, 512);
            512usize.div_ceil(rows)
        };
        assert_eq!(chunks(ATTENTION_CHUNK_BYTES), 52);
        assert_eq!(chunks(cap / 3), 10);
    }

    /// The CPU keeps its cache-sized chunks: it has no free-memory figure.
    #[test]
    fn the_cpu_s_attention_chunks_are_the_fixed_budget() {
        let cpu = candle_core::Device::Cpu;
        assert_eq!(chunk_bytes(&cpu, 0, usize::MAX), ATTENTION_CHUNK_BYTES);
    }

    /// The arithmetic with made-up free figures: a BERT-base-sized model in F16 beside another
    /// on a nearly full card is refused with every figure; with room it passes.
    #[test]
    fn a_reload_that_does_not_fit_is_refused_with_the_figures() {
        let need = ReloadNeed {
            weights: 110_000_000 * 2,
            activations: 64 << 20,
            context: CONTEXT_BYTES,
        };
        assert_eq!(need.total(), 220_000_000 + (64 << 20) + (768 << 20));
        assert_eq!(fits(2 << 30, &need), Ok(()));
        assert_eq!(fits(need.total(), &need), Ok(()));
        assert_eq!(
            fits(600 << 20, &need).unwrap_err(),
            "the new model needs about 1041 MiB of GPU memory (weights 209, warm-up 64, context \
             768) and 600 MiB are free beside the serving model; the old model keeps serving. \
             Restart the service to swap it for one this large"
        );
        // Sizes past u64 saturate instead of wrapping into a small need.
        let huge = ReloadNeed {
            weights: u64::MAX,
            activations: 1,
            context: 1,
        };
        assert!(fits(u64::MAX - 1, &huge).is_err());
    }

    /// On the CPU nothing is asked and nothing refused.
    #[test]
    fn the_cpu_always_has_room() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert");
        let engine = Engine::load(
            &dir,
            crate::engine::DeviceChoice::Cpu,
            crate::engine::DTypeChoice::Auto,
        )
        .expect("fixture loads");
        assert_eq!(engine.room_for_reload(&dir, 128), Ok(()));
    }
}
