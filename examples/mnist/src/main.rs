//! Train (or load) the reference MNIST CNN, then run PTQ and QAT at the bit widths asked and
//! print float / fake-quant / integer-engine accuracy per bit width.
//!
//! ```sh
//! cargo run --release -p burn-quant-mnist -- --bits 4,8
//! BURN_QUANT_DEVICE=wgpu cargo run --release -p burn-quant-mnist --features wgpu -- --bits 8
//! ```
//!
//! MNIST is read from `--data-dir`, else `BURN_QUANT_MNIST_DIR`, else the download cache,
//! where it is fetched on first use. With `--messages`, progress and results are also printed
//! as typed [`WorkerMessage`] lines (what `cargo xtask sweep` reads).

use std::path::PathBuf;
use std::time::Instant;

use burn_quant::backend::default_backend;
use burn_quant::nn::QConfig;
use burn_quant::{RangeEstimator, StepGradScale};
use burn_quant_mnist::Dataset;
use burn_quant_mnist::data::Mnist;
use burn_quant_mnist::experiment::{self, PipelineConfig};
use burn_quant_mnist::models::{MnistModel, Net, NetBN, ResNet, onnx_config};
use burn_quant_mnist::protocol::{MODELS, Method, WorkerMessage, parse_bits};
use burn_quant_mnist::train::{Distillation, LrSchedule, OptimizerKind, Progress, TrainConfig};
use clap::Parser;

/// mimalloc reuses the large buffers Burn's CPU backends allocate at every op (see
/// docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "MNIST: float training, PTQ and QAT at several bit widths")]
struct Args {
    /// Directory with the MNIST IDX files (else BURN_QUANT_MNIST_DIR, else Burn's cache).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Bit widths, e.g. `4,8` or `1-8`.
    #[arg(long, default_value = "1-8", value_parser = bit_list)]
    bits: BitList,
    /// Float training epochs.
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    /// Float learning rate.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Float learning-rate schedule: `constant` (the reference) or `cosine` (to 0 over all
    /// float steps).
    #[arg(long, default_value = "constant", value_parser = LrSchedule::parse)]
    schedule: LrSchedule,
    /// QAT epochs.
    #[arg(long, default_value_t = 2)]
    qat_epochs: usize,
    /// QAT learning rate.
    #[arg(long, default_value_t = 0.001)]
    qat_lr: f64,
    /// QAT optimizer: `sgd` (with `--momentum`) or `adam`.
    #[arg(long, default_value = "sgd", value_parser = OptimizerKind::parse)]
    qat_optimizer: OptimizerKind,
    /// QAT learning-rate schedule: `constant` or `cosine` (to 0 over all QAT steps).
    #[arg(long, default_value = "constant", value_parser = LrSchedule::parse)]
    qat_schedule: LrSchedule,
    /// QAT weight decay (L2 penalty; never on learned step sizes).
    #[arg(long, default_value_t = 0.0)]
    qat_weight_decay: f64,
    /// QAT: the observers stop observing after this many steps and keep their ranges.
    #[arg(long)]
    freeze_observers_after: Option<usize>,
    /// QAT: BatchNorm statistics are frozen after this many steps (`netbn`).
    #[arg(long)]
    freeze_bn_after: Option<usize>,
    /// How a batch of weights gives a range: `minmax`, `mse` or `percentile:P`.
    #[arg(long, default_value = "minmax", value_parser = RangeEstimator::parse)]
    weight_range: RangeEstimator,
    /// How a batch of activations gives a range: `minmax`, `mse` or `percentile:P`.
    #[arg(long, default_value = "minmax", value_parser = RangeEstimator::parse)]
    activation_range: RangeEstimator,
    /// LSQ: what `N` in an activation step's gradient scale `1/sqrt(N·Q_P)` counts: `all`
    /// elements of a batch or those `per-example` (LSQ's features per layer).
    #[arg(long, default_value = "all", value_parser = StepGradScale::parse)]
    activation_step_grad: StepGradScale,
    /// Bias correction: add each layer's mean output error from rounding its weights,
    /// `(W − Ŵ)·E[x]` with the input means of the calibration batches, to its bias.
    #[arg(long)]
    bias_correction: bool,
    /// QAT: distil the float model into the quantized one with this weight of the teacher's
    /// term in `[0, 1]` (0: labels only).
    #[arg(long, default_value_t = 0.0)]
    distill_weight: f64,
    /// QAT: temperature of the distillation's softmaxes.
    #[arg(long, default_value_t = 4.0)]
    distill_temperature: f64,
    /// SGD momentum (float and QAT).
    #[arg(long, default_value_t = 0.5)]
    momentum: f64,
    /// PTQ calibration batches of 64 training images.
    #[arg(long, default_value_t = 200)]
    calib_batches: usize,
    /// Seed of initialisation and shuffling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use only the first N training images (for quick runs).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Hold out the last N training images as a validation set and evaluate on it instead of
    /// the test set (for choosing settings without looking at the test set).
    #[arg(long)]
    validation: Option<usize>,
    /// Use only the first N test images (for quick runs).
    #[arg(long)]
    test_limit: Option<usize>,
    /// Float checkpoint: loaded if it exists, else written after training.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Keep the bias in float in the fake-quantized model and evaluate it with float rounding, as
    /// the reference does (by default the bias is fake-quantized as the integer engine stores it
    /// and evaluation is bit-exact, so that both agree exactly).
    #[arg(long)]
    float_bias: bool,
    /// EMA momentum of the observers (default: the reference's running min/max).
    #[arg(long, value_parser = burn_quant_mnist_protocol::parse_momentum)]
    ema_momentum: Option<f64>,
    /// LSQ: QAT learns every step size, starting from a PTQ calibration.
    #[arg(long)]
    lsq: bool,
    /// Weights symmetric on the narrow range, per output channel (from 2 bits; ternary at 2).
    #[arg(long)]
    symmetric_weights: bool,
    /// Integer logits: the classifier's i32 accumulator, dequantized, is the output (the
    /// seed's protocol quantizes the logits at the bit width too).
    #[arg(long)]
    integer_logits: bool,
    /// Skip PTQ or QAT.
    #[arg(long, value_parser = ["ptq", "qat"])]
    only: Option<String>,
    /// Model: `net` (the article's), `netbn` (with BatchNorm, folded when quantized) or
    /// `resnet` (a small residual network).
    #[arg(long, default_value = "net", value_parser = MODELS)]
    model: String,
    /// Write each frozen PTQ/QAT model as ONNX (QDQ) into this directory, named by mode and
    /// bits (`ptq-4bit.onnx`, `qat-4bit.onnx`).
    #[arg(long)]
    export_onnx: Option<PathBuf>,
    /// Also print progress and results as typed message lines (for `cargo xtask sweep`).
    #[arg(long)]
    messages: bool,
}

