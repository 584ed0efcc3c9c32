//! Exporting a frozen model: [`trace`] records the forward as an [`ExportGraph`] (the layers
//! describe their integer form: grids, integer weights, int32 biases), and [`onnx`] writes
//! that graph as an ONNX model in the QDQ form (feature `onnx`).

mod graph;
#[cfg(feature = "onnx")]
pub mod onnx;
mod trace;

pub use graph::{ActivationGrid, ExportGraph, ExportNode, ExportOp, IntBias, IntWeight};
pub use trace::trace;
pub(crate) use trace::{Traced, not_integer, record};
