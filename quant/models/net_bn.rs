//! The seed's `NetBN`: `Net` with BatchNorm after each convolution, folded when quantized.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use super::{FloatModel, IntegerModel, QuantizedModel};
use crate::engine::{IntConv2d, IntLinear, int_max_pool2d};
use crate::nn::{QConfig, QConvBn, QLinear, QMaxPool2d, QReLU, Quantized};
use crate::{QParams, QuantError, dequantize, quantize};

/// conv 1→40 k3 → BN → ReLU → maxpool 2 → conv 40→40 k3 (no groups) → BN → ReLU → maxpool 2 →
/// flatten 1000 → linear 10.
#[derive(Module, Debug)]
pub struct NetBN {
    /// First convolution.
    pub conv1: Conv2d,
    /// Its BatchNorm.
    pub bn1: BatchNorm,
    /// Second convolution.
    pub conv2: Conv2d,
    /// Its BatchNorm.
    pub bn2: BatchNorm,
    /// Classifier.
    pub fc: Linear,
}

impl FloatModel for NetBN {
    type Quantized = QNetBN;

    fn init(device: &Device) -> Self {
        Self {
            conv1: Conv2dConfig::new([1, 40], [3, 3]).init(device),
            bn1: BatchNormConfig::new(40).init(device),
            conv2: Conv2dConfig::new([40, 40], [3, 3]).init(device),
            bn2: BatchNormConfig::new(40).init(device),
            fc: LinearConfig::new(1000, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let (pool, relu) = (QMaxPool2d::new(2), QReLU::new());
        let x = pool.forward(relu.forward(self.bn1.forward(self.conv1.forward(x))));
        let x = pool.forward(relu.forward(self.bn2.forward(self.conv2.forward(x))));
        self.fc.forward(x.flatten(1, 3))
    }

    fn quantize(&self, qconfig: &QConfig) -> QNetBN {
        QNetBN {
            conv1: QConvBn::new(self.conv1.clone(), self.bn1.clone(), qconfig, true, true),
            conv2: QConvBn::new(self.conv2.clone(), self.bn2.clone(), qconfig, false, true),
            fc: QLinear::new(self.fc.clone(), qconfig, false),
            pool: QMaxPool2d::new(2),
        }
    }
}

/// `NetBN` with folded Conv-BN-ReLU layers (outputs observed after the ReLU).
#[derive(Module, Debug)]
pub struct QNetBN {
    /// First Conv-BN-ReLU.
    pub conv1: QConvBn,
    /// Second Conv-BN-ReLU.
    pub conv2: QConvBn,
    /// Classifier.
    pub fc: QLinear,
    /// 2×2 max-pooling.
    pub pool: QMaxPool2d,
}

impl QNetBN {
    /// The same model with BatchNorm statistics frozen or not (the usual QAT schedule freezes
    /// them after a few epochs).
    pub fn freeze_bn(self, frozen: bool) -> Self {
        Self {
            conv1: self.conv1.freeze_bn(frozen),
            conv2: self.conv2.freeze_bn(frozen),
            ..self
        }
    }
}

impl QuantizedModel for QNetBN {
    type Integer = IntNetBN;

    fn forward_fq_layers(&self, x: Tensor<4>) -> Vec<Quantized<2>> {
        let flat = |q: &Quantized<4>| q.clone().map(|t| t.flatten::<2>(1, 3));
        let c1 = self.conv1.forward_fq(Quantized::float(x));
        let c2 = self.conv2.forward_fq(self.pool.forward_fq(c1.clone()));
        let fc = self
            .fc
            .forward_fq(self.pool.forward_fq(c2.clone()).map(|t| t.flatten(1, 3)));
        vec![flat(&c1), flat(&c2), fc]
    }

    fn to_integer(&self) -> Result<IntNetBN, QuantError> {
        let conv1 = self.conv1.to_integer(None)?;
        let conv2 = self.conv2.to_integer(Some(&conv1.output))?;
        let fc = self.fc.to_integer(Some(&conv2.output))?;
        Ok(IntNetBN {
            input: self.conv1.observers.input_qparams(None)?,
            conv1,
            conv2,
            fc,
        })
    }
}

/// `NetBN` on the integer grid (the output clamp of each folded layer is its ReLU).
#[derive(Debug, Clone)]
pub struct IntNetBN {
    /// Grid of the input images.
    pub input: QParams,
    /// First folded convolution.
    pub conv1: IntConv2d,
    /// Second folded convolution.
    pub conv2: IntConv2d,
    /// Classifier.
    pub fc: IntLinear,
}

impl IntegerModel for IntNetBN {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let q = self.forward_layers(x).pop().expect("fc output");
        dequantize(q, &self.fc.output)
    }

    fn forward_layers(&self, x: Tensor<4>) -> Vec<Tensor<2, Int>> {
        let c1 = self.conv1.forward(quantize(x, &self.input));
        let c2 = self.conv2.forward(int_max_pool2d(c1.clone(), 2));
        let fc = self.fc.forward(int_max_pool2d(c2.clone(), 2).flatten(1, 3));
        vec![c1.flatten(1, 3), c2.flatten(1, 3), fc]
    }
}
