//! Errors reported by burn-quant.

use thiserror::Error;

/// Everything that can go wrong when configuring or running quantization.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantError {
    /// The bit width is outside the supported range.
    #[error("bit width {bits} is out of range: burn-quant supports {min}..={max} bits")]
    BitsOutOfRange {
        /// The rejected bit width.
        bits: u32,
        /// Smallest supported bit width.
        min: u32,
        /// Largest supported bit width.
        max: u32,
    },
    /// A range bound is NaN or infinite.
    #[error("range [{min}, {max}] is not finite: calibration data must contain finite values")]
    NonFiniteRange {
        /// Lower bound given.
        min: f32,
        /// Upper bound given.
        max: f32,
    },
    /// A range whose lower bound exceeds its upper bound.
    #[error("range [{min}, {max}] is inverted: min must not exceed max")]
    InvertedRange {
        /// Lower bound given.
        min: f32,
        /// Upper bound given.
        max: f32,
    },
    /// An observer was asked for parameters before it saw any data.
    #[error("observer has not seen any data: calibrate it before freezing")]
    NotCalibrated,
    /// An observer of a model never saw data.
    #[error(
        "observer `{path}` has not seen any data: run calibration batches through the model in fake-quant mode before freezing"
    )]
    UncalibratedObserver {
        /// The observer's module path, e.g. `conv1.observers.output`.
        path: String,
    },
    /// A record (saved module) does not fit the module it is loaded into.
    #[error("the record does not fit the model: {reason}")]
    IncompatibleRecord {
        /// What Burn's loader reported.
        reason: String,
    },
    /// A layer's configuration cannot be built (e.g. channels not divisible by the groups).
    #[error("{layer}: {reason}")]
    InvalidLayerConfig {
        /// The layer, e.g. `QConv2d [8 -> 16, kernel [3, 3], groups 3]`.
        layer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A quantization setting is out of its domain.
    #[error("invalid quantization setting: {0}")]
    InvalidSetting(String),
    /// A module has no tensors, hence no device.
    #[error("the module holds no tensors and so has no device")]
    NoDevice,
    /// The per-channel axis does not exist in the tensor.
    #[error("per-channel axis {axis} is out of bounds for a tensor of rank {rank}")]
    AxisOutOfBounds {
        /// The requested axis.
        axis: usize,
        /// The rank of the tensor.
        rank: usize,
    },
    /// The requested backend is not compiled in or unknown.
    #[error("unknown or disabled backend `{name}`: enabled backends are {enabled}")]
    UnknownBackend {
        /// The requested name.
        name: String,
        /// Comma-separated list of the enabled backends.
        enabled: String,
    },
    /// A model cannot be exported: not frozen, or a step without an export mapping.
    #[error("cannot export {layer}: {reason}")]
    Unexportable {
        /// The layer (`QConv2d #2`: the second layer called), observer or step.
        layer: String,
        /// Why.
        reason: String,
    },
    /// A file cannot be written or read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What the system reported.
        reason: String,
    },
}
