//! The MNIST application of burn-quant: data (IDX files, download), a training loop, the
//! seed's models (`Net`, `NetBN`), the PTQ/QAT pipeline and the sweep worker (`main.rs`).
//!
//! Everything here is built on the `burn-quant` library's public API; none of it is needed to
//! quantize another model.

#![warn(missing_docs)]

pub mod data;
mod dataset;
#[cfg(feature = "download")]
pub mod download;
pub mod experiment;
pub mod learner;
pub mod models;
pub mod train;

pub use burn_quant_mnist_protocol as protocol;
pub use dataset::{Dataset, SplitMix64};
