//! The integer inference engine: frozen layers that compute with i32 tensors only.
//!
//! A frozen layer holds integer weights `q_w - Z_w`, an int32 bias with scale `Si·Sw` and zero
//! point 0, and a [`Requantizer`] holding `M = Si·Sw/So` as a fixed-point `m0 · 2^-31 · 2^-n`.
//! Accumulation is exact in i32. With Burn tensor ops (every backend): im2col by integer
//! slicing (the input padded with its zero point; any stride and dilation), then an integer
//! matmul, then the requantization. On the CPU backends, on the host memory the tensors
//! already live in, convolutions run on 16-bit operand pairs with i32 accumulators (AVX2
//! `madd`) and the requantization fused (`packed_conv.rs`), and requantization is vectorized
//! (`host_requantize.rs`); both routes give the same integers.

mod add;
mod avg_pool;
mod conv;
mod exact_float;
mod fixed_point;
mod geometry;
mod host_requantize;
mod linear;
mod packed_conv;
mod pool;
mod requantizer;

pub use add::IntAdd;
pub use avg_pool::{int_avg_pool2d, int_global_avg_pool2d, round_mean};
pub use conv::{ConvEpilogue, IntConv2d};
pub use exact_float::exact_products;
pub use fixed_point::{FixedPointMultiplier, requantize, requantize_uniform};
pub use geometry::ConvGeometry;
pub use linear::IntLinear;
pub use pool::{int_max_pool2d, int_relu};
pub use requantizer::Requantizer;
