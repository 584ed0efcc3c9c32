//! Direct 2-D max-pooling on host memory (NCHW, f32): the forward pass with the argmax of each
//! window, and the backward pass that adds each output gradient onto its argmax. One task per
//! plane; taps in row-major window order, so that ties keep the first maximum and a NaN
//! propagates, as in PyTorch and Burn.

use burn::tensor::ops::MaxPoolOptions;
use rayon::prelude::*;

use crate::windows::{Windows, output_extent};

/// The sizes of one max-pooling: input `[n, c, h, w]`, output `[n, c, oh, ow]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolDims {
    planes: usize,
    channels: usize,
    kernel: [usize; 2],
    windows: Windows,
}

impl PoolDims {
    /// The sizes of `max_pool2d(x, options)` (symmetric padding, floor mode); `None` when the
    /// window does not fit (the caller then runs Burn's op, which reports the error).
    pub fn new([n, c, h, w]: [usize; 4], options: &MaxPoolOptions<2>) -> Option<Self> {
        let size = |d: usize, input: usize| {
            output_extent(
                input,
                options.padding[d],
                options.kernel_size[d],
                options.stride[d],
                options.dilation[d],
            )
            .filter(|&out| out > 0)
        };
        let windows = Windows {
            input: [h, w],
            output: [size(0, h)?, size(1, w)?],
            stride: options.stride,
            dilation: options.dilation,
            before: [options.padding[0].0, options.padding[1].0],
        };
        Some(Self {
            planes: n * c,
            channels: c,
            kernel: options.kernel_size,
            windows,
        })
    }

    /// `[n, c, oh, ow]`.
    pub fn output_shape(&self) -> [usize; 4] {
        let [oh, ow] = self.windows.output;
        [self.planes / self.channels, self.channels, oh, ow]
    }
}

/// The pooled output and the argmax of each window as `ih · w + iw`.
pub(crate) fn forward(dims: &PoolDims, x: &[f32]) -> (Vec<f32>, Vec<i32>) {
    let in_plane = dims.windows.input[0] * dims.windows.input[1];
    let out_plane = dims.windows.output[0] * dims.windows.output[1];
    let mut y = vec![f32::NEG_INFINITY; dims.planes * out_plane];
    let mut indices = vec![-1i32; y.len()];
    y.par_chunks_mut(out_plane)
        .zip(indices.par_chunks_mut(out_plane))
        .zip(x.par_chunks(in_plane))
        .for_each(|((out, index), plane)| pool_plane(dims, plane, out, index));
    (y, indices)
}

/// One plane of [`forward`]: `out` starts at −∞ and `index` at −1 (no input seen yet).
fn pool_plane(dims: &PoolDims, plane: &[f32], out: &mut [f32], index: &mut [i32]) {
    let ([_, w], [_, ow], sw) = (
        dims.windows.input,
        dims.windows.output,
        dims.windows.stride[1],
    );
    for i in 0..dims.kernel[0] {
        for j in 0..dims.kernel[1] {
            let (rows, cols, first_col) = dims.windows.tap(i, j);
            for (oy, iy) in rows {
                for (t, ox) in cols.clone().enumerate() {
                    let ix = first_col + t * sw;
                    let v = plane[iy * w + ix];
                    let o = oy * ow + ox;
                    if index[o] < 0 || v > out[o] || v.is_nan() {
                        out[o] = v;
                        index[o] = (iy * w + ix) as i32;
                    }
                }
            }
        }
    }
}

/// The input gradient: each output gradient added onto the input position of its argmax.
pub(crate) fn backward(dims: &PoolDims, grad: &[f32], indices: &[i32]) -> Vec<f32> {
    let in_plane = dims.windows.input[0] * dims.windows.input[1];
    let out_plane = dims.windows.output[0] * dims.windows.output[1];
    let mut gx = vec![0f32; dims.planes * in_plane];
    gx.par_chunks_mut(in_plane)
        .zip(
            grad.par_chunks(out_plane)
                .zip(indices.par_chunks(out_plane)),
        )
        .for_each(|(gx, (gy, index))| {
            for (&g, &k) in gy.iter().zip(index) {
                if let Some(slot) = usize::try_from(k).ok().and_then(|k| gx.get_mut(k)) {
                    *slot += g;
                }
            }
        });
    gx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_nan_and_padding() {
        // One 3×4 plane; 2×2 windows, stride 2, padding 1: windows see 1, 2 or 4 inputs.
        let x = [
            1.0,
            5.0,
            5.0,
            -2.0,
            0.0,
            f32::NAN,
            3.0,
            -1.0,
            7.0,
            7.0,
            -3.0,
            -4.0,
        ];
        let options = MaxPoolOptions {
            kernel_size: [2, 2],
            stride: [2, 2],
            padding: [(1, 1), (1, 1)],
            dilation: [1, 1],
            ceil_mode: false,
        };
        let dims = PoolDims::new([1, 1, 3, 4], &options).unwrap();
        assert_eq!(dims.output_shape(), [1, 1, 2, 3]);
        let (y, indices) = forward(&dims, &x);
        assert_eq!(indices, vec![0, 1, 3, 8, 5, 7]);
        assert_eq!(&y[..4], &[1.0, 5.0, -2.0, 7.0]);
        assert!(y[4].is_nan());
        assert_eq!(y[5], -1.0);
        let gx = backward(&dims, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &indices);
        let expected = [1.0, 2.0, 0.0, 3.0, 0.0, 5.0, 0.0, 6.0, 4.0, 0.0, 0.0, 0.0];
        assert_eq!(gx, expected);
    }
}
