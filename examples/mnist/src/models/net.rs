//! The reference CNN (`Net`).

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::Device;

use super::MnistModel;
use burn_quant::nn::{QConfig, QConv2d, QLinear, QMaxPool2d, QReLU, QTensor};

/// The seed's MNIST CNN: conv 1→40 k3 → ReLU → maxpool 2 → conv 40→40 k3 groups 20 → ReLU →
/// maxpool 2 → flatten 1000 → linear 10 (11,170 parameters). conv1 observes the input; conv2
/// and fc take the previous output's grid; conv outputs are observed before the ReLU, as in
/// the reference.
#[derive(Module, Debug)]
pub struct Net {
    /// First convolution.
    pub conv1: QConv2d,
    /// Grouped second convolution.
    pub conv2: QConv2d,
    /// Classifier.
    pub fc: QLinear,
    /// ReLU.
    pub relu: QReLU,
    /// 2×2 max-pooling.
    pub pool: QMaxPool2d,
}

impl MnistModel for Net {
    fn new(qconfig: &QConfig, device: &Device) -> Self {
        Self {
            conv1: QConv2d::new(
                Conv2dConfig::new([1, 40], [3, 3]).init(device),
                qconfig,
                true,
            ),
            conv2: QConv2d::new(
                Conv2dConfig::new([40, 40], [3, 3])
                    .with_groups(20)
                    .init(device),
                qconfig,
                false,
            ),
            fc: QLinear::new(LinearConfig::new(1000, 10).init(device), qconfig, false),
            relu: QReLU::new(),
            pool: QMaxPool2d::new(2),
        }
    }

    /// ReLU and max-pooling commute (both are monotone, exactly so on a grid): pooling first
    /// leaves the ReLU a quarter of the values.
    fn with_integer_logits(self, integer_logits: bool) -> Self {
        Self {
            fc: self.fc.with_integer_output(integer_logits),
            ..self
        }
    }

    fn forward(&self, x: QTensor<4>) -> QTensor<2> {
        let x = self.relu.forward(self.pool.forward(self.conv1.forward(x)));
        let x = self.relu.forward(self.pool.forward(self.conv2.forward(x)));
        self.fc.forward(x.flatten(1, 3))
    }
}
