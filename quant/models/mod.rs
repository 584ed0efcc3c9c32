//! Reference models, and the traits the PTQ/QAT pipeline is written against.

mod net;
mod net_bn;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use crate::QuantError;
use crate::nn::{QConfig, Quantized};

pub use net::{IntNet, Net, QNet};
pub use net_bn::{IntNetBN, NetBN, QNetBN};

/// A float image classifier that can be wrapped with observers.
pub trait FloatModel: Module + Sized {
    /// Its quantized form.
    type Quantized: QuantizedModel;
    /// A freshly initialised model.
    fn init(device: &Device) -> Self;
    /// Logits `[n, classes]` for images `[n, c, h, w]`.
    fn forward(&self, x: Tensor<4>) -> Tensor<2>;
    /// The quantized model wrapping copies of these layers, with fresh observers.
    fn quantize(&self, qconfig: &QConfig) -> Self::Quantized;
}

/// A model with observers: fake-quantized forward and freezing to the integer engine.
pub trait QuantizedModel: Module + Sized {
    /// Its integer form.
    type Integer: IntegerModel;
    /// Fake-quantized forward returning each weighted layer's output flattened to `[n, -1]`
    /// (the last one holds the logits).
    fn forward_fq_layers(&self, x: Tensor<4>) -> Vec<Quantized<2>>;
    /// Fake-quantized logits (observers update while observing).
    fn forward_fq(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_fq_layers(x).pop().expect("logits").tensor
    }
    /// Freezes into a separate integer model; this model is left untouched.
    fn to_integer(&self) -> Result<Self::Integer, QuantError>;
}

/// A frozen model computing with integers.
pub trait IntegerModel {
    /// Integer outputs of each weighted layer, flattened to `[n, -1]` (last: the logits).
    fn forward_layers(&self, x: Tensor<4>) -> Vec<Tensor<2, Int>>;
    /// Dequantized logits.
    fn forward(&self, x: Tensor<4>) -> Tensor<2>;
}
