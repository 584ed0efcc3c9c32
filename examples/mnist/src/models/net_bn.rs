//! The seed's `NetBN`: `Net` with BatchNorm after each convolution, folded when quantized.

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, LinearConfig};
use burn::tensor::Device;

use super::MnistModel;
use burn_quant::nn::{QConfig, QConvBn, QLinear, QMaxPool2d, QTensor};

/// conv 1→40 k3 → BN → ReLU → maxpool 2 → conv 40→40 k3 (no groups) → BN → ReLU → maxpool 2 →
/// flatten 1000 → linear 10. Each Conv-BN-ReLU is one [`QConvBn`] (folded, output observed
/// after the ReLU).
#[derive(Module, Debug)]
pub struct NetBN {
    /// First Conv-BN-ReLU.
    pub conv1: QConvBn,
    /// Second Conv-BN-ReLU.
    pub conv2: QConvBn,
    /// Classifier.
    pub fc: QLinear,
    /// 2×2 max-pooling.
    pub pool: QMaxPool2d,
}

impl MnistModel for NetBN {
    fn new(qconfig: &QConfig, device: &Device) -> Self {
        let conv_bn = |channels_in, observe_input| {
            QConvBn::new(
                Conv2dConfig::new([channels_in, 40], [3, 3]).init(device),
                BatchNormConfig::new(40).init(device),
                qconfig,
                observe_input,
                true,
            )
        };
        Self {
            conv1: conv_bn(1, true),
            conv2: conv_bn(40, false),
            fc: QLinear::new(LinearConfig::new(1000, 10).init(device), qconfig, false),
            pool: QMaxPool2d::new(2),
        }
    }

    fn with_integer_logits(self, integer_logits: bool) -> Self {
        Self {
            fc: self.fc.with_integer_output(integer_logits),
            ..self
        }
    }

    fn freeze_bn(self, frozen: bool) -> Self {
        Self {
            conv1: self.conv1.freeze_bn(frozen),
            conv2: self.conv2.freeze_bn(frozen),
            ..self
        }
    }

    fn forward(&self, x: QTensor<4>) -> QTensor<2> {
        let x = self.pool.forward(self.conv1.forward(x));
        let x = self.pool.forward(self.conv2.forward(x));
        self.fc.forward(x.flatten(1, 3))
    }
}
