//! 2-D max-pooling as a Burn backend extension: on Flex and NdArray a direct kernel over host
//! memory that keeps the argmax of every window for the backward pass (`max_pool_kernels.rs`);
//! `Autodiff<B, C>` records those indices and scatters the gradient back with them; other
//! backends run Burn's op.

// `NdArray` is deprecated by Burn but still supported here behind its feature.
#![allow(deprecated)]

use burn::backend::{
    Backend, Dispatch, TensorMetadata, backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{DType, IntDType, Tensor, TensorData};

use super::conv2d::{HostSlice, read_now};
use super::max_pool_kernels::{self, PoolDims};
use crate::backend::is_host_device;

/// Backend extension with 2-D max-pooling (symmetric padding, floor mode) and its backward
/// pass. Every method defaults to Burn's own op, so a backend without a faster kernel computes
/// exactly what Burn computes.
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray")
)]
pub trait HostMaxPoolBackend: Backend {
    /// The pooled output.
    fn host_max_pool2d(x: FloatTensor<Self>, options: MaxPoolOptions<2>) -> FloatTensor<Self> {
        burn_max_pool2d::<Self>(x, options)
    }

    /// The pooled output and, for each output, the index of its maximum in the input plane
    /// (`ih · w + iw`).
    fn host_max_pool2d_with_indices(
        x: FloatTensor<Self>,
        options: MaxPoolOptions<2>,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        burn_max_pool2d_with_indices::<Self>(x, options)
    }

    /// The input gradient: `output_grad` added onto the input positions in `indices`.
    fn host_max_pool2d_backward(
        x: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        indices: IntTensor<Self>,
        options: MaxPoolOptions<2>,
    ) -> FloatTensor<Self> {
        burn_max_pool2d_backward::<Self>(x, output_grad, indices, options)
    }
}

/// Burn's max-pooling (symmetric padding, floor mode).
fn burn_max_pool2d<B: Backend>(x: FloatTensor<B>, options: MaxPoolOptions<2>) -> FloatTensor<B> {
    let padding = options.padding.map(|(begin, _)| begin);
    B::max_pool2d(
        x,
        options.kernel_size,
        options.stride,
        padding,
        options.dilation,
        false,
    )
}

/// Burn's max-pooling with indices (symmetric padding, floor mode).
fn burn_max_pool2d_with_indices<B: Backend>(
    x: FloatTensor<B>,
    options: MaxPoolOptions<2>,
) -> (FloatTensor<B>, IntTensor<B>) {
    let padding = options.padding.map(|(begin, _)| begin);
    let pooled = B::max_pool2d_with_indices(
        x,
        options.kernel_size,
        options.stride,
        padding,
        options.dilation,
        false,
        IntDType::I32,
    );
    (pooled.output, pooled.indices)
}

/// Burn's max-pooling backward pass (symmetric padding, floor mode).
fn burn_max_pool2d_backward<B: Backend>(
    x: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    indices: IntTensor<B>,
    options: MaxPoolOptions<2>,
) -> FloatTensor<B> {
    let padding = options.padding.map(|(begin, _)| begin);
    B::max_pool2d_with_indices_backward(
        x,
        options.kernel_size,
        options.stride,
        padding,
        options.dilation,
        false,
        output_grad,
        indices,
    )
    .x_grad
}

