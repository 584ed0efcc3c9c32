//! The MNIST pipeline: float training, PTQ and QAT at a bit width, evaluated three ways.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Tensor};

use crate::Dataset;
use crate::models::MnistModel;
use crate::protocol::ModeResult;
use crate::train::{
    Distillation, Progress, TrainConfig, accuracy, agreement, calibrate, predict, train,
    train_with_loss,
};
use burn_quant::nn::{Mode, QConfig};
use burn_quant::{QScheme, QuantError, RangeEstimator, StepGradScale, freeze, set_observing};

/// Settings of the PTQ/QAT pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipelineConfig {
    /// QAT training settings.
    pub qat: TrainConfig,
    /// PTQ calibration batches (of `qat.batch_size` training images).
    pub calib_batches: usize,
    /// Seed of the calibration order.
    pub calib_seed: u64,
    /// Batch size of evaluation.
    pub eval_batch_size: usize,
    /// Fake-quantize the bias as the integer engine stores it (see [`QConfig::quantize_bias`]).
    pub quantize_bias: bool,
    /// Evaluate the fake-quantized model bit-exactly as the engine (with `quantize_bias`; see
    /// [`QConfig::exact_eval`]).
    pub exact_eval: bool,
    /// EMA momentum of the observers (`None`: the reference's running min/max, which only
    /// grows; see [`QConfig::ema_momentum`]).
    pub ema_momentum: Option<f64>,
    /// LSQ: QAT calibrates the observers (`calib_batches`, as PTQ), then trains the weights
    /// and the steps ([`QConfig::learned_step`]) with observing off.
    pub learned_step: bool,
    /// Weights symmetric on the narrow signed range, one step per output channel (ternary at
    /// 2 bits); at 1 bit, where that range is empty, binary `{-α, +α}` per output channel
    /// ([`QScheme::bipolar`]).
    pub symmetric_weights: bool,
    /// The protocol "integer logits": the classifier's i32 accumulator, dequantized, is the
    /// output (the input and every hidden tensor stay at `bits`); otherwise the seed's
    /// protocol, logits at `bits` too.
    pub integer_logits: bool,
    /// QAT: observers stop observing before this step (0-based) and keep their ranges.
    pub freeze_observers_after: Option<usize>,
    /// QAT: BatchNorm statistics are frozen before this step (models with BatchNorm).
    pub freeze_bn_after: Option<usize>,
    /// How a batch of weights gives a range ([`QConfig::weight_range`]).
    pub weight_range: RangeEstimator,
    /// How a batch of activations gives a range ([`QConfig::activation_range`]).
    pub activation_range: RangeEstimator,
    /// What `N` counts in a learned activation step's gradient scale
    /// ([`QConfig::activation_step_grad`]).
    pub activation_step_grad: StepGradScale,
    /// QAT: distil the float model's logits into the quantized model (`None`: labels only).
    pub distill: Option<Distillation>,
    /// Correct each layer's bias for the mean shift of its rounded weights, from the input
    /// means seen while calibrating ([`QConfig::bias_correction`]).
    pub bias_correction: bool,
}

impl PipelineConfig {
    /// The article's protocol: 200 calibration batches, QAT 2 epochs at lr 0.001; the bias is
    /// fake-quantized and evaluation is bit-exact, so that the integer engine reproduces the
    /// fake-quantized model exactly (this changes only the fake-quant accuracy; the integer
    /// engine always rounds the bias).
    pub fn reference() -> Self {
        Self {
            qat: TrainConfig::reference_qat(),
            calib_batches: 200,
            calib_seed: 1,
            eval_batch_size: 500,
            quantize_bias: true,
            exact_eval: true,
            ema_momentum: None,
            learned_step: false,
            symmetric_weights: false,
            integer_logits: false,
            freeze_observers_after: None,
            freeze_bn_after: None,
            weight_range: RangeEstimator::MinMax,
            activation_range: RangeEstimator::MinMax,
            activation_step_grad: StepGradScale::AllElements,
            distill: None,
            bias_correction: false,
        }
    }

    /// `net`'s weights in a model quantized at `bits` with these settings, observing on.
    pub fn quantized<M: MnistModel>(&self, net: &M, bits: u32) -> Result<M, QuantError> {
        Ok(net
            .with_qconfig(&self.qconfig(bits)?)?
            .with_integer_logits(self.integer_logits))
    }

    fn qconfig(&self, bits: u32) -> Result<QConfig, QuantError> {
        let reference = QConfig::reference(bits)?;
        // The axis is set by each layer.
        let weight = match (self.symmetric_weights, bits) {
            (false, _) => reference.weight,
            (true, 1) => QScheme::bipolar().per_channel(0),
            (true, _) => QScheme::symmetric_narrow(bits)?.per_channel(0),
        };
        Ok(reference
            .with_weight(weight)
            .with_quantize_bias(self.quantize_bias)
            .with_exact_eval(self.exact_eval)
            .with_ema_momentum(self.ema_momentum)
            .with_learned_step(self.learned_step)
            .with_weight_range(self.weight_range)
            .with_activation_range(self.activation_range)
            .with_activation_step_grad(self.activation_step_grad)
            .with_bias_correction(self.bias_correction))
    }
}

