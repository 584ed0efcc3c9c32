//! A ResNet-style block written once (padded and strided convolutions, ReLU, residual add,
//! average pooling, flatten, linear): one `forward` runs it in float, fake-quantized and on the
//! integer engine, and the last two agree bit for bit at every bit width; the calibrated model
//! survives save/load exactly; an uncalibrated one is refused by name.

mod common;

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_quant::nn::{
    Mode, QAdd, QAddConfig, QAvgPool2d, QConfig, QConv2d, QConv2dConfig, QLinear, QLinearConfig,
    QMaxPool2d, QReLU, QTensor,
};
use burn_quant::{QScheme, QuantError, RangeEstimator, freeze};
use common::{device, to_vec};

fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
}

#[derive(Module, Debug)]
struct ResBlock {
    stem: QConv2d,
    stem_pool: QMaxPool2d,
    conv1: QConv2d,
    conv2: QConv2d,
    down: QConv2d,
    relu: QReLU,
    add: QAdd,
    pool: QAvgPool2d,
    fc: QLinear,
}

/// The block's settings: saved as JSON next to its weights.
#[derive(Config, Debug)]
struct ResBlockConfig {
    convs: Vec<QConv2dConfig>,
    stem_pool: MaxPool2dConfig,
    add: QAddConfig,
    fc: QLinearConfig,
    global_pool: bool,
}

impl ResBlockConfig {
    fn with_qconfig(qconfig: QConfig, global_pool: bool) -> Self {
        let conv = |c_in, c_out, k, stride, pad| {
            let conv = Conv2dConfig::new([c_in, c_out], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad));
            QConv2dConfig::new(conv, qconfig)
        };
        let stem = Conv2dConfig::new([3, 4], [3, 3]).with_padding(PaddingConfig2d::Same);
        Self::new(
            vec![
                QConv2dConfig::new(stem, qconfig).with_observe_input(true),
                conv(4, 8, 3, 2, 1),
                conv(8, 8, 3, 1, 1),
                conv(4, 8, 1, 2, 0),
            ],
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
            QAddConfig::new(qconfig),
            // 13x13 input -> stem 13x13 -> max-pool 7x7 -> block 4x4 -> pool 1x1 or 2x2.
            QLinearConfig::new(
                LinearConfig::new(if global_pool { 8 } else { 32 }, 5),
                qconfig,
            ),
            global_pool,
        )
    }

    fn init(&self, device: &Device) -> Result<ResBlock, QuantError> {
        let [stem, conv1, conv2, down] = [0, 1, 2, 3].map(|i| self.convs[i].init(device));
        Ok(ResBlock {
            stem: stem?,
            stem_pool: self.stem_pool.init().into(),
            conv1: conv1?,
            conv2: conv2?,
            down: down?,
            relu: QReLU::new(),
            add: self.add.init(device)?,
            pool: match self.global_pool {
                true => QAvgPool2d::global(),
                false => QAvgPool2d::new(2),
            },
            fc: self.fc.init(device)?,
        })
    }
}

impl ResBlock {
    fn forward(&self, x: QTensor<4>) -> QTensor<2> {
        let x = self.relu.forward(self.stem.forward(x));
        let x = self.stem_pool.forward(x);
        let y = self
            .conv2
            .forward(self.relu.forward(self.conv1.forward(x.clone())));
        let x = self.relu.forward(self.add.forward(y, self.down.forward(x)));
        self.fc.forward(self.pool.forward(x).flatten(1, 3))
    }
}

fn batch(device: &Device) -> Tensor<4> {
    Tensor::<4>::random([8, 3, 13, 13], Distribution::Normal(0.0, 1.0), device)
}

fn config(bits: u32, global_pool: bool) -> ResBlockConfig {
    let qconfig = QConfig::reference(bits)
        .unwrap()
        .with_quantize_bias(true)
        .with_exact_eval(true);
    ResBlockConfig::with_qconfig(qconfig, global_pool)
}

fn calibrated(bits: u32, global_pool: bool, device: &Device) -> ResBlock {
    calibrated_with(config(bits, global_pool), device)
}

fn calibrated_with(config: ResBlockConfig, device: &Device) -> ResBlock {
    let model = config.init(device).unwrap();
    for _ in 0..3 {
        let _ = model.forward(QTensor::new(batch(device), Mode::FakeQuant));
    }
    freeze(model).unwrap()
}

