//! Using burn-quant's layers in your own model: wrap Burn layers, calibrate the observers with
//! the fake-quantized forward, freeze them, convert to the integer engine and compare.
//!
//! ```sh
//! cargo run --release --example custom_model
//! ```

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Distribution, Tensor};
use burn_quant::engine::{IntConv2d, IntLinear, int_relu};
use burn_quant::nn::{QConfig, QConv2d, QLinear, QReLU, Quantized};
use burn_quant::{QuantError, default_device, dequantize, quantize, set_observing};

/// A tiny conv → ReLU → linear classifier for 8×8 single-channel images.
#[derive(Module, Debug)]
struct Tiny {
    conv: QConv2d,
    relu: QReLU,
    fc: QLinear,
}

impl Tiny {
    fn new(qconfig: &QConfig, device: &burn::tensor::Device) -> Self {
        Self {
            // The first layer observes its own input; the next takes the previous output's grid.
            conv: QConv2d::new(
                Conv2dConfig::new([1, 4], [3, 3]).init(device),
                qconfig,
                true,
            ),
            relu: QReLU::new(),
            fc: QLinear::new(LinearConfig::new(4 * 6 * 6, 3).init(device), qconfig, false),
        }
    }

    fn forward_fq(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self
            .relu
            .forward_fq(self.conv.forward_fq(Quantized::float(x)));
        self.fc.forward_fq(x.map(|t| t.flatten(1, 3))).tensor
    }

    fn to_integer(&self) -> Result<(IntConv2d, IntLinear), QuantError> {
        let conv = self.conv.to_integer(None)?;
        let fc = self.fc.to_integer(Some(&conv.output))?;
        Ok((conv, fc))
    }
}

fn main() -> Result<(), QuantError> {
    let device = default_device()?;
    let model = Tiny::new(
        &QConfig::reference(8)?
            .with_quantize_bias(true)
            .with_exact_eval(true),
        &device,
    );

    // Calibrate: observers record ranges during the fake-quantized forward.
    for _ in 0..10 {
        let x = Tensor::<4>::random([16, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let _ = model.forward_fq(x);
    }
    let model = set_observing(model, false);

    // Freeze into integer layers and run both on new data.
    let (conv, fc) = model.to_integer()?;
    let input = model.conv.observers.input_qparams(None)?;
    let x = Tensor::<4>::random([16, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let fake = model.forward_fq(x.clone());
    let q = conv.forward(quantize(x, &input));
    let q = int_relu(q, conv.requantizer.output_zero_point);
    let integer = dequantize(fc.forward(q.flatten(1, 3)), &fc.output);
    let diff = (fake - integer).abs().max().into_scalar::<f32>();
    println!("largest difference between fake-quant and integer logits: {diff}");
    Ok(())
}
