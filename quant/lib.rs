#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod dataset;
mod device;
#[cfg(feature = "download")]
pub mod download;
pub mod engine;
mod error;
pub mod experiment;
mod fake_quant;
pub mod mnist;
pub mod models;
pub mod nn;
mod observer;
mod qparams;
mod scheme;
mod simd;
pub mod train;

pub use dataset::{Dataset, SplitMix64};
pub use device::{BackendKind, DEVICE_ENV, default_backend, default_device, enabled_backends};
pub use error::QuantError;
pub use fake_quant::{FakeQuantBackend, Ste, fake_quant};
pub use observer::{MinMaxObserver, MinMaxObserverConfig, set_observing};
pub use qparams::{QParams, check_bounds, dequantize, quantize};
pub use scheme::{Granularity, MAX_BITS, MIN_BITS, QuantMode, QuantScheme, Signedness};
