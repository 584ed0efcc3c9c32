//! QAT with burn-train's `Learner`: float pre-training, QAT with loss and accuracy metrics and
//! checkpoints, then the frozen integer model, on one device or several.
//!
//! ```text
//! cargo run --release -p burn-quant-mnist --example learner_qat -- --bits 4
//! cargo run --release -p burn-quant-mnist --example learner_qat -- --devices 2
//! cargo run --release -p burn-quant-mnist --features tui --example learner_qat
//! ```
//!
//! The `Learner`'s dashboard (feature `tui`, off by default) shows the metrics when stdout is a
//! terminal, its text renderer otherwise; checkpoints and metric logs go to `--out` (`float/`
//! and `qat/`).

use std::error::Error;
use std::path::PathBuf;

use burn::module::Module;
use burn_quant::default_device;
use burn_quant::nn::{Mode, QConfig};
use burn_quant_mnist::Dataset;
use burn_quant_mnist::data::Mnist;
use burn_quant_mnist::experiment::{PipelineConfig, evaluate, float_accuracy};
use burn_quant_mnist::learner::{Classifier, LearnerConfig, fit};
use burn_quant_mnist::models::{MnistModel, Net};
use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "MNIST with burn-train's Learner: float pre-training, QAT, integer model")]
struct Args {
    /// Directory with the MNIST IDX files (else BURN_QUANT_MNIST_DIR, else Burn's cache).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Bit width of the QAT model.
    #[arg(long, default_value_t = 8)]
    bits: u32,
    /// Float pre-training epochs.
    #[arg(long, default_value_t = 3)]
    float_epochs: usize,
    /// QAT epochs.
    #[arg(long, default_value_t = 1)]
    qat_epochs: usize,
    /// Training devices: the backend's device this many times (Burn's multi-device strategy,
    /// one worker and replica per device).
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Training images held out for the `Learner`'s validation after every epoch.
    #[arg(long, default_value_t = 5_000)]
    validation: usize,
    /// Where checkpoints and metric logs go.
    #[arg(long, default_value = "target/learner_qat")]
    out: PathBuf,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let mnist = Mnist::load(args.data_dir.as_deref())?;
    let (train, valid) = mnist.train.split_last(args.validation);
    let device = default_device()?;
    let learner = |epochs, lr, dir: &str| LearnerConfig {
        epochs,
        lr,
        momentum: 0.5,
        batch_size: 64,
        shuffle_seed: Some(1),
        devices: vec![device.clone(); args.devices.max(1)],
        artifact_dir: args.out.join(dir),
    };

    // 1. Float pre-training (the quantization settings are not used in float mode).
    let net = Net::new(&QConfig::reference(8)?, &device.clone().autodiff());
    let float = fit(
        Classifier::new(net, Mode::Float),
        &train,
        &valid,
        &learner(args.float_epochs, 0.01, "float"),
    );

    // 2. QAT from the float weights with the pipeline's settings (the bias quantized as the
    //    integer engine stores it, bit-exact evaluation): observers calibrate on the first
    //    batches and keep observing (running min/max), the STE trains the weights.
    let qnet = PipelineConfig::reference().quantized(&float.model.clone().train(), args.bits)?;
    let qat = fit(
        Classifier::new(qnet, Mode::FakeQuant),
        &train,
        &valid,
        &learner(args.qat_epochs, 0.001, "qat"),
    );

    // 3. The frozen model on the integer engine, on the test set.
    let test = Dataset::from_mnist(&mnist.test, &device);
    let float_acc = float_accuracy(&float.model, &test, 1_000);
    let result = evaluate(&qat.model, &test, 1_000)?;
    println!("test accuracy: float {:.2} %", 100.0 * float_acc);
    println!(
        "{} bits: fake-quant {:.2} %, integer engine {:.2} %, agreement {:.2} %",
        args.bits,
        100.0 * result.fake_quant,
        100.0 * result.integer,
        100.0 * result.agreement
    );
    println!("checkpoints and metric logs: {}", args.out.display());
    Ok(())
}
