//! Quantized 2-D convolution.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Tensor};

use super::deferred_conv::integer_conv_output;
use super::{LayerObservers, QConfig, QTensor, Quantized};
use crate::engine::{ConvGeometry, IntConv2d};
use crate::export::ExportOp;
use crate::ops::conv2d;
use crate::{QParams, QuantError};

/// Configuration of a [`QConv2d`]: Burn's [`Conv2dConfig`] (any stride, padding, dilation,
/// groups) and the quantization settings, saved together with [`Config::save`].
///
/// ```
/// use burn::nn::{PaddingConfig2d, conv::Conv2dConfig};
/// use burn_quant::{default_device, nn::{QConfig, QConv2dConfig}};
/// let device = default_device().unwrap();
/// let q = QConfig::reference(8).unwrap();
/// let conv = Conv2dConfig::new([3, 8], [3, 3])
///     .with_stride([2, 2])
///     .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
/// let layer = QConv2dConfig::new(conv, q).with_observe_input(true).init(&device).unwrap();
/// assert_eq!(layer.conv.weight.dims(), [8, 3, 3, 3]);
/// // 3 input channels do not split into 2 groups: an error, not a panic.
/// let bad = QConv2dConfig::new(Conv2dConfig::new([3, 8], [3, 3]).with_groups(2), q);
/// assert!(bad.init(&device).is_err());
/// ```
#[derive(Config, Debug)]
pub struct QConv2dConfig {
    /// The float convolution.
    pub conv: Conv2dConfig,
    /// How it is quantized.
    pub qconfig: QConfig,
    /// Whether the layer observes its own input (the first quantized layer of a model).
    #[config(default = false)]
    pub observe_input: bool,
    /// The output is the accumulator dequantized, not requantized (integer logits).
    #[config(default = false)]
    pub integer_output: bool,
}

impl QConv2dConfig {
    /// Builds the layer on `device`; fails on an invalid geometry or setting.
    pub fn init(&self, device: &Device) -> Result<QConv2d, QuantError> {
        self.qconfig.check()?;
        check_conv_config("QConv2d", &self.conv)?;
        Ok(
            QConv2d::new(self.conv.init(device), &self.qconfig, self.observe_input)
                .with_integer_output(self.integer_output),
        )
    }
}

/// Checks what Burn's [`Conv2dConfig::init`] would panic on (and zero sizes), naming `layer`.
pub(crate) fn check_conv_config(layer: &str, conv: &Conv2dConfig) -> Result<(), QuantError> {
    let [inputs, outputs] = conv.channels;
    let describe = || {
        format!(
            "{layer} [{inputs} -> {outputs}, kernel {:?}, stride {:?}, dilation {:?}, groups {}]",
            conv.kernel_size, conv.stride, conv.dilation, conv.groups
        )
    };
    let fail = |reason: String| {
        Err(QuantError::InvalidLayerConfig {
            layer: describe(),
            reason,
        })
    };
    let sizes = [conv.kernel_size, conv.stride, conv.dilation];
    if inputs == 0 || outputs == 0 || sizes.iter().flatten().any(|&s| s == 0) {
        return fail("channels, kernel, stride and dilation must be positive".into());
    }
    if conv.groups == 0 || inputs % conv.groups != 0 || outputs % conv.groups != 0 {
        return fail(format!(
            "both channel counts must be multiples of the {} groups",
            conv.groups
        ));
    }
    Ok(())
}

/// A [`Conv2d`] with input (optional), weight and output observers.
#[derive(Module, Debug)]
pub struct QConv2d {
    /// The wrapped float convolution (trained in place by QAT).
    pub conv: Conv2d,
    /// Its observers.
    pub observers: LayerObservers,
}

impl QConv2d {
    /// Wraps `conv`; `observe_input` gives it its own input observer (first layer).
    pub fn new(conv: Conv2d, qconfig: &QConfig, observe_input: bool) -> Self {
        let device = conv.weight.val().device();
        let channels = conv.weight.dims()[0];
        let inputs = conv.weight.dims()[1] * conv.groups;
        let observers = LayerObservers::new(qconfig, observe_input, [inputs, channels], 0, &device);
        Self { conv, observers }
    }

