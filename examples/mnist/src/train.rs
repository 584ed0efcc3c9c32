//! Training (float and QAT), PTQ calibration and evaluation loops.

use burn::module::Module;
use burn::module::ParamGroup;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

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

/// Knowledge distillation (Hinton et al. 2015) from a teacher's logits: the loss is
/// `(1 − weight) · CE(student, labels) + weight · T² · CE(softmax(teacher / T), student / T)`,
/// the second term a cross-entropy with the teacher's softened probabilities as targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distillation {
    /// Temperature `T` (> 0) of both softmaxes.
    pub temperature: f64,
    /// Weight of the teacher's term in `[0, 1]`.
    pub weight: f64,
}

impl Distillation {
    /// The distillation loss for `student` logits, the `teacher`'s (a constant) and the
    /// cross-entropy with the labels `hard`.
    ///
    /// # Shapes
    /// - student, teacher: `[batch, classes]`
    /// - hard, output: `[1]`
    pub fn loss(&self, student: Tensor<2>, teacher: Tensor<2>, hard: Tensor<1>) -> Tensor<1> {
        let t = self.temperature;
        let targets = softmax(teacher.div_scalar(t), 1).detach();
        let soft = (targets * log_softmax(student.div_scalar(t), 1))
            .sum_dim(1)
            .mean()
            .neg();
        hard * (1.0 - self.weight) + soft * (self.weight * t * t)
    }
}

/// Trains `model` (which must live on an autodiff device) with cross-entropy, using `forward`
/// for the logits: the float forward for training, the fake-quantized one for QAT.
/// `before_step(model, step)` runs before every step (0-based), e.g. to freeze observers.
pub fn train<M: Module>(
    model: M,
    data: &Dataset,
    config: &TrainConfig,
    forward: impl Fn(&M, Tensor<4>) -> Tensor<2>,
    before_step: &mut dyn FnMut(M, usize) -> M,
    progress: &mut dyn FnMut(Progress),
) -> M {
    let cross_entropy = CrossEntropyLossConfig::new().init(&data.images.device());
    let loss = |m: &M, x, y| cross_entropy.forward(forward(m, x), y);
    train_with_loss(model, data, config, loss, before_step, progress)
}

/// [`train`] with the loss of a batch given by `loss(model, images, labels)`.
pub fn train_with_loss<M: Module>(
    mut model: M,
    data: &Dataset,
    config: &TrainConfig,
    loss_of: impl Fn(&M, Tensor<4>, Tensor<1, Int>) -> Tensor<1>,
    before_step: &mut dyn FnMut(M, usize) -> M,
    progress: &mut dyn FnMut(Progress),
) -> M {
    let mut optim = config.optimizer();
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
            let loss = loss_of(&model, x, y);
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn logits(values: [[f32; 2]; 1], device: &burn::tensor::Device) -> Tensor<2> {
        Tensor::from_data(TensorData::from(values), device)
    }

    /// The teacher's term by hand: teacher logits `[0, ln 3]` give targets `[1/4, 3/4]` at
    /// `T = 1`; a student at `[0, 0]` has log-probabilities `−ln 2`, so the term is `ln 2`,
    /// times `T²` at any temperature; weight 0 leaves the labels' loss alone.
    #[test]
    fn distillation_loss_by_hand() {
        let device = burn_quant::default_device().unwrap();
        let teacher = logits([[0.0, 3f32.ln()]], &device);
        let student = logits([[0.0, 0.0]], &device);
        let hard = Tensor::<1>::from_floats([0.5], &device);
        let value = |temperature: f64, weight: f64| {
            let distill = Distillation {
                temperature,
                weight,
            };
            distill
                .loss(student.clone(), teacher.clone(), hard.clone())
                .into_scalar::<f32>()
        };
        let ln2 = 2f32.ln();
        assert!((value(1.0, 1.0) - ln2).abs() < 1e-6);
        assert!((value(2.0, 1.0) - 4.0 * ln2).abs() < 1e-5);
        assert!((value(1.0, 0.5) - (0.25 + 0.5 * ln2)).abs() < 1e-6);
        assert_eq!(value(3.0, 0.0), 0.5);
    }

    /// The teacher's term pulls the student towards the teacher: its gradient is
    /// `(softmax(s/T) − softmax(t/T)) / T` per example, zero where they agree.
    #[test]
    fn distillation_gradient_vanishes_at_the_teacher() {
        let device = burn_quant::default_device().unwrap().autodiff();
        let distill = Distillation {
            temperature: 2.0,
            weight: 1.0,
        };
        let grad = |student: [[f32; 2]; 1]| {
            let s = logits(student, &device).require_grad();
            let t = logits([[1.0, -1.0]], &device);
            let hard = Tensor::<1>::zeros([1], &device);
            let g = s
                .grad(&distill.loss(s.clone(), t, hard).backward())
                .unwrap();
            g.into_data().try_to_vec::<f32>().unwrap()
        };
        assert!(grad([[1.0, -1.0]]).iter().all(|g| g.abs() < 1e-6));
        // softmax([0, 0]) − softmax([0.5, −0.5]) = [0.5 − 0.7311, 0.5 − 0.2689], times T² / T.
        let g = grad([[0.0, 0.0]]);
        let p = 1.0 / (1.0 + (-1f32).exp());
        assert!((g[0] - 2.0 * (0.5 - p)).abs() < 1e-5, "{g:?}");
        assert!((g[1] - 2.0 * (p - 0.5)).abs() < 1e-5, "{g:?}");
    }
}
