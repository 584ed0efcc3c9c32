//! Convolution + BatchNorm (+ ReLU) with the BatchNorm folded into the convolution.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Tensor, activation::relu};

use super::deferred_conv::integer_conv_output;
use super::qconv2d::{check_conv_config, conv_output, export_conv, float_conv};
use super::{LayerObservers, QConfig, QTensor, Quantized};
use crate::QParams;
use crate::QuantError;
use crate::engine::IntConv2d;
use crate::running;

/// Configuration of a [`QConvBn`]: Burn's [`Conv2dConfig`] and [`BatchNormConfig`], whether a
/// ReLU follows, and the quantization settings.
///
/// ```
/// use burn::nn::{BatchNormConfig, conv::Conv2dConfig};
/// use burn_quant::{default_device, nn::{QConfig, QConvBnConfig}};
/// let device = default_device().unwrap();
/// let q = QConfig::reference(8).unwrap();
/// let conv = Conv2dConfig::new([1, 8], [3, 3]);
/// let layer = QConvBnConfig::new(conv.clone(), BatchNormConfig::new(8), q).with_relu(true);
/// assert!(layer.init(&device).is_ok());
/// // The BatchNorm must have one feature per output channel.
/// assert!(QConvBnConfig::new(conv, BatchNormConfig::new(4), q).init(&device).is_err());
/// ```
#[derive(Config, Debug)]
pub struct QConvBnConfig {
    /// The float convolution.
    pub conv: Conv2dConfig,
    /// The BatchNorm folded into it.
    pub bn: BatchNormConfig,
    /// How it is quantized.
    pub qconfig: QConfig,
    /// Whether a ReLU follows (fused: the output is observed after it).
    #[config(default = false)]
    pub relu: bool,
    /// Whether the layer observes its own input (the first quantized layer of a model).
    #[config(default = false)]
    pub observe_input: bool,
}

impl QConvBnConfig {
    /// Builds the layer on `device`; fails on an invalid geometry or setting.
    pub fn init(&self, device: &Device) -> Result<QConvBn, QuantError> {
        self.qconfig.check()?;
        check_conv_config("QConvBn", &self.conv)?;
        if self.bn.num_features != self.conv.channels[1] {
            return Err(QuantError::InvalidLayerConfig {
                layer: format!(
                    "QConvBn [{} -> {}]",
                    self.conv.channels[0], self.conv.channels[1]
                ),
                reason: format!(
                    "the BatchNorm has {} features for {} output channels",
                    self.bn.num_features, self.conv.channels[1]
                ),
            });
        }
        Ok(QConvBn::new(
            self.conv.init(device),
            self.bn.init(device),
            &self.qconfig,
            self.observe_input,
            self.relu,
        ))
    }
}

/// A [`Conv2d`] followed by a [`BatchNorm`] (and a ReLU when built with `relu`), quantized as
/// one layer: with `σ = sqrt(var + eps)` the weight is folded to `W·γ/σ` per output channel
/// and the bias to `β + γ(b − μ)/σ`, and the folded weight is fake-quantized.
///
/// - QAT (autodiff input, BatchNorm in training mode, BN not frozen): `μ`, `var` are the
///   batch statistics of an un-quantized convolution (detached; unbiased variance, as the
///   reference), and the running statistics move by Burn's momentum convention
///   `r ← (1 − m)·r + m·batch`.
/// - Otherwise (calibration, evaluation, after [`QConvBn::freeze_bn`]): the running statistics.
///
/// With `relu`, the output is observed after the ReLU, so its zero point is 0 and no level is
/// spent on negative values; on the integer grid the clamp at 0 is the ReLU.
#[derive(Module, Debug)]
pub struct QConvBn {
    /// The float convolution.
    pub conv: Conv2d,
    /// The BatchNorm folded into it.
    pub bn: BatchNorm,
    /// Observers (the weight observer sees folded weights).
    pub observers: LayerObservers,
    #[module(skip)]
    relu: bool,
    #[module(skip)]
    bn_frozen: bool,
}

/// [`QConvBn`] built with a ReLU.
pub type QConvBnReLU = QConvBn;

impl QConvBn {
    /// Wraps `conv` and `bn`; `relu` appends a ReLU; `observe_input` gives it its own input
    /// observer.
    pub fn new(
        conv: Conv2d,
        bn: BatchNorm,
        qconfig: &QConfig,
        observe_input: bool,
        relu: bool,
    ) -> Self {
        let device = conv.weight.val().device();
        let channels = conv.weight.dims()[0];
        let inputs = conv.weight.dims()[1] * conv.groups;
        let observers = LayerObservers::new(qconfig, observe_input, [inputs, channels], 0, &device);
        Self {
            conv,
            bn,
            observers,
            relu,
            bn_frozen: false,
        }
    }