    /// The one forward: float, fake-quantized or on integers, as `x`'s [`Mode`](super::Mode) says.
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
            "QConv2d",
            x,
            |t| self.forward_float(t),
            |q| self.forward_fq(q),
            |q, grid| {
                let conv = (self.observers.frozen)
                    .get_or_freeze(self, grid, || self.to_integer(Some(grid)))?;
                self.observers.integer_value(
                    q,
                    grid,
                    |q| conv.accumulate(q),
                    |q| integer_conv_output(conv.clone(), q, None),
                )
            },
            |grid| {
                let bias = self.conv.bias.as_ref().map(|b| b.val());
                let weight = self.conv.weight.val();
                export_conv(
                    &self.conv,
                    &self.observers,
                    grid,
                    weight,
                    bias,
                    false,
                    [h, w],
                )
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
    pub fn forward_float(&self, x: Tensor<4>) -> Tensor<4> {
        float_conv(&self.conv, x)
    }

    /// Fake-quantized forward: input (if observed here), weight and output are fake-quantized,
    /// observers update while observing.
    pub fn forward_fq(&self, x: Quantized<4>) -> Quantized<4> {
        let (x, input) = self.observers.quantize_input(x);
        let bias = self.conv.bias.as_ref().map(|b| b.val());
        let weight = self.conv.weight.val();
        conv_output(&self.conv, &self.observers, x, &input, weight, bias, false)
    }

    /// The integer layer, given the grid of its input (ignored when it observes its own).
    pub fn to_integer(&self, previous: Option<&QParams>) -> Result<IntConv2d, QuantError> {
        let bias = self.conv.bias.as_ref().map(|b| b.val());
        int_conv(
            &self.conv,
            &self.observers,
            self.conv.weight.val(),
            bias,
            previous,
        )
    }
}

/// `conv`'s float forward (as [`Conv2d::forward`]) through [`crate::ops::conv2d`].
pub(crate) fn float_conv(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let options = ConvGeometry::of(conv).options(conv.groups, h, w);
    conv2d(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        options,
    )
}

/// The fake-quantized output of `conv`'s geometry with `weight` and `bias`, for `x` on the
/// grid `input` (see [`LayerObservers::layer_output`]).
pub(crate) fn conv_output(
    conv: &Conv2d,
    observers: &LayerObservers,
    x: Tensor<4>,
    input: &QParams,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    relu_after: bool,
) -> Quantized<4> {
    let [_, _, h, w] = x.dims();
    let options = ConvGeometry::of(conv).options(conv.groups, h, w);
    let [_, depth, kh, kw] = weight.dims();
    let accumulate = |x, w| conv2d(x, w, None, options.clone());
    let float = |x, w, b| conv2d(x, w, b, options.clone());
    observers.layer_output(
        x,
        input,
        weight,
        bias,
        depth * kh * kw,
        relu_after,
        accumulate,
        float,
    )
}

/// The exported steps of `conv` with `weight` and `bias` on an `h × w` input on `input`.
pub(crate) fn export_conv(
    conv: &Conv2d,
    observers: &LayerObservers,
    input: &QParams,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    relu_after: bool,
    [h, w]: [usize; 2],
) -> Result<Vec<ExportOp>, QuantError> {
    let geometry = ConvGeometry::of(conv);
    let [(top, bottom), (left, right)] = geometry.padding_pairs(h, w);
    observers.export_ops(input, weight, bias, relu_after, |weight, bias| {
        ExportOp::Conv {
            weight,
            bias,
            strides: geometry.stride,
            pads: [top, left, bottom, right],
            dilations: geometry.dilation,
            groups: conv.groups,
        }
    })
}

/// Freezes `weight` and `bias` (of `conv`'s geometry; `None`: no bias) into an integer
/// convolution.
pub(crate) fn int_conv(
    conv: &Conv2d,
    observers: &LayerObservers,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    previous: Option<&QParams>,
) -> Result<IntConv2d, QuantError> {
    let input = observers.input_qparams(previous)?;
    let [out, depth, kh, kw] = weight.dims();
    let frozen = observers.freeze_weights(weight, bias, &input)?;
    let groups = conv.groups;
    Ok(IntConv2d::new(
        frozen
            .weight
            .reshape([groups, out / groups, depth * kh * kw]),
        frozen.bias,
        frozen.input_zero_point,
        ConvGeometry::of(conv),
        frozen.requantizer,
        frozen.output,
    ))
}
