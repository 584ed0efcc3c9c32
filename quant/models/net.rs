//! The reference CNN (`Net`), its quantized form (`QNet`) and its integer form (`IntNet`).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use super::{FloatModel, IntegerModel, QuantizedModel};
use crate::engine::{IntConv2d, IntLinear, int_max_pool2d, int_relu};
use crate::nn::{QConfig, QConv2d, QLinear, QMaxPool2d, QReLU, Quantized};
use crate::{QParams, QuantError, dequantize, quantize};

/// The seed's MNIST CNN: conv 1→40 k3 → ReLU → maxpool 2 → conv 40→40 k3 groups 20 → ReLU →
/// maxpool 2 → flatten 1000 → linear 10 (11,170 parameters).
#[derive(Module, Debug)]
pub struct Net {
    /// First convolution.
    pub conv1: Conv2d,
    /// Grouped second convolution.
    pub conv2: Conv2d,
    /// Classifier.
    pub fc: Linear,
}

impl Net {
    /// A freshly initialised model (PyTorch-style Kaiming-uniform initialisation).
    pub fn new(device: &Device) -> Self {
        Self {
            conv1: Conv2dConfig::new([1, 40], [3, 3]).init(device),
            conv2: Conv2dConfig::new([40, 40], [3, 3])
                .with_groups(20)
                .init(device),
            fc: LinearConfig::new(1000, 10).init(device),
        }
    }

    /// Logits `[n, 10]` for images `[n, 1, 28, 28]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let (pool, relu) = (QMaxPool2d::new(2), QReLU::new());
        let x = pool.forward(relu.forward(self.conv1.forward(x)));
        let x = pool.forward(relu.forward(self.conv2.forward(x)));
        self.fc.forward(x.flatten(1, 3))
    }
}

impl FloatModel for Net {
    type Quantized = QNet;

    fn init(device: &Device) -> Self {
        Self::new(device)
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        Net::forward(self, x)
    }

    fn quantize(&self, qconfig: &QConfig) -> QNet {
        QNet {
            conv1: QConv2d::new(self.conv1.clone(), qconfig, true),
            conv2: QConv2d::new(self.conv2.clone(), qconfig, false),
            fc: QLinear::new(self.fc.clone(), qconfig, false),
            relu: QReLU::new(),
            pool: QMaxPool2d::new(2),
        }
    }
}

/// `Net` with observers: conv1 observes its input; conv2 and fc take the previous output's grid.
/// Conv outputs are observed before ReLU, as in the reference.
#[derive(Module, Debug)]
pub struct QNet {
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

impl QNet {
    /// The float layers (sharing their parameters), e.g. after QAT.
    pub fn float_model(&self) -> Net {
        Net {
            conv1: self.conv1.conv.clone(),
            conv2: self.conv2.conv.clone(),
            fc: self.fc.linear.clone(),
        }
    }
}

impl QuantizedModel for QNet {
    type Integer = IntNet;

    fn forward_fq_layers(&self, x: Tensor<4>) -> Vec<Quantized<2>> {
        let flat = |q: &Quantized<4>| q.clone().map(|t| t.flatten::<2>(1, 3));
        let c1 = self.conv1.forward_fq(Quantized::float(x));
        let x = self.pool.forward_fq(self.relu.forward_fq(c1.clone()));
        let c2 = self.conv2.forward_fq(x);
        let x = self.pool.forward_fq(self.relu.forward_fq(c2.clone()));
        let fc = self.fc.forward_fq(x.map(|t| t.flatten(1, 3)));
        vec![flat(&c1), flat(&c2), fc]
    }

    fn to_integer(&self) -> Result<IntNet, QuantError> {
        let conv1 = self.conv1.to_integer(None)?;
        let conv2 = self.conv2.to_integer(Some(&conv1.output))?;
        let fc = self.fc.to_integer(Some(&conv2.output))?;
        let input = self.conv1.observers.input_qparams(None)?;
        Ok(IntNet {
            input,
            conv1,
            conv2,
            fc,
        })
    }
}

/// `Net` on the integer grid: quantize the input once, then i32 arithmetic only, dequantize
/// the logits at the end.
#[derive(Debug, Clone)]
pub struct IntNet {
    /// Grid of the input images.
    pub input: QParams,
    /// First convolution.
    pub conv1: IntConv2d,
    /// Grouped second convolution.
    pub conv2: IntConv2d,
    /// Classifier.
    pub fc: IntLinear,
}

impl IntegerModel for IntNet {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let q = self.forward_layers(x).pop().expect("fc output");
        dequantize(q, &self.fc.output)
    }

    fn forward_layers(&self, x: Tensor<4>) -> Vec<Tensor<2, Int>> {
        // ReLU and max-pooling commute (both are monotone): pooling first leaves the ReLU a
        // quarter of the values.
        let relu_pool = |q: Tensor<4, Int>, conv: &IntConv2d| {
            int_relu(int_max_pool2d(q, 2), conv.requantizer.output_zero_point)
        };
        let c1 = self.conv1.forward(quantize(x, &self.input));
        let c2 = self.conv2.forward(relu_pool(c1.clone(), &self.conv1));
        let fc = self
            .fc
            .forward(relu_pool(c2.clone(), &self.conv2).flatten(1, 3));
        vec![c1.flatten(1, 3), c2.flatten(1, 3), fc]
    }
}
