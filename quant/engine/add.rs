//! Residual addition of two quantized tensors on the integer grid.

use burn::tensor::{Int, Tensor};

use super::fixed_point::{FixedPointMultiplier, requantize_uniform};
use crate::QParams;

/// `a + b` for `a`, `b` on their own grids, requantized to the output grid (TFLite's scheme):
/// each input is shifted left by `shift`, scaled by `S_in / (2·max(Sa, Sb))` in fixed point,
/// the two are added, and the sum is scaled by `2·max(Sa, Sb) / (So · 2^shift)`.
/// Every step is exact i32 arithmetic with one rounding per multiplier.
///
/// # Shapes
/// - inputs: two tensors of the same shape (integers on their grids)
/// - output: the same shape (integers on the output grid)
#[derive(Debug, Clone)]
pub struct IntAdd {
    /// Left shift applied to both inputs before scaling (`30 − bits` of the wider input, at
    /// most 20).
    pub shift: u32,
    /// Zero point and multiplier of the left input.
    pub lhs: (i32, FixedPointMultiplier),
    /// Zero point and multiplier of the right input.
    pub rhs: (i32, FixedPointMultiplier),
    /// Multiplier of the sum.
    pub sum: FixedPointMultiplier,
    /// Output zero point.
    pub output_zero_point: i32,
    /// Output grid.
    pub qmin: i32,
    /// Output grid.
    pub qmax: i32,
    /// Parameters of the output grid.
    pub output: QParams,
}

impl IntAdd {
    /// The addition of inputs on grids `(lhs_scale, lhs_zero_point, lhs_bits)` and
    /// `(rhs_scale, ..)` onto the grid `output`.
    ///
    /// # Panics
    /// When a scale is not finite and positive (observers never produce such scales).
    pub fn new(
        (lhs_scale, lhs_zero_point, lhs_bits): (f32, i32, u32),
        (rhs_scale, rhs_zero_point, rhs_bits): (f32, i32, u32),
        (output_scale, output_zero_point): (f32, i32),
        output: QParams,
    ) -> Self {
        let shift = 30u32.saturating_sub(lhs_bits.max(rhs_bits)).min(20);
        let twice_max = 2.0 * lhs_scale.max(rhs_scale) as f64;
        let sum = twice_max / (output_scale as f64 * 2f64.powi(shift as i32));
        Self {
            shift,
            lhs: (
                lhs_zero_point,
                FixedPointMultiplier::from_real(lhs_scale as f64 / twice_max),
            ),
            rhs: (
                rhs_zero_point,
                FixedPointMultiplier::from_real(rhs_scale as f64 / twice_max),
            ),
            sum: FixedPointMultiplier::from_real(sum),
            output_zero_point,
            qmin: output.scheme.qmin(),
            qmax: output.scheme.qmax(),
            output,
        }
    }

    /// The sum of `lhs` and `rhs` on the output grid.
    pub fn forward<const D: usize>(
        &self,
        lhs: Tensor<D, Int>,
        rhs: Tensor<D, Int>,
    ) -> Tensor<D, Int> {
        let scaled = |q: Tensor<D, Int>, (zero_point, m): (i32, FixedPointMultiplier)| {
            requantize_uniform(
                (q - zero_point).bitwise_left_shift_scalar(self.shift as i32),
                m,
            )
        };
        let sum = scaled(lhs, self.lhs) + scaled(rhs, self.rhs);
        (requantize_uniform(sum, self.sum) + self.output_zero_point).clamp(self.qmin, self.qmax)
    }
}
