//! The direct convolution as a Burn backend extension: Flex runs it on its storage, NdArray on
//! a host copy, the CubeCL backends run a grouped one as `cube_conv.rs`'s kernels (`Fusion`
//! records it as a custom op); `Autodiff<B, C>` (`conv2d_autodiff.rs`) computes the gradients
//! with the same kernels.

// `NdArray` is deprecated by Burn but still supported here behind its feature.
#![allow(deprecated)]

#[cfg(feature = "ndarray")]
use burn::backend::ops::FloatTensorOps;
use burn::backend::ops::ModuleOps;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

#[cfg(feature = "wgpu")]
use super::cube_conv::conv2d_output_shape;
use super::direct_conv::{self, ConvDims};
use crate::backend::is_host_device;

/// Backend extension with the direct 2-D convolution and its gradients.
///
/// Every method defaults to Burn's own op ([`ModuleOps::conv2d`] and its backward functions),
/// so a backend without a faster kernel computes exactly what Burn computes.
#[backend_extension(
    Autodiff,
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "wgpu")
)]
pub trait DirectConvBackend: Backend {
    /// `conv2d(x, weight) + bias` (shapes as [`ModuleOps::conv2d`]; a layer without bias
    /// passes zeros).
    #[fusion(dtype = x, shape = conv2d_output_shape(x, weight, options))]
    fn direct_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, Some(bias), options)
    }

    /// The gradient with respect to `x` (only its shape is read) for `output_grad`.
    #[fusion(dtype = x, shape = x)]
    fn direct_conv2d_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, options)
    }

    /// The gradient with respect to `weight` (only its shape is read) for `output_grad`.
    #[fusion(dtype = weight, shape = weight)]
    fn direct_conv2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, options)
    }

    /// The gradient with respect to `bias` (only its shape is read) for `output_grad`.
    #[fusion(default)]
    fn direct_conv2d_bias_backward(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::conv2d_bias_backward(x, bias, output_grad)
    }
}

/// A 2-D convolution, as [`burn::tensor::module::conv2d`] computes it, with burn-quant's
/// direct kernels (forward and backward) on the CPU backends, its CubeCL kernels for a grouped
/// convolution on the GPU backends, and Burn's op for an ungrouped one there.
///
/// # Shapes
/// - x: `[batch, channels_in, height, width]`
/// - weight: `[channels_out, channels_in / groups, kernel_h, kernel_w]`
/// - bias: `[channels_out]`
/// - output: `[batch, channels_out, height_out, width_out]`
///
/// ```
/// use burn::tensor::{Tensor, ops::ConvOptions};
/// use burn_quant::{default_device, ops::conv2d};
/// let device = default_device().unwrap();
/// let x = Tensor::<4>::ones([1, 2, 3, 3], &device);
/// let weight = Tensor::<4>::ones([2, 1, 2, 2], &device);
/// let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 2);
/// let y = conv2d(x, weight, None, options);
/// assert_eq!(y.dims(), [1, 2, 2, 2]);
/// assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), vec![4.0; 8]);
/// ```
///
/// # Panics
/// As Burn's `conv2d`, when the shapes do not make a convolution.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let device = x.device();
    // On the GPU backends Burn's op runs an ungrouped convolution well; a grouped one takes the
    // extension's single launch instead of Burn's loop over the groups.
    if !is_host_device(&device) && options.groups == 1 {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    }
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &device));
    Tensor::from_dispatch(Dispatch::direct_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        options,
    ))
}

