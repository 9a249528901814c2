//! The hand-written CPU kernels and what they run on: packed f32 ([`gemm`]) and int8 ([`qgemm`])
//! matmuls, one-pass attention ([`attend`]), LayerNorm ([`norm`]), GELU ([`gelu`]), rotary
//! tables ([`rope`]), the thread team they split across ([`team`]), and weights recorded for the
//! cache or viewed in place in its mapping ([`weights`], [`mapped`]). Nothing here knows a model
//! family: kernels take slices and shapes.

pub mod attend;
pub mod gelu;
pub mod gemm;
pub mod mapped;
pub mod norm;
pub mod qgemm;
pub mod rope;
pub mod team;
pub mod weights;

/// Whether F32 on the CPU runs through candle's ops instead of these kernels:
/// `CLASSIFYD_F32_KERNELS=candle`, read once per process. That is the path every GPU build takes
/// (candle's matmul and LayerNorm, the query prescaled, bias adds unfolded), and this switch lets
/// the parity tests run it in F32 against transformers on the CPU (`tests/candle_ops.rs`).
/// Slower, and not for serving.
pub fn candle_ops() -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CANDLE
        .get_or_init(|| std::env::var("CLASSIFYD_F32_KERNELS").is_ok_and(|v| v.trim() == "candle"))
}

/// Whether tensors on `device` in `dtype` run these kernels: F32 on the CPU, unless
/// [`candle_ops`] says otherwise.
pub fn own_f32(device: &candle_core::Device, dtype: candle_core::DType) -> bool {
    device.is_cpu() && dtype == candle_core::DType::F32 && !candle_ops()
}

/// Whether this CPU runs AVX2, asked once: the vector builds of attention and LayerNorm
/// ([`attend`], [`norm`]) need nothing more.
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}
