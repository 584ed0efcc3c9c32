//! On the CPU backends a convolution's integer output waits for what follows it: a ReLU and a
//! max-pooling (in either order) run inside the convolution's kernel. Whatever follows, the
//! integers are those of the fake-quantized model, bit for bit.

mod common;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_quant::freeze;
use burn_quant::nn::{
    Mode, QConfig, QConv2d, QConv2dConfig, QLinear, QLinearConfig, QMaxPool2d, QReLU, QTensor,
    QValue,
};
use common::device;

fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
}

/// What follows the first convolution.
#[derive(Debug, Clone, Copy)]
enum Tail {
    ReluPool,
    PoolRelu,
    /// Two poolings: the second runs on the pooled integers.
    PoolPool,
    /// A pooling the kernel does not fuse (overlapping, padded windows).
    PaddedPool,
    /// Nothing: the next convolution reads the integers.
    Nothing,
}

#[derive(Module, Debug)]
struct Small {
    conv1: QConv2d,
    conv2: QConv2d,
    pool: QMaxPool2d,
    padded_pool: QMaxPool2d,
    relu: QReLU,
    fc: QLinear,
}

impl Small {
    fn new(bits: u32, device: &Device) -> Self {
        let q = QConfig::reference(bits)
            .unwrap()
            .with_quantize_bias(true)
            .with_exact_eval(true);
        let conv1 = Conv2dConfig::new([2, 6], [3, 3]).with_padding(PaddingConfig2d::Same);
        let conv2 = Conv2dConfig::new([6, 6], [3, 2])
            .with_groups(3)
            .with_dilation([1, 2]);
        let padded = MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
        Self {
            conv1: QConv2dConfig::new(conv1, q)
                .with_observe_input(true)
                .init(device)
                .unwrap(),
            conv2: QConv2dConfig::new(conv2, q).init(device).unwrap(),
            pool: QMaxPool2d::new(2),
            padded_pool: padded.init().into(),
            relu: QReLU::new(),
            fc: QLinearConfig::new(LinearConfig::new(6, 4), q)
                .init(device)
                .unwrap(),
        }
    }

    fn forward(&self, x: QTensor<4>, tail: Tail) -> QTensor<2> {
        let x = self.conv1.forward(x);
        let x = match tail {
            Tail::ReluPool => self.pool.forward(self.relu.forward(x)),
            Tail::PoolRelu => self.relu.forward(self.pool.forward(x)),
            Tail::PoolPool => self.pool.forward(self.pool.forward(x)),
            Tail::PaddedPool => self.padded_pool.forward(self.relu.forward(x)),
            Tail::Nothing => x,
        };
        // The second convolution: ReLU, then a pooling to 1 × 1 whatever the size.
        let x = self.relu.forward(self.conv2.forward(x));
        let [_, _, h, w] = x.dims();
        let x = QMaxPool2d::from(MaxPool2dConfig::new([h, w]).init()).forward(x);
        self.fc.forward(x.flatten(1, 3))
    }
}

#[test]
fn conv_relu_and_pooling_in_any_order_equal_the_fake_quantized_model() {
    let device = device();
    let tails = [
        Tail::ReluPool,
        Tail::PoolRelu,
        Tail::PoolPool,
        Tail::PaddedPool,
        Tail::Nothing,
    ];
    for bits in [2, 4, 8] {
        for tail in tails {
            let batch =
                || Tensor::<4>::random([5, 2, 17, 16], Distribution::Normal(0.0, 1.0), &device);
            let model = Small::new(bits, &device);
            for _ in 0..3 {
                let _ = model.forward(QTensor::new(batch(), Mode::FakeQuant), tail);
            }
            let model = freeze(model).unwrap();
            let x = batch();
            let fake = model.forward(QTensor::new(x.clone(), Mode::FakeQuant), tail);
            let integer = model.forward(QTensor::new(x, Mode::Integer), tail);
            let grid = fake.grid().expect("a grid").clone();
            let expected = ints(burn_quant::quantize(fake.dequantize(), &grid));
            let got = ints(integer.integers().expect("integers"));
            assert_eq!(got, expected, "{bits} bits, {tail:?}");
            assert!(
                bits == 2 || got.iter().any(|&v| v != got[0]),
                "{bits} bits, {tail:?}: constant output"
            );
        }
    }
}

/// A 4-bit `Small`, calibrated and frozen, and an input batch of 3 images of 9 × 8.
fn frozen_small() -> (Small, Tensor<4>) {
    let device = device();
    let model = Small::new(4, &device);
    let batch = || Tensor::<4>::random([3, 2, 9, 8], Distribution::Normal(0.0, 1.0), &device);
    let _ = model.forward(QTensor::new(batch(), Mode::FakeQuant), Tail::ReluPool);
    (freeze(model).unwrap(), batch())
}

/// The deferred output reports the shape and grid it will have, and computes to the integers
/// of the fake-quantized layers.
#[test]
fn a_deferred_output_has_its_shape_and_grid_before_it_is_computed() {
    let (model, x) = frozen_small();
    let integer = model.pool.forward(
        model
            .relu
            .forward(model.conv1.forward(QTensor::new(x.clone(), Mode::Integer))),
    );
    let fake = model.pool.forward(
        model
            .relu
            .forward(model.conv1.forward(QTensor::new(x, Mode::FakeQuant))),
    );
    assert_eq!(integer.dims(), [3, 6, 4, 4]);
    assert_eq!(
        integer.grid().unwrap().to_host(),
        fake.grid().unwrap().to_host()
    );
    // Deferred on the CPU backends, computed at once on the GPU.
    let on_host = !matches!(std::env::var("BURN_QUANT_DEVICE").as_deref(), Ok("wgpu"));
    assert_eq!(matches!(integer.value, QValue::Deferred(_)), on_host);
    let grid = fake.grid().unwrap().clone();
    let expected = ints(burn_quant::quantize(fake.dequantize(), &grid));
    assert_eq!(ints(integer.integers().unwrap()), expected);
}

/// A deferred output read twice (a residual block's input): both clones, one pooled inside
/// the kernel and one read whole, give the fake-quantized model's integers.
#[test]
fn clones_of_a_deferred_output_are_computed_alike() {
    let (model, x) = frozen_small();
    let expected = |mode| {
        let shared = model
            .relu
            .forward(model.conv1.forward(QTensor::new(x.clone(), mode)));
        let pooled = model.pool.forward(shared.clone());
        [pooled, shared.clone(), shared]
    };
    let [pooled, whole, again] = expected(Mode::Integer);
    let [fake_pooled, fake_whole, _] = expected(Mode::FakeQuant);
    let grid = fake_whole.grid().unwrap().clone();
    let to_grid = |t: QTensor<4>| ints(burn_quant::quantize(t.dequantize(), &grid));
    assert_eq!(ints(whole.integers().unwrap()), to_grid(fake_whole));
    assert_eq!(
        ints(again.integers().unwrap()),
        ints(whole.integers().unwrap())
    );
    assert_eq!(ints(pooled.integers().unwrap()), to_grid(fake_pooled));
}
