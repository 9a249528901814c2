//! Which device a model runs on and in which dtype: `--device` and `--dtype`, parsed and opened.

use std::str::FromStr;

use candle_core::{DType, Device};

use crate::engine::error::LoadError;

/// `--device auto|cpu|cuda[:N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?} (expected auto, cpu, cuda or cuda:N)"
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    pub fn open(self) -> Result<Device, LoadError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => {
                if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                    // Falling back is the point of `auto`, but never silently: an operator who
                    // expected the GPU must see why it is not used.
                    if let Err(why) = driver_supports_this_build() {
                        tracing::warn!("--device auto: {why}; using the CPU");
                        return Ok(Device::Cpu);
                    }
                    Ok(Device::new_cuda(0).map(one_stream).unwrap_or_else(|e| {
                        tracing::warn!(
                            "--device auto: CUDA failed to initialise ({}); using the CPU",
                            cuda_open_error(crate::engine::error::one_line(&e))
                        );
                        Device::Cpu
                    }))
                } else {
                    Ok(Device::Cpu)
                }
            }
            DeviceChoice::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(LoadError::Device {
                        device: format!("cuda:{n}"),
                        message: "this binary was built without the `cuda` feature".into(),
                    });
                }
                driver_supports_this_build().map_err(|message| LoadError::Device {
                    device: format!("cuda:{n}"),
                    message,
                })?;
                Device::new_cuda(n)
                    .map(one_stream)
                    .map_err(|e| LoadError::Device {
                        device: format!("cuda:{n}"),
                        message: cuda_open_error(crate::engine::error::one_line(&e)),
                    })
            }
        }
    }
}

/// A new CUDA device, told that all its work is on one stream: cudarc then records no
/// events. It records two per buffer (a read and a write) whenever a context has made a stream
/// of its own, which candle always does, and a pass allocates hundreds of buffers.
fn one_stream(device: Device) -> Device {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = &device {
        // SAFETY: the events only order a buffer's uses across streams. Every op of this
        // device runs on the one stream candle made for it (`CudaDevice::cuda_stream`), where
        // stream order already orders them. The engine makes no other stream, and the pass
        // gate keeps its passes one at a time. Nothing has been allocated on the device yet, so
        // no buffer is left half tracked.
        unsafe { cuda.disable_event_tracking() };
    }
    device
}

/// The CUDA version this build's kernels and libraries need (cudarc is built for 13.0, and the
/// PTX comes from nvcc 13.0, which an older driver refuses), as `cuDriverGetVersion` encodes it.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
const CUDA_NEEDED: i32 = 13_000;

/// Whether the installed driver runs this build, asked before any context is made: an old
/// driver otherwise shows only as a raw error code from the first module load. Fine when the
/// version cannot be read (no driver library, the link stub): opening the device then says why.
fn driver_supports_this_build() -> Result<(), String> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let mut version = 0;
        // SAFETY: cuDriverGetVersion writes one int through the pointer it is given and needs
        // no initialised driver or context.
        let rc = unsafe { sys::cuDriverGetVersion(&mut version) };
        if rc == sys::cudaError_enum::CUDA_SUCCESS {
            return driver_check(version);
        }
    }
    Ok(())
}

/// `version` as `cuDriverGetVersion` gives it (1000 × major + 10 × minor) against
/// [`CUDA_NEEDED`], with what to install when it falls short.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn driver_check(version: i32) -> Result<(), String> {
    if version >= CUDA_NEEDED {
        return Ok(());
    }
    Err(format!(
        "the NVIDIA driver supports CUDA {}.{} at most, and this binary needs CUDA {}.{}: \
         install NVIDIA driver 580 or later (or run with --device cpu)",
        version / 1000,
        version % 1000 / 10,
        CUDA_NEEDED / 1000,
        CUDA_NEEDED % 1000 / 10,
    ))
}

/// What the driver errors seen when opening a device mean to an operator; the code is kept.
const CUDA_OPEN_ERRORS: &[(&str, &str)] = &[
    (
        "CUDA_ERROR_STUB_LIBRARY",
        "no NVIDIA GPU driver: the libcuda.so.1 found is a link-time stub, not the driver",
    ),
    ("CUDA_ERROR_NO_DEVICE", "no NVIDIA GPU found"),
    ("CUDA_ERROR_INVALID_DEVICE", "no NVIDIA GPU with that index"),
    (
        "CUDA_ERROR_INSUFFICIENT_DRIVER",
        "the NVIDIA driver is older than the CUDA this binary was built with",
    ),
    (
        "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
        "the NVIDIA driver library does not match the loaded kernel module",
    ),
    (
        "CUDA_ERROR_OUT_OF_MEMORY",
        "out of GPU memory while creating the CUDA context",
    ),
];

