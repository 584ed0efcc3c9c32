//! Integer 2-D convolution: im2col by integer slicing, i32 matmul, fixed-point requantization.

use burn::tensor::{Int, Tensor};

use super::Requantizer;
use super::host_conv::{conv_requantize, is_host_device};
use crate::QParams;

/// A frozen convolution on the integer grid (stride 1, no padding, no dilation; grouped allowed).
#[derive(Debug, Clone)]
pub struct IntConv2d {
    /// `q_w - Z_w`, shape `[groups, out / groups, (in / groups) · kh · kw]`.
    pub weight: Tensor<3, Int>,
    /// Bias on the accumulator grid (scale `Si·Sw`, zero point 0), shape `[out]`.
    pub bias: Tensor<1, Int>,
    /// Input zero point `Zi`.
    pub input_zero_point: i32,
    /// Kernel size `[kh, kw]`.
    pub kernel_size: [usize; 2],
    /// Output requantization.
    pub requantizer: Requantizer,
    /// Parameters of the output grid.
    pub output: QParams,
}

impl IntConv2d {
    /// The i32 accumulators `Σ (q_w - Z_w)(q_x - Z_i) + q_b`, shape `[n, out, h', w']`.
    ///
    /// Large batches are processed in chunks whose im2col matrix stays under 64 MiB (GPU
    /// buffers have size limits).
    pub fn accumulate(&self, q: Tensor<4, Int>) -> Tensor<4, Int> {
        let [n, c, h, w] = q.dims();
        let [kh, kw] = self.kernel_size;
        let per_image = c * kh * kw * (h + 1 - kh) * (w + 1 - kw) * 4;
        let chunk = ((64 << 20) / per_image.max(1)).max(1);
        if n <= chunk {
            return self.accumulate_chunk(q);
        }
        let parts = (0..n)
            .step_by(chunk)
            .map(|start| self.accumulate_chunk(q.clone().narrow(0, start, chunk.min(n - start))))
            .collect();
        Tensor::cat(parts, 0)
    }

    fn accumulate_chunk(&self, q: Tensor<4, Int>) -> Tensor<4, Int> {
        let [n, c, h, w] = q.dims();
        let [kh, kw] = self.kernel_size;
        let [groups, out_per_group, depth] = self.weight.dims();
        let (ho, wo) = (h + 1 - kh, w + 1 - kw);
        let x = q - self.input_zero_point;
        let mut taps = Vec::with_capacity(kh * kw);
        for i in 0..kh {
            for j in 0..kw {
                taps.push(x.clone().slice([0..n, 0..c, i..i + ho, j..j + wo]));
            }
        }
        // [n, c, kh·kw, ho, wo] → [n, groups, (c / groups)·kh·kw, ho·wo]
        let patches = Tensor::<4, Int>::stack::<5>(taps, 2).reshape([n, groups, depth, ho * wo]);
        let weight = self
            .weight
            .clone()
            .unsqueeze::<4>()
            .expand([n, groups, out_per_group, depth]);
        let acc = weight
            .matmul(patches)
            .reshape([n, groups * out_per_group, ho, wo]);
        acc + self.bias.clone().reshape([1, groups * out_per_group, 1, 1])
    }

    /// Convolution followed by requantization to the output grid: on the CPU backends a
    /// direct convolution with fused requantization on the host, elsewhere
    /// [`IntConv2d::forward_with_tensor_ops`]. Both give the same integers.
    pub fn forward(&self, q: Tensor<4, Int>) -> Tensor<4, Int> {
        if is_host_device(&q.device()) {
            conv_requantize(self, q)
        } else {
            self.forward_with_tensor_ops(q)
        }
    }

    /// Convolution and requantization composed of Burn tensor ops (runs on every backend).
    pub fn forward_with_tensor_ops(&self, q: Tensor<4, Int>) -> Tensor<4, Int> {
        self.requantizer.apply(self.accumulate(q), 1)
    }
}
