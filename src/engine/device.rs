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
    /// F32 on CPU (no f16 arithmetic in AVX2), F16 on CUDA. Int8 computes everything but the
    /// quantized matmuls in F32.
    pub fn resolve(self, device: &Device) -> DType {
        match self {
            DTypeChoice::Fixed(d) => d,
            DTypeChoice::Int8 => DType::F32,
            DTypeChoice::Auto if device.is_cuda() => DType::F16,
            DTypeChoice::Auto => DType::F32,
        }
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
        assert_eq!(DTypeChoice::Auto.resolve(&Device::Cpu), DType::F32);
    }
}
