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
}
