//! A fake-quantized activation travelling through a model with the grid it lies on.

use burn::tensor::Tensor;

use crate::QParams;

/// A tensor and, once it has been fake-quantized, the parameters of its grid.
///
/// Layers without an input observer take the grid of the previous layer's output from here
/// (the reference shares the previous layer's output observer as the next layer's input).
#[derive(Debug, Clone)]
pub struct Quantized<const D: usize> {
    /// The (fake-quantized) values.
    pub tensor: Tensor<D>,
    /// The grid of `tensor`; `None` for a float tensor not yet quantized.
    pub qparams: Option<QParams>,
}

impl<const D: usize> Quantized<D> {
    /// A float tensor, not quantized yet.
    pub fn float(tensor: Tensor<D>) -> Self {
        Self {
            tensor,
            qparams: None,
        }
    }

    /// Applies a grid-preserving function (reshape, ReLU, max-pool) to the values.
    pub fn map<const D2: usize>(self, f: impl FnOnce(Tensor<D>) -> Tensor<D2>) -> Quantized<D2> {
        Quantized {
            tensor: f(self.tensor),
            qparams: self.qparams,
        }
    }
}
