//! The value that flows through a model written once with burn-quant's layers: real values,
//! fake-quantized values on a grid, or integers on a grid, and the mode that says which of the
//! three the model computes.

use burn::tensor::{Int, Tensor};

use super::{DeferredConv, Quantized};
use crate::export::{ExportOp, Traced, record};
use crate::{QParams, QuantError, dequantize};

/// How a model built from burn-quant's layers computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Quantization off: every layer is its float layer.
    Float,
    /// Fake-quantized: observers update while observing, STE in training; in evaluation with
    /// [`super::QConfig::exact_eval`] the outputs are exactly the integer engine's.
    FakeQuant,
    /// The integer engine: i32 arithmetic from the first quantizer to the output.
    Integer,
}

/// What a [`QTensor`] holds.
#[derive(Debug, Clone)]
pub enum QValue<const D: usize> {
    /// Real values on no grid: the model's input, or any tensor in [`Mode::Float`].
    Real(Tensor<D>),
    /// Fake-quantized real values on `grid`.
    Fake {
        /// The values (on the grid).
        tensor: Tensor<D>,
        /// Their grid.
        grid: QParams,
    },
    /// Integers on `grid`.
    Int {
        /// The integers.
        q: Tensor<D, Int>,
        /// Their grid.
        grid: QParams,
    },
    /// Integers not computed yet: a convolution's output waiting for a ReLU or a max-pooling
    /// to run inside its kernel ([`QValue::resolved`] computes them).
    Deferred(Box<DeferredConv<D>>),
}

impl<const D: usize> QValue<D> {
    /// The same values, deferred integers computed ([`QValue::Int`]).
    pub fn resolved(self) -> Self {
        match self {
            QValue::Deferred(deferred) => {
                let (q, grid) = (*deferred).compute();
                QValue::Int { q, grid }
            }
            value => value,
        }
    }

    /// An op that keeps the grid (see [`QTensor::map_values`]): `real` on real and
    /// fake-quantized values, `int` on the (computed) integers.
    pub(crate) fn map<const D2: usize>(
        self,
        real: impl FnOnce(Tensor<D>) -> Tensor<D2>,
        int: impl FnOnce(Tensor<D, Int>, &QParams) -> Tensor<D2, Int>,
    ) -> QValue<D2> {
        match self.resolved() {
            QValue::Real(t) => QValue::Real(real(t)),
            QValue::Fake { tensor, grid } => QValue::Fake {
                tensor: real(tensor),
                grid,
            },
            QValue::Int { q, grid } => QValue::Int {
                q: int(q, &grid),
                grid,
            },
            QValue::Deferred(_) => unreachable!("resolved"),
        }
    }

    /// The real values: dequantized integers, or the (fake-quantized) float values.
    pub fn dequantize(self) -> Tensor<D> {
        match self.resolved() {
            QValue::Real(tensor) | QValue::Fake { tensor, .. } => tensor,
            QValue::Int { q, grid } => dequantize(q, &grid),
            QValue::Deferred(_) => unreachable!("resolved"),
        }
    }

    /// The values as a fake-quantized [`Quantized`] (integers are dequantized).
    pub fn into_quantized(self) -> Quantized<D> {
        match self.resolved() {
            QValue::Real(tensor) => Quantized::float(tensor),
            QValue::Fake { tensor, grid } => Quantized {
                tensor,
                qparams: Some(grid),
            },
            QValue::Int { q, grid } => Quantized {
                tensor: dequantize(q, &grid),
                qparams: Some(grid),
            },
            QValue::Deferred(_) => unreachable!("resolved"),
        }
    }
}

impl<const D: usize> From<Quantized<D>> for QValue<D> {
    fn from(x: Quantized<D>) -> Self {
        match x.qparams {
            Some(grid) => QValue::Fake {
                tensor: x.tensor,
                grid,
            },
            None => QValue::Real(x.tensor),
        }
    }
}

/// A tensor travelling through a quantized model, with the [`Mode`] the model runs in.
///
/// Build the model's input with [`QTensor::new`]; each burn-quant layer takes and returns a
/// `QTensor`, so one `forward` serves all three modes; read the output with
/// [`QTensor::dequantize`].
#[derive(Debug, Clone)]
pub struct QTensor<const D: usize> {
    /// The values.
    pub value: QValue<D>,
    /// The mode of the model.
    pub mode: Mode,
    /// Set while [`crate::export::trace`] records the model.
    pub(crate) trace: Option<Traced>,
}

impl<const D: usize> QTensor<D> {
    /// A model input: real values, computed in `mode`.
    pub fn new(tensor: Tensor<D>, mode: Mode) -> Self {
        Self {
            value: QValue::Real(tensor),
            mode,
            trace: None,
        }
    }