/// Trains a float model from scratch (seeded) on `device` (autodiff is added here).
pub fn train_float<M: MnistModel>(
    train_set: &Dataset,
    config: &TrainConfig,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> M {
    let device = device.clone().autodiff();
    device.seed(config.seed);
    // The quantization settings are not used in float mode.
    let qconfig = QConfig::reference(8).expect("8 bits are supported");
    let net = M::new(&qconfig, &device);
    let forward = |m: &M, x| m.logits(x, Mode::Float);
    train(net, train_set, config, forward, &mut |m, _| m, progress).valid()
}

/// Test accuracy of the float model.
pub fn float_accuracy<M: MnistModel>(net: &M, test: &Dataset, batch_size: usize) -> f64 {
    accuracy(
        &predict(test, batch_size, |x| net.logits(x, Mode::Float)),
        &test.host_labels,
    )
}

/// PTQ: calibrate fresh observers on training batches, freeze them, evaluate.
pub fn ptq<M: MnistModel>(
    net: &M,
    bits: u32,
    train_set: &Dataset,
    test: &Dataset,
    config: &PipelineConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(M, ModeResult), QuantError> {
    let qnet = calibrated(net, bits, train_set, config, progress)?;
    let qnet = freeze(qnet)?;
    let result = evaluate(&qnet, test, config.eval_batch_size)?;
    Ok((qnet, result))
}

/// QAT: from the float model, train with the fake-quantized forward (the first batch sets the
/// ranges, as in the reference), then freeze the observers and evaluate.
pub fn qat<M: MnistModel>(
    net: &M,
    bits: u32,
    train_set: &Dataset,
    test: &Dataset,
    config: &PipelineConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(M, ModeResult), QuantError> {
    let qnet = match config.learned_step {
        // LSQ: steps start from a calibration, then train with observing off.
        true => set_observing(calibrated(net, bits, train_set, config, progress)?, false).train(),
        false => config.quantized(&net.clone().train(), bits)?,
    };
    let cross_entropy = CrossEntropyLossConfig::new().init(&train_set.images.device());
    let teacher = config.distill.map(|distill| (distill, net.clone().valid()));
    let loss = |m: &M, x: Tensor<4>, y| {
        let teacher_logits = teacher.as_ref().map(|(distill, teacher)| {
            let logits = teacher.logits(x.clone().without_autodiff(), Mode::Float);
            (*distill, logits)
        });
        let logits = m.logits(x, Mode::FakeQuant);
        let hard = cross_entropy.forward(logits.clone(), y);
        match teacher_logits {
            Some((distill, teacher_logits)) => distill.loss(logits, teacher_logits, hard),
            None => hard,
        }
    };
    let mut schedule = |m: M, step: usize| {
        let m = match config.freeze_observers_after == Some(step) {
            true => set_observing(m, false),
            false => m,
        };
        match config.freeze_bn_after == Some(step) {
            true => m.freeze_bn(true),
            false => m,
        }
    };
    let qnet = train_with_loss(qnet, train_set, &config.qat, loss, &mut schedule, progress);
    let qnet = freeze(qnet.valid())?;
    let result = evaluate(&qnet, test, config.eval_batch_size)?;
    Ok((qnet, result))
}

/// `net` quantized at `bits` with observers calibrated on `config.calib_batches` batches
/// (still observing: [`freeze`] it).
pub fn calibrated<M: MnistModel>(
    net: &M,
    bits: u32,
    train_set: &Dataset,
    config: &PipelineConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<M, QuantError> {
    let qnet = config.quantized(net, bits)?;
    calibrate(
        train_set,
        config.calib_batches,
        config.qat.batch_size,
        config.calib_seed,
        |x| qnet.logits(x, Mode::FakeQuant),
        progress,
    );
    Ok(qnet)
}

/// Evaluates a calibrated model fake-quantized and on the integer engine (the observers are
/// frozen first; an uncalibrated one is an error naming it).
pub fn evaluate<M: MnistModel>(
    qnet: &M,
    test: &Dataset,
    batch_size: usize,
) -> Result<ModeResult, QuantError> {
    let qnet = freeze(qnet.clone())?;
    let fq = predict(test, batch_size, |x| qnet.logits(x, Mode::FakeQuant));
    let int = predict(test, batch_size, |x| qnet.logits(x, Mode::Integer));
    Ok(ModeResult {
        fake_quant: accuracy(&fq, &test.host_labels),
        integer: accuracy(&int, &test.host_labels),
        agreement: agreement(&fq, &int),
    })
}