/// Host-memory access to a CPU backend's f32 tensors.
pub(super) trait HostSlice: Backend {
    /// Calls `f` with the values of `t` in row-major order.
    fn with_host<R>(t: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R;
    /// A tensor of `shape` holding `values` (the CPU backends have one device).
    fn from_host(values: Vec<f32>, shape: Vec<usize>) -> FloatTensor<Self> {
        Self::float_from_data(TensorData::new(values, shape), &Default::default())
    }
}

/// The result of a CPU backend's tensor read: an `async fn` without an await point, ready at
/// the first poll.
///
/// # Panics
/// When the read is not ready at once or fails (neither happens on Flex or NdArray).
pub(super) fn read_now<E>(
    read: impl std::future::Future<Output = Result<TensorData, E>>,
) -> TensorData {
    let read = std::pin::pin!(read);
    let context = &mut std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(read, context) {
        std::task::Poll::Ready(Ok(data)) => data,
        _ => panic!("a CPU backend's tensor read completes at once"),
    }
}

/// `[usize; 4]` of a rank-4 primitive.
fn dims4<B: Backend>(t: &FloatTensor<B>) -> Option<[usize; 4]> {
    t.shape().as_slice().try_into().ok()
}

/// The sizes of the convolution of `x` with `weight`, when the direct kernels can compute it
/// (f32, rank 4, consistent shapes).
fn plan<B: Backend>(
    x: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    options: &ConvOptions<2>,
) -> Option<ConvDims> {
    let f32 = burn::tensor::DType::F32;
    if x.dtype() != f32 || weight.dtype() != f32 {
        return None;
    }
    ConvDims::new(dims4::<B>(x)?, dims4::<B>(weight)?, options)
}

/// The direct forward pass on a host backend, or `None` where it does not apply.
fn host_forward<B: HostSlice>(
    x: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    bias: &FloatTensor<B>,
    options: &ConvOptions<2>,
) -> Option<FloatTensor<B>> {
    let dims = plan::<B>(x, weight, options)?;
    if bias.dtype() != x.dtype() || bias.shape().num_elements() != dims.out_channels {
        return None;
    }
    let y = B::with_host(x, |xs| {
        B::with_host(weight, |ws| {
            B::with_host(bias, |bs| direct_conv::forward(&dims, xs, ws, bs))
        })
    });
    let [oh, ow] = dims.windows.output;
    Some(B::from_host(y, vec![dims.batch, dims.out_channels, oh, ow]))
}

/// Implements [`DirectConvBackend`] for a backend with host memory.
macro_rules! host_direct_conv {
    ($backend:ty) => {
        impl DirectConvBackend for $backend {
            fn direct_conv2d(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                bias: FloatTensor<Self>,
                options: ConvOptions<2>,
            ) -> FloatTensor<Self> {
                host_forward::<Self>(&x, &weight, &bias, &options)
                    .unwrap_or_else(|| Self::conv2d(x, weight, Some(bias), options))
            }

            fn direct_conv2d_x_backward(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                output_grad: FloatTensor<Self>,
                options: ConvOptions<2>,
            ) -> FloatTensor<Self> {
                match plan::<Self>(&x, &weight, &options) {
                    Some(dims) => {
                        let gx = Self::with_host(&output_grad, |gy| {
                            Self::with_host(&weight, |w| direct_conv::input_grad(&dims, gy, w))
                        });
                        Self::from_host(gx, x.shape().to_vec())
                    }
                    None => Self::conv2d_x_backward(x, weight, output_grad, options),
                }
            }

            fn direct_conv2d_weight_backward(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                output_grad: FloatTensor<Self>,
                options: ConvOptions<2>,
            ) -> FloatTensor<Self> {
                match plan::<Self>(&x, &weight, &options) {
                    Some(dims) => {
                        let gw = Self::with_host(&x, |xs| {
                            Self::with_host(&output_grad, |gy| {
                                direct_conv::weight_grad(&dims, xs, gy)
                            })
                        });
                        Self::from_host(gw, weight.shape().to_vec())
                    }
                    None => Self::conv2d_weight_backward(x, weight, output_grad, options),
                }
            }

            fn direct_conv2d_bias_backward(
                x: FloatTensor<Self>,
                bias: FloatTensor<Self>,
                output_grad: FloatTensor<Self>,
            ) -> FloatTensor<Self> {
                let Some([n, o, h, w]) = dims4::<Self>(&output_grad) else {
                    return Self::conv2d_bias_backward(x, bias, output_grad);
                };
                let gb =
                    Self::with_host(&output_grad, |gy| direct_conv::bias_grad(gy, [n, o, h * w]));
                Self::from_host(gb, vec![o])
            }
        }
    };
}

#[cfg(feature = "flex")]
impl HostSlice for burn::backend::Flex {
    fn with_host<R>(t: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R {
        match t.as_slice::<f32>() {
            Some(values) => f(values),
            None => f(&t.clone().into_data().to_vec::<f32>().expect("f32 tensor")),
        }
    }
}

#[cfg(feature = "flex")]
host_direct_conv!(burn::backend::Flex);

#[cfg(feature = "ndarray")]
impl HostSlice for burn::backend::NdArray {
    fn with_host<R>(t: &FloatTensor<Self>, f: impl FnOnce(&[f32]) -> R) -> R {
        let data = read_now(Self::float_into_data(t.clone()));
        f(data.as_slice::<f32>().expect("f32 tensor"))
    }
}

#[cfg(feature = "ndarray")]
host_direct_conv!(burn::backend::NdArray);
