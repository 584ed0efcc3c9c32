//! Quantized fully connected layer.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, module::linear};

use super::{LayerObservers, QConfig, QTensor, QValue, Quantized};
use crate::engine::IntLinear;
use crate::export::ExportOp;
use crate::{QParams, QuantError};

/// Configuration of a [`QLinear`]: Burn's [`LinearConfig`] and the quantization settings.
///
/// ```
/// use burn::nn::LinearConfig;
/// use burn_quant::{default_device, nn::{QConfig, QLinearConfig}};
/// let device = default_device().unwrap();
/// let config = QLinearConfig::new(LinearConfig::new(16, 10), QConfig::reference(4).unwrap());
/// assert_eq!(config.init(&device).unwrap().linear.weight.dims(), [16, 10]);
/// ```
#[derive(Config, Debug)]
pub struct QLinearConfig {
    /// The float layer.
    pub linear: LinearConfig,
    /// How it is quantized.
    pub qconfig: QConfig,
    /// Whether the layer observes its own input (the first quantized layer of a model).
    #[config(default = false)]
    pub observe_input: bool,
    /// The output is the accumulator dequantized, not requantized (integer logits).
    #[config(default = false)]
    pub integer_output: bool,
}

impl QLinearConfig {
    /// Builds the layer on `device`; fails on an invalid size or setting.
    pub fn init(&self, device: &Device) -> Result<QLinear, QuantError> {
        self.qconfig.check()?;
        if self.linear.d_input == 0 || self.linear.d_output == 0 {
            return Err(QuantError::InvalidLayerConfig {
                layer: format!(
                    "QLinear [{} -> {}]",
                    self.linear.d_input, self.linear.d_output
                ),
                reason: "sizes must be positive".into(),
            });
        }
        Ok(
            QLinear::new(self.linear.init(device), &self.qconfig, self.observe_input)
                .with_integer_output(self.integer_output),
        )
    }
}

/// A [`Linear`] (row layout, weight `[in, out]`) with input (optional), weight and output
/// observers. Per-channel weight parameters run along the output axis 1.
#[derive(Module, Debug)]
pub struct QLinear {
    /// The wrapped float layer.
    pub linear: Linear,
    /// Its observers.
    pub observers: LayerObservers,
}

impl QLinear {
    /// Wraps `linear`; `observe_input` gives it its own input observer.
    pub fn new(linear: Linear, qconfig: &QConfig, observe_input: bool) -> Self {
        let device = linear.weight.val().device();
        let [inputs, channels] = linear.weight.dims();
        let observers = LayerObservers::new(qconfig, observe_input, [inputs, channels], 1, &device);
        Self { linear, observers }
    }

    /// The one forward: float, fake-quantized or on integers, as `x`'s [`Mode`](super::Mode) says.
    ///
    /// # Shapes
    /// - input: `[n, in]`
    /// - output: `[n, out]`
    ///
    /// # Panics
    /// In [`Mode::Integer`](super::Mode::Integer) when an observer is not calibrated (see [`crate::freeze`]).
    pub fn forward(&self, x: QTensor<2>) -> QTensor<2> {
        self.observers.forward_modes(
            "QLinear",
            x,
            |t| self.forward_float(t),
            |q| self.forward_fq(q),
            |q, grid| {
                let linear = (self.observers.frozen)
                    .get_or_freeze(self, grid, || self.to_integer(Some(grid)))?;
                self.observers.integer_value(
                    q,
                    grid,
                    |q| linear.accumulate(q),
                    |q| QValue::Int {
                        q: linear.forward(q),
                        grid: linear.output.clone(),
                    },
                )
            },
            |grid| {
                let bias = self.linear.bias.as_ref().map(|b| b.val());
                let weight = self.linear.weight.val();
                self.observers
                    .export_ops(grid, weight, bias, false, |weight, bias| ExportOp::MatMul {
                        weight,
                        bias,
                    })
            },
        )
    }

    /// The same layer whose output is its accumulator dequantized, not requantized (e.g. the
    /// logits of a classifier: "integer logits").
    pub fn with_integer_output(self, integer_output: bool) -> Self {
        Self {
            observers: self.observers.with_integer_output(integer_output),
            ..self
        }
    }

    /// Float forward.
    pub fn forward_float(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear.forward(x)
    }

    /// Fake-quantized forward.
    pub fn forward_fq(&self, x: Quantized<2>) -> Quantized<2> {
        let (x, input) = self.observers.quantize_input(x);
        let bias = self.linear.bias.as_ref().map(|b| b.val());
        let weight = self.linear.weight.val();
        let fan_in = weight.dims()[0];
        self.observers.layer_output(
            x,
            &input,
            weight,
            bias,
            fan_in,
            false,
            |x, w| x.matmul(w),
            linear,
        )
    }

    /// The integer layer, given the grid of its input (ignored when it observes its own).
    pub fn to_integer(&self, previous: Option<&QParams>) -> Result<IntLinear, QuantError> {
        let input = self.observers.input_qparams(previous)?;
        let bias = self.linear.bias.as_ref().map(|b| b.val());
        let frozen = self
            .observers
            .freeze_weights(self.linear.weight.val(), bias, &input)?;
        Ok(IntLinear {
            weight: frozen.weight,
            bias: frozen.bias,
            input_zero_point: frozen.input_zero_point,
            requantizer: frozen.requantizer,
            output: frozen.output,
        })
    }
}
