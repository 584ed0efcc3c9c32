//! Integer fully connected layer.

use burn::tensor::{Int, Tensor};

use super::Requantizer;
use crate::QParams;

/// A frozen linear layer on the integer grid.
#[derive(Debug, Clone)]
pub struct IntLinear {
    /// `q_w - Z_w`, shape `[in, out]` (Burn's row layout).
    pub weight: Tensor<2, Int>,
    /// Bias on the accumulator grid (scale `Si·Sw`), shape `[out]`.
    pub bias: Tensor<1, Int>,
    /// Input zero point `Zi`.
    pub input_zero_point: i32,
    /// Output requantization.
    pub requantizer: Requantizer,
    /// Parameters of the output grid.
    pub output: QParams,
}

impl IntLinear {
    /// The i32 accumulators, shape `[n, out]`.
    pub fn accumulate(&self, q: Tensor<2, Int>) -> Tensor<2, Int> {
        let out = self.bias.dims()[0];
        (q - self.input_zero_point).matmul(self.weight.clone())
            + self.bias.clone().reshape([1, out])
    }

    /// Linear layer followed by requantization to the output grid.
    pub fn forward(&self, q: Tensor<2, Int>) -> Tensor<2, Int> {
        self.requantizer.apply(self.accumulate(q), 1)
    }
}
