//! Direct integer convolution with fused requantization, for the CPU backends (whose tensors
//! already live in host memory): one pass over the input per output plane, i32 accumulators,
//! no im2col copy, both cores.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use super::IntConv2d;
use crate::BackendKind;
use crate::simd::with_avx2;

/// Whether `device` is a CPU backend's, where reading a tensor into host memory is cheap.
pub(crate) fn is_host_device(device: &Device) -> bool {
    [BackendKind::Flex, BackendKind::NdArray]
        .into_iter()
        .any(|kind| kind.is_enabled() && kind.device() == *device)
}

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
    let [kh, kw] = conv.kernel_size;
    let [groups, per_group, depth] = conv.weight.dims();
    let out = groups * per_group;
    let (ho, wo) = (h + 1 - kh, w + 1 - kw);
    let channels_in = c / groups;
    let x = host_i32(q);
    let weight = host_i32(conv.weight.clone());
    let bias = host_i32(conv.bias.clone());
    // Σ w·(x − Zi) + b = Σ w·x + (b − Zi·Σ w): the zero point folds into the offset.
    let zi = conv.input_zero_point;
    let offsets: Vec<i32> = (0..out)
        .map(|o| bias[o] - zi * weight[o * depth..(o + 1) * depth].iter().sum::<i32>())
        .collect();
    let r = &conv.requantizer;
    let mut y = vec![0i32; n * out * ho * wo];
    y.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(task, plane)| {
            with_avx2(|| {
                let (image, o) = (task / out, task % out);
                let group = o / per_group;
                plane.fill(offsets[o]);
                for ic in 0..channels_in {
                    let channel = group * channels_in + ic;
                    let input = &x[(image * c + channel) * h * w..][..h * w];
                    for i in 0..kh {
                        for j in 0..kw {
                            let wv = weight[o * depth + (ic * kh + i) * kw + j];
                            if wv != 0 {
                                accumulate_tap(plane, input, wv, i * w + j, w, ho, wo);
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

/// `plane += wv · input` over the output window starting at `start`.
#[inline(always)]
fn accumulate_tap(
    plane: &mut [i32],
    input: &[i32],
    wv: i32,
    start: usize,
    w: usize,
    ho: usize,
    wo: usize,
) {
    for oh in 0..ho {
        let src = &input[start + oh * w..][..wo];
        let dst = &mut plane[oh * wo..][..wo];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += wv * s;
        }
    }
}