    /// The same layer with BatchNorm statistics frozen (`true`): training then folds with the
    /// running statistics and no longer updates them.
    pub fn freeze_bn(self, frozen: bool) -> Self {
        Self {
            bn_frozen: frozen,
            ..self
        }
    }

    /// Whether the BatchNorm statistics are frozen.
    pub fn is_bn_frozen(&self) -> bool {
        self.bn_frozen
    }

    /// The one forward: float, fake-quantized (folded) or on integers (folded, frozen), as
    /// `x`'s [`Mode`](super::Mode) says.
    ///
    /// # Shapes
    /// - input: `[n, in, h, w]`
    /// - output: `[n, out, h', w']`
    ///
    /// # Panics
    /// In [`Mode::Integer`](super::Mode::Integer) when an observer is not calibrated (see [`crate::freeze`]).
    pub fn forward(&self, x: QTensor<4>) -> QTensor<4> {
        let [_, _, h, w] = x.dims();
        self.observers.forward_modes(
            "QConvBn",
            x,
            |t| self.forward_float(t),
            |q| self.forward_fq(q),
            |q, grid| {
                let conv = (self.observers.frozen)
                    .get_or_freeze(self, grid, || self.to_integer(Some(grid)))?;
                let floor = self.relu.then_some(conv.requantizer.output_zero_point);
                Ok(integer_conv_output(conv, q, floor))
            },
            |grid| {
                let (weight, bias) = self.fold_running();
                let observers = &self.observers;
                export_conv(
                    &self.conv,
                    observers,
                    grid,
                    weight,
                    Some(bias),
                    self.relu,
                    [h, w],
                )
            },
        )
    }

    /// Float forward: convolution, BatchNorm (Burn's own, train or eval), ReLU.
    pub fn forward_float(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.bn.forward(float_conv(&self.conv, x));
        if self.relu { relu(y) } else { y }
    }

    /// Weight and bias folded with mean `mean` and variance `var`.
    pub fn fold(&self, mean: Tensor<1>, var: Tensor<1>) -> (Tensor<4>, Tensor<1>) {
        let channels = mean.dims()[0];
        let scale = self.bn.gamma.val() / (var + self.bn.epsilon).sqrt();
        let bias = match &self.conv.bias {
            Some(b) => b.val(),
            None => mean.zeros_like(),
        };
        let weight = self.conv.weight.val() * scale.clone().reshape([channels, 1, 1, 1]);
        (weight, self.bn.beta.val() + scale * (bias - mean))
    }

    /// Weight and bias folded with the running statistics.
    pub fn fold_running(&self) -> (Tensor<4>, Tensor<1>) {
        let device = self.conv.weight.device();
        self.fold(
            running::read(&self.bn.running_mean, &device),
            running::read(&self.bn.running_var, &device),
        )
    }

    fn uses_batch_statistics(&self, x: &Tensor<4>) -> bool {
        x.device().is_autodiff() && self.bn.training.val().is_enabled() && !self.bn_frozen
    }

    /// Batch mean and unbiased variance of an un-quantized convolution, detached; moves the
    /// running statistics.
    fn batch_statistics(&self, x: &Tensor<4>) -> (Tensor<1>, Tensor<1>) {
        let y = float_conv(&self.conv, x.clone().detach()).detach();
        let channels = y.dims()[1];
        let rows: Tensor<2> = y.swap_dims(0, 1).reshape([channels as i32, -1]);
        let (var, mean) = rows.var_mean(1);
        let (mean, var) = (mean.reshape([channels]), var.reshape([channels]));
        let m = self.bn.momentum;
        // One replica at a time (they share the statistics): each batch is one update.
        running::exclusive(|| {
            let update = |state: &burn::module::RunningState<Tensor<1>>, batch: Tensor<1>| {
                let batch = batch.without_autodiff();
                let old = running::read(state, &batch.device());
                running::commit(state, old * (1.0 - m) + batch * m);
            };
            update(&self.bn.running_mean, mean.clone());
            update(&self.bn.running_var, var.clone());
        });
        (mean, var)
    }

    /// Fake-quantized forward.
    pub fn forward_fq(&self, x: Quantized<4>) -> Quantized<4> {
        let (x, input) = self.observers.quantize_input(x);
        let (weight, bias) = if self.uses_batch_statistics(&x) {
            let (mean, var) = self.batch_statistics(&x);
            self.fold(mean, var)
        } else {
            self.fold_running()
        };
        conv_output(
            &self.conv,
            &self.observers,
            x,
            &input,
            weight,
            Some(bias),
            self.relu,
        )
    }

    /// The integer convolution with the weights folded with the running statistics.
    pub fn to_integer(&self, previous: Option<&QParams>) -> Result<IntConv2d, QuantError> {
        let (weight, bias) = self.fold_running();
        super::qconv2d::int_conv(&self.conv, &self.observers, weight, Some(bias), previous)
    }
}
