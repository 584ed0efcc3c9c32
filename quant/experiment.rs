//! The MNIST pipeline: float training, PTQ and QAT at a bit width, evaluated three ways.

use burn::module::Module;
use burn::tensor::Device;

use crate::models::{FloatModel, IntegerModel, QuantizedModel};
use crate::nn::QConfig;
use crate::train::{Progress, TrainConfig, accuracy, agreement, calibrate, predict, train};
use crate::{Dataset, QuantError, set_observing};

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
        }
    }

    fn qconfig(&self, bits: u32) -> Result<QConfig, QuantError> {
        Ok(QConfig::reference(bits)?
            .with_quantize_bias(self.quantize_bias)
            .with_exact_eval(self.exact_eval)
            .with_ema_momentum(self.ema_momentum))
    }
}

/// Test accuracy of a quantized model, fake-quantized and on the integer engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantAccuracy {
    /// Accuracy of the fake-quantized forward (observers frozen).
    pub fake_quant: f64,
    /// Accuracy of the integer engine frozen from it.
    pub integer: f64,
    /// Fraction of test images on which both predict the same class.
    pub agreement: f64,
}

/// Trains a float model from scratch (seeded) on `device` (autodiff is added here).
pub fn train_float<M: FloatModel>(
    train_set: &Dataset,
    config: &TrainConfig,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> M {
    let device = device.clone().autodiff();
    device.seed(config.seed);
    let net = M::init(&device);
    train(net, train_set, config, |m, x| m.forward(x), progress).valid()
}

/// Float test accuracy.
pub fn float_accuracy<M: FloatModel>(net: &M, test: &Dataset, batch_size: usize) -> f64 {
    accuracy(
        &predict(test, batch_size, |x| net.forward(x)),
        &test.host_labels,
    )
}

/// PTQ: calibrate fresh observers on training batches, freeze them, evaluate.
pub fn ptq<M: FloatModel>(
    net: &M,
    bits: u32,
    train_set: &Dataset,
    test: &Dataset,
    config: &PipelineConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(M::Quantized, QuantAccuracy), QuantError> {
    let qnet = net.quantize(&config.qconfig(bits)?);
    calibrate(
        train_set,
        config.calib_batches,
        config.qat.batch_size,
        config.calib_seed,
        |x| qnet.forward_fq(x),
        progress,
    );
    let qnet = set_observing(qnet, false);
    let result = evaluate(&qnet, test, config.eval_batch_size)?;
    Ok((qnet, result))
}

/// QAT: from the float model, train with the fake-quantized forward (the first batch sets the
/// ranges, as in the reference), then freeze the observers and evaluate.
pub fn qat<M: FloatModel>(
    net: &M,
    bits: u32,
    train_set: &Dataset,
    test: &Dataset,
    config: &PipelineConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<(M::Quantized, QuantAccuracy), QuantError> {
    let qnet = net.clone().train().quantize(&config.qconfig(bits)?);
    let qnet = train(
        qnet,
        train_set,
        &config.qat,
        |m, x| m.forward_fq(x),
        progress,
    );
    let qnet = qnet.valid();
    let result = evaluate(&qnet, test, config.eval_batch_size)?;
    Ok((qnet, result))
}

/// Evaluates a calibrated model (observers must be off) fake-quantized and on the engine.
pub fn evaluate<Q: QuantizedModel>(
    qnet: &Q,
    test: &Dataset,
    batch_size: usize,
) -> Result<QuantAccuracy, QuantError> {
    let fq = predict(test, batch_size, |x| qnet.forward_fq(x));
    let int_net = qnet.to_integer()?;
    let int = predict(test, batch_size, |x| int_net.forward(x));
    Ok(QuantAccuracy {
        fake_quant: accuracy(&fq, &test.host_labels),
        integer: accuracy(&int, &test.host_labels),
        agreement: agreement(&fq, &int),
    })
}
