//! A ResNet-style block written once (padded and strided convolutions, ReLU, residual add,
//! average pooling, flatten, linear): one `forward` runs it in float, fake-quantized and on the
//! integer engine, and the last two agree bit for bit at every bit width; the calibrated model
//! survives save/load exactly; an uncalibrated one is refused by name.

mod common;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_quant::nn::{Mode, QAdd, QAvgPool2d, QConfig, QConv2d, QLinear, QReLU, QTensor};
use burn_quant::{QuantError, freeze};
use common::{device, to_vec};

fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
}

#[derive(Module, Debug)]
struct ResBlock {
    stem: QConv2d,
    conv1: QConv2d,
    conv2: QConv2d,
    down: QConv2d,
    relu: QReLU,
    add: QAdd,
    pool: QAvgPool2d,
    fc: QLinear,
}

impl ResBlock {
    fn new(qconfig: &QConfig, global_pool: bool, device: &Device) -> Self {
        let conv = |c_in, c_out, k, stride, pad| {
            let conv = Conv2dConfig::new([c_in, c_out], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .init(device);
            QConv2d::new(conv, qconfig, false)
        };
        let (pool, features) = match global_pool {
            true => (QAvgPool2d::global(), 8),
            false => (QAvgPool2d::new(2), 8 * 2 * 2),
        };
        Self {
            stem: QConv2d::new(
                Conv2dConfig::new([3, 4], [3, 3])
                    .with_padding(PaddingConfig2d::Same)
                    .init(device),
                qconfig,
                true,
            ),
            conv1: conv(4, 8, 3, 2, 1),
            conv2: conv(8, 8, 3, 1, 1),
            down: conv(4, 8, 1, 2, 0),
            relu: QReLU::new(),
            add: QAdd::new(qconfig, device),
            pool,
            fc: QLinear::new(LinearConfig::new(features, 5).init(device), qconfig, false),
        }
    }

    fn forward(&self, x: QTensor<4>) -> QTensor<2> {
        let x = self.relu.forward(self.stem.forward(x));
        let y = self
            .conv2
            .forward(self.relu.forward(self.conv1.forward(x.clone())));
        let x = self.relu.forward(self.add.forward(y, self.down.forward(x)));
        self.fc.forward(self.pool.forward(x).flatten(1, 3))
    }
}

fn batch(device: &Device) -> Tensor<4> {
    Tensor::<4>::random([8, 3, 9, 9], Distribution::Normal(0.0, 1.0), device)
}

fn calibrated(bits: u32, global_pool: bool, device: &Device) -> ResBlock {
    let qconfig = QConfig::reference(bits)
        .unwrap()
        .with_quantize_bias(true)
        .with_exact_eval(true);
    let model = ResBlock::new(&qconfig, global_pool, device);
    for _ in 0..3 {
        let _ = model.forward(QTensor::new(batch(device), Mode::FakeQuant));
    }
    freeze(model).unwrap()
}

#[test]
fn one_forward_is_bit_exact_on_the_integer_engine() {
    let device = device();
    for global_pool in [true, false] {
        for bits in [2, 3, 4, 6, 8] {
            let model = calibrated(bits, global_pool, &device);
            let x = batch(&device);
            let fake = model.forward(QTensor::new(x.clone(), Mode::FakeQuant));
            let integer = model.forward(QTensor::new(x.clone(), Mode::Integer));
            let grid = fake.grid().expect("a grid").clone();
            let expected = ints(burn_quant::quantize(fake.dequantize(), &grid));
            let got = ints(integer.integers().expect("integers").clone());
            assert_eq!(got, expected, "{bits} bits, global pool {global_pool}");
            assert!(
                got.iter().any(|&v| v != got[0]),
                "{bits} bits: constant output"
            );
            // The float mode is the float model: no grid, values off the grid.
            let float = model.forward(QTensor::new(x, Mode::Float));
            assert!(float.grid().is_none());
        }
    }
}

#[test]
fn the_calibrated_model_round_trips_through_a_file() {
    let device = device();
    let model = calibrated(4, true, &device);
    let x = batch(&device);
    let expected = to_vec(
        model
            .forward(QTensor::new(x.clone(), Mode::Integer))
            .dequantize(),
    );
    let dir = std::env::temp_dir().join(format!("burn-quant-res-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.bpk");
    model.save_file(&path).unwrap();
    let qconfig = QConfig::reference(4)
        .unwrap()
        .with_quantize_bias(true)
        .with_exact_eval(true);
    let fresh = ResBlock::new(&qconfig, true, &device);
    let loaded = freeze(fresh.try_load_file(&path).unwrap()).unwrap();
    let got = to_vec(loaded.forward(QTensor::new(x, Mode::Integer)).dequantize());
    assert_eq!(got, expected);
    // A corrupt file is an error, not a panic.
    std::fs::write(&path, b"not a burnpack file").unwrap();
    let fresh = ResBlock::new(&qconfig, true, &device);
    assert!(fresh.try_load_file(&path).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn freezing_an_uncalibrated_model_names_the_observer() {
    let device = device();
    let qconfig = QConfig::reference(8).unwrap();
    let model = ResBlock::new(&qconfig, true, &device);
    match freeze(model) {
        Err(QuantError::UncalibratedObserver { path }) => {
            assert!(path.starts_with("stem"), "{path}")
        }
        other => panic!("expected an uncalibrated observer, got {other:?}"),
    }
}
