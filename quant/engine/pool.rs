//! Integer ReLU and max-pooling: exact on the grid.

use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::backend::{host_i32, is_host_device};

/// ReLU on the grid: `max(q, Z)` where `Z` is the zero point (real 0).
pub fn int_relu<const D: usize>(q: Tensor<D, Int>, zero_point: i32) -> Tensor<D, Int> {
    q.clamp_min(zero_point)
}

/// Non-overlapping max-pooling (kernel = stride, no padding), flooring odd sizes like PyTorch.
/// On the CPU backends it runs directly on the host memory the tensor lives in.
pub fn int_max_pool2d(q: Tensor<4, Int>, kernel: usize) -> Tensor<4, Int> {
    if is_host_device(&q.device()) {
        return host_max_pool2d(q, kernel);
    }
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

/// [`int_max_pool2d`] as a direct loop over each plane: per output row, the elementwise
/// maximum of the `kernel` input rows, then of each window's `kernel` columns.
fn host_max_pool2d(q: Tensor<4, Int>, kernel: usize) -> Tensor<4, Int> {
    let device = q.device();
    let [n, c, h, w] = q.dims();
    let (ho, wo) = (h / kernel, w / kernel);
    let x = host_i32(q);
    let mut y = vec![0i32; n * c * ho * wo];
    y.par_chunks_mut(ho * wo)
        .zip(x.par_chunks(h * w))
        .for_each_init(
            || vec![i32::MIN; wo * kernel],
            |rows, (out, plane)| {
                for (oh, out_row) in out.chunks_exact_mut(wo).enumerate() {
                    rows.fill(i32::MIN);
                    for input_row in plane[oh * kernel * w..].chunks(w).take(kernel) {
                        for (m, &v) in rows.iter_mut().zip(input_row) {
                            *m = (*m).max(v);
                        }
                    }
                    for (o, window) in out_row.iter_mut().zip(rows.chunks_exact(kernel)) {
                        *o = window.iter().copied().fold(i32::MIN, i32::max);
                    }
                }
            },
        );
    Tensor::from_data(TensorData::new(y, [n, c, ho, wo]), &device)
}
