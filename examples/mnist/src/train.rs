//! Training (float and QAT), PTQ calibration and evaluation loops.

use burn::module::Module;
use burn::module::ParamGroup;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::Tensor;

use crate::dataset::{Dataset, SplitMix64};
pub use burn_quant_mnist_protocol::{LrSchedule, OptimizerKind};

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Learning rate (the base rate of `schedule`).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Batch size.
    pub batch_size: usize,
    /// Seed of the shuffling.
    pub seed: u64,
    /// SGD or Adam.
    pub optimizer: OptimizerKind,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
    /// L2 penalty added to the gradient of the weights (0: none); never applied to learned
    /// step sizes, which it would shrink towards 0.
    pub weight_decay: f64,
}

impl TrainConfig {
    /// The reference's float training: 15 epochs, lr 0.01, momentum 0.5, batch 64, seed 1.
    pub fn reference_float() -> Self {
        Self {
            epochs: 15,
            lr: 0.01,
            momentum: 0.5,
            batch_size: 64,
            seed: 1,
            optimizer: OptimizerKind::Sgd,
            schedule: LrSchedule::Constant,
            weight_decay: 0.0,
        }
    }

    /// The article's QAT: 2 epochs, lr 0.001, momentum 0.5, batch 64, seed 1.
    pub fn reference_qat() -> Self {
        Self {
            epochs: 2,
            lr: 0.001,
            ..Self::reference_float()
        }
    }

    /// The optimizer these settings describe; learned step sizes (parameters under a
    /// `learned` module) are optimized without weight decay.
    fn optimizer(&self) -> ModuleOptimizer {
        let decay =
            (self.weight_decay > 0.0).then(|| WeightDecayConfig::new(self.weight_decay as f32));
        let steps = ParamGroup::from_predicate("learned");
        match self.optimizer {
            OptimizerKind::Sgd => {
                let momentum = MomentumConfig::new()
                    .with_momentum(self.momentum)
                    .with_dampening(0.0);
                let sgd = SgdConfig::new().with_momentum(Some(momentum));
                let plain = sgd.build();
                sgd.with_weight_decay(decay)
                    .init()
                    .with_group(steps, plain, None)
            }
            OptimizerKind::Adam => {
                let adam = AdamConfig::new();
                let plain = adam.build();
                adam.with_weight_decay(decay)
                    .init()
                    .with_group(steps, plain, None)
            }
        }
    }
}

/// Progress of a loop, reported after every batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Batches done so far.
    pub done: usize,
    /// Batches in the whole loop.
    pub total: usize,
    /// Mean training loss of the last finished epoch, if any.
    pub epoch_loss: Option<f32>,
}

/// Trains `model` (which must live on an autodiff device) with cross-entropy, using `forward`
/// for the logits: the float forward for training, the fake-quantized one for QAT.
/// `before_step(model, step)` runs before every step (0-based), e.g. to freeze observers.
pub fn train<M: Module>(
    mut model: M,
    data: &Dataset,
    config: &TrainConfig,
    forward: impl Fn(&M, Tensor<4>) -> Tensor<2>,
    before_step: &mut dyn FnMut(M, usize) -> M,
    progress: &mut dyn FnMut(Progress),
) -> M {
    let mut optim = config.optimizer();
    let loss_fn = CrossEntropyLossConfig::new().init(&data.images.device());
    let mut rng = SplitMix64::new(config.seed);
    let per_epoch = data.len().div_ceil(config.batch_size);
    let total = per_epoch * config.epochs;
    let mut done = 0;
    for _ in 0..config.epochs {
        let mut loss_sum: Option<Tensor<1>> = None;
        let batches = data.shuffled_batches(config.batch_size, &mut rng);
        let n_batches = batches.len();
        for (i, indices) in batches.iter().enumerate() {
            model = before_step(model, done);
            let (x, y) = data.batch(indices);
            let loss = loss_fn.forward(forward(&model, x), y);
            let detached = loss.clone().detach().without_autodiff();
            loss_sum = Some(match loss_sum {
                Some(sum) => sum + detached,
                None => detached,
            });
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = config.schedule.lr_at(config.lr, done, total);
            model = optim.step(lr, model, grads);
            done += 1;
            let epoch_loss = (i + 1 == n_batches).then(|| {
                let sum = loss_sum.take().expect("at least one batch");
                sum.into_scalar::<f32>() / n_batches as f32
            });
            progress(Progress {
                done,
                total,
                epoch_loss,
            });
        }
    }
    model
}

/// Runs `forward` (typically the fake-quantized forward with observers on) over the first
/// `batches` shuffled training batches, to calibrate the observers (PTQ).
pub fn calibrate(
    data: &Dataset,
    batches: usize,
    batch_size: usize,
    seed: u64,
    forward: impl Fn(Tensor<4>) -> Tensor<2>,
    progress: &mut dyn FnMut(Progress),
) {
    let mut rng = SplitMix64::new(seed);
    let order = data.shuffled_batches(batch_size, &mut rng);
    let total = batches.min(order.len());
    for (i, indices) in order.iter().take(total).enumerate() {
        let (x, _) = data.batch(indices);
        // Reading one value back forces the (lazy) computation that updates the observers.
        let _ = forward(x).slice([0..1, 0..1]).into_scalar::<f32>();
        progress(Progress {
            done: i + 1,
            total,
            epoch_loss: None,
        });
    }
}

/// The predicted class of every example, in order.
pub fn predict(
    data: &Dataset,
    batch_size: usize,
    forward: impl Fn(Tensor<4>) -> Tensor<2>,
) -> Vec<i64> {
    let mut out = Vec::with_capacity(data.len());
    for start in (0..data.len()).step_by(batch_size) {
        let end = (start + batch_size).min(data.len());
        let (x, _) = data.range(start, end);
        let classes = forward(x).argmax(1).into_data().convert::<i64>();
        out.extend(classes.try_to_vec::<i64>().expect("i64 predictions"));
    }
    out
}

/// Fraction of predictions equal to the labels.
pub fn accuracy(predictions: &[i64], labels: &[u8]) -> f64 {
    agreement_with(predictions, labels.iter().map(|&l| l as i64))
}

/// Fraction of positions where two prediction lists agree.
pub fn agreement(a: &[i64], b: &[i64]) -> f64 {
    agreement_with(a, b.iter().copied())
}

fn agreement_with(a: &[i64], b: impl Iterator<Item = i64>) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    let same = a.iter().zip(b).filter(|(x, y)| **x == *y).count();
    same as f64 / a.len() as f64
}
