//! The grouped 2-D convolution on the CubeCL backends: the forward pass and the input and
//! weight gradients, each one launch for all groups (Burn's own op loops over the groups, with
//! slices around each launch). One unit per output value, summing over its group's input
//! channels and kernel taps; NCHW, contiguous.

use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Shape;
use burn::tensor::ops::ConvOptions;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, kernel::into_contiguous, ops::numeric::empty_device_dtype};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use super::conv2d::DirectConvBackend;
use super::direct_conv::ConvDims;

/// `output[n, o, y, x] = bias[o] + Σ_{c, i, j} x[n, g·depth + c, y·s + i·d − p, …] ·
/// weight[o, c, i, j]` over the group `g` of `o` (taps in the padding contribute 0).
#[cube(launch)]
fn conv2d_forward_kernel<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    output: &mut Tensor<F>,
    stride_h: usize,
    stride_w: usize,
    pad_top: usize,
    pad_left: usize,
    dilation_h: usize,
    dilation_w: usize,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let (out_channels, out_h, out_w) = (output.shape(1), output.shape(2), output.shape(3));
    let (channels, h, w) = (x.shape(1), x.shape(2), x.shape(3));
    let (depth, kh, kw) = (weight.shape(1), weight.shape(2), weight.shape(3));
    let ox = pos % out_w;
    let oy = (pos / out_w) % out_h;
    let o = (pos / (out_w * out_h)) % out_channels;
    let n = pos / (out_w * out_h * out_channels);
    let group = o / (out_channels / (channels / depth));
    let mut sum = bias[o];
    for c in 0..depth {
        let plane = (n * channels + group * depth + c) * h * w;
        let taps = (o * depth + c) * kh * kw;
        for i in 0..kh {
            // Row in padded coordinates.
            let iy = oy * stride_h + i * dilation_h;
            if iy >= pad_top && iy < h + pad_top {
                let row = plane + (iy - pad_top) * w;
                for j in 0..kw {
                    let ix = ox * stride_w + j * dilation_w;
                    if ix >= pad_left && ix < w + pad_left {
                        sum += x[row + ix - pad_left] * weight[taps + i * kw + j];
                    }
                }
            }
        }
    }
    output[pos] = sum;
}

/// `input_grad[n, c, y, x] = Σ_{o, i, j} grad[n, o, oy, ox] · weight[o, c mod depth, i, j]`
/// over the output channels `o` of the group of `c` and the taps that read `(y, x)` from output
/// `(oy, ox)`.
// `%` is what CubeCL's kernel language translates (it has no `is_multiple_of`).
#[allow(clippy::manual_is_multiple_of)]
#[cube(launch)]
fn conv2d_input_grad_kernel<F: Float>(
    grad: &Tensor<F>,
    weight: &Tensor<F>,
    input_grad: &mut Tensor<F>,
    stride_h: usize,
    stride_w: usize,
    pad_top: usize,
    pad_left: usize,
    dilation_h: usize,
    dilation_w: usize,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= input_grad.len() {
        terminate!();
    }
    let (channels, h, w) = (
        input_grad.shape(1),
        input_grad.shape(2),
        input_grad.shape(3),
    );
    let (out_channels, out_h, out_w) = (grad.shape(1), grad.shape(2), grad.shape(3));
    let (depth, kh, kw) = (weight.shape(1), weight.shape(2), weight.shape(3));
    let x = pos % w;
    let y = (pos / w) % h;
    let channel = (pos / (w * h)) % channels;
    let n = pos / (w * h * channels);
    let per_group = out_channels / (channels / depth);
    let (group, c) = (channel / depth, channel % depth);
    let (py, px) = (y + pad_top, x + pad_left);
    let mut sum = F::new(0.0);
    for k in 0..per_group {
        let o = group * per_group + k;
        let plane = (n * out_channels + o) * out_h * out_w;
        let taps = (o * depth + c) * kh * kw;
        for i in 0..kh {
            let dy = i * dilation_h;
            if py >= dy && (py - dy) % stride_h == 0 && (py - dy) / stride_h < out_h {
                let row = plane + (py - dy) / stride_h * out_w;
                for j in 0..kw {
                    let dx = j * dilation_w;
                    if px >= dx && (px - dx) % stride_w == 0 && (px - dx) / stride_w < out_w {
                        let ox = (px - dx) / stride_w;
                        sum += grad[row + ox] * weight[taps + i * kw + j];
                    }
                }
            }
        }
    }
    input_grad[pos] = sum;
}

