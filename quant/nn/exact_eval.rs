//! Bit-exact evaluation of the fake-quantized forward: the output grid of a layer computed as
//! the integer engine computes it.
//!
//! The float fake-quant path rounds `y / So` where `y` is a float sum; when the exact value
//! `M · acc` lies on (or within float error of) a rounding tie, that float rounding and the
//! engine's exact fixed-point rounding can differ by one LSB. Outputs sit on such ties often
//! when `M = Si·Sw/So` is a simple fraction (e.g. when the largest accumulator sets `So`), and
//! at 4 bits one LSB flips predictions. In evaluation the fake-quantized layers therefore form
//! the exact integer accumulator from their grid values (f32 ops on integer values, see
//! [`exact_products`]) and requantize it with the same [`crate::engine::Requantizer`] as the
//! frozen layer. Training and calibration keep the float fake-quant path and its STE.

use burn::tensor::{Tensor, activation::relu};

use super::{LayerObservers, Quantized};
use crate::engine::{exact_products, int_relu};
use crate::{QParams, QScheme, dequantize, quantize};

impl LayerObservers {
    /// Whether the fake-quantized forward of `x` is evaluated bit-exactly (configured, bias
    /// quantized, no autodiff, observers frozen).
    fn evaluates_exactly<const D: usize>(&self, x: &Tensor<D>) -> bool {
        self.exact_eval
            && self.quantize_bias
            && !x.device().is_autodiff()
            && !self.weight.is_observing()
            && !self.output.is_observing()
    }

    /// The layer's fake-quantized output: bit-exact with the integer engine in evaluation,
    /// otherwise `float(x, weight, bias)` fake-quantized by the output observer.
    ///
    /// `x` lies on the grid `input`; `accumulate` is the layer's map without bias, summing
    /// `fan_in` products per output; `relu` applies a ReLU before the output grid (the
    /// output observer sees the ReLU's output).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_output<const D: usize, const DW: usize>(
        &self,
        x: Tensor<D>,
        input: &QParams,
        weight: Tensor<DW>,
        bias: Option<Tensor<1>>,
        fan_in: usize,
        relu_after: bool,
        accumulate: impl Fn(Tensor<D>, Tensor<DW>) -> Tensor<D>,
        float: impl FnOnce(Tensor<D>, Tensor<DW>, Option<Tensor<1>>) -> Tensor<D>,
    ) -> Quantized<D> {
        self.observe_input_mean(&x);
        if self.evaluates_exactly(&x)
            && let Some(exact) =
                self.exact_output(&x, input, &weight, &bias, fan_in, relu_after, &accumulate)
        {
            return exact;
        }
        let (weight, bias) = self.quantize_parameters(weight, bias, input);
        let y = float(x, weight, bias);
        self.quantize_output(if relu_after { relu(y) } else { y })
    }

    #[allow(clippy::too_many_arguments)]
    fn exact_output<const D: usize, const DW: usize>(
        &self,
        x: &Tensor<D>,
        input: &QParams,
        weight: &Tensor<DW>,
        bias: &Option<Tensor<1>>,
        fan_in: usize,
        relu_after: bool,
        accumulate: &impl Fn(Tensor<D>, Tensor<DW>) -> Tensor<D>,
    ) -> Option<Quantized<D>> {
        let frozen = self
            .freeze_weights(weight.clone(), bias.clone(), input)
            .ok()?;
        let span = |s: QScheme| (s.qmax() - s.qmin()) as u64;
        let grid = quantize(x.clone(), input) - frozen.input_zero_point;
        let acc = exact_products(
            grid.float(),
            frozen.weight,
            span(input.scheme),
            span(self.weight.scheme()),
            fan_in,
            accumulate,
        )?;
        let mut bias_shape = [1usize; D];
        bias_shape[1] = frozen.bias.dims()[0];
        let acc = acc + frozen.bias.reshape(bias_shape);
        if self.integer_output {
            return Some(Quantized {
                tensor: self.dequantize_accumulator(acc, input).ok()?,
                qparams: None,
            });
        }
        let mut q = frozen.requantizer.apply(acc, 1);
        if relu_after {
            q = int_relu(q, frozen.requantizer.output_zero_point);
        }
        Some(Quantized {
            tensor: dequantize(q, &frozen.output),
            qparams: Some(frozen.output),
        })
    }
}