    /// The output of a layer: `value` in the mode of the layer's `inputs`, traced from them
    /// with the steps `ops` while a model is being exported (see [`crate::export::trace`]).
    pub(crate) fn layer_output(
        value: QValue<D>,
        mode: Mode,
        inputs: &[Option<&Traced>],
        layer: &str,
        ops: impl FnOnce() -> Result<Vec<ExportOp>, QuantError>,
    ) -> Self {
        Self {
            value,
            mode,
            trace: record(inputs, layer, ops),
        }
    }

    /// The grid of the values (`None` for real values).
    pub fn grid(&self) -> Option<&QParams> {
        match &self.value {
            QValue::Real(_) => None,
            QValue::Fake { grid, .. } | QValue::Int { grid, .. } => Some(grid),
            QValue::Deferred(deferred) => Some(deferred.grid()),
        }
    }

    /// The real values: dequantized integers, or the (fake-quantized) float values.
    pub fn dequantize(self) -> Tensor<D> {
        self.value.dequantize()
    }

    /// The integers on the grid, in [`Mode::Integer`] (computed here when deferred).
    pub fn integers(&self) -> Option<Tensor<D, Int>> {
        match self.value.clone().resolved() {
            QValue::Int { q, .. } => Some(q),
            _ => None,
        }
    }

    /// Applies an op that keeps the grid (reshape, flatten, permute, max-pooling, ReLU) to
    /// whichever form the values have: `real` to real and fake-quantized values, `int` to the
    /// integers and their grid.
    ///
    /// A model that uses it cannot be exported ([`crate::export::trace`] fails naming it):
    /// the functions are opaque. burn-quant's own layers and [`QTensor::flatten`] /
    /// [`QTensor::reshape`] are exported.
    pub fn map_values<const D2: usize>(
        self,
        real: impl FnOnce(Tensor<D>) -> Tensor<D2>,
        int: impl FnOnce(Tensor<D, Int>, &QParams) -> Tensor<D2, Int>,
    ) -> QTensor<D2> {
        self.map_exported("QTensor::map_values", real, int, || {
            Err(QuantError::InvalidSetting(
                "a custom function has no export mapping".into(),
            ))
        })
    }

    /// [`QTensor::map_values`] for an op of `layer` exported as `ops`.
    pub(crate) fn map_exported<const D2: usize>(
        self,
        layer: &str,
        real: impl FnOnce(Tensor<D>) -> Tensor<D2>,
        int: impl FnOnce(Tensor<D, Int>, &QParams) -> Tensor<D2, Int>,
        ops: impl FnOnce() -> Result<Vec<ExportOp>, QuantError>,
    ) -> QTensor<D2> {
        self.map_value(layer, |value| value.map(real, int), ops)
    }

    /// The output of `layer`, one input: `f` of the value, exported as `ops`.
    pub(crate) fn map_value<const D2: usize>(
        self,
        layer: &str,
        f: impl FnOnce(QValue<D>) -> QValue<D2>,
        ops: impl FnOnce() -> Result<Vec<ExportOp>, QuantError>,
    ) -> QTensor<D2> {
        let (mode, trace) = (self.mode, self.trace);
        QTensor::layer_output(f(self.value), mode, &[trace.as_ref()], layer, ops)
    }

    /// The shape of the values.
    pub fn dims(&self) -> [usize; D] {
        match &self.value {
            QValue::Real(t) | QValue::Fake { tensor: t, .. } => t.dims(),
            QValue::Int { q, .. } => q.dims(),
            QValue::Deferred(deferred) => deferred.dims(),
        }
    }

    /// Flattens dimensions `start..=end` (the grid is kept).
    pub fn flatten<const D2: usize>(self, start: usize, end: usize) -> QTensor<D2> {
        let dims = self.dims();
        // Exported: dimensions before `start` kept (0), the flattened one inferred (-1).
        let export = || {
            let shape = (0..start)
                .map(|_| 0)
                .chain([-1])
                .chain(dims[end + 1..].iter().map(|&d| d as i64))
                .collect();
            Ok(vec![ExportOp::Reshape { shape }])
        };
        self.map_exported(
            "QTensor::flatten",
            |t| t.flatten(start, end),
            |q, _| q.flatten(start, end),
            export,
        )
    }

    /// Reshapes (the grid is kept). Exported with the first dimension kept dynamic (the batch)
    /// when it equals the input's first dimension.
    pub fn reshape<const D2: usize>(self, shape: [usize; D2]) -> QTensor<D2> {
        let batch = self.dims()[0];
        let export = || {
            let exported = shape
                .iter()
                .enumerate()
                .map(|(i, &d)| if i == 0 && d == batch { 0 } else { d as i64 })
                .collect();
            Ok(vec![ExportOp::Reshape { shape: exported }])
        };
        self.map_exported(
            "QTensor::reshape",
            |t| t.reshape(shape),
            |q, _| q.reshape(shape),
            export,
        )
    }
}
