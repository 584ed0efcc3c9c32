//! Integer 2-D convolution: im2col by integer slicing, i32 matmul, fixed-point requantization.

use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Int, Slice, Tensor};

use std::sync::Arc;

use super::packed_conv::{PackedWeights, conv_requantize};
use super::{ConvGeometry, Requantizer, int_max_pool2d, int_relu};
use crate::QParams;
use crate::backend::{host_i32, is_host_device};

/// A frozen convolution on the integer grid: any stride, padding, dilation and groups.
///
/// The input is padded with its zero point (the integer that stands for the real 0 the float
/// convolution pads with), so padded taps contribute nothing to the accumulator. Built with
/// [`IntConv2d::new`], which packs the weights once for the CPU backends' 16-bit route.
///
/// # Shapes
/// - input: `[n, in, h, w]` (integers on the input grid)
/// - output: `[n, out, h', w']` (integers on the output grid)
#[derive(Debug, Clone)]
pub struct IntConv2d {
    /// `q_w - Z_w`, shape `[groups, out / groups, (in / groups) · kh · kw]`.
    pub weight: Tensor<3, Int>,
    /// Bias on the accumulator grid (scale `Si·Sw`, zero point 0), shape `[out]`.
    pub bias: Tensor<1, Int>,
    /// Input zero point `Zi`.
    pub input_zero_point: i32,
    /// Kernel, stride, padding, dilation.
    pub geometry: ConvGeometry,
    /// Output requantization.
    pub requantizer: Requantizer,
    /// Parameters of the output grid.
    pub output: QParams,
    /// The weights and bias packed for the host route (CPU backends, operands within 16 bits).
    packed: Option<Arc<PackedWeights>>,
}

impl IntConv2d {
    /// A frozen convolution of `weight` (`[groups, out / groups, (in / groups) · kh · kw]`,
    /// the values `q_w − Z_w`) and `bias` (`[out]`, on the accumulator grid); on the CPU
    /// backends the weights are packed here, once, for [`IntConv2d::forward`].
    pub fn new(
        weight: Tensor<3, Int>,
        bias: Tensor<1, Int>,
        input_zero_point: i32,
        geometry: ConvGeometry,
        requantizer: Requantizer,
        output: QParams,
    ) -> Self {
        let packed = is_host_device(&weight.device())
            .then(|| {
                let depth = weight.dims()[2];
                let values = host_i32(weight.clone());
                PackedWeights::new(&values, depth, host_i32(bias.clone()).to_vec())
            })
            .flatten()
            .map(Arc::new);
        Self {
            weight,
            bias,
            input_zero_point,
            geometry,
            requantizer,
            output,
            packed,
        }
    }

    /// Output size `[h', w']` for an input of `h × w`.
    ///
    /// # Panics
    /// When the dilated kernel does not fit into the padded input (Burn's own convolution
    /// rejects such inputs as well).
    pub fn output_size(&self, h: usize, w: usize) -> [usize; 2] {
        self.geometry.output_size(h, w).unwrap_or_else(|| {
            panic!(
                "input {h}x{w} is smaller than the kernel of {:?}",
                self.geometry
            )
        })
    }

