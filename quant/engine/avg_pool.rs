//! Average pooling on the integer grid: the grid is kept, the mean is rounded.

use burn::tensor::{Int, Tensor};

/// Non-overlapping average pooling (kernel = stride, no padding; odd sizes floored like
/// PyTorch) on the grid with zero point `zero_point`: `Z + round(Σ (q − Z) / k)` with `k` the
/// window size, rounding half up (towards +∞). The output stays on the input grid.
///
/// # Shapes
/// - input: `[n, c, h, w]`
/// - output: `[n, c, h / kernel, w / kernel]`
pub fn int_avg_pool2d(q: Tensor<4, Int>, zero_point: i32, kernel: usize) -> Tensor<4, Int> {
    let [n, c, h, w] = q.dims();
    let (ho, wo) = (h / kernel, w / kernel);
    let q = if (ho * kernel, wo * kernel) == (h, w) {
        q
    } else {
        q.slice([0..n, 0..c, 0..ho * kernel, 0..wo * kernel])
    };
    let windows: Tensor<6, Int> = (q - zero_point).reshape([n, c, ho, kernel, wo, kernel]);
    let sums = windows.sum_dim(5).sum_dim(3).reshape([n, c, ho, wo]);
    round_mean(sums, (kernel * kernel) as i32) + zero_point
}

/// Global average pooling to `[n, c, 1, 1]` on the grid with zero point `zero_point` (same
/// rounding as [`int_avg_pool2d`]).
pub fn int_global_avg_pool2d(q: Tensor<4, Int>, zero_point: i32) -> Tensor<4, Int> {
    let [_, _, h, w] = q.dims();
    let sums = (q - zero_point).sum_dim(3).sum_dim(2);
    round_mean(sums, (h * w) as i32) + zero_point
}

/// `floor((2·s + k) / (2·k))`: the mean `s / k` rounded half up, exact for `|s| < 2^29`.
pub fn round_mean<const D: usize>(sums: Tensor<D, Int>, count: i32) -> Tensor<D, Int> {
    let numerator = sums * 2 + count;
    let divisor = 2 * count;
    // Floor division whatever the sign convention of the backend's remainder.
    let rem = numerator.clone().remainder_scalar(divisor);
    let rem = rem.clone() + rem.lower_elem(0).int() * divisor;
    (numerator - rem).div_scalar(divisor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::default_device;
    use crate::test_support::ints;
    use burn::tensor::TensorData;

    #[test]
    fn means_round_half_up_for_either_sign() {
        let device = default_device().unwrap();
        let sums = Tensor::<1, Int>::from_data(
            TensorData::new(vec![3, -3, 5, -5, 4, -4, 0, 7, -7], [9]),
            &device,
        );
        // / 2: 1.5 → 2, −1.5 → −1, 2.5 → 3, −2.5 → −2, 2, −2, 0, 3.5 → 4, −3.5 → −3.
        assert_eq!(
            ints(round_mean(sums, 2)),
            vec![2, -1, 3, -2, 2, -2, 0, 4, -3]
        );
    }

    #[test]
    fn pooling_keeps_the_grid() {
        let device = default_device().unwrap();
        let values: Vec<i32> = (0..16).collect();
        let q = Tensor::<4, Int>::from_data(TensorData::new(values, [1, 1, 4, 4]), &device);
        // Windows of 2×2 around zero point 3: means of q − 3 are 2.5−3, 4.5−3, 10.5−3, 12.5−3.
        assert_eq!(ints(int_avg_pool2d(q.clone(), 3, 2)), vec![3, 5, 11, 13]);
        // Mean of 0..16 is 7.5 → 8.
        assert_eq!(ints(int_global_avg_pool2d(q, 0)), vec![8]);
    }
}
