//! Your own ResNet-style model, written once with burn-quant's layers: train a few steps in
//! float, calibrate, freeze, save, load, and run it on the integer engine.
//! `cargo run --release --example custom_model`
use burn::module::Module;
use burn::nn::{LinearConfig, PaddingConfig2d::Explicit, conv::Conv2dConfig, loss};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution::Normal, Distribution::Uniform, Int, Tensor};
use burn_quant::nn::{Mode, QAdd, QAvgPool2d, QConfig, QConv2d, QLinear, QReLU, QTensor};
use burn_quant::{default_device, freeze, set_observing};

#[derive(Module, Debug)]
struct ResNet {
    convs: Vec<QConv2d>, // stem, block conv 1 (stride 2), block conv 2, 1x1 shortcut (stride 2)
    relu: QReLU,
    add: QAdd,
    pool: QAvgPool2d,
    fc: QLinear,
}

#[rustfmt::skip]
impl ResNet {
    fn new(q: &QConfig, device: &Device) -> Self {
        let conv = |[i, o, k, s, p]: [usize; 5]| {
            let conv = Conv2dConfig::new([i, o], [k, k]).with_stride([s, s]);
            QConv2d::new(conv.with_padding(Explicit(p, p, p, p)).init(device), q, i == 1)
        };
        let convs = [[1, 8, 3, 1, 1], [8, 16, 3, 2, 1], [16, 16, 3, 1, 1], [8, 16, 1, 2, 0]];
        let fc = QLinear::new(LinearConfig::new(16, 10).init(device), q, false);
        let (relu, add, pool) = (QReLU::new(), QAdd::new(q, device), QAvgPool2d::global());
        Self { convs: convs.map(conv).into(), relu, add, pool, fc }
    }

    /// The only forward: float, fake-quantized or integer, as `x`'s mode says.
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
    let (device, ad) = (default_device()?, default_device()?.autodiff());
    let q = QConfig::reference(8)?.with_quantize_bias(true).with_exact_eval(true);
    let images = |d: &Device| Tensor::<4>::random([32, 1, 12, 12], Normal(0.0, 1.0), d);
    let (mut model, mut optim) = (ResNet::new(&q, &ad), SgdConfig::new().init());
    for _ in 0..5 { // float training (Mode::FakeQuant here would be QAT)
        let logits = model.forward(QTensor::new(images(&ad), Mode::Float)).dequantize();
        let labels = Tensor::<1, Int>::random([32], Uniform(0.0, 10.0), &ad);
        let loss = loss::CrossEntropyLossConfig::new().init(&ad).forward(logits, labels);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model, grads);
    }
    let model = set_observing(model.valid(), true);
    for _ in 0..10 { let _ = model.forward(QTensor::new(images(&device), Mode::FakeQuant)); }
    let (model, path) = (freeze(model)?, std::env::temp_dir().join("custom-model.bpk"));
    model.clone().save_file(&path)?;
    let loaded = freeze(ResNet::new(&q, &device).try_load_file(&path)?)?;
    let x = images(&device);
    let fake = model.forward(QTensor::new(x.clone(), Mode::FakeQuant)).dequantize();
    let int = loaded.forward(QTensor::new(x, Mode::Integer)).dequantize();
    assert_eq!(fake.into_data(), int.into_data(), "fake-quant and integer logits differ");
    println!("trained, calibrated, frozen, saved, loaded: integer logits = fake-quant logits");
    Ok(())
}
