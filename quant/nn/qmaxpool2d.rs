//! Quantized 2-D max-pooling.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Int, Tensor};

use super::{QTensor, QValue, Quantized};
use crate::engine::{ConvGeometry, int_max_pool2d};
use crate::export::ExportOp;
use crate::ops::max_pool2d;

/// Max-pooling of any geometry (Burn's [`MaxPool2d`]: kernel, stride, padding, dilation, ceil
/// mode). The maximum is monotone, so it keeps the grid and is exact on integers: the
/// non-overlapping unpadded case runs a direct integer loop, every other geometry runs Burn's
/// float max-pool on the integers, which `f32` holds exactly (at most 16 bits).
///
/// ```
/// use burn::nn::{PaddingConfig2d, pool::MaxPool2dConfig};
/// use burn_quant::nn::QMaxPool2d;
/// let stem = MaxPool2dConfig::new([3, 3])
///     .with_strides([2, 2])
///     .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
/// let pool = QMaxPool2d::from(stem.init());
/// ```
#[derive(Module, Debug)]
pub struct QMaxPool2d {
    /// The wrapped float pooling.
    pub pool: MaxPool2d,
}

impl From<MaxPool2d> for QMaxPool2d {
    fn from(pool: MaxPool2d) -> Self {
        Self { pool }
    }
}

impl QMaxPool2d {
    /// `kernel × kernel` pooling with stride `kernel`.
    pub fn new(kernel: usize) -> Self {
        MaxPool2dConfig::new([kernel, kernel]).init().into()
    }

    /// The one forward (the grid is kept).
    ///
    /// # Shapes
    /// - input: `[n, c, h, w]`
    /// - output: `[n, c, h', w']` as Burn's [`MaxPool2d`]
    pub fn forward(&self, x: QTensor<4>) -> QTensor<4> {
        let [_, _, h, w] = x.dims();
        let pool = &self.pool;
        // Built only while a model is exported.
        let export = || {
            let [(top, bottom), (left, right)] = self.geometry().padding_pairs(h, w);
            Ok(vec![ExportOp::MaxPool {
                kernel: pool.kernel_size,
                strides: pool.stride,
                pads: [top, left, bottom, right],
                dilations: pool.dilation,
                ceil_mode: pool.ceil_mode,
            }])
        };
        let value = |value| match (value, self.square_window()) {
            // A deferred convolution output: pooled inside the convolution's kernel.
            (QValue::Deferred(mut deferred), Some(kernel)) if !deferred.is_pooled() => {
                deferred.max_pool(kernel);
                QValue::Deferred(deferred)
            }
            (value, _) => value.map(|t| self.forward_float(t), |q, _| self.forward_int(q)),
        };
        x.map_value("QMaxPool2d", value, export)
    }

    /// The window geometry (padding as Burn's `MaxPool2d` computes it).
    fn geometry(&self) -> ConvGeometry {
        let pool = &self.pool;
        ConvGeometry {
            kernel_size: pool.kernel_size,
            stride: pool.stride,
            dilation: pool.dilation,
            padding: pool.padding.clone(),
        }
    }

    /// Float forward: Burn's [`MaxPool2d::forward`], computed with [`crate::ops::max_pool2d`]
    /// (direct kernels on the CPU backends).
    pub fn forward_float(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let pool = &self.pool;
        let options = MaxPoolOptions::new(pool.kernel_size)
            .with_stride(pool.stride)
            .with_padding_pairs(self.geometry().padding_pairs(h, w))
            .with_dilation(pool.dilation)
            .with_ceil_mode(pool.ceil_mode);
        max_pool2d(x, options)
    }

    /// Fake-quantized forward (the grid is unchanged).
    pub fn forward_fq(&self, x: Quantized<4>) -> Quantized<4> {
        x.map(|t| self.forward_float(t))
    }

    /// Integer forward.
    pub fn forward_int(&self, q: Tensor<4, Int>) -> Tensor<4, Int> {
        match self.square_window() {
            Some(kernel) => int_max_pool2d(q, kernel),
            None => self.pool.forward(q.float()).int(),
        }
    }

    /// The kernel of non-overlapping square windows without padding, dilation or ceil mode
    /// (the engine's own pooling); `None` for other geometries.
    fn square_window(&self) -> Option<usize> {
        let pool = &self.pool;
        let [kh, kw] = pool.kernel_size;
        let direct = kh == kw
            && pool.stride == pool.kernel_size
            && pool.dilation == [1, 1]
            && !pool.ceil_mode
            && matches!(pool.padding, PaddingConfig2d::Valid);
        direct.then_some(kh)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::*;
    use crate::default_device;

    /// Every geometry: the integer forward equals the float max-pool of the same integers.
    #[test]
    fn integer_forward_is_exact_for_any_geometry() {
        let device = default_device().unwrap();
        let q =
            Tensor::<4, Int>::random([2, 3, 9, 8], Distribution::Uniform(-300.0, 300.0), &device);
        let configs = [
            MaxPool2dConfig::new([2, 2]),
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
            MaxPool2dConfig::new([2, 3]).with_strides([1, 2]),
            MaxPool2dConfig::new([3, 3]).with_dilation([2, 1]),
            MaxPool2dConfig::new([2, 2]).with_ceil_mode(true),
        ];
        for config in configs {
            let layer = QMaxPool2d::from(config.init());
            let int = layer.forward_int(q.clone());
            let float = layer.forward_float(q.clone().float());
            assert_eq!(int.dims(), float.dims(), "{config}");
            assert_eq!(int.float().into_data(), float.into_data(), "{config}");
        }
    }
}
