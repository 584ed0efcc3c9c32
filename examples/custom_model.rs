//! Your own ResNet-style model, written once with burn-quant's layers: train, calibrate, freeze,
//! save (config + weights), load, run on integers, export to ONNX. `cargo run --release --example custom_model`
use burn::nn::{LinearConfig, PaddingConfig2d::Explicit, conv::Conv2dConfig, loss};
use burn::tensor::{Device, Distribution::Normal, Distribution::Uniform, Int, Tensor};
use burn::{config::Config, module::Module, optim::GradientsParams, optim::SgdConfig};
use burn_quant::{QuantError, default_device, export, freeze, nn::*, set_observing};

#[derive(Module, Debug)] #[rustfmt::skip] // one forward: float, fake-quant or integer (the input's mode)
struct ResNet { convs: Vec<QConv2d>, relu: QReLU, add: QAdd, pool: QAvgPool2d, fc: QLinear }
#[derive(Config, Debug)] #[rustfmt::skip] // stem, block conv 1 (stride 2), block conv 2, 1x1 shortcut (stride 2)
struct ResNetConfig { convs: Vec<QConv2dConfig>, add: QAddConfig, fc: QLinearConfig }

#[rustfmt::skip]
impl ResNetConfig {
    fn with_qconfig(q: QConfig) -> Self {
        let conv = |[i, o, k, s, p]: [usize; 5]| QConv2dConfig::new(Conv2dConfig::new([i, o], [k, k])
            .with_stride([s, s]).with_padding(Explicit(p, p, p, p)), q).with_observe_input(i == 1);
        let convs = [[1, 8, 3, 1, 1], [8, 16, 3, 2, 1], [16, 16, 3, 1, 1], [8, 16, 1, 2, 0]];
        Self::new(convs.map(conv).into(), QAddConfig::new(q), QLinearConfig::new(LinearConfig::new(16, 10), q))
    }
    fn init(&self, device: &Device) -> Result<ResNet, QuantError> {
        let convs = self.convs.iter().map(|c| c.init(device)).collect::<Result<_, _>>()?;
        Ok(ResNet { convs, relu: QReLU::new(), add: self.add.init(device)?, pool: QAvgPool2d::global(),
            fc: self.fc.init(device)? })
    }
}

impl ResNet {
    fn forward(&self, x: QTensor<4>) -> QTensor<2> {
        let (c, relu) = (&self.convs, &self.relu);
        let x = relu.forward(c[0].forward(x));
        let y = c[2].forward(relu.forward(c[1].forward(x.clone())));
        let x = relu.forward(self.add.forward(y, c[3].forward(x)));
        self.fc.forward(self.pool.forward(x).flatten(1, 3))
    }
}

#[rustfmt::skip]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (device, ad, dir) = (default_device()?, default_device()?.autodiff(), std::env::temp_dir());
    let config = ResNetConfig::with_qconfig(QConfig::reference(8)?.with_quantize_bias(true).with_exact_eval(true));
    let images = |d: &Device| Tensor::<4>::random([32, 1, 12, 12], Normal(0.0, 1.0), d);
    let (mut model, mut optim) = (config.init(&ad)?, SgdConfig::new().init());
    for _ in 0..5 { // float training (Mode::FakeQuant here would be QAT)
        let logits = model.forward(QTensor::new(images(&ad), Mode::Float)).dequantize();
        let labels = Tensor::<1, Int>::random([32], Uniform(0.0, 10.0), &ad);
        let loss = loss::CrossEntropyLossConfig::new().init(&ad).forward(logits, labels);
        model = optim.step(0.01, model.clone(), GradientsParams::from_grads(loss.backward(), &model));
    }
    let model = set_observing(model.valid(), true); // calibrate, freeze, save settings + weights
    for _ in 0..10 { model.forward(QTensor::new(images(&device), Mode::FakeQuant)); }
    let model = freeze(model)?;
    config.save(dir.join("resnet.json"))?; model.clone().save_file(dir.join("resnet.bpk"))?;
    let loaded = ResNetConfig::load(dir.join("resnet.json"))?.init(&device)?;
    let (loaded, x) = (freeze(loaded.try_load_file(dir.join("resnet.bpk"))?)?, images(&device));
    let fake = model.forward(QTensor::new(x.clone(), Mode::FakeQuant)).dequantize();
    assert_eq!(fake.into_data(), loaded.forward(QTensor::new(x, Mode::Integer)).dequantize().into_data());
    let graph = export::trace(&loaded, [1, 1, 12, 12], |m, x| m.forward(x))?; // export to ONNX (QDQ)
    export::onnx::save(&graph, &export::onnx::OnnxConfig::new(), dir.join("resnet.onnx"))?;
    println!("trained, calibrated, frozen, saved, loaded: integer logits = fake-quant logits");
    println!("exported {}", dir.join("resnet.onnx").display());
    Ok(())
}
