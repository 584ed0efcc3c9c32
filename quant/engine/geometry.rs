//! The geometry of a 2-D convolution (kernel, stride, padding, dilation), shared by the
//! fake-quantized layer and the integer engine so that both compute the same windows.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::ops::ConvOptions;

use crate::windows::output_extent;

/// Kernel size, stride, padding and dilation of a convolution (the groups are in the weight's
/// shape). Padding follows Burn's [`Conv2d`]: `Same` is computed from the input size and may be
/// asymmetric (the extra row or column at the end).
#[derive(Debug, Clone, PartialEq)]
pub struct ConvGeometry {
    /// `[kh, kw]`.
    pub kernel_size: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Padding as configured on the float layer.
    pub padding: PaddingConfig2d,
}

impl ConvGeometry {
    /// A `kernel_size` kernel with stride 1, dilation 1 and no padding.
    pub fn valid(kernel_size: [usize; 2]) -> Self {
        Self {
            kernel_size,
            stride: [1, 1],
            dilation: [1, 1],
            padding: PaddingConfig2d::Valid,
        }
    }

    /// The geometry of `conv`.
    pub fn of(conv: &Conv2d) -> Self {
        Self {
            kernel_size: conv.kernel_size,
            stride: conv.stride,
            dilation: conv.dilation,
            padding: conv.padding.clone(),
        }
    }

    /// Padding `[(top, bottom), (left, right)]` for an input of `h × w`, as Burn's `Conv2d`
    /// computes it.
    pub fn padding_pairs(&self, h: usize, w: usize) -> [(usize, usize); 2] {
        match self.padding {
            PaddingConfig2d::Valid => [(0, 0), (0, 0)],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
            PaddingConfig2d::Same => [
                same_padding(self.kernel_size[0], self.stride[0], h),
                same_padding(self.kernel_size[1], self.stride[1], w),
            ],
        }
    }

    /// Output size `[ho, wo]` for an input of `h × w`; `None` when the dilated kernel does
    /// not fit into the padded input.
    pub fn output_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let pads = self.padding_pairs(h, w);
        let size = |d: usize, n: usize| {
            output_extent(
                n,
                pads[d],
                self.kernel_size[d],
                self.stride[d],
                self.dilation[d],
            )
        };
        Some([size(0, h)?, size(1, w)?])
    }

    /// Burn's convolution options for an input of `h × w`.
    pub fn options(&self, groups: usize, h: usize, w: usize) -> ConvOptions<2> {
        ConvOptions::new_with_padding(self.stride, self.padding_pairs(h, w), self.dilation, groups)
    }
}

/// `Same` padding `(begin, end)` of one dimension, as Burn computes it.
fn same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = if out > 0 {
        ((out - 1) * stride + kernel).saturating_sub(size)
    } else {
        0
    };
    (total / 2, total - total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(
        kernel: usize,
        stride: usize,
        dilation: usize,
        padding: PaddingConfig2d,
    ) -> ConvGeometry {
        ConvGeometry {
            kernel_size: [kernel; 2],
            stride: [stride; 2],
            dilation: [dilation; 2],
            padding,
        }
    }

    #[test]
    fn output_sizes() {
        let valid = geometry(3, 1, 1, PaddingConfig2d::Valid);
        assert_eq!(valid.output_size(28, 28), Some([26, 26]));
        let strided = geometry(3, 2, 1, PaddingConfig2d::Explicit(1, 1, 1, 1));
        assert_eq!(strided.output_size(8, 7), Some([4, 4]));
        let dilated = geometry(3, 1, 2, PaddingConfig2d::Valid);
        assert_eq!(dilated.output_size(5, 6), Some([1, 2]));
        assert_eq!(dilated.output_size(4, 6), None);
        let asymmetric = geometry(2, 1, 1, PaddingConfig2d::Explicit(0, 1, 1, 0));
        assert_eq!(asymmetric.padding_pairs(4, 4), [(0, 1), (1, 0)]);
        assert_eq!(asymmetric.output_size(4, 4), Some([4, 4]));
    }

    #[test]
    fn same_padding_keeps_the_size_and_puts_the_odd_pixel_last() {
        let same = geometry(4, 1, 1, PaddingConfig2d::Same);
        assert_eq!(same.padding_pairs(9, 9), [(1, 2), (1, 2)]);
        assert_eq!(same.output_size(9, 9), Some([9, 9]));
        let strided = geometry(3, 2, 1, PaddingConfig2d::Same);
        assert_eq!(strided.output_size(7, 8), Some([4, 4]));
    }
}