#[test]
fn one_forward_is_bit_exact_on_the_integer_engine() {
    let device = device();
    // The seed's affine per-tensor weights, and symmetric narrow-range per-channel weights
    // (ternary at 2 bits).
    // Last, ranges from MSE (weights) and percentiles (activations) instead of extremes.
    let narrow = |bits| QScheme::symmetric_narrow(bits).unwrap().per_channel(0);
    let cases = [
        (true, false, false),
        (false, false, false),
        (true, true, false),
        (true, true, true),
    ];
    for (global_pool, narrow_weights, estimated_ranges) in cases {
        for bits in [2, 3, 4, 6, 8] {
            let mut config = config(bits, global_pool);
            let mut qconfig = config.add.qconfig;
            if narrow_weights {
                qconfig = qconfig.with_weight(narrow(bits));
            }
            if estimated_ranges {
                qconfig = qconfig
                    .with_weight_range(RangeEstimator::Mse)
                    .with_activation_range(RangeEstimator::percentile(99.0).unwrap());
            }
            if narrow_weights || estimated_ranges {
                config = ResBlockConfig::with_qconfig(qconfig, global_pool);
            }
            let model = calibrated_with(config, &device);
            let x = batch(&device);
            let fake = model.forward(QTensor::new(x.clone(), Mode::FakeQuant));
            let integer = model.forward(QTensor::new(x.clone(), Mode::Integer));
            let grid = fake.grid().expect("a grid").clone();
            let expected = ints(burn_quant::quantize(fake.dequantize(), &grid));
            let got = ints(integer.integers().expect("integers"));
            assert_eq!(
                got, expected,
                "{bits} bits, global pool {global_pool}, narrow weights {narrow_weights}, estimated ranges {estimated_ranges}"
            );
            // Not vacuous: a varying output (at 2 bits a small random model may collapse).
            assert!(
                bits == 2 || got.iter().any(|&v| v != got[0]),
                "{bits} bits: constant output"
            );
            // The float mode is the float model: no grid, values off the grid.
            let float = model.forward(QTensor::new(x, Mode::Float));
            assert!(float.grid().is_none());
        }
    }
}

#[test]
fn the_calibrated_model_and_its_config_round_trip_through_files() {
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
    let (path, json) = (dir.join("model.bpk"), dir.join("model.json"));
    model.save_file(&path).unwrap();
    config(4, true).save(&json).unwrap();
    // Settings from the JSON, weights and observer ranges from the record.
    let loaded_config = ResBlockConfig::load(&json).unwrap();
    assert_eq!(
        loaded_config.convs[1].qconfig,
        config(4, true).convs[1].qconfig
    );
    let fresh = loaded_config.init(&device).unwrap();
    let loaded = freeze(fresh.try_load_file(&path).unwrap()).unwrap();
    let got = to_vec(loaded.forward(QTensor::new(x, Mode::Integer)).dequantize());
    assert_eq!(got, expected);
    // A corrupt file is an error, not a panic.
    std::fs::write(&path, b"not a burnpack file").unwrap();
    let fresh = loaded_config.init(&device).unwrap();
    assert!(fresh.try_load_file(&path).is_err());
    // A record of a model with other sizes is an error too.
    let other = ResBlockConfig::with_qconfig(QConfig::reference(4).unwrap(), true);
    let other = ResBlockConfig {
        fc: QLinearConfig::new(LinearConfig::new(8, 7), other.add.qconfig),
        ..other
    };
    other.init(&device).unwrap().save_file(&path).unwrap();
    let fresh = loaded_config.init(&device).unwrap();
    assert!(fresh.try_load_file(&path).is_err());
    // A broken config file is an error naming the problem.
    std::fs::write(&json, "{").unwrap();
    assert!(ResBlockConfig::load(&json).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn freezing_an_uncalibrated_model_names_the_observer() {
    let device = device();
    let model = config(8, true).init(&device).unwrap();
    match freeze(model) {
        Err(QuantError::UncalibratedObserver { path }) => {
            assert!(path.starts_with("stem"), "{path}")
        }
        other => panic!("expected an uncalibrated observer, got {other:?}"),
    }
}

#[test]
fn an_invalid_layer_config_is_an_error_naming_the_layer() {
    let qconfig = QConfig::reference(8).unwrap();
    let mut config = ResBlockConfig::with_qconfig(qconfig, true);
    config.convs[2].conv.groups = 3;
    match config.init(&device()) {
        Err(e @ QuantError::InvalidLayerConfig { .. }) => {
            let message = e.to_string();
            assert!(message.contains("QConv2d [8 -> 8"), "{message}");
            assert!(message.contains("groups"), "{message}");
        }
        other => panic!("expected an invalid layer config, got {other:?}"),
    }
    config.convs[2].conv.groups = 1;
    config.fc.qconfig = qconfig.with_ema_momentum(Some(0.0));
    assert!(matches!(
        config.init(&device()),
        Err(QuantError::InvalidSetting(_))
    ));
}

/// Integer logits: the classifier's output is its i32 accumulator dequantized, the same real
/// values in the fake-quantized evaluation and on the integer engine, from 1 to 8 bits.
#[test]
fn integer_logits_are_bit_exact() {
    let device = device();
    for bits in [1, 2, 3, 4, 8] {
        let mut config = config(bits, true);
        config.fc.integer_output = true;
        let model = calibrated_with(config, &device);
        assert!(model.fc.observers.has_integer_output());
        let x = batch(&device);
        let fake = model.forward(QTensor::new(x.clone(), Mode::FakeQuant));
        let int = model.forward(QTensor::new(x, Mode::Integer));
        assert!(fake.grid().is_none() && int.grid().is_none());
        let (fake, int) = (to_vec(fake.dequantize()), to_vec(int.dequantize()));
        assert_eq!(fake, int, "{bits} bits");
        // Not a constant output (from 3 bits; below, this small random model may collapse).
        if bits >= 3 {
            assert!(
                fake.iter().any(|&v| v != fake[0]),
                "{bits} bits: constant output"
            );
        }
    }
}
