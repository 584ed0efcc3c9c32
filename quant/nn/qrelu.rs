//! Quantized ReLU.

use burn::module::Module;
use burn::tensor::{Int, Tensor, activation::relu};

use super::layer_observers::host_scalar;
use super::{QTensor, QValue, Quantized};
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
        let value = |value| match value {
            // A deferred convolution output: the ReLU runs inside the convolution's kernel.
            QValue::Deferred(mut deferred) => {
                let (_, zero_point) = host_scalar(deferred.grid());
                deferred.raise_floor(zero_point);
                QValue::Deferred(deferred)
            }
            value => value.map(relu, int),
        };
        x.map_value("QReLU", value, || Ok(vec![ExportOp::Relu]))
    }

    /// Float forward.
    pub fn forward_float<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        relu(x)
    }

    /// Fake-quantized forward (the grid is unchanged).
    pub fn forward_fq<const D: usize>(&self, x: Quantized<D>) -> Quantized<D> {
        x.map(relu)
    }

    /// Integer forward on the grid `input` (`q` lies in the grid's range): `q` itself when the
    /// grid has no level below real 0 (`Z <= qmin`, e.g. after a layer that observed its
    /// output after its own ReLU), else `max(q, Z)`.
    pub fn forward_int<const D: usize>(
        &self,
        q: Tensor<D, Int>,
        input: &QParams,
    ) -> Tensor<D, Int> {
        let (_, zero_point) = host_scalar(input);
        match zero_point <= input.scheme.qmin() {
            true => q,
            false => int_relu(q, zero_point),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{QScheme, default_device};

    fn ints(q: Tensor<1, Int>) -> Vec<i32> {
        q.into_data().convert::<i32>().try_to_vec::<i32>().unwrap()
    }

    #[test]
    fn integer_relu_clamps_at_the_zero_point_and_keeps_grids_without_negative_levels() {
        let device = default_device().unwrap();
        let scheme = QScheme::affine(4).unwrap();
        // Real range [-1, 2]: Z = 5 on 0..=15, levels below real 0 exist.
        let signed = QParams::from_bounds(-1.0, 2.0, scheme, &device).unwrap();
        let q = Tensor::<1, Int>::from_ints([0, 4, 5, 6, 15], &device);
        assert_eq!(ints(QReLU::new().forward_int(q, &signed)), [5, 5, 5, 6, 15]);
        // Real range [0, 2]: Z = 0 = qmin, every level is ≥ real 0.
        let positive = QParams::from_bounds(0.0, 2.0, scheme, &device).unwrap();
        let q = Tensor::<1, Int>::from_ints([0, 3, 15], &device);
        assert_eq!(ints(QReLU::new().forward_int(q, &positive)), [0, 3, 15]);
    }
}
