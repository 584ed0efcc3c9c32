//! End to end on real MNIST (`BURN_QUANT_MNIST_DIR`): the integer engine against the
//! fake-quantized model it was frozen from, and accuracy after PTQ and QAT.
//!
//! On the default CPU backend (flex) the fixtures are full size: `Net` trains for 8 epochs on
//! the whole training set (98.5 %), `NetBN` for 1 epoch on 20,000 images. ndarray (deprecated
//! upstream, several times slower) and wgpu (lavapipe, a software device, in CI) run the same
//! tests on a reduced fixture (1 epoch on 3,200 images, 500 test images, 10 calibration
//! batches), which keeps the suite within CI time: the agreement of the integer engine with
//! the fake-quantized model is checked on every backend (at 2, 4 and 8 bits on a reduced
//! fixture, every width from 2 to 8 at full size), the accuracy targets, which need a
//! well-trained model, only at full size.
//! `BURN_QUANT_TEST_SCALE=full|reduced` overrides the choice.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::sync::OnceLock;

use burn_quant::RangeEstimator;
use burn_quant::backend::{BackendKind, default_backend};
use burn_quant::nn::{Mode, QTensor};
use burn_quant_mnist::Dataset;
use burn_quant_mnist::data::Mnist;
use burn_quant_mnist::experiment::{self, PipelineConfig};
use burn_quant_mnist::models::{MnistModel, Net, NetBN};
use burn_quant_mnist::train::TrainConfig;
use common::{device, to_vec};

struct Fixture<M> {
    full: bool,
    train: Dataset,
    test: Dataset,
    net: M,
    float_accuracy: f64,
}

fn full_scale() -> bool {
    match std::env::var("BURN_QUANT_TEST_SCALE").as_deref() {
        Ok("full") => true,
        Ok("reduced") => false,
        _ => matches!(default_backend(), Ok(BackendKind::Flex)),
    }
}

/// MNIST and a float model trained on it for `epochs` on `train_images` (full scale).
fn build<M: MnistModel>(train_images: usize, epochs: usize) -> Fixture<M> {
    let mnist = Mnist::load(None).expect("set BURN_QUANT_MNIST_DIR to the MNIST directory");
    let full = full_scale();
    let (train_images, test_images, epochs) = if full {
        (train_images, 10_000, epochs)
    } else {
        (3_200, 500, 1)
    };
    let device = device();
    let train = Dataset::from_mnist(&mnist.train.take(train_images), &device);
    let test = Dataset::from_mnist(&mnist.test.take(test_images), &device);
    let config = TrainConfig {
        epochs,
        ..TrainConfig::reference_float()
    };
    let net: M = experiment::train_float(&train, &config, &device, &mut |_| {});
    let float_accuracy = experiment::float_accuracy(&net, &test, 1000);
    eprintln!("fixture: full = {full}, float accuracy {float_accuracy}");
    Fixture {
        full,
        train,
        test,
        net,
        float_accuracy,
    }
}

/// `Net`, 8 epochs on the full training set.
fn net() -> &'static Fixture<Net> {
    static FIXTURE: OnceLock<Fixture<Net>> = OnceLock::new();
    FIXTURE.get_or_init(|| build(60_000, 8))
}

/// `NetBN`, 1 epoch on 20,000 images (its second convolution is 20 times larger).
fn net_bn() -> &'static Fixture<NetBN> {
    static FIXTURE: OnceLock<Fixture<NetBN>> = OnceLock::new();
    FIXTURE.get_or_init(|| build(20_000, 1))
}

/// Calibration batches: `full` on the full fixture, 10 on a reduced one (where no accuracy is
/// asserted, and each calibration batch costs about half a second on lavapipe).
fn calibration_batches<M>(f: &Fixture<M>, full: usize) -> usize {
    if f.full { full } else { 10 }
}

fn skip_unless_full<M>(f: &Fixture<M>, what: &str) -> bool {
    if !f.full {
        eprintln!("skipped on a reduced fixture: {what} (BURN_QUANT_TEST_SCALE=full runs it)");
    }
    !f.full
}