/// `weight_grad[o, c, i, j] = Σ_{n, oy, ox} grad[n, o, oy, ox] · x[n, g·depth + c, oy·s + i·d −
/// p, …]` (taps in the padding contribute 0).
#[cube(launch)]
fn conv2d_weight_grad_kernel<F: Float>(
    x: &Tensor<F>,
    grad: &Tensor<F>,
    weight_grad: &mut Tensor<F>,
    stride_h: usize,
    stride_w: usize,
    pad_top: usize,
    pad_left: usize,
    dilation_h: usize,
    dilation_w: usize,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= weight_grad.len() {
        terminate!();
    }
    let (depth, kh, kw) = (
        weight_grad.shape(1),
        weight_grad.shape(2),
        weight_grad.shape(3),
    );
    let (batch, channels, h, w) = (x.shape(0), x.shape(1), x.shape(2), x.shape(3));
    let (out_channels, out_h, out_w) = (grad.shape(1), grad.shape(2), grad.shape(3));
    let j = pos % kw;
    let i = (pos / kw) % kh;
    let c = (pos / (kw * kh)) % depth;
    let o = pos / (kw * kh * depth);
    let group = o / (out_channels / (channels / depth));
    let mut sum = F::new(0.0);
    for n in 0..batch {
        let plane = (n * channels + group * depth + c) * h * w;
        let out_plane = (n * out_channels + o) * out_h * out_w;
        for oy in 0..out_h {
            let iy = oy * stride_h + i * dilation_h;
            if iy >= pad_top && iy < h + pad_top {
                let row = plane + (iy - pad_top) * w;
                let out_row = out_plane + oy * out_w;
                for ox in 0..out_w {
                    let ix = ox * stride_w + j * dilation_w;
                    if ix >= pad_left && ix < w + pad_left {
                        sum += grad[out_row + ox] * x[row + ix - pad_left];
                    }
                }
            }
        }
    }
    weight_grad[pos] = sum;
}

/// The shape of `conv2d(x, weight, options)`: `[n, out_channels, out_h, out_w]` (the output
/// planes as Burn computes them; empty planes where the shapes do not make a convolution, which
/// the op then reports).
pub(crate) fn conv2d_output_shape(x: &Shape, weight: &Shape, options: &ConvOptions<2>) -> Shape {
    let dims = |s: &Shape| <[usize; 4]>::try_from(s.as_slice()).ok();
    let plane = dims(x)
        .zip(dims(weight))
        .and_then(|(x, weight)| ConvDims::new(x, weight, options))
        .map_or([0, 0], |dims| dims.windows.output);
    let batch = x.as_slice().first().copied().unwrap_or(0);
    let out_channels = weight.as_slice().first().copied().unwrap_or(0);
    Shape::from([batch, out_channels, plane[0], plane[1]])
}

/// A new tensor of `shape` beside `like` (its client, device and dtype), filled by `launch`
/// with the cube count and size that give one unit per value (not called when it is empty).
fn one_unit_per_value(
    like: &CubeTensor,
    shape: Shape,
    launch: impl FnOnce(CubeCount, CubeDim, &CubeTensor),
) -> CubeTensor {
    let output = empty_device_dtype(like.client.clone(), like.device.clone(), shape, like.dtype);
    let count = output.meta.shape().num_elements();
    if count > 0 {
        let cube_dim = CubeDim::new(&like.client, count);
        let cube_count = calculate_cube_count_elemwise(&like.client, count, cube_dim);
        launch(cube_count, cube_dim, &output);
    }
    output
}

impl DirectConvBackend for CubeBackend {
    fn direct_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        if options.groups == 1 {
            return Self::conv2d(x, weight, Some(bias), options);
        }
        let shape = conv2d_output_shape(&x.shape(), &weight.shape(), &options);
        let [x, weight, bias] = [x, weight, bias].map(into_contiguous);
        one_unit_per_value(&x, shape, |cube_count, cube_dim, output| {
            conv2d_forward_kernel::launch(
                &x.client,
                cube_count,
                cube_dim,
                x.clone().into_tensor_arg(),
                weight.into_tensor_arg(),
                bias.into_tensor_arg(),
                output.clone().into_tensor_arg(),
                options.stride[0],
                options.stride[1],
                options.padding[0].0,
                options.padding[1].0,
                options.dilation[0],
                options.dilation[1],
                dtype_to_storage_type(x.dtype),
            )
        })
    }

    fn direct_conv2d_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        if options.groups == 1 {
            return Self::conv2d_x_backward(x, weight, output_grad, options);
        }
        let [weight, grad] = [weight, output_grad].map(into_contiguous);
        one_unit_per_value(&grad, x.shape(), |cube_count, cube_dim, input_grad| {
            conv2d_input_grad_kernel::launch(
                &grad.client,
                cube_count,
                cube_dim,
                grad.clone().into_tensor_arg(),
                weight.into_tensor_arg(),
                input_grad.clone().into_tensor_arg(),
                options.stride[0],
                options.stride[1],
                options.padding[0].0,
                options.padding[1].0,
                options.dilation[0],
                options.dilation[1],
                dtype_to_storage_type(grad.dtype),
            )
        })
    }

    fn direct_conv2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        if options.groups == 1 {
            return Self::conv2d_weight_backward(x, weight, output_grad, options);
        }
        let [x, grad] = [x, output_grad].map(into_contiguous);
        one_unit_per_value(&x, weight.shape(), |cube_count, cube_dim, weight_grad| {
            conv2d_weight_grad_kernel::launch(
                &x.client,
                cube_count,
                cube_dim,
                x.clone().into_tensor_arg(),
                grad.into_tensor_arg(),
                weight_grad.clone().into_tensor_arg(),
                options.stride[0],
                options.stride[1],
                options.padding[0].0,
                options.padding[1].0,
                options.dilation[0],
                options.dilation[1],
                dtype_to_storage_type(x.dtype),
            )
        })
    }
}