/// Bit widths (a newtype: clap reads a bare `Vec` as a repeated option).
#[derive(Debug, Clone)]
struct BitList(Vec<u32>);

fn bit_list(s: &str) -> Result<BitList, String> {
    parse_bits(s).map(BitList)
}

/// A progress line per 10 % of a phase, with an ETA; with `--messages`, a progress message per
/// batch on stdout instead (for the sweep's progress bars).
fn reporter(phase: &'static str, messages: bool) -> impl FnMut(Progress) {
    let start = Instant::now();
    let mut shown = 0;
    move |p: Progress| {
        if messages {
            let (done, total) = (p.done as u64, p.total as u64);
            let phase = phase.to_string();
            println!(
                "{}",
                WorkerMessage::Progress { phase, done, total }.to_line()
            );
            return;
        }
        if let Some(loss) = p.epoch_loss {
            eprintln!("  [{phase}] epoch done, mean loss {loss:.4}");
        }
        let tenth = p.done * 10 / p.total.max(1);
        if tenth > shown || p.done == p.total {
            shown = tenth;
            let elapsed = start.elapsed().as_secs_f64();
            let eta = elapsed / p.done as f64 * (p.total - p.done) as f64;
            eprintln!(
                "  [{phase}] {}/{} batches, {elapsed:.0}s elapsed, ETA {eta:.0}s",
                p.done, p.total
            );
        }
    }
}

fn emit(args: &Args, message: WorkerMessage) {
    if args.messages {
        println!("{}", message.to_line());
    }
}

fn main() {
    let args = Args::parse();
    match args.model.as_str() {
        "netbn" => run::<NetBN>(&args),
        "resnet" => run::<ResNet>(&args),
        _ => run::<Net>(&args),
    }
}

