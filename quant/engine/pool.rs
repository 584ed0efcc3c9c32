//! Integer ReLU and max-pooling: exact on the grid.

use burn::tensor::{Int, Tensor};

/// ReLU on the grid: `max(q, Z)` where `Z` is the zero point (real 0).
pub fn int_relu<const D: usize>(q: Tensor<D, Int>, zero_point: i32) -> Tensor<D, Int> {
    q.clamp_min(zero_point)
}

/// Non-overlapping max-pooling (kernel = stride, no padding), flooring odd sizes like PyTorch.
pub fn int_max_pool2d(q: Tensor<4, Int>, kernel: usize) -> Tensor<4, Int> {
    let [n, c, h, w] = q.dims();
    let (ho, wo) = (h / kernel, w / kernel);
    let q = if (ho * kernel, wo * kernel) == (h, w) {
        q
    } else {
        q.slice([0..n, 0..c, 0..ho * kernel, 0..wo * kernel])
    };
    let windows: Tensor<6, Int> = q.reshape([n, c, ho, kernel, wo, kernel]);
    windows.max_dim(5).max_dim(3).reshape([n, c, ho, wo])
}
