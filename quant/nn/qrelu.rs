//! Quantized ReLU.

use burn::module::Module;
use burn::tensor::{Int, Tensor, activation::relu};

use super::{QTensor, Quantized};
use crate::QParams;
use crate::engine::int_relu;
use crate::export::ExportOp;

/// ReLU on a fake-quantized tensor: the grid is kept (0 lies on it), so no observer is needed.
/// On the integer grid it is `max(q, Z)`.
#[derive(Module, Debug, Default)]
pub struct QReLU;

impl QReLU {
    /// A new ReLU.
    pub fn new() -> Self {
        Self
    }

    /// The one forward: on real and fake-quantized values `max(x, 0)`, on integers
    /// `max(q, Z)` (the grid is kept).
    ///
    /// # Shapes
    /// - input and output: any shape
    pub fn forward<const D: usize>(&self, x: QTensor<D>) -> QTensor<D> {
        let int = |q, grid: &QParams| self.forward_int(q, grid);
        x.map_exported("QReLU", relu, int, || Ok(vec![ExportOp::Relu]))
    }

    /// Float forward.
    pub fn forward_float<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        relu(x)
    }

    /// Fake-quantized forward (the grid is unchanged).
    pub fn forward_fq<const D: usize>(&self, x: Quantized<D>) -> Quantized<D> {
        x.map(relu)
    }

    /// Integer forward on the grid `input`.
    pub fn forward_int<const D: usize>(
        &self,
        q: Tensor<D, Int>,
        input: &QParams,
    ) -> Tensor<D, Int> {
        let (_, zero_point) = super::layer_observers::host_scalar(input);
        int_relu(q, zero_point)
    }
}
