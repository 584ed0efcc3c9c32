//! Quantized layers: ordinary Burn modules with one `forward` on a [`QTensor`], which runs
//! the layer in float, fake-quantized (observers update, STE on input, weight and output) or
//! on the integer engine, as the tensor's [`Mode`] says. The three forms are also available on
//! their own (`forward_float`, `forward_fq`, `to_integer`).

mod bias_correction;
mod deferred_conv;
mod exact_eval;
mod frozen_cache;
pub(crate) mod layer_observers;
mod qadd;
mod qavg_pool;
mod qconfig;
mod qconv2d;
mod qconv_bn;
mod qlinear;
mod qmaxpool2d;
mod qrelu;
mod qtensor;
mod quantized;

pub use bias_correction::InputMean;
pub use deferred_conv::DeferredConv;
pub use layer_observers::{FrozenWeights, LayerObservers};
pub use qadd::{QAdd, QAddConfig};
pub use qavg_pool::QAvgPool2d;
pub use qconfig::QConfig;
pub use qconv_bn::{QConvBn, QConvBnConfig, QConvBnReLU};
pub use qconv2d::{QConv2d, QConv2dConfig};
pub use qlinear::{QLinear, QLinearConfig};
pub use qmaxpool2d::QMaxPool2d;
pub use qrelu::QReLU;
pub use qtensor::{Mode, QTensor, QValue};
pub use quantized::Quantized;
