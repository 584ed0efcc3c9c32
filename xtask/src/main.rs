//! burn-quant's task runner: `cargo xtask sweep | plot | check | bench`.

mod bench;
mod cargo;
mod methods;
mod plot;
mod results;
mod sweep;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use burn_quant_mnist_protocol::MODELS;
use methods::QuantMethod;
use results::{LrFromBits, LrSchedule, OptimizerKind, Results, SweepConfig};

#[derive(Parser)]
#[command(about = "burn-quant tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Train the reference MNIST CNN, run PTQ and QAT at every bit width, write the results
    /// (JSON, CSV, Markdown) and plots (SVG, PNG). Resumes a previous run with the same
    /// configuration.
    Sweep(Box<SweepArgs>),
    /// Redraw the plots of a results.json.
    Plot {
        /// The results.json to draw.
        #[arg(long)]
        from: PathBuf,
        /// Output directory (default: beside the results).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the criterion benchmarks and write bench.json / bench.md (ratios per backend).
    Bench {
        /// Backends to measure (cargo features), comma-separated.
        #[arg(long, default_value = "flex,ndarray", value_delimiter = ',')]
        backends: Vec<String>,
        /// Shorter measurements.
        #[arg(long)]
        quick: bool,
        /// Do not measure: summarize the last criterion measurements again.
        #[arg(long)]
        summarize_only: bool,
        /// Output directory.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Check a sweep's output directory (files exist, JSON parses, accuracies in range, PNG).
    Check {
        /// The sweep's output directory.
        #[arg(long)]
        from: PathBuf,
    },
}

#[derive(Args)]
struct SweepArgs {
    /// Methods to run, comma-separated; each writes its own folder under --out, and
    /// `methods.md` / `methods.png` compare them.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "seed,ema,lsq"
    )]
    method: Vec<QuantMethod>,
    /// Bit widths: a range `1..8` / `1-8` or a list `2,4,8`.
    #[arg(long, default_value = "1..8", value_parser = parse_bits)]
    bits: BitList,
    /// Backend cargo feature the worker is built and run with (flex, ndarray, wgpu, vulkan).
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Model: `net` (the article's), `netbn` (BatchNorm folded into the convolutions) or
    /// `resnet` (a small residual network).
    #[arg(long, default_value = "net")]
    model: String,
    /// Float training epochs [15; quick: 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// Float learning rate [0.05; the seed's: 0.01].
    #[arg(long)]
    lr: Option<f64>,
    /// Float learning-rate schedule: constant or cosine [cosine; the seed's: constant]. The
    /// default float recipe (cosine from 0.05) was chosen on a validation split
    /// (docs/validation/); `--lr 0.01 --schedule constant` trains the seed's float model.
    #[arg(long, value_parser = LrSchedule::parse)]
    schedule: Option<LrSchedule>,
    /// QAT epochs [2; quick: 1].
    #[arg(long)]
    qat_epochs: Option<usize>,
    /// QAT learning rate [the method's: seed and ema 0.001 (quick: 0.01), lsq 0.05].
    #[arg(long)]
    qat_lr: Option<f64>,
    /// QAT learning rate from a bit width on, as BITS:LR (e.g. 5:0.003) [the method's: lsq
    /// 7:0.01; seed and ema none, --qat-lr at every width].
    #[arg(long, value_parser = LrFromBits::parse)]
    qat_lr_from: Option<LrFromBits>,
    /// SGD momentum [0.5].
    #[arg(long)]
    momentum: Option<f64>,
    /// PTQ calibration batches of 64 images [200; quick: 20].
    #[arg(long)]
    calib_batches: Option<usize>,
    /// Seed [1].
    #[arg(long)]
    seed: Option<u64>,
    /// MNIST directory (else BURN_QUANT_MNIST_DIR, else Burn's cache).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output directory [target/sweep-MODEL; quick: target/sweep-quick-MODEL].
    #[arg(long)]
    out: Option<PathBuf>,
    /// A few minutes on 2 cores: 1 float and 1 QAT epoch on 12,800 training images,
    /// evaluated on 2,000 test images.
    #[arg(long)]
    quick: bool,
    /// Recompute everything, even what a previous run with the same configuration has.
    #[arg(long)]
    force: bool,
    /// Also write every quantized model as ONNX (QDQ) next to its method's results
    /// (`ptq-4bit.onnx`, `qat-4bit.onnx`); results without their file are recomputed.
    #[arg(long)]
    export_onnx: bool,
    /// Keep the bias in float in the fake-quantized model (the reference's choice).
    #[arg(long)]
    float_bias: bool,
    /// EMA momentum of the observers, e.g. 0.01 [the method's: ema 0.01, else running min/max].
    #[arg(long, value_parser = burn_quant_mnist_protocol::parse_momentum)]
    ema_momentum: Option<f64>,
    /// LSQ: QAT learns every step size (learned step size quantization), starting from a PTQ
    /// calibration [on for the lsq method].
    #[arg(long)]
    lsq: bool,
    /// Weights symmetric on the narrow signed range with one step per output channel (from 2
    /// bits; ternary at 2, binary at 1) instead of the seed's affine per-tensor weights [on for
    /// the lsq method].
    #[arg(long)]
    symmetric_weights: bool,
    /// Integer logits: the classifier's i32 accumulator, dequantized, is the output (the
    /// seed's protocol quantizes the logits at the bit width too) [on for the lsq method].
    #[arg(long)]
    integer_logits: bool,
    /// QAT optimizer: sgd (with --momentum) or adam [the method's: sgd].
    #[arg(long, value_parser = OptimizerKind::parse)]
    qat_optimizer: Option<OptimizerKind>,
    /// QAT learning-rate schedule: constant or cosine [the method's: seed and ema constant, lsq
    /// cosine].
    #[arg(long, value_parser = LrSchedule::parse)]
    qat_schedule: Option<LrSchedule>,
    /// QAT weight decay, not applied to learned step sizes [0].
    #[arg(long)]
    qat_weight_decay: Option<f64>,
    /// QAT: observers stop observing after this many steps [never].
    #[arg(long)]
    freeze_observers_after: Option<usize>,
    /// QAT: BatchNorm statistics frozen after this many steps (netbn) [never].
    #[arg(long)]
    freeze_bn_after: Option<usize>,
    /// How a batch of weights gives a range: minmax, mse, percentile:P [the method's].
    #[arg(long)]
    weight_range: Option<String>,
    /// How a batch of activations gives a range: minmax, mse, percentile:P [the method's].
    #[arg(long)]
    activation_range: Option<String>,
    /// LSQ: what N of an activation step's gradient scale 1/sqrt(N·Q_P) counts: all (the
    /// batch's elements) or per-example [the method's].
    #[arg(long)]
    activation_step_grad: Option<String>,
    /// QAT: weight of the float model's term in a distillation loss, in [0, 1] (0: labels
    /// only) [the method's].
    #[arg(long)]
    distill_weight: Option<f64>,
    /// QAT: temperature of the distillation's softmaxes [4].
    #[arg(long)]
    distill_temperature: Option<f64>,
    /// Bias correction from the calibration's input means: true or false [the method's].
    #[arg(long)]
    bias_correction: Option<bool>,
    /// Hold out the last N training images and evaluate on them instead of the test set (for
    /// choosing settings; the float model is trained without them).
    #[arg(long)]
    validation: Option<usize>,
}

