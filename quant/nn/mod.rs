//! Quantized layers: ordinary Burn modules with a float forward, a fake-quantized forward
//! (observers update, STE on input, weight and output) and a conversion to integer layers.

mod exact_eval;
pub(crate) mod layer_observers;
mod qconfig;
mod qconv2d;
mod qconv_bn;
mod qlinear;
mod qmaxpool2d;
mod qrelu;
mod quantized;

pub use layer_observers::{FrozenWeights, LayerObservers};
pub use qconfig::QConfig;
pub use qconv_bn::{QConvBn, QConvBnReLU};
pub use qconv2d::QConv2d;
pub use qlinear::QLinear;
pub use qmaxpool2d::QMaxPool2d;
pub use qrelu::QReLU;
pub use quantized::Quantized;
