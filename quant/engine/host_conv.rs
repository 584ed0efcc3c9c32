//! Direct integer convolution with fused requantization, for the CPU backends (whose tensors
//! already live in host memory): one pass over the input per output plane and kernel tap, i32
//! accumulators, no im2col copy, any stride, padding and dilation, both cores.

use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use super::{ConvGeometry, IntConv2d};
use crate::simd::with_avx2;
use crate::windows::Windows;

/// The values of `t` as i32 in host memory.
pub(crate) fn host_i32<const D: usize>(t: Tensor<D, Int>) -> Vec<i32> {
    t.into_data()
        .convert::<i32>()
        .try_into_vec::<i32>()
        .expect("i32 data")
}

/// [`IntConv2d::forward`] computed directly on the host.
pub(crate) fn conv_requantize(conv: &IntConv2d, q: Tensor<4, Int>) -> Tensor<4, Int> {
    let device = q.device();
    let [n, c, h, w] = q.dims();
    let [kh, kw] = conv.geometry.kernel_size;
    let [ho, wo] = conv.output_size(h, w);
    let [groups, per_group, depth] = conv.weight.dims();
    let out = groups * per_group;
    let channels_in = c / groups;
    // Real 0 is the zero point: after subtracting it, padded taps are skipped (they add 0).
    let zi = conv.input_zero_point;
    let x: Vec<i32> = host_i32(q).into_iter().map(|v| v - zi).collect();
    let weight = host_i32(conv.weight.clone());
    let bias = host_i32(conv.bias.clone());
    let windows = Windows::new(&conv.geometry, [h, w], [ho, wo]);
    let r = &conv.requantizer;
    let mut y = vec![0i32; n * out * ho * wo];
    y.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(task, plane)| {
            with_avx2(|| {
                let (image, o) = (task / out, task % out);
                let group = o / per_group;
                plane.fill(bias[o]);
                for ic in 0..channels_in {
                    let channel = group * channels_in + ic;
                    let input = &x[(image * c + channel) * h * w..][..h * w];
                    for i in 0..kh {
                        for j in 0..kw {
                            let wv = weight[o * depth + (ic * kh + i) * kw + j];
                            if wv != 0 {
                                windows.accumulate_tap(plane, input, wv, i, j);
                            }
                        }
                    }
                }
                let m = r.multipliers[if r.multipliers.len() > 1 { o } else { 0 }];
                for v in plane.iter_mut() {
                    *v = (m.apply(*v) + r.output_zero_point).clamp(r.qmin, r.qmax);
                }
            })
        });
    Tensor::from_data(TensorData::new(y, [n, out, ho, wo]), &device)
}

impl Windows {
    fn new(geometry: &ConvGeometry, input: [usize; 2], output: [usize; 2]) -> Self {
        let pads = geometry.padding_pairs(input[0], input[1]);
        Self {
            input,
            output,
            stride: geometry.stride,
            dilation: geometry.dilation,
            before: [pads[0].0, pads[1].0],
        }
    }

    /// `plane += wv · input` over the outputs that tap `(i, j)` reads inside the input.
    #[inline(always)]
    fn accumulate_tap(&self, plane: &mut [i32], input: &[i32], wv: i32, i: usize, j: usize) {
        let (rows, first_row) = self.valid(0, i);
        let (cols, first_col) = self.valid(1, j);
        let (w, wo) = (self.input[1], self.output[1]);
        let [sh, sw] = self.stride;
        let count = cols.len();
        for (k, oh) in rows.enumerate() {
            let src = &input[(first_row + k * sh) * w..][..w];
            let dst = &mut plane[oh * wo + cols.start..][..count];
            if sw == 1 {
                for (d, &s) in dst.iter_mut().zip(&src[first_col..first_col + count]) {
                    *d += wv * s;
                }
            } else {
                for (d, &s) in dst.iter_mut().zip(src[first_col..].iter().step_by(sw)) {
                    *d += wv * s;
                }
            }
        }
    }
}
