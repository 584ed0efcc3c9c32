//! ONNX export checked in a real runtime: models quantized on real MNIST
//! (`BURN_QUANT_MNIST_DIR`) are exported, checked with `onnx.checker` (full check) and run in
//! onnxruntime on the test set (`onnxruntime_check.py`; Python with `onnx` and `onnxruntime`,
//! which `.ci/run` installs with pip; `BURN_QUANT_PYTHON` names the interpreter, default
//! `python3`). onnxruntime's logits are compared with the fake-quantized model's.
//!
//! The float models train briefly (their accuracy is not what is tested): one epoch, on flex on
//! 3,200 images, and all 10,000 test images are compared; on the other backends (slower in CI,
//! lavapipe for wgpu) on 640 images, and 500 test images (`BURN_QUANT_TEST_SCALE` overrides).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use burn::tensor::Tensor;
use burn_quant::backend::{BackendKind, default_backend};
use burn_quant::export::onnx::OnnxConfig;
use burn_quant::nn::Mode;
use burn_quant::{RangeEstimator, freeze};
use burn_quant_mnist::Dataset;
use burn_quant_mnist::data::Mnist;
use burn_quant_mnist::experiment::{self, PipelineConfig};
use burn_quant_mnist::models::{MnistModel, Net, NetBN, ResNet, onnx_config};
use burn_quant_mnist::train::TrainConfig;
use common::{device, to_vec};

struct Data {
    train: Dataset,
    test: Dataset,
    dir: PathBuf,
    inputs: PathBuf,
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let full = match std::env::var("BURN_QUANT_TEST_SCALE").as_deref() {
            Ok("full") => true,
            Ok("reduced") => false,
            _ => matches!(default_backend(), Ok(BackendKind::Flex)),
        };
        let (train, test) = if full { (3_200, 10_000) } else { (640, 500) };
        let mnist = Mnist::load(None).expect("set BURN_QUANT_MNIST_DIR to the MNIST directory");
        let device = device();
        let train = Dataset::from_mnist(&mnist.train.take(train), &device);
        let test = Dataset::from_mnist(&mnist.test.take(test), &device);
        // Cargo's scratch folder for integration tests, one per backend, overwritten by each run.
        let backend = default_backend().map_or("unknown", |b| b.name());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("onnx-{backend}"));
        std::fs::create_dir_all(&dir).unwrap();
        let inputs = dir.join("inputs.f32");
        write_f32(&inputs, &to_vec(test.images.clone()));
        Data {
            train,
            test,
            dir,
            inputs,
        }
    })
}