/// Opening a CUDA device fails with a bare driver error code (and, without a driver, an error
/// string that cannot be looked up); name what is missing instead.
fn cuda_open_error(raw: String) -> String {
    CUDA_OPEN_ERRORS
        .iter()
        .find(|(code, _)| raw.contains(code))
        .map(|(code, meaning)| format!("{meaning} ({code})"))
        .unwrap_or(raw)
}

/// `--dtype auto|f32|f16|bf16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    Auto,
    Fixed(DType),
    /// F32 with the transformer layers' matmul weights in int8 (CPU only; `model::kernels::qgemm`).
    Int8,
}

impl FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::Fixed(DType::F32)),
            "f16" => Ok(Self::Fixed(DType::F16)),
            "bf16" => Ok(Self::Fixed(DType::BF16)),
            "int8" => Ok(Self::Int8),
            _ => Err(format!(
                "unknown dtype {s:?} (expected auto, f32, f16, bf16 or int8)"
            )),
        }
    }
}

impl std::fmt::Display for DTypeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DTypeChoice::Auto => "auto",
            DTypeChoice::Fixed(DType::F16) => "f16",
            DTypeChoice::Fixed(DType::BF16) => "bf16",
            DTypeChoice::Fixed(_) => "f32",
            DTypeChoice::Int8 => "int8",
        })
    }
}

impl DTypeChoice {
    /// The compute dtype, and in words why, for `inspect`. Int8 computes everything but the
    /// quantized matmuls in F32.
    ///
    /// Auto is F32 on the CPU (no f16 arithmetic in AVX2 or AVX-512F). On a GPU it follows the
    /// checkpoint's `torch_dtype` when that is a half type, as it was trained and saved:
    /// a BF16 model's activations can leave F16's range, and in a decoder's residual stream
    /// they do (Gemma 2/3, some Qwen), the next RMSNorm turning the infinity into NaN. Without a
    /// half `torch_dtype` (F32 or none), decoders take BF16 for that reason and encoders F16,
    /// whose extra mantissa bits keep them closer to F32.
    pub fn resolve(
        self,
        device: &Device,
        checkpoint: Option<DType>,
        decoder: bool,
    ) -> (DType, &'static str) {
        match self {
            DTypeChoice::Fixed(d) => (d, "--dtype"),
            DTypeChoice::Int8 => (DType::F32, "--dtype int8"),
            DTypeChoice::Auto if !device.is_cuda() => (DType::F32, "auto: F32 on the CPU"),
            DTypeChoice::Auto => auto_on_gpu(checkpoint, decoder),
        }
    }
}

/// `--dtype auto` on a GPU (see [`DTypeChoice::resolve`]); apart so that a test without a GPU
/// checks it.
pub fn auto_on_gpu(checkpoint: Option<DType>, decoder: bool) -> (DType, &'static str) {
    match checkpoint {
        Some(DType::BF16) => (DType::BF16, "auto: the checkpoint's torch_dtype"),
        Some(DType::F16) => (DType::F16, "auto: the checkpoint's torch_dtype"),
        _ if decoder => (
            DType::BF16,
            "auto: BF16 for a decoder whose checkpoint names no half dtype",
        ),
        _ => (
            DType::F16,
            "auto: F16 for an encoder whose checkpoint names no half dtype",
        ),
    }
}

/// The dtype the checkpoint says it was saved in: config.json's `torch_dtype` (transformers 4)
/// or `dtype` (transformers 5), when it is one candle has.
pub fn checkpoint_dtype(config: &serde_json::Value) -> Option<DType> {
    let name = config
        .get("torch_dtype")
        .or_else(|| config.get("dtype"))
        .and_then(serde_json::Value::as_str)?;
    match name.trim_start_matches("torch.") {
        "float32" => Some(DType::F32),
        "float16" => Some(DType::F16),
        "bfloat16" => Some(DType::BF16),
        _ => None,
    }
}

/// What kind of device passes run on, as far as running two passes at once goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Gpu,
}

impl DeviceKind {
    pub fn of(device: &Device) -> Self {
        if device.is_cpu() {
            DeviceKind::Cpu
        } else {
            DeviceKind::Gpu
        }
    }
}

