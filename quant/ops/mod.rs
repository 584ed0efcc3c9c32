//! Tensor operations that burn-quant computes faster than Burn's generic kernels on the CPU
//! backends, as backend extensions with their own backward passes.
//!
//! - [`conv2d`]: direct 2-D convolution (no im2col, no loop over groups with slices) for Flex
//!   and NdArray, forward and the three gradients; on the CubeCL backends a grouped
//!   convolution is one launch per pass for all groups, an ungrouped one Burn's
//!   [`burn::tensor::module::conv2d`], which is also the test oracle.
//! - [`max_pool2d`]: direct 2-D max-pooling that keeps each window's argmax for its backward
//!   pass, for Flex and NdArray (symmetric padding, floor mode); otherwise Burn's
//!   [`burn::tensor::module::max_pool2d`], the test oracle.

mod conv2d;
mod conv2d_autodiff;
#[cfg(feature = "wgpu")]
mod cube_conv;
mod direct_conv;
mod finite_extremes;
mod host_buffer;
mod max_pool2d;
mod max_pool2d_autodiff;
mod max_pool_kernels;

pub use conv2d::{DirectConvBackend, conv2d};
pub(crate) use direct_conv::ConvDims;
pub(crate) use finite_extremes::finite_extremes;
pub(crate) use host_buffer::{SERIAL_MAX_LEN, zeroed_chunks};
pub use max_pool2d::{HostMaxPoolBackend, max_pool2d};
