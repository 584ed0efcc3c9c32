//! Training with burn-train's `Learner`: any [`MnistModel`] as a `TrainStep`/`InferenceStep`
//! ([`Classifier`]), a Burn data loader over an MNIST split ([`MnistBatcher`]) and [`fit`],
//! which runs float or QAT training on one device or several (Burn's multi-device strategy)
//! with loss and accuracy metrics and checkpoints.
//!
//! The model is the same one the pipeline's own loop trains: [`Classifier::mode`] picks the
//! float forward (pre-training) or the fake-quantized one (QAT); [`crate::experiment::evaluate`]
//! then runs the frozen result on the integer engine.

use std::path::PathBuf;
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder, batcher::Batcher};
use burn::data::dataset::{Dataset as BurnDataset, DatasetError};
use burn::module::{Module, ModuleDisplay};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::SgdConfig;
use burn::optim::momentum::MomentumConfig;
use burn::tensor::{Device, Int, Tensor};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim,
    SupervisedTraining, TrainOutput, TrainStep,
};
use burn_quant::nn::Mode;

use crate::data::{IMAGE_PIXELS, MnistSplit};
use crate::models::MnistModel;

/// One MNIST image (784 pixels in 0..=255, row-major) and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct MnistImage {
    /// The pixels.
    pub pixels: Vec<u8>,
    /// The label, 0..=9.
    pub label: u8,
}

impl BurnDataset<MnistImage> for MnistSplit {
    fn get(&self, index: usize) -> Result<MnistImage, DatasetError> {
        let label = *self.labels.get(index).ok_or_else(|| {
            let reason = format!("no image {index} in a split of {}", self.len());
            DatasetError::new(std::io::Error::new(std::io::ErrorKind::NotFound, reason))
        })?;
        let start = index * IMAGE_PIXELS;
        Ok(MnistImage {
            pixels: self.pixels[start..start + IMAGE_PIXELS].to_vec(),
            label,
        })
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// A batch: normalised images `[n, 1, 28, 28]` and labels `[n]`.
#[derive(Debug, Clone)]
pub struct MnistBatch {
    /// The images, normalised as the pipeline's ([`MnistSplit::to_tensors`]).
    pub images: Tensor<4>,
    /// The labels.
    pub targets: Tensor<1, Int>,
}

/// Turns [`MnistImage`]s into an [`MnistBatch`] on the loader's device.
#[derive(Debug, Clone, Copy, Default)]
pub struct MnistBatcher;

impl Batcher<MnistImage, MnistBatch> for MnistBatcher {
    fn batch(&self, items: Vec<MnistImage>, device: &Device) -> MnistBatch {
        let split = MnistSplit {
            pixels: items
                .iter()
                .flat_map(|i| i.pixels.iter().copied())
                .collect(),
            labels: items.iter().map(|i| i.label).collect(),
        };
        let (images, targets) = split.to_tensors(device);
        MnistBatch { images, targets }
    }
}

/// A data loader over `split` in batches of `batch_size`, shuffled with `seed` (`None`: in
/// order).
pub fn data_loader(
    split: &MnistSplit,
    batch_size: usize,
    seed: Option<u64>,
) -> Arc<dyn DataLoader<MnistBatch>> {
    let builder = DataLoaderBuilder::new(MnistBatcher).batch_size(batch_size);
    let builder = match seed {
        Some(seed) => builder.shuffle(seed),
        None => builder,
    };
    builder.build(split.clone())
}

/// An MNIST model trained by the `Learner` in one [`Mode`]: [`Mode::Float`] for float
/// pre-training, [`Mode::FakeQuant`] for QAT. The loss is cross-entropy on the logits.
#[derive(Module, Debug)]
pub struct Classifier<M: MnistModel + ModuleDisplay> {
    /// The model.
    pub model: M,
    /// The forward used for training and validation.
    #[module(skip)]
    pub mode: Mode,
}

impl<M: MnistModel + ModuleDisplay> Classifier<M> {
    /// `model` trained in `mode`.
    pub fn new(model: M, mode: Mode) -> Self {
        Self { model, mode }
    }

    /// Loss, logits and targets of one batch.
    pub fn classify(&self, batch: MnistBatch) -> ClassificationOutput {
        let logits = self.model.logits(batch.images, self.mode);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl<M: MnistModel + ModuleDisplay + 'static> TrainStep for Classifier<M> {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl<M: MnistModel + ModuleDisplay + 'static> InferenceStep for Classifier<M> {
    type Input = MnistBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: MnistBatch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// How [`fit`] trains.
#[derive(Debug, Clone)]
pub struct LearnerConfig {
    /// Passes over the training split.
    pub epochs: usize,
    /// SGD learning rate (constant).
    pub lr: f64,
    /// SGD momentum (0: none).
    pub momentum: f64,
    /// Images per batch on each device.
    pub batch_size: usize,
    /// Seed of the shuffling; `None` keeps the split's order.
    pub shuffle_seed: Option<u64>,
    /// The devices: one (single-device) or several (Burn's multi-device strategy: each device
    /// trains on its share of the split, the devices' gradients are summed on the first, which
    /// also runs the optimizer and validation).
    pub devices: Vec<Device>,
    /// Where the `Learner` writes checkpoints (`checkpoint/model-<epoch>.bpk`, …), metric logs
    /// and the experiment log.
    pub artifact_dir: PathBuf,
}

/// Trains `model` with burn-train's `Learner` on `train` (validated on `valid` after every
/// epoch) with loss and accuracy metrics and the default checkpointers, and returns it in
/// validation mode (observers off).
///
/// # Panics
/// When `config.devices` is empty.
pub fn fit<M: MnistModel + ModuleDisplay + 'static>(
    model: Classifier<M>,
    train: &MnistSplit,
    valid: &MnistSplit,
    config: &LearnerConfig,
) -> Classifier<M> {
    let main = config.devices.first().expect("at least one device").clone();
    let momentum = (config.momentum > 0.0).then(|| {
        MomentumConfig::new()
            .with_momentum(config.momentum)
            .with_dampening(0.0)
    });
    let optimizer = SgdConfig::new().with_momentum(momentum).init();
    let strategy = match config.devices.len() {
        1 => ExecutionStrategy::single(main),
        _ => ExecutionStrategy::multi(config.devices.clone(), MultiDeviceOptim::OptimMainDevice),
    };
    let training = SupervisedTraining::new(
        &config.artifact_dir,
        data_loader(train, config.batch_size, config.shuffle_seed),
        data_loader(valid, config.batch_size, None),
    )
    .metrics((AccuracyMetric::new(), LossMetric::new()))
    .with_default_checkpointers()
    .with_training_strategy(strategy.into())
    .num_epochs(config.epochs)
    .summary();
    training
        .launch(Learner::new(model, optimizer, config.lr))
        .model
}
