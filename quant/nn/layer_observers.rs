//! The observers of a layer with weights (input, weight, output) and its freezing.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::frozen_cache::FrozenCache;
use super::{InputMean, Mode, QConfig, QTensor, QValue, Quantized};
use crate::backend::host_i32;
use crate::engine::Requantizer;
use crate::export::{ActivationGrid, ExportOp, IntBias, IntWeight, not_integer};
use crate::fake_quant::{fake_quant, fake_quant_on_grid};
use crate::qparams::channel_value;
use crate::{MinMaxObserver, QParams, QuantError, Ste, quantize};

/// Grid of the int32 bias.
const BIAS_GRID: (i32, i32) = (-i32::MAX, i32::MAX);

/// Input (optional: it may be the previous layer's output), weight and output observers.
#[derive(Module, Debug)]
pub struct LayerObservers {
    /// Input observer; `None` when the input arrives quantized from the previous layer.
    pub input: Option<MinMaxObserver>,
    /// Weight observer.
    pub weight: MinMaxObserver,
    /// Output observer.
    pub output: MinMaxObserver,
    /// The input's channel means for bias correction ([`QConfig::bias_correction`]), updated
    /// while the output observer observes.
    pub bias_correction: Option<InputMean>,
    #[module(skip)]
    pub(crate) quantize_bias: bool,
    #[module(skip)]
    pub(crate) exact_eval: bool,
    #[module(skip)]
    pub(crate) weight_axis: usize,
    /// The output is the accumulator `Σ q_w·q_x + q_b` dequantized with its scale `Si·Sw`,
    /// not requantized (integer logits); the output observer is updated but not used.
    #[module(skip)]
    pub(crate) integer_output: bool,
    #[module(skip)]
    ste: Ste,
    /// The layer's integer form from its last call in [`Mode::Integer`] (CPU backends).
    #[module(skip)]
    pub(crate) frozen: FrozenCache,
}

/// The integer form of a layer's weights, bias and requantization.
#[derive(Debug, Clone)]
pub struct FrozenWeights<const D: usize> {
    /// `q_w - Z_w`.
    pub weight: Tensor<D, Int>,
    /// `round(b / (Si·Sw))`, zero point 0.
    pub bias: Tensor<1, Int>,
    /// Input zero point.
    pub input_zero_point: i32,
    /// `M = Si·Sw/So` in fixed point, output zero point and grid.
    pub requantizer: Requantizer,
    /// Parameters of the output grid.
    pub output: QParams,
}

impl LayerObservers {
    /// Observers for a weight with `channels` output channels along `weight_axis`, on an
    /// input of `inputs` channels.
    pub fn new(
        qconfig: &QConfig,
        observe_input: bool,
        [inputs, channels]: [usize; 2],
        weight_axis: usize,
        device: &Device,
    ) -> Self {
        Self {
            input: observe_input.then(|| qconfig.activation_observer(device)),
            weight: qconfig.weight_observer(channels, weight_axis, device),
            output: qconfig.activation_observer(device),
            bias_correction: qconfig
                .bias_correction
                .then(|| InputMean::new(inputs, device)),
            quantize_bias: qconfig.quantize_bias,
            exact_eval: qconfig.exact_eval,
            weight_axis,
            integer_output: false,
            ste: qconfig.ste,
            frozen: FrozenCache::default(),
        }
    }

    /// The same observers with the output left as the dequantized accumulator (`true`).
    pub(crate) fn with_integer_output(self, integer_output: bool) -> Self {
        Self {
            integer_output,
            ..self
        }
    }

    /// Whether the output is the dequantized accumulator instead of a requantized grid.
    pub fn has_integer_output(&self) -> bool {
        self.integer_output
    }

    /// The integer-mode output of a frozen layer for input integers `q` on the grid `input`:
    /// `forward(q)` (the integers on the output grid), or, with an integer output,
    /// `accumulate(q)` dequantized ([`LayerObservers::dequantize_accumulator`]).
    pub(crate) fn integer_value<const D: usize>(
        &self,
        q: Tensor<D, Int>,
        input: &QParams,
        accumulate: impl FnOnce(Tensor<D, Int>) -> Tensor<D, Int>,
        forward: impl FnOnce(Tensor<D, Int>) -> QValue<D>,
    ) -> Result<QValue<D>, QuantError> {
        Ok(match self.integer_output {
            true => QValue::Real(self.dequantize_accumulator(accumulate(q), input)?),
            false => forward(q),
        })
    }

    /// The real value of an accumulator `acc` (output channels along axis 1) of a layer whose
    /// input lies on `input`: `acc · Si·Sw[c]`. The fake-quantized evaluation and the integer
    /// engine both go through it, so that they agree bit for bit.
    pub fn dequantize_accumulator<const D: usize>(
        &self,
        acc: Tensor<D, Int>,
        input: &QParams,
    ) -> Result<Tensor<D>, QuantError> {
        let weight = self.weight.checked_qparams()?;
        let scale = weight.scale.detach() * input.scale.clone().detach();
        let mut shape = [1usize; D];
        shape[1] = scale.dims()[0];
        Ok(acc.float() * scale.reshape(shape))
    }

