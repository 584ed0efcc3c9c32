//! Tensor operations that burn-quant computes faster than Burn's generic kernels on the CPU
//! backends, as backend extensions with their own backward passes.
//!
//! - [`conv2d`]: direct 2-D convolution (no im2col, no loop over groups with slices) for Flex
//!   and NdArray, forward and the three gradients; other backends run Burn's
//!   [`burn::tensor::module::conv2d`], which is also the test oracle.

mod conv2d;
mod conv2d_autodiff;
mod direct_conv;

pub use conv2d::{DirectConvBackend, conv2d};
pub(crate) use direct_conv::ConvDims;