/// 2-D max-pooling, as [`burn::tensor::module::max_pool2d`] computes it, with burn-quant's
/// direct kernels (forward and backward) on the CPU backends for symmetric padding and floor
/// mode; every other case, and every other backend, runs Burn's op.
///
/// # Shapes
/// - x: `[batch, channels, height, width]`
/// - output: `[batch, channels, height_out, width_out]`
///
/// ```
/// use burn::tensor::{Tensor, ops::MaxPoolOptions};
/// use burn_quant::{default_device, ops::max_pool2d};
/// let device = default_device().unwrap();
/// let x = Tensor::<4>::from_floats([[[[1.0, 2.0], [4.0, 3.0]]]], &device);
/// let y = max_pool2d(x, MaxPoolOptions::new([2, 2]));
/// assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), vec![4.0]);
/// ```
///
/// # Panics
/// As Burn's `max_pool2d`, when the window does not fit the padded input.
pub fn max_pool2d(x: Tensor<4>, options: MaxPoolOptions<2>) -> Tensor<4> {
    let symmetric = options.padding.iter().all(|(begin, end)| begin == end);
    if !is_host_device(&x.device()) || options.ceil_mode || !symmetric {
        return burn::tensor::module::max_pool2d(x, options);
    }
    Tensor::from_dispatch(Dispatch::host_max_pool2d(x.into_dispatch(), options))
}

/// The sizes of max-pooling `x`, when the direct kernels can compute it (f32, rank 4, a
/// window that fits).
fn plan<B: Backend>(x: &FloatTensor<B>, options: &MaxPoolOptions<2>) -> Option<PoolDims> {
    if x.dtype() != DType::F32 || options.ceil_mode {
        return None;
    }
    PoolDims::new(x.shape().as_slice().try_into().ok()?, options)
}

/// The argmax indices of a CPU backend, as i32 on the host.
fn host_indices<B: Backend>(t: IntTensor<B>) -> Vec<i32> {
    read_now(B::int_into_data(t))
        .convert::<i32>()
        .to_vec::<i32>()
        .expect("i32 indices")
}

/// An integer tensor of `shape` holding `values` (the CPU backends have one device).
fn indices_from_host<B: Backend>(values: Vec<i32>, shape: Vec<usize>) -> IntTensor<B> {
    B::int_from_data(TensorData::new(values, shape), &Default::default())
}

/// Implements [`HostMaxPoolBackend`] for a backend with host memory.
macro_rules! host_max_pool {
    ($backend:ty) => {
        impl HostMaxPoolBackend for $backend {
            fn host_max_pool2d(
                x: FloatTensor<Self>,
                options: MaxPoolOptions<2>,
            ) -> FloatTensor<Self> {
                match plan::<Self>(&x, &options) {
                    Some(dims) => {
                        let (y, _) = Self::with_host(&x, |xs| max_pool_kernels::forward(&dims, xs));
                        Self::from_host(y, dims.output_shape().to_vec())
                    }
                    None => burn_max_pool2d::<Self>(x, options),
                }
            }

            fn host_max_pool2d_with_indices(
                x: FloatTensor<Self>,
                options: MaxPoolOptions<2>,
            ) -> (FloatTensor<Self>, IntTensor<Self>) {
                let Some(dims) = plan::<Self>(&x, &options) else {
                    return burn_max_pool2d_with_indices::<Self>(x, options);
                };
                let (y, indices) = Self::with_host(&x, |xs| max_pool_kernels::forward(&dims, xs));
                let shape = dims.output_shape().to_vec();
                (
                    Self::from_host(y, shape.clone()),
                    indices_from_host::<Self>(indices, shape),
                )
            }

            fn host_max_pool2d_backward(
                x: FloatTensor<Self>,
                output_grad: FloatTensor<Self>,
                indices: IntTensor<Self>,
                options: MaxPoolOptions<2>,
            ) -> FloatTensor<Self> {
                match plan::<Self>(&x, &options) {
                    Some(dims) => {
                        let indices = host_indices::<Self>(indices);
                        let gx = Self::with_host(&output_grad, |gy| {
                            max_pool_kernels::backward(&dims, gy, &indices)
                        });
                        Self::from_host(gx, x.shape().to_vec())
                    }
                    None => burn_max_pool2d_backward::<Self>(x, output_grad, indices, options),
                }
            }
        }
    };
}

#[cfg(feature = "flex")]
host_max_pool!(burn::backend::Flex);

#[cfg(feature = "ndarray")]
host_max_pool!(burn::backend::NdArray);
