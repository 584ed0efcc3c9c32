//! Per-layer requantization: i32 accumulator → output grid.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::fixed_point::{FixedPointMultiplier, requantize, requantize_uniform};
use crate::backend::{host_i32, is_host_device};

/// Maps an i32 accumulator with scale `Si·Sw[c]` to the output grid:
/// `clamp(M[c]·acc + Zo, qmin, qmax)` with `M[c] = Si·Sw[c]/So` in fixed point.
#[derive(Debug, Clone)]
pub struct Requantizer {
    /// The fixed-point multipliers, one per output channel (or one).
    pub multipliers: Vec<FixedPointMultiplier>,
    /// Output zero point `Zo`.
    pub output_zero_point: i32,
    /// Output grid.
    pub qmin: i32,
    /// Output grid.
    pub qmax: i32,
    m0: Tensor<1, Int>,
    left: Tensor<1, Int>,
    right: Tensor<1, Int>,
}

impl Requantizer {
    /// Builds the multipliers `M[c] = input_scale · weight_scale[c] / output_scale`.
    pub fn new(
        input_scale: f32,
        weight_scales: &[f32],
        output_scale: f32,
        output_zero_point: i32,
        (qmin, qmax): (i32, i32),
        device: &Device,
    ) -> Self {
        let multipliers: Vec<FixedPointMultiplier> = weight_scales
            .iter()
            .map(|&sw| {
                FixedPointMultiplier::from_real(
                    input_scale as f64 * sw as f64 / output_scale as f64,
                )
            })
            .collect();
        let column = |f: &dyn Fn(&FixedPointMultiplier) -> i32| {
            let values: Vec<i32> = multipliers.iter().map(f).collect();
            Tensor::<1, Int>::from_data(TensorData::new(values, [multipliers.len()]), device)
        };
        Self {
            m0: column(&|m| m.m0),
            left: column(&|m| (-m.shift).max(0)),
            right: column(&|m| m.shift.max(0)),
            multipliers,
            output_zero_point,
            qmin,
            qmax,
        }
    }

    /// Requantizes `acc`, whose channels lie along `axis`: on the CPU backends directly on
    /// the host memory the tensor lives in (vectorized), elsewhere with
    /// [`Requantizer::apply_with_tensor_ops`]. Both give the same integers.
    pub fn apply<const D: usize>(&self, acc: Tensor<D, Int>, axis: usize) -> Tensor<D, Int> {
        let device = acc.device();
        if !is_host_device(&device) {
            return self.apply_with_tensor_ops(acc, axis);
        }
        let shape = acc.dims();
        let values = self.apply_host(&host_i32(acc), shape[axis + 1..].iter().product());
        Tensor::from_data(TensorData::new(values, shape), &device)
    }

    /// [`Requantizer::apply`] composed of Burn tensor ops (i32 only; runs on every backend).
    pub fn apply_with_tensor_ops<const D: usize>(
        &self,
        acc: Tensor<D, Int>,
        axis: usize,
    ) -> Tensor<D, Int> {
        let y = match self.multipliers.as_slice() {
            [m] => requantize_uniform(acc, *m),
            _ => {
                let shape = acc.dims();
                let mut param_shape = [1usize; D];
                param_shape[axis] = self.multipliers.len();
                let expand = |t: &Tensor<1, Int>| t.clone().reshape(param_shape).expand(shape);
                requantize(
                    acc,
                    expand(&self.m0),
                    expand(&self.left),
                    expand(&self.right),
                )
            }
        };
        (y + self.output_zero_point).clamp(self.qmin, self.qmax)
    }
}