/// Logits: bit-exact evaluation equals the engine, float evaluation is within one LSB; the
/// same prediction on at least 99.9 % of the test images, at 2 to 8 bits (2, 4 and 8 on a
/// reduced fixture).
fn engine_agrees_with_fake_quant<M: MnistModel>(f: &Fixture<M>) {
    // The agreement does not depend on how long the observers calibrate: 50 batches (10 on a
    // reduced fixture).
    let exact = PipelineConfig {
        calib_batches: calibration_batches(f, 50),
        ..PipelineConfig::reference()
    };
    assert!(exact.quantize_bias && exact.exact_eval);
    let float_eval = PipelineConfig {
        exact_eval: false,
        ..exact
    };
    let test = f.test.first(2000);
    let (x, _) = test.range(0, 100);
    // The largest difference in LSBs between the fake-quantized and integer logits.
    let max_lsb = |qnet: &M| -> f32 {
        let fake = qnet.forward(QTensor::new(x.clone(), Mode::FakeQuant));
        let int = qnet.forward(QTensor::new(x.clone(), Mode::Integer));
        let scale = fake.grid().expect("quantized logits").to_host().0[0];
        to_vec((fake.dequantize() - int.dequantize()).abs().max())[0] / scale
    };
    // Every width on the full fixture; the narrowest, a middle and the widest on a reduced one
    // (each width costs about half a minute on lavapipe).
    let widths: Vec<u32> = match f.full {
        true => (2..=8).collect(),
        false => vec![2, 4, 8],
    };
    for bits in widths {
        let (qnet, result) =
            experiment::ptq(&f.net, bits, &f.train, &test, &exact, &mut |_| {}).unwrap();
        let lsb = max_lsb(&qnet);
        assert!(lsb <= 1e-3, "{bits} bits: {lsb} LSB");
        assert!(
            result.agreement >= 0.999,
            "{bits} bits: agreement {}",
            result.agreement
        );
    }
    // Float evaluation of the same calibration: at most one LSB apart (ties round apart).
    let (qnet, _) = experiment::ptq(&f.net, 4, &f.train, &test, &float_eval, &mut |_| {}).unwrap();
    let lsb = max_lsb(&qnet);
    assert!(lsb <= 1.0 + 1e-3, "float evaluation: {lsb} LSB");
}

#[test]
fn integer_engine_agrees_with_fake_quant_net() {
    engine_agrees_with_fake_quant(net());
}

#[test]
fn integer_engine_agrees_with_fake_quant_net_bn() {
    engine_agrees_with_fake_quant(net_bn());
}

fn ptq_8_bits_within_0_3_points<M: MnistModel>(f: &Fixture<M>) {
    let reference = PipelineConfig::reference();
    let config = PipelineConfig {
        calib_batches: calibration_batches(f, reference.calib_batches),
        ..reference
    };
    let (_, result) = experiment::ptq(&f.net, 8, &f.train, &f.test, &config, &mut |_| {}).unwrap();
    if !skip_unless_full(f, "8-bit PTQ within 0.3 pt of float") {
        assert!(
            (f.float_accuracy - result.integer).abs() <= 0.003,
            "float {} vs integer {}",
            f.float_accuracy,
            result.integer
        );
    }
    // Quantizing and freezing left the float model untouched.
    assert_eq!(
        experiment::float_accuracy(&f.net, &f.test, 1000),
        f.float_accuracy
    );
}

#[test]
fn ptq_8_bits_is_within_0_3_points_of_float_net() {
    ptq_8_bits_within_0_3_points(net());
}

#[test]
fn ptq_8_bits_is_within_0_3_points_of_float_net_bn() {
    ptq_8_bits_within_0_3_points(net_bn());
}

#[test]
fn qat_4_bits_reaches_97_percent() {
    let f = net();
    let config = PipelineConfig {
        qat: TrainConfig {
            epochs: 1,
            ..TrainConfig::reference_qat()
        },
        ..PipelineConfig::reference()
    };
    let (qnet, result) =
        experiment::qat(&f.net, 4, &f.train, &f.test, &config, &mut |_| {}).unwrap();
    assert!(result.agreement >= 0.999, "agreement {}", result.agreement);
    // The observers were frozen at the end of training: evaluating does not move them.
    let before = qnet.conv1.observers.output.range();
    let _ = experiment::evaluate(&qnet, &f.test, 1000).unwrap();
    let after = qnet.conv1.observers.output.range();
    assert_eq!(to_vec(before.1), to_vec(after.1));
    if !skip_unless_full(f, "4-bit QAT >= 97 %") {
        assert!(
            result.integer >= 0.97,
            "4-bit QAT integer accuracy {}",
            result.integer
        );
    }
}