    /// Fake-quantizes the input with the own input observer, or takes the previous grid.
    pub fn quantize_input<const D: usize>(&self, x: Quantized<D>) -> (Tensor<D>, QParams) {
        match (&self.input, x.qparams) {
            (Some(observer), _) => observer.observe_and_fake_quant(x.tensor),
            (None, Some(qparams)) => (x.tensor, qparams),
            (None, None) => panic!(
                "a layer without an input observer needs a quantized input (from a layer with an output observer)"
            ),
        }
    }

    /// The input as integers on this layer's input grid ([`Mode::Integer`]): quantized with
    /// the own input observer's grid, or as it arrives from the previous layer.
    ///
    /// # Panics
    /// When the layer has no input observer and receives real values (the first quantized
    /// layer of a model must be built with `observe_input`).
    pub fn input_integers<const D: usize>(&self, x: QValue<D>) -> (Tensor<D, Int>, QParams) {
        match (&self.input, x.resolved()) {
            (Some(observer), x) => {
                let grid = observer.qparams();
                (quantize(x.dequantize(), &grid), grid)
            }
            (None, QValue::Int { q, grid }) => (q, grid),
            (None, QValue::Fake { tensor, grid }) => (quantize(tensor, &grid), grid),
            (None, QValue::Real(_)) => panic!(
                "a layer without an input observer needs a quantized input (from a layer with an output observer)"
            ),
            (None, QValue::Deferred(_)) => unreachable!("resolved"),
        }
    }

    /// The one forward of a layer with weights: `float` in [`Mode::Float`], `fake` in
    /// [`Mode::FakeQuant`], and in [`Mode::Integer`] the input as integers on this layer's
    /// input grid through `integer` (which freezes the layer for that grid and runs it).
    ///
    /// While a model is exported, the layer's steps are `export` of its input grid.
    ///
    /// # Panics
    /// In [`Mode::Integer`] when `integer` fails (observers not calibrated: run
    /// [`crate::freeze`] first, which names the observer), naming `layer`.
    pub(crate) fn forward_modes<const D: usize>(
        &self,
        layer: &str,
        x: QTensor<D>,
        float: impl FnOnce(Tensor<D>) -> Tensor<D>,
        fake: impl FnOnce(Quantized<D>) -> Quantized<D>,
        integer: impl FnOnce(Tensor<D, Int>, &QParams) -> Result<QValue<D>, QuantError>,
        export: impl FnOnce(&QParams) -> Result<Vec<ExportOp>, QuantError>,
    ) -> QTensor<D> {
        let mode = x.mode;
        let mut input_grid = None;
        let value = match mode {
            Mode::Float => QValue::Real(float(x.value.dequantize())),
            Mode::FakeQuant => fake(x.value.into_quantized()).into(),
            Mode::Integer => {
                let (q, grid) = self.input_integers(x.value);
                let value = integer(q, &grid).unwrap_or_else(|e| {
                    panic!("{layer} cannot run on integers: {e} (check the model with burn_quant::freeze)")
                });
                input_grid = Some(grid);
                value
            }
        };
        QTensor::layer_output(value, mode, &[x.trace.as_ref()], layer, || {
            export(&input_grid.ok_or_else(not_integer)?)
        })
    }

    /// The exported steps of a layer with weights on an input on `input`: the input's
    /// quantization (when the layer observes it), `layer` (given the integer weight and
    /// bias), a ReLU (`relu_after`), the output's quantization (unless the output is the
    /// accumulator).
    pub(crate) fn export_ops<const D: usize>(
        &self,
        input: &QParams,
        weight: Tensor<D>,
        bias: Option<Tensor<1>>,
        relu_after: bool,
        layer: impl FnOnce(IntWeight, IntBias) -> ExportOp,
    ) -> Result<Vec<ExportOp>, QuantError> {
        let mut ops = Vec::new();
        if self.input.is_some() {
            ops.push(ExportOp::Quantize(ActivationGrid::of(input)?));
        }
        let weight_qparams = self.weight.checked_qparams()?;
        let (scale, zero_point) = weight_qparams.to_host();
        let shape = weight.dims().to_vec();
        let frozen = self.freeze_weights(weight.clone(), bias, input)?;
        let values = host_i32(quantize(weight, &weight_qparams)).to_vec();
        let (si, _) = host_scalar(input);
        let int_weight = IntWeight {
            values,
            shape,
            axis: self.weight_axis,
            qmin: weight_qparams.scheme.qmin(),
            qmax: weight_qparams.scheme.qmax(),
            scale: scale.clone(),
            zero_point,
        };
        let int_bias = IntBias {
            values: host_i32(frozen.bias).to_vec(),
            scale: scale.iter().map(|&sw| si * sw).collect(),
        };
        ops.push(layer(int_weight, int_bias));
        if relu_after {
            ops.push(ExportOp::Relu);
        }
        if !self.integer_output {
            ops.push(ExportOp::Quantize(ActivationGrid::of(&frozen.output)?));
        }
        Ok(ops)
    }

