//! A small ResNet-style model (the one of `examples/custom_model.rs`, sized for MNIST).

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::Device;

use super::MnistModel;
use burn_quant::nn::{QAdd, QAvgPool2d, QConfig, QConv2d, QLinear, QReLU, QTensor};

/// Stem conv 1→8 k3 → ReLU → a residual block (conv 8→16 k3 stride 2 → ReLU → conv 16→16 k3,
/// plus a 1×1 stride-2 shortcut 8→16) → add → ReLU → global average pooling → linear 16→10.
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem convolution (observes the input).
    pub stem: QConv2d,
    /// First convolution of the block (stride 2).
    pub block1: QConv2d,
    /// Second convolution of the block.
    pub block2: QConv2d,
    /// 1×1 stride-2 shortcut.
    pub shortcut: QConv2d,
    /// Residual addition.
    pub add: QAdd,
    /// Classifier.
    pub fc: QLinear,
    /// ReLU.
    pub relu: QReLU,
    /// Global average pooling.
    pub pool: QAvgPool2d,
}

impl MnistModel for ResNet {
    fn new(qconfig: &QConfig, device: &Device) -> Self {
        let conv = |[i, o, k, s, p]: [usize; 5]| {
            let conv = Conv2dConfig::new([i, o], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p));
            QConv2d::new(conv.init(device), qconfig, i == 1)
        };
        Self {
            stem: conv([1, 8, 3, 1, 1]),
            block1: conv([8, 16, 3, 2, 1]),
            block2: conv([16, 16, 3, 1, 1]),
            shortcut: conv([8, 16, 1, 2, 0]),
            add: QAdd::new(qconfig, device),
            fc: QLinear::new(LinearConfig::new(16, 10).init(device), qconfig, false),
            relu: QReLU::new(),
            pool: QAvgPool2d::global(),
        }
    }

    fn with_integer_logits(self, integer_logits: bool) -> Self {
        Self {
            fc: self.fc.with_integer_output(integer_logits),
            ..self
        }
    }

    fn forward(&self, x: QTensor<4>) -> QTensor<2> {
        let x = self.relu.forward(self.stem.forward(x));
        let y = self.block1.forward(x.clone());
        let y = self.block2.forward(self.relu.forward(y));
        let x = self
            .relu
            .forward(self.add.forward(y, self.shortcut.forward(x)));
        self.fc.forward(self.pool.forward(x).flatten(1, 3))
    }
}
