//! End to end on real MNIST (`BURN_QUANT_MNIST_DIR`): the integer engine against the
//! fake-quantized model it was frozen from, and accuracy after PTQ and QAT.

mod common;

use burn_quant::experiment::{self, PipelineConfig};
use burn_quant::mnist::Mnist;
use burn_quant::models::Net;
use burn_quant::train::TrainConfig;
use burn_quant::{Dataset, dequantize};
use common::{device, to_vec};
use std::sync::OnceLock;

struct Fixture {
    train: Dataset,
    test: Dataset,
    net: Net,
    float_accuracy: f64,
}

/// MNIST and a float `Net` trained briefly (2 epochs on 20k images), shared by the tests.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mnist = Mnist::load(None).expect("set BURN_QUANT_MNIST_DIR to the MNIST directory");
        let device = device();
        let train = Dataset::from_mnist(&mnist.train.take(20_000), &device);
        let test = Dataset::from_mnist(&mnist.test, &device);
        let config = TrainConfig {
            epochs: 2,
            ..TrainConfig::reference_float()
        };
        let net = experiment::train_float(&train, &config, &device, &mut |_| {});
        let float_accuracy = experiment::float_accuracy(&net, &test, 1000);
        Fixture {
            train,
            test,
            net,
            float_accuracy,
        }
    })
}

#[test]
fn integer_engine_agrees_with_fake_quant() {
    let f = fixture();
    let config = PipelineConfig::reference();
    assert!(config.quantize_bias);
    for bits in 4..=8 {
        let (qnet, result) =
            experiment::ptq(&f.net, bits, &f.train, &f.test, &config, &mut |_| {}).unwrap();
        // Per layer: within one LSB of the output grid.
        let (x, _) = f.test.range(0, 200);
        let fq_layers = qnet.forward_fq_layers(x.clone());
        let int_net = qnet.to_integer().unwrap();
        let int_layers = int_net.forward_layers(x);
        for (i, (fq, q)) in fq_layers.into_iter().zip(int_layers).enumerate() {
            let qparams = fq.qparams.expect("quantized output");
            let scale = qparams.to_host().0[0];
            let diff = to_vec((fq.tensor - dequantize(q, &qparams)).abs().max())[0];
            let lsb = diff / scale;
            assert!(lsb <= 1.0 + 1e-3, "{bits} bits, layer {i}: {lsb} LSB");
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
    let (_, result) = experiment::ptq(
        &f.net,
        8,
        &f.train,
        &f.test,
        &PipelineConfig::reference(),
        &mut |_| {},
    )
    .unwrap();
    assert!(
        (f.float_accuracy - result.integer).abs() <= 0.003,
        "float {} vs integer {}",
        f.float_accuracy,
        result.integer
    );
    // Quantizing and freezing left the float model untouched.
    assert_eq!(
        experiment::float_accuracy(&f.net, &f.test, 1000),
        f.float_accuracy
    );
}
