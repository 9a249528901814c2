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