/// The float model's learning rate and schedule when none is given: on the validation split
/// (docs/validation/README.md, fourth round) a cosine schedule from 0.05 trained a better float
/// model than the seed's constant 0.01 and lifted PTQ and QAT at 3 to 6 bits with it.
const FLOAT_LR: f64 = 0.05;
/// See [`FLOAT_LR`].
const FLOAT_SCHEDULE: LrSchedule = LrSchedule::Cosine;

/// A list of bit widths.
#[derive(Debug, Clone)]
struct BitList(Vec<u32>);

fn parse_bits(s: &str) -> Result<BitList, String> {
    burn_quant_mnist_protocol::parse_bits(s).map(BitList)
}

impl SweepArgs {
    fn config(&self, method: QuantMethod) -> SweepConfig {
        let quick = self.quick;
        let defaults = method.defaults(quick);
        SweepConfig {
            method,
            model: self.model.clone(),
            backend: self.backend.clone(),
            epochs: self.epochs.unwrap_or(if quick { 1 } else { 15 }),
            lr: self.lr.unwrap_or(FLOAT_LR),
            schedule: self.schedule.unwrap_or(FLOAT_SCHEDULE),
            qat_epochs: self.qat_epochs.unwrap_or(if quick { 1 } else { 2 }),
            qat_lr: self.qat_lr.unwrap_or(defaults.qat_lr),
            qat_lr_from: self.qat_lr_from.or(defaults.qat_lr_from),
            momentum: self.momentum.unwrap_or(0.5),
            calib_batches: self.calib_batches.unwrap_or(if quick { 20 } else { 200 }),
            seed: self.seed.unwrap_or(1),
            train_limit: quick.then_some(12_800),
            validation: self.validation,
            test_limit: quick.then_some(2_000),
            float_bias: self.float_bias,
            ema_momentum: self.ema_momentum.or(defaults.ema_momentum),
            lsq: self.lsq || defaults.lsq,
            symmetric_weights: self.symmetric_weights || defaults.symmetric_weights,
            integer_logits: self.integer_logits || defaults.integer_logits,
            qat_optimizer: self.qat_optimizer.unwrap_or(defaults.qat_optimizer),
            qat_schedule: self.qat_schedule.unwrap_or(defaults.qat_schedule),
            qat_weight_decay: self.qat_weight_decay.unwrap_or(0.0),
            freeze_observers_after: self.freeze_observers_after,
            freeze_bn_after: self.freeze_bn_after,
            weight_range: self
                .weight_range
                .clone()
                .unwrap_or_else(|| defaults.weight_range.into()),
            activation_range: self
                .activation_range
                .clone()
                .unwrap_or_else(|| defaults.activation_range.into()),
            activation_step_grad: self
                .activation_step_grad
                .clone()
                .unwrap_or_else(|| defaults.activation_step_grad.into()),
            distill_weight: self.distill_weight.unwrap_or(defaults.distill_weight),
            distill_temperature: self
                .distill_temperature
                .unwrap_or(results::DISTILL_TEMPERATURE),
            bias_correction: self.bias_correction.unwrap_or(defaults.bias_correction),
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Sweep(args) => {
            if !MODELS.contains(&args.model.as_str()) {
                bail!(
                    "unknown model `{}` (available: {})",
                    args.model,
                    MODELS.join(", ")
                );
            }
            if !["flex", "ndarray", "wgpu", "vulkan"].contains(&args.backend.as_str()) {
                bail!(
                    "unknown backend `{}` (flex, ndarray, wgpu, vulkan)",
                    args.backend
                );
            }
            let default_out = format!(
                "target/sweep{}-{}",
                if args.quick { "-quick" } else { "" },
                args.model
            );
            let command = std::iter::once("cargo xtask".to_string())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" ");
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(default_out));
            // Each method once, in the order given.
            let mut methods: Vec<QuantMethod> = Vec::new();
            for &m in &args.method {
                if !methods.contains(&m) {
                    methods.push(m);
                }
            }
            let mut done = Vec::new();
            for (i, &method) in methods.iter().enumerate() {
                eprintln!("== method {} ==", method.name());
                let sweep = sweep::Sweep {
                    config: args.config(method),
                    bits: args.bits.0.clone(),
                    data_dir: args.data_dir.clone(),
                    out: out.join(method.name()),
                    float_dir: out.clone(),
                    force: args.force,
                    // The methods share the float model: retrained (with --force) once.
                    retrain_float: args.force && i == 0,
                    export_onnx: args.export_onnx,
                    command: command.clone(),
                };
                done.push((method, sweep.run()?));
            }
            methods::write_comparison(&done, &out)?;
            eprintln!(
                "comparison of the methods in {}",
                out.join("methods.md").display()
            );
        }
        Task::Plot { from, out } => {
            let results = Results::load(&from)?;
            let dir = out.unwrap_or_else(|| from.parent().map(PathBuf::from).unwrap_or_default());
            std::fs::create_dir_all(&dir)?;
            plot::plot(&results, &dir)?;
            eprintln!("plots written to {}", dir.display());
        }
        Task::Bench {
            backends,
            quick,
            summarize_only,
            out,
        } => bench::run(&backends, quick, summarize_only, &out)?,
        Task::Check { from } => {
            if from.join("results.json").exists() {
                let results = sweep::check_outputs(&from)?;
                println!(
                    "{}: {} bit widths, all outputs valid",
                    from.display(),
                    results.rows.len()
                );
            } else {
                let n = methods::check_methods(&from, sweep::check_outputs)?;
                println!("{}: {n} methods, all outputs valid", from.display());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_lists_and_ranges() {
        assert_eq!(parse_bits("1..8").unwrap().0, (1..=8).collect::<Vec<_>>());
        assert_eq!(parse_bits("1..=3").unwrap().0, vec![1, 2, 3]);
        assert_eq!(parse_bits("2-4").unwrap().0, vec![2, 3, 4]);
        assert_eq!(parse_bits("8, 2,4,2").unwrap().0, vec![2, 4, 8]);
        assert!(parse_bits("0").is_err());
        assert!(parse_bits("17").is_err());
        assert!(parse_bits("x").is_err());
    }

    fn sweep_config(args: &[&str]) -> SweepConfig {
        let cli = Cli::try_parse_from([&["xtask", "sweep"], args].concat()).unwrap();
        match cli.command {
            Task::Sweep(sweep) => sweep.config(QuantMethod::Seed),
            _ => unreachable!("a sweep"),
        }
    }

    #[test]
    fn the_float_recipe_defaults_to_the_validated_one_and_the_seeds_can_be_asked_for() {
        let default = sweep_config(&[]);
        assert_eq!((default.lr, default.schedule), (FLOAT_LR, FLOAT_SCHEDULE));
        let seed = sweep_config(&["--lr", "0.01", "--schedule", "constant"]);
        assert_eq!((seed.lr, seed.schedule), (0.01, LrSchedule::Constant));
        assert_ne!(seed.float_key(), default.float_key());
    }
}
