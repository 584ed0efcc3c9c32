//! End to end on real MNIST (`BURN_QUANT_MNIST_DIR`): the integer engine against the
//! fake-quantized model it was frozen from, and accuracy after PTQ and QAT.
//!
//! On the CPU backends the float model trains for 3 epochs on the full training set. On a
//! GPU backend run on a software device (lavapipe in CI) that would take too long: there the
//! fixture is reduced (1 epoch on 3,200 images, 1,000 test images) and the accuracy targets,
//! which need a well-trained model, are skipped with a notice. `BURN_QUANT_TEST_SCALE=full`
//! forces the full fixture.

mod common;

use std::sync::OnceLock;

use burn_quant::experiment::{self, PipelineConfig};
use burn_quant::mnist::Mnist;
use burn_quant::models::Net;
use burn_quant::train::TrainConfig;
use burn_quant::{BackendKind, Dataset, default_backend, dequantize};
use common::{device, to_vec};

struct Fixture {
    full: bool,
    train: Dataset,
    test: Dataset,
    net: Net,
    float_accuracy: f64,
}

fn full_scale() -> bool {
    match std::env::var("BURN_QUANT_TEST_SCALE").as_deref() {
        Ok("full") => true,
        Ok("reduced") => false,
        _ => matches!(
            default_backend(),
            Ok(BackendKind::Flex | BackendKind::NdArray)
        ),
    }
}

/// MNIST and a float `Net` trained on it, shared by the tests of this file.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mnist = Mnist::load(None).expect("set BURN_QUANT_MNIST_DIR to the MNIST directory");
        let full = full_scale();
        let (train_images, test_images, epochs) = if full {
            (60_000, 10_000, 3)
        } else {
            (3_200, 1_000, 1)
        };
        let device = device();
        let train = Dataset::from_mnist(&mnist.train.take(train_images), &device);
        let test = Dataset::from_mnist(&mnist.test.take(test_images), &device);
        let config = TrainConfig {
            epochs,
            ..TrainConfig::reference_float()
        };
        let net = experiment::train_float(&train, &config, &device, &mut |_| {});
        let float_accuracy = experiment::float_accuracy(&net, &test, 1000);
        eprintln!("fixture: full = {full}, float accuracy {float_accuracy}");
        Fixture {
            full,
            train,
            test,
            net,
            float_accuracy,
        }
    })
}

fn skip_unless_full(f: &Fixture, what: &str) -> bool {
    if !f.full {
        eprintln!("skipped on a reduced fixture: {what} (BURN_QUANT_TEST_SCALE=full runs it)");
    }
    !f.full
}

#[test]
fn integer_engine_agrees_with_fake_quant() {
    let f = fixture();
    let config = PipelineConfig {
        calib_batches: 50,
        ..PipelineConfig::reference()
    };
    assert!(config.quantize_bias);
    let test = Dataset {
        images: f.test.images.clone().narrow(0, 0, 2000.min(f.test.len())),
        labels: f.test.labels.clone().narrow(0, 0, 2000.min(f.test.len())),
        host_labels: f.test.host_labels[..2000.min(f.test.len())].to_vec(),
    };
    for bits in 4..=8 {
        let (qnet, result) =
            experiment::ptq(&f.net, bits, &f.train, &test, &config, &mut |_| {}).unwrap();
        // Per layer: within one LSB of the output grid.
        let (x, _) = test.range(0, 100);
        let fq_layers = qnet.forward_fq_layers(x.clone());
        let int_layers = qnet.to_integer().unwrap().forward_layers(x);
        for (i, (fq, q)) in fq_layers.into_iter().zip(int_layers).enumerate() {
            let qparams = fq.qparams.expect("quantized output");
            let scale = qparams.to_host().0[0];
            let diff = to_vec((fq.tensor - dequantize(q, &qparams)).abs().max())[0];
            assert!(
                diff / scale <= 1.0 + 1e-3,
                "{bits} bits, layer {i}: {} LSB",
                diff / scale
            );
        }
        assert!(
            result.agreement >= 0.999,
            "{bits} bits: agreement {}",
            result.agreement
        );
    }
}

#[test]
fn ptq_8_bits_is_within_0_3_points_of_float() {
    let f = fixture();
    let config = PipelineConfig::reference();
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
fn qat_4_bits_reaches_97_percent() {
    let f = fixture();
    let config = PipelineConfig {
        qat: TrainConfig {
            epochs: 1,
            lr: 0.01,
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
