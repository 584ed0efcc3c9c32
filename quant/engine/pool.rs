//! Integer ReLU and max-pooling: exact on the grid.

use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use super::host_conv::host_i32;
use crate::backend::is_host_device;

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

/// [`int_max_pool2d`] as a direct loop over each plane.
fn host_max_pool2d(q: Tensor<4, Int>, kernel: usize) -> Tensor<4, Int> {
    let device = q.device();
    let [n, c, h, w] = q.dims();
    let (ho, wo) = (h / kernel, w / kernel);
    let x = host_i32(q);
    let mut y = vec![0i32; n * c * ho * wo];
    y.par_chunks_mut(ho * wo)
        .zip(x.par_chunks(h * w))
        .for_each(|(out, plane)| {
            for (oh, row) in out.chunks_mut(wo).enumerate() {
                for (ow, v) in row.iter_mut().enumerate() {
                    *v = (0..kernel)
                        .flat_map(|i| {
                            let start = (oh * kernel + i) * w + ow * kernel;
                            plane[start..start + kernel].iter().copied()
                        })
                        .max()
                        .expect("kernel >= 1");
                }
            }
        });
    Tensor::from_data(TensorData::new(y, [n, c, ho, wo]), &device)
}
