//! Picks the [`Device`] from the enabled backend features (`BURN_QUANT_DEVICE` selects one by
//! name), so that programs and tests never hard-code one.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::QuantError;

/// Environment variable that selects the backend by name (`flex`, `ndarray`, `wgpu`, `vulkan`).
pub const DEVICE_ENV: &str = "BURN_QUANT_DEVICE";

/// The execution backends burn-quant can be built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Burn's pure-Rust CPU backend (`flex` feature).
    Flex,
    /// The ndarray CPU backend (`ndarray` feature; deprecated by Burn).
    NdArray,
    /// CubeCL on wgpu, any graphics API (`wgpu` feature).
    Wgpu,
    /// CubeCL on Vulkan through SPIR-V (`vulkan` feature).
    Vulkan,
}

impl BackendKind {
    /// Every backend, in order of preference for the default device.
    pub const ALL: [BackendKind; 4] = [Self::Flex, Self::NdArray, Self::Wgpu, Self::Vulkan];

    /// The cargo feature (and `BURN_QUANT_DEVICE` value) naming this backend.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::NdArray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Vulkan => "vulkan",
        }
    }

    /// Whether the backend was compiled in.
    pub fn is_enabled(self) -> bool {
        match self {
            Self::Flex => cfg!(feature = "flex"),
            Self::NdArray => cfg!(feature = "ndarray"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Vulkan => cfg!(feature = "vulkan"),
        }
    }

    /// Parses a backend name; fails with the list of enabled backends when unknown or disabled.
    pub fn parse(name: &str) -> Result<Self, QuantError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name.trim().to_ascii_lowercase() && kind.is_enabled())
            .ok_or_else(|| QuantError::UnknownBackend {
                name: name.to_string(),
                enabled: enabled_backends()
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The (non-autodiff) device of this backend. Panics when the backend is not compiled in.
    pub fn device(self) -> Device {
        match self {
            #[cfg(feature = "flex")]
            Self::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Self::NdArray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "vulkan")]
            Self::Vulkan => Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
            #[allow(unreachable_patterns)]
            other => panic!("backend `{}` is not compiled in", other.name()),
        }
    }
}

/// The backends compiled into this build.
pub fn enabled_backends() -> Vec<BackendKind> {
    BackendKind::ALL
        .into_iter()
        .filter(|k| k.is_enabled())
        .collect()
}

/// The backend chosen by `BURN_QUANT_DEVICE`, or else the first enabled one
/// (flex, ndarray, wgpu, vulkan).
pub fn default_backend() -> Result<BackendKind, QuantError> {
    match std::env::var(DEVICE_ENV) {
        Ok(name) if !name.trim().is_empty() => BackendKind::parse(&name),
        _ => enabled_backends()
            .first()
            .copied()
            .ok_or_else(|| QuantError::UnknownBackend {
                name: "<none>".into(),
                enabled: "none (enable one of the flex, ndarray, wgpu, vulkan features)".into(),
            }),
    }
}

/// The device of [`default_backend`] (without autodiff; call `.autodiff()` to train).
pub fn default_device() -> Result<Device, QuantError> {
    default_backend().map(BackendKind::device)
}

/// Whether `device` is a CPU backend's, where reading a tensor into host memory is cheap.
pub(crate) fn is_host_device(device: &Device) -> bool {
    [BackendKind::Flex, BackendKind::NdArray]
        .into_iter()
        .any(|kind| kind.is_enabled() && kind.device() == *device)
}

/// The values of an integer tensor in host memory, read as `&[i32]` where they lie (no copy
/// into a `Vec`, whose alignment may differ from the tensor data's).
pub(crate) struct HostInts(TensorData);

impl std::ops::Deref for HostInts {
    type Target = [i32];

    fn deref(&self) -> &[i32] {
        self.0.as_slice::<i32>().expect("i32 data")
    }
}

impl HostInts {
    /// The values as tensor data again (i32), e.g. to rebuild the tensor they came from.
    pub(crate) fn into_data(self) -> TensorData {
        self.0
    }
}

/// The values of `t` (on any device) as i32 in host memory.
pub(crate) fn host_i32<const D: usize>(t: Tensor<D, Int>) -> HostInts {
    HostInts(t.into_data().convert::<i32>())
}

/// The values of `t` (on any device) as f32 in host memory.
pub(crate) fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_known_and_unknown() {
        for kind in enabled_backends() {
            assert_eq!(BackendKind::parse(kind.name()).unwrap(), kind);
        }
        let err = BackendKind::parse("tpu").unwrap_err();
        assert!(err.to_string().contains("tpu"));
    }
}
