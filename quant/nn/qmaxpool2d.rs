//! Quantized 2-D max-pooling.

use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::{Int, Tensor};

use super::{QTensor, Quantized};
use crate::engine::int_max_pool2d;

/// Non-overlapping max-pooling (kernel = stride): monotone, so it keeps the grid and is exact
/// on integers.
#[derive(Module, Debug)]
pub struct QMaxPool2d {
    /// The wrapped float pooling.
    pub pool: MaxPool2d,
    #[module(skip)]
    kernel: usize,
}

impl QMaxPool2d {
    /// `kernel × kernel` pooling with stride `kernel`.
    pub fn new(kernel: usize) -> Self {
        Self {
            pool: MaxPool2dConfig::new([kernel, kernel])
                .with_strides([kernel, kernel])
                .init(),
            kernel,
        }
    }

    /// The one forward (the grid is kept).
    ///
    /// # Shapes
    /// - input: `[n, c, h, w]`
    /// - output: `[n, c, h / kernel, w / kernel]`
    pub fn forward(&self, x: QTensor<4>) -> QTensor<4> {
        x.map_values(|t| self.pool.forward(t), |q| self.forward_int(q))
    }

    /// Float forward.
    pub fn forward_float(&self, x: Tensor<4>) -> Tensor<4> {
        self.pool.forward(x)
    }

    /// Fake-quantized forward (the grid is unchanged).
    pub fn forward_fq(&self, x: Quantized<4>) -> Quantized<4> {
        x.map(|t| self.pool.forward(t))
    }

    /// Integer forward.
    pub fn forward_int(&self, q: Tensor<4, Int>) -> Tensor<4, Int> {
        int_max_pool2d(q, self.kernel)
    }
}