/// Where the engine's passes go one at a time. On a GPU both engine lanes share one device,
/// whose cuBLAS handle and workspace candle keeps per device: two passes at once would use them
/// from two threads, which NVIDIA advises against. The lanes' reason to overlap, CPU priority for
/// bulk work, has no GPU counterpart. On the CPU the lanes run side by side as designed (each
/// pass's buffers are its own).
#[derive(Debug)]
pub struct PassGate {
    lock: Option<std::sync::Mutex<()>>,
    /// Passes that took the lock, and the most ever inside at once: what a test without a
    /// GPU asserts.
    taken: std::sync::atomic::AtomicU64,
    inside: std::sync::atomic::AtomicUsize,
    most_inside: std::sync::atomic::AtomicUsize,
}

impl PassGate {
    pub fn for_kind(kind: DeviceKind) -> Self {
        PassGate {
            lock: (kind == DeviceKind::Gpu).then(|| std::sync::Mutex::new(())),
            taken: Default::default(),
            inside: Default::default(),
            most_inside: Default::default(),
        }
    }

    /// Runs one pass, alone when this gate serialises.
    pub fn pass<R>(&self, f: impl FnOnce() -> R) -> R {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(lock) = &self.lock else {
            return f();
        };
        // A pass that panicked released the lock with it; the next one may go on.
        let _alone = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.taken.fetch_add(1, SeqCst);
        let now = self.inside.fetch_add(1, SeqCst) + 1;
        self.most_inside.fetch_max(now, SeqCst);
        struct Leave<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        let _leave = Leave(&self.inside);
        f()
    }

    /// (passes that went through the lock, the most inside at once).
    pub fn counts(&self) -> (u64, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (self.taken.load(SeqCst), self.most_inside.load(SeqCst))
    }
}

pub(crate) fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_open_errors_name_what_is_missing() {
        let raw =
            r#"DriverError(CUDA_ERROR_STUB_LIBRARY, "<Failure when calling cuGetErrorString()>")"#;
        assert_eq!(
            cuda_open_error(raw.into()),
            "no NVIDIA GPU driver: the libcuda.so.1 found is a link-time stub, not the driver \
             (CUDA_ERROR_STUB_LIBRARY)"
        );
        assert_eq!(cuda_open_error("other".into()), "other");
    }

    #[test]
    fn an_old_driver_is_named_with_what_to_install() {
        assert_eq!(driver_check(13_000), Ok(()));
        assert_eq!(driver_check(13_020), Ok(()));
        assert_eq!(
            driver_check(12_040).unwrap_err(),
            "the NVIDIA driver supports CUDA 12.4 at most, and this binary needs CUDA 13.0: \
             install NVIDIA driver 580 or later (or run with --device cpu)"
        );
        // Without the cuda feature nothing is asked.
        if !cfg!(feature = "cuda") {
            assert_eq!(driver_supports_this_build(), Ok(()));
        }
    }

    #[test]
    fn device_and_dtype_flags_parse() {
        assert_eq!("cuda:3".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert_eq!(
            "bf16".parse::<DTypeChoice>(),
            Ok(DTypeChoice::Fixed(DType::BF16))
        );
        assert_eq!(
            DTypeChoice::Auto
                .resolve(&Device::Cpu, Some(DType::BF16), true)
                .0,
            DType::F32
        );
    }

    /// A GPU device cannot be made here, so the CUDA arm is checked through the function it
    /// calls: what `--dtype auto` resolves to for each checkpoint dtype and family kind.
    #[test]
    fn auto_follows_the_checkpoint_on_a_gpu() {
        let json = |v: serde_json::Value| checkpoint_dtype(&v);
        assert_eq!(
            json(serde_json::json!({"torch_dtype": "bfloat16"})),
            Some(DType::BF16)
        );
        assert_eq!(
            json(serde_json::json!({"dtype": "float16"})),
            Some(DType::F16)
        );
        assert_eq!(
            json(serde_json::json!({"torch_dtype": "float32"})),
            Some(DType::F32)
        );
        assert_eq!(json(serde_json::json!({"torch_dtype": "int4"})), None);
        assert_eq!(json(serde_json::json!({})), None);
        let cases = [
            (Some(DType::BF16), false, DType::BF16),
            (Some(DType::BF16), true, DType::BF16),
            (Some(DType::F16), true, DType::F16),
            (Some(DType::F16), false, DType::F16),
            (Some(DType::F32), true, DType::BF16),
            (None, true, DType::BF16),
            (Some(DType::F32), false, DType::F16),
            (None, false, DType::F16),
        ];
        for (checkpoint, decoder, want) in cases {
            let (got, why) = auto_on_gpu(checkpoint, decoder);
            assert_eq!(got, want, "{checkpoint:?} decoder={decoder}: {why}");
        }
        // An explicit dtype wins everywhere.
        assert_eq!(
            DTypeChoice::Fixed(DType::F16).resolve(&Device::Cpu, Some(DType::BF16), true),
            (DType::F16, "--dtype")
        );
    }
}