fn write_f32(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// A float model trained for one epoch on the fixture's training images.
fn float_model<M: MnistModel>() -> M {
    let config = TrainConfig {
        epochs: 1,
        ..TrainConfig::reference_float()
    };
    experiment::train_float(&data().train, &config, &device(), &mut |_| {})
}

/// The reference PTQ pipeline with 20 calibration batches.
fn ptq_config() -> PipelineConfig {
    PipelineConfig {
        calib_batches: 20,
        ..PipelineConfig::reference()
    }
}

/// What onnxruntime gave against burn-quant.
#[derive(Debug)]
struct Comparison {
    /// Largest difference of a logit, in output steps.
    max_steps: f64,
    /// Fraction of logits within one output step.
    within_one_step: f64,
    /// Fraction of images with the same predicted class.
    same_class: f64,
    /// The same among the images whose top logit leads by more than one output step.
    same_class_decided: f64,
}

/// Exports the frozen `model` as `name.onnx` and runs it in onnxruntime on the test images.
fn run_in_onnxruntime<M: MnistModel>(name: &str, model: &M) -> Comparison {
    run_exported(name, model, &onnx_config())
}

/// [`run_in_onnxruntime`] with the export settings `config`.
fn run_exported<M: MnistModel>(name: &str, model: &M, config: &OnnxConfig) -> Comparison {
    let data = data();
    let path = data.dir.join(format!("{name}.onnx"));
    model.save_onnx(&path, config).expect("export");
    let graph = model.export_graph().expect("trace");
    let steps = graph.output_step().expect("the output lies on a grid");
    let mut logits = Vec::new();
    for start in (0..data.test.len()).step_by(1000) {
        let end = (start + 1000).min(data.test.len());
        let (x, _) = data.test.range(start, end);
        let y: Tensor<2> = model.logits(x, Mode::FakeQuant);
        logits.extend(to_vec(y));
    }
    let logits_path = data.dir.join(format!("{name}.logits.f32"));
    let steps_path = data.dir.join(format!("{name}.steps.f32"));
    write_f32(&logits_path, &logits);
    write_f32(&steps_path, &steps);
    let python = std::env::var("BURN_QUANT_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnxruntime_check.py");
    let shape = format!("{},1,28,28", data.test.len());
    let output = Command::new(&python)
        .arg(&script)
        .args([&path, &data.inputs])
        .arg(shape)
        .args([&logits_path, &steps_path])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    assert!(
        output.status.success(),
        "{name}: onnxruntime check failed (pip install onnx onnxruntime numpy):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 5, "{name}: unexpected output {line}");
    assert_eq!(fields[4], "image", "{name}: the input is named `image`");
    let comparison = Comparison {
        max_steps: fields[0].parse().unwrap(),
        within_one_step: fields[1].parse().unwrap(),
        same_class: fields[2].parse().unwrap(),
        same_class_decided: fields[3].parse().unwrap(),
    };
    eprintln!("{name}: {comparison:?}");
    comparison
}

/// onnxruntime's logits within one output step of the fake-quantized model's on >= 99.9 % of
/// the logits (a value within float precision of a rounding tie in a hidden layer may land one
/// step away), and the same class on >= 99.9 % of the images whose top logit leads by more
/// than one step. Where it leads by one step or less, one step may swap the class: with logits
/// on a 2- or 4-bit grid (the seed's protocol) that is half of the images or more, and with
/// integer logits onnxruntime's fused integer matmul moves them by a fraction of a step. At 8
/// bits (`fine_logits`) the class also agrees on >= 99.9 % of all images.
fn assert_agrees(name: &str, comparison: &Comparison, fine_logits: bool) {
    assert!(
        comparison.same_class_decided >= 0.999,
        "{name}: same class on {:.4} of the images with a clear top logit",
        comparison.same_class_decided
    );
    if fine_logits {
        assert!(
            comparison.same_class >= 0.999,
            "{name}: same class on {:.4} of the images",
            comparison.same_class
        );
    }
    assert!(
        comparison.within_one_step >= 0.999,
        "{name}: only {:.4} of the logits within one step (largest {} steps)",
        comparison.within_one_step,
        comparison.max_steps
    );
}

/// `net` calibrated at `bits` and frozen (PTQ, without the pipeline's evaluation).
fn ptq<M: MnistModel>(net: &M, bits: u32, config: &PipelineConfig) -> M {
    let qnet = experiment::calibrated(net, bits, &data().train, config, &mut |_| {});
    freeze(qnet.expect("calibration")).expect("freeze")
}

#[test]
fn net_at_2_4_and_8_bits_runs_in_onnxruntime_as_in_burn_quant() {
    let net: Net = float_model();
    for bits in [8, 4, 2] {
        let name = format!("net-ptq-{bits}bit");
        let comparison = run_in_onnxruntime(&name, &ptq(&net, bits, &ptq_config()));
        assert_agrees(&name, &comparison, bits == 8);
    }
    // The lsq method's quantizers: symmetric per-channel weights (ternary at 2 bits, binary at
    // 1 bit), MSE ranges, integer logits (the output is the dequantized accumulator).
    let lsq = PipelineConfig {
        symmetric_weights: true,
        integer_logits: true,
        weight_range: RangeEstimator::Mse,
        activation_range: RangeEstimator::Mse,
        ..ptq_config()
    };
    for bits in [2, 1] {
        let name = format!("net-lsq-ptq-{bits}bit");
        assert_agrees(
            &name,
            &run_in_onnxruntime(&name, &ptq(&net, bits, &lsq)),
            false,
        );
    }
    // Ternary weights stored as int4 (opset 21).
    let int4 = onnx_config().with_int4_weights(true);
    let name = "net-lsq-ptq-2bit-int4";
    assert_agrees(name, &run_exported(name, &ptq(&net, 2, &lsq), &int4), false);
    // Bias correction: the exported biases are the corrected ones.
    let corrected = PipelineConfig {
        bias_correction: true,
        ..lsq
    };
    let name = "net-lsq-ptq-2bit-bias-corrected";
    assert_agrees(
        name,
        &run_in_onnxruntime(name, &ptq(&net, 2, &corrected)),
        false,
    );
}

#[test]
fn net_bn_and_res_net_at_8_bits_run_in_onnxruntime_as_in_burn_quant() {
    let net_bn: NetBN = float_model();
    let name = "net-bn-ptq-8bit";
    assert_agrees(
        name,
        &run_in_onnxruntime(name, &ptq(&net_bn, 8, &ptq_config())),
        true,
    );
    let res_net: ResNet = float_model();
    let name = "res-net-ptq-8bit";
    assert_agrees(
        name,
        &run_in_onnxruntime(name, &ptq(&res_net, 8, &ptq_config())),
        true,
    );
}

#[test]
fn an_lsq_qat_model_runs_in_onnxruntime_with_its_learned_steps() {
    let net: Net = float_model();
    let data = data();
    let config = PipelineConfig {
        qat: TrainConfig {
            epochs: 1,
            lr: 0.003,
            ..TrainConfig::reference_qat()
        },
        learned_step: true,
        symmetric_weights: true,
        integer_logits: true,
        ..ptq_config()
    };
    let (qnet, _) =
        experiment::qat(&net, 3, &data.train, &data.test, &config, &mut |_| {}).expect("qat");
    let name = "net-lsq-qat-3bit";
    assert_agrees(name, &run_in_onnxruntime(name, &qnet), false);
}