fn run<M: MnistModel>(args: &Args) {
    let backend = default_backend().unwrap_or_else(|e| fail(e));
    let device = backend.device();
    eprintln!("backend: {}", backend.name());
    let mnist = Mnist::load(args.data_dir.as_deref()).unwrap_or_else(|e| fail(e));
    let (train_split, test_split) = match args.validation {
        Some(n) => {
            let (train, validation) = mnist.train.split_last(n);
            eprintln!(
                "evaluating on the last {} training images (validation)",
                validation.len()
            );
            (train, validation)
        }
        None => (mnist.train.clone(), mnist.test.clone()),
    };
    let train_split = train_split.take(args.train_limit.unwrap_or(usize::MAX));
    let train_set = Dataset::from_mnist(&train_split, &device);
    let test_set = Dataset::from_mnist(
        &test_split.take(args.test_limit.unwrap_or(usize::MAX)),
        &device,
    );

    let float_config = TrainConfig {
        epochs: args.epochs,
        lr: args.lr,
        momentum: args.momentum,
        seed: args.seed,
        schedule: args.schedule,
        ..TrainConfig::reference_float()
    };
    let start = Instant::now();
    let mut trained = false;
    let net = match &args.checkpoint {
        Some(path) if path.exists() => {
            eprintln!("loading float model from {}", path.display());
            let qconfig = QConfig::reference(8).unwrap_or_else(|e| fail(e));
            M::new(&qconfig, &device)
                .try_load_file(path)
                .unwrap_or_else(|e| fail(format!("cannot load {}: {e}", path.display())))
        }
        _ => {
            eprintln!("training the float model ({} epochs)", args.epochs);
            trained = true;
            let net: M = experiment::train_float(
                &train_set,
                &float_config,
                &device,
                &mut reporter("float", args.messages),
            );
            if let Some(path) = &args.checkpoint {
                net.clone()
                    .save_file(path)
                    .unwrap_or_else(|e| fail(format!("cannot save {}: {e}", path.display())));
            }
            net
        }
    };
    let float_secs = start.elapsed().as_secs_f64();
    let float_acc = experiment::float_accuracy(&net, &test_set, 500);
    println!("float accuracy: {:.2} %", 100.0 * float_acc);
    emit(
        args,
        WorkerMessage::Float {
            accuracy: float_acc,
            seconds: float_secs,
            trained,
        },
    );

    if let Some(dir) = &args.export_onnx {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| fail(format!("cannot create {}: {e}", dir.display())));
    }
    let temperature_ok = args.distill_temperature.is_finite() && args.distill_temperature > 0.0;
    if !(0.0..=1.0).contains(&args.distill_weight) || !temperature_ok {
        fail(format!(
            "--distill-weight must be in [0, 1] and --distill-temperature > 0, got {} and {}",
            args.distill_weight, args.distill_temperature
        ));
    }
    let pipeline = PipelineConfig {
        qat: TrainConfig {
            epochs: args.qat_epochs,
            lr: args.qat_lr,
            optimizer: args.qat_optimizer,
            schedule: args.qat_schedule,
            weight_decay: args.qat_weight_decay,
            ..float_config
        },
        calib_batches: args.calib_batches,
        calib_seed: args.seed,
        quantize_bias: !args.float_bias,
        exact_eval: !args.float_bias,
        ema_momentum: args.ema_momentum,
        learned_step: args.lsq,
        symmetric_weights: args.symmetric_weights,
        integer_logits: args.integer_logits,
        freeze_observers_after: args.freeze_observers_after,
        freeze_bn_after: args.freeze_bn_after,
        weight_range: args.weight_range,
        activation_range: args.activation_range,
        activation_step_grad: args.activation_step_grad,
        bias_correction: args.bias_correction,
        distill: (args.distill_weight > 0.0).then_some(Distillation {
            temperature: args.distill_temperature,
            weight: args.distill_weight,
        }),
        ..PipelineConfig::reference()
    };
    println!(
        "{:>4}  {:>4}  {:>10}  {:>8}  {:>9}",
        "bits", "mode", "fake-quant", "integer", "agreement"
    );
    for &bits in &args.bits.0 {
        for method in Method::BOTH {
            let mode = method.name();
            if args.only.as_deref().is_some_and(|only| only != mode) {
                continue;
            }
            let start = Instant::now();
            let result = if mode == "ptq" {
                experiment::ptq(
                    &net,
                    bits,
                    &train_set,
                    &test_set,
                    &pipeline,
                    &mut reporter("ptq", args.messages),
                )
            } else {
                experiment::qat(
                    &net,
                    bits,
                    &train_set,
                    &test_set,
                    &pipeline,
                    &mut reporter("qat", args.messages),
                )
            };
            let (qnet, result) = result.unwrap_or_else(|e| fail(e));
            let secs = start.elapsed().as_secs_f64();
            if let Some(dir) = &args.export_onnx {
                let path = dir.join(method.onnx_file(bits));
                qnet.save_onnx(&path, &onnx_config())
                    .unwrap_or_else(|e| fail(e));
                eprintln!("exported {}", path.display());
            }
            println!(
                "{bits:>4}  {mode:>4}  {:>9.2}%  {:>7.2}%  {:>8.2}%   ({secs:.0}s)",
                100.0 * result.fake_quant,
                100.0 * result.integer,
                100.0 * result.agreement
            );
            emit(
                args,
                WorkerMessage::Quantized {
                    bits,
                    method,
                    result,
                    seconds: secs,
                },
            );
        }
    }
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1);
}
