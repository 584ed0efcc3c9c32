//! Quantized residual addition.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::layer_observers::host_scalar;
use super::{Mode, QConfig, QTensor, QValue, Quantized};
use crate::engine::IntAdd;
use crate::export::{ActivationGrid, ExportOp, not_integer};
use crate::{MinMaxObserver, QParams, QuantError, dequantize, quantize};

/// Configuration of a [`QAdd`].
#[derive(Config, Debug)]
pub struct QAddConfig {
    /// The activation scheme of the sum and the observers' settings.
    pub qconfig: QConfig,
}

impl QAddConfig {
    /// Builds the layer on `device`; fails on an invalid setting.
    pub fn init(&self, device: &Device) -> Result<QAdd, QuantError> {
        self.qconfig.check()?;
        Ok(QAdd::new(&self.qconfig, device))
    }
}

/// `a + b` for two quantized tensors, observed and fake-quantized on its own output grid.
/// Frozen, both inputs are requantized to the output grid ([`IntAdd`]); with
/// [`QConfig::exact_eval`] the fake-quantized evaluation computes exactly those integers.
///
/// # Shapes
/// - inputs: two tensors of the same shape
/// - output: that shape
#[derive(Module, Debug)]
pub struct QAdd {
    /// Observer of the sum.
    pub output: MinMaxObserver,
    #[module(skip)]
    exact_eval: bool,
}

impl QAdd {
    /// A residual addition with the activation scheme of `qconfig`.
    pub fn new(qconfig: &QConfig, device: &Device) -> Self {
        Self {
            output: qconfig.activation_observer(device),
            exact_eval: qconfig.exact_eval,
        }
    }

    /// The one forward: `a + b` in `a`'s [`Mode`].
    ///
    /// # Panics
    /// In [`Mode::FakeQuant`] and [`Mode::Integer`] when an input carries no grid, and in
    /// [`Mode::Integer`] when the output observer is not calibrated (see [`crate::freeze`]).
    pub fn forward<const D: usize>(&self, a: QTensor<D>, b: QTensor<D>) -> QTensor<D> {
        let mode = a.mode;
        let traces = [a.trace, b.trace];
        let mut output_grid = None;
        let value = match (mode, a.value.resolved(), b.value.resolved()) {
            (Mode::Float, a, b) => QValue::Real(a.dequantize() + b.dequantize()),
            (Mode::Integer, QValue::Int { q: qa, grid: ga }, QValue::Int { q: qb, grid: gb }) => {
                let add = self.to_integer(&ga, &gb).unwrap_or_else(|e| {
                    panic!(
                        "QAdd cannot run on integers: {e} (check the model with burn_quant::freeze)"
                    )
                });
                output_grid = Some(add.output.clone());
                QValue::Int {
                    q: add.forward(qa, qb),
                    grid: add.output,
                }
            }
            (_, a, b) => self
                .forward_fq(a.into_quantized(), b.into_quantized())
                .into(),
        };
        let inputs = [traces[0].as_ref(), traces[1].as_ref()];
        QTensor::layer_output(value, mode, &inputs, "QAdd", || {
            let grid = output_grid.ok_or_else(not_integer)?;
            Ok(vec![
                ExportOp::Add,
                ExportOp::Quantize(ActivationGrid::of(&grid)?),
            ])
        })
    }

    /// Float forward.
    pub fn forward_float<const D: usize>(&self, a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
        a + b
    }

    /// Fake-quantized forward; both inputs must lie on a grid.
    ///
    /// # Panics
    /// When an input carries no grid (it did not come from a quantized layer).
    pub fn forward_fq<const D: usize>(&self, a: Quantized<D>, b: Quantized<D>) -> Quantized<D> {
        let exact =
            self.exact_eval && !a.tensor.device().is_autodiff() && !self.output.is_observing();
        let (Some(grid_a), Some(grid_b)) = (a.qparams.as_ref(), b.qparams.as_ref()) else {
            panic!("QAdd needs two quantized inputs (outputs of quantized layers)");
        };
        if exact && let Ok(add) = self.to_integer(grid_a, grid_b) {
            let q = add.forward(quantize(a.tensor, grid_a), quantize(b.tensor, grid_b));
            return Quantized {
                tensor: dequantize(q, &add.output),
                qparams: Some(add.output),
            };
        }
        let (tensor, qparams) = self.output.observe_and_fake_quant(a.tensor + b.tensor);
        Quantized {
            tensor,
            qparams: Some(qparams),
        }
    }

    /// The integer addition of inputs on the grids `a` and `b`.
    pub fn to_integer(&self, a: &QParams, b: &QParams) -> Result<IntAdd, QuantError> {
        let output = self.output.checked_qparams()?;
        let (sa, za) = host_scalar(a);
        let (sb, zb) = host_scalar(b);
        let out = host_scalar(&output);
        Ok(IntAdd::new(
            (sa, za, a.scheme.bits()),
            (sb, zb, b.scheme.bits()),
            out,
            output,
        ))
    }
}