    /// The i32 accumulators `Σ (q_w - Z_w)(q_x - Z_i) + q_b`, shape `[n, out, h', w']`.
    ///
    /// Large batches are processed in chunks whose im2col matrix stays under 64 MiB (GPU
    /// buffers have size limits).
    pub fn accumulate(&self, q: Tensor<4, Int>) -> Tensor<4, Int> {
        let [n, c, h, w] = q.dims();
        let [kh, kw] = self.geometry.kernel_size;
        let [ho, wo] = self.output_size(h, w);
        let per_image = c * kh * kw * ho * wo * 4;
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
        let [n, _, h, w] = q.dims();
        let ConvGeometry {
            kernel_size: [kh, kw],
            stride: [sh, sw],
            dilation: [dh, dw],
            ..
        } = self.geometry;
        let [ho, wo] = self.output_size(h, w);
        let [groups, out_per_group, depth] = self.weight.dims();
        let pads = self.geometry.padding_pairs(h, w);
        // Real 0 is the zero point: after subtracting it, padding is with integer 0.
        let x = q - self.input_zero_point;
        let x = if pads == [(0, 0), (0, 0)] {
            x
        } else {
            x.pad(pads, PadMode::Constant(0.0))
        };
        let window = |start: usize, step: usize, count: usize| {
            let end = start + (count - 1) * step + 1;
            Slice::new(start as isize, Some(end as isize), step as isize)
        };
        let mut taps = Vec::with_capacity(kh * kw);
        for i in 0..kh {
            for j in 0..kw {
                taps.push(x.clone().slice([
                    Slice::full(),
                    Slice::full(),
                    window(i * dh, sh, ho),
                    window(j * dw, sw, wo),
                ]));
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

    /// Convolution followed by requantization to the output grid: on the CPU backends the
    /// 16-bit route on the host (when weights and input fit in it), elsewhere
    /// [`IntConv2d::forward_with_tensor_ops`]. Both give the same integers.
    pub fn forward(&self, q: Tensor<4, Int>) -> Tensor<4, Int> {
        self.forward_fused(q, ConvEpilogue::default())
    }

    /// [`IntConv2d::forward`], then what `epilogue` says: the output clamped below at its
    /// floor (a ReLU), then max-pooled. On the CPU backends' 16-bit route both run inside the
    /// convolution (the accumulators are pooled, then requantized), elsewhere as separate
    /// ops ([`int_relu`], [`int_max_pool2d`]); the integers are the same.
    pub fn forward_fused(&self, q: Tensor<4, Int>, epilogue: ConvEpilogue) -> Tensor<4, Int> {
        match &self.packed {
            Some(packed) if is_host_device(&q.device()) => {
                conv_requantize(self, packed, q, epilogue)
                    .unwrap_or_else(|q| self.fused_with_tensor_ops(*q, epilogue))
            }
            _ => self.fused_with_tensor_ops(q, epilogue),
        }
    }

    /// Whether [`IntConv2d::forward_fused`] runs as one kernel on `device` (a CPU backend,
    /// weights within 16 bits).
    pub fn fuses_on(&self, device: &Device) -> bool {
        self.packed.is_some() && is_host_device(device)
    }

    /// [`IntConv2d::forward_fused`] as separate ops.
    fn fused_with_tensor_ops(&self, q: Tensor<4, Int>, epilogue: ConvEpilogue) -> Tensor<4, Int> {
        let q = self.forward_with_tensor_ops(q);
        let q = match epilogue.floor > self.requantizer.qmin {
            true => int_relu(q, epilogue.floor),
            false => q,
        };
        match epilogue.max_pool {
            Some(kernel) => int_max_pool2d(q, kernel),
            None => q,
        }
    }

    /// Convolution and requantization composed of Burn tensor ops (runs on every backend).
    pub fn forward_with_tensor_ops(&self, q: Tensor<4, Int>) -> Tensor<4, Int> {
        self.requantizer
            .apply_with_tensor_ops(self.accumulate(q), 1)
    }
}

/// What follows an [`IntConv2d`] in [`IntConv2d::forward_fused`]: a floor (a ReLU: the output
/// zero point), then non-overlapping max-pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvEpilogue {
    /// The lowest output integer (`i32::MIN`: only the grid's own minimum).
    pub floor: i32,
    /// Max-pooling with this kernel and stride (no padding, odd sizes floored).
    pub max_pool: Option<usize>,
}

impl Default for ConvEpilogue {
    /// Neither a floor nor pooling.
    fn default() -> Self {
        Self {
            floor: i32::MIN,
            max_pool: None,
        }
    }
}