/// 2-bit LSQ QAT, the `lsq` method's schemes (ternary per-channel weights, integer logits, MSE
/// calibration) on a CI budget: 400 steps (25,600 images, one epoch) at lr 0.01. The integer
/// engine agrees with the fake-quantized model, the steps moved, and on the full fixture the
/// result reaches 95 % and beats PTQ with the same schemes.
#[test]
fn lsq_qat_2_bits_reaches_95_percent_on_a_ci_budget() {
    let f = net();
    let config = PipelineConfig {
        qat: TrainConfig {
            epochs: 1,
            lr: 0.01,
            ..TrainConfig::reference_qat()
        },
        learned_step: true,
        symmetric_weights: true,
        integer_logits: true,
        weight_range: RangeEstimator::Mse,
        activation_range: RangeEstimator::Mse,
        calib_batches: calibration_batches(f, PipelineConfig::reference().calib_batches),
        ..PipelineConfig::reference()
    };
    let train = f.train.first(25_600);
    let (qnet, lsq) = experiment::qat(&f.net, 2, &train, &f.test, &config, &mut |_| {}).unwrap();
    assert!(lsq.agreement >= 0.999, "agreement {}", lsq.agreement);
    let learned = qnet.conv2.observers.weight.learned.as_ref().expect("LSQ");
    assert_ne!(to_vec(learned.multiplier.val()), vec![1.0; 40]);
    let (_, ptq) = experiment::ptq(&f.net, 2, &f.train, &f.test, &config, &mut |_| {}).unwrap();
    eprintln!("2 bits: LSQ QAT {} vs PTQ {}", lsq.integer, ptq.integer);
    if !skip_unless_full(f, "2-bit LSQ QAT >= 95 % and beats PTQ") {
        assert!(lsq.integer >= 0.95, "2-bit LSQ QAT {}", lsq.integer);
        assert!(
            lsq.integer > ptq.integer,
            "LSQ {} vs PTQ {}",
            lsq.integer,
            ptq.integer
        );
    }
}

/// Binary (1 bit) and ternary (2 bits) LSQ models with integer logits, after 25 QAT steps
/// (1,600 images): the integer engine agrees with the fake-quantized model on ≥ 99.9 % of the
/// test images, and the binary model's weights are signs on the engine.
#[test]
fn binary_and_ternary_lsq_models_agree_with_the_engine() {
    let f = net();
    let config = PipelineConfig {
        qat: TrainConfig {
            epochs: 1,
            lr: 0.001,
            ..TrainConfig::reference_qat()
        },
        calib_batches: calibration_batches(f, 20),
        learned_step: true,
        symmetric_weights: true,
        integer_logits: true,
        ..PipelineConfig::reference()
    };
    let train = f.train.first(1_600);
    for bits in [1, 2] {
        let (qnet, result) =
            experiment::qat(&f.net, bits, &train, &f.test, &config, &mut |_| {}).unwrap();
        eprintln!("{bits} bits: LSQ QAT {result:?}");
        assert!(
            result.agreement >= 0.999,
            "{bits} bits: agreement {}",
            result.agreement
        );
        let weight = qnet.conv2.observers.weight.checked_qparams().unwrap();
        let q = burn_quant::quantize(qnet.conv2.conv.weight.val(), &weight);
        let levels: Vec<i64> = q.into_data().convert::<i64>().try_to_vec().unwrap();
        let allowed: &[i64] = if bits == 1 { &[-1, 1] } else { &[-1, 0, 1] };
        assert!(levels.iter().all(|v| allowed.contains(v)), "{bits} bits");
        assert!(
            allowed.iter().all(|a| levels.contains(a)),
            "{bits} bits: unused level"
        );
    }
}