    /// Records the channel means of a layer's (fake-quantized) input for bias correction, while
    /// the output observer observes.
    pub(crate) fn observe_input_mean<const D: usize>(&self, x: &Tensor<D>) {
        if let Some(mean) = &self.bias_correction
            && self.output.is_observing()
        {
            mean.update(x);
        }
    }

    /// `bias` plus the bias correction of a weight used as `rounded` (unchanged without bias
    /// correction or before it has seen a batch; a missing bias becomes the correction).
    fn corrected_bias<const D: usize>(
        &self,
        weight: Tensor<D>,
        rounded: Tensor<D>,
        bias: Option<Tensor<1>>,
    ) -> Option<Tensor<1>> {
        let shift = self
            .bias_correction
            .as_ref()
            .and_then(|mean| mean.bias_shift(weight, rounded, self.weight_axis));
        match (bias, shift) {
            (Some(bias), Some(shift)) => Some(bias + shift),
            (bias, shift) => bias.or(shift),
        }
    }

    /// Fake-quantizes the weight, and the bias on the `Si·Sw` grid when configured.
    pub fn quantize_parameters<const D: usize>(
        &self,
        weight: Tensor<D>,
        bias: Option<Tensor<1>>,
        input: &QParams,
    ) -> (Tensor<D>, Option<Tensor<1>>) {
        let (rounded, weight_qparams) = self.weight.observe_and_fake_quant(weight.clone());
        let bias = self.corrected_bias(weight, rounded.clone(), bias);
        let weight = rounded;
        let bias = match bias {
            Some(bias) if self.quantize_bias => {
                let scale = weight_qparams.scale * input.scale.clone();
                let zero = scale.zeros_like();
                Some(fake_quant_on_grid(
                    bias, scale, zero, 0, BIAS_GRID, self.ste,
                ))
            }
            bias => bias,
        };
        (weight, bias)
    }

    /// Fake-quantizes the output (observes it and keeps it real with an integer output).
    pub fn quantize_output<const D: usize>(&self, y: Tensor<D>) -> Quantized<D> {
        if self.integer_output {
            if self.output.is_observing() {
                self.output.update(&y);
            }
            return Quantized {
                tensor: y,
                qparams: None,
            };
        }
        let (tensor, qparams) = self.output.observe_and_fake_quant(y);
        Quantized {
            tensor,
            qparams: Some(qparams),
        }
    }

    /// Input parameters: the own observer's, or `previous`.
    pub fn input_qparams(&self, previous: Option<&QParams>) -> Result<QParams, QuantError> {
        match (&self.input, previous) {
            (Some(observer), _) => observer.checked_qparams(),
            (None, Some(qparams)) => Ok(qparams.clone()),
            (None, None) => Err(QuantError::NotCalibrated),
        }
    }

    /// Integer weights, bias (`None`: a layer without one, frozen as a zero bias) and
    /// requantizer.
    pub fn freeze_weights<const D: usize>(
        &self,
        weight: Tensor<D>,
        bias: Option<Tensor<1>>,
        input: &QParams,
    ) -> Result<FrozenWeights<D>, QuantError> {
        let device = weight.device();
        let weight_qparams = self.weight.checked_qparams()?;
        let bias = match &self.bias_correction {
            Some(_) => {
                let rounded = fake_quant(weight.clone(), &weight_qparams, Ste::Identity);
                self.corrected_bias(weight.clone(), rounded, bias)
            }
            None => bias,
        };
        let bias =
            bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[self.weight_axis]], &device));
        let output = self.output.checked_qparams()?;
        let (si, zi) = host_scalar(input);
        let (so, zo) = host_scalar(&output);
        let (sw, _) = weight_qparams.to_host();
        let (_, zw) = weight_qparams.broadcast::<D>();
        let weight = quantize(weight, &weight_qparams) - zw.int();
        let bias = freeze_bias(bias, si, &sw);
        let requantizer = Requantizer::new(
            si,
            &sw,
            so,
            zo,
            (output.scheme.qmin(), output.scheme.qmax()),
            &device,
        );
        Ok(FrozenWeights {
            weight,
            bias,
            input_zero_point: zi,
            requantizer,
            output,
        })
    }
}

/// `round(b / (si · sw[c]))` on the int32 grid, rounding half to even like the fake path.
fn freeze_bias(bias: Tensor<1>, si: f32, sw: &[f32]) -> Tensor<1, Int> {
    let device = bias.device();
    let values = bias
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 bias");
    let limit = BIAS_GRID.1 as f32;
    let ints: Vec<i32> = values
        .iter()
        .enumerate()
        .map(|(c, &b)| {
            let scale = si * channel_value(sw, c);
            (b / scale).round_ties_even().clamp(-limit, limit) as i32
        })
        .collect();
    let n = ints.len();
    Tensor::from_data(TensorData::new(ints, [n]), &device)
}

/// Per-tensor scale and zero point on the host; activations are always per tensor.
pub(crate) fn host_scalar(qparams: &QParams) -> (f32, i32) {
    let (scale, zero_point) = qparams.to_host();
    assert_eq!(scale.len(), 1, "activations must be quantized per tensor");
    (scale[0], zero_point[0])
}
