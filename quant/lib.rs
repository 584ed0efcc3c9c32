#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod backend;
pub mod engine;
mod error;
pub mod export;
mod fake_quant;
mod freeze;
pub mod nn;
mod observer;
pub mod ops;
mod qparams;
mod range;
mod running;
mod scheme;
mod simd;
#[cfg(test)]
mod test_support;
mod windows;

pub use backend::default_device;
pub use error::QuantError;
pub use fake_quant::{
    FakeQuantBackend, LsqGradientBackend, Ste, bipolar_fake_quant, fake_quant, lsq_fake_quant,
    lsq_grad_scale,
};
pub use freeze::freeze;
pub use observer::{
    LearnedStep, MinMaxObserver, MinMaxObserverConfig, StepGradScale, set_observing,
};
pub use qparams::{QParams, check_bounds, dequantize, quantize};
pub use range::RangeEstimator;
pub use scheme::{Granularity, MAX_BITS, MIN_BITS, QMode, QScheme, Signedness};
