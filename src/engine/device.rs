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
                    Ok(Device::new_cuda(0).unwrap_or_else(|e| {
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
                Device::new_cuda(n).map_err(|e| LoadError::Device {
                    device: format!("cuda:{n}"),
                    message: cuda_open_error(crate::engine::error::one_line(&e)),
                })
            }
        }
    }
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
