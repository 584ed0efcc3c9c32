//! The value that flows through a model written once with burn-quant's layers: real values,
//! fake-quantized values on a grid, or integers on a grid, and the mode that says which of the
//! three the model computes.

use burn::tensor::{Int, Tensor};

use super::Quantized;
use crate::{QParams, dequantize};

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
}

impl<const D: usize> QValue<D> {
    /// The real values: dequantized integers, or the (fake-quantized) float values.
    pub fn dequantize(self) -> Tensor<D> {
        match self {
            QValue::Real(tensor) | QValue::Fake { tensor, .. } => tensor,
            QValue::Int { q, grid } => dequantize(q, &grid),
        }
    }

    /// The values as a fake-quantized [`Quantized`] (integers are dequantized).
    pub fn into_quantized(self) -> Quantized<D> {
        match self {
            QValue::Real(tensor) => Quantized::float(tensor),
            QValue::Fake { tensor, grid } => Quantized {
                tensor,
                qparams: Some(grid),
            },
            QValue::Int { q, grid } => Quantized {
                tensor: dequantize(q, &grid),
                qparams: Some(grid),
            },
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
}

impl<const D: usize> QTensor<D> {
    /// A model input: real values, computed in `mode`.
    pub fn new(tensor: Tensor<D>, mode: Mode) -> Self {
        Self {
            value: QValue::Real(tensor),
            mode,
        }
    }

    /// The grid of the values (`None` for real values).
    pub fn grid(&self) -> Option<&QParams> {
        match &self.value {
            QValue::Real(_) => None,
            QValue::Fake { grid, .. } | QValue::Int { grid, .. } => Some(grid),
        }
    }

    /// The real values: dequantized integers, or the (fake-quantized) float values.
    pub fn dequantize(self) -> Tensor<D> {
        self.value.dequantize()
    }

    /// The integers on the grid, in [`Mode::Integer`].
    pub fn integers(&self) -> Option<&Tensor<D, Int>> {
        match &self.value {
            QValue::Int { q, .. } => Some(q),
            _ => None,
        }
    }

    /// Applies an op that keeps the grid (reshape, flatten, permute, max-pooling, ReLU) to
    /// whichever form the values have: `real` to real and fake-quantized values, `int` to the
    /// integers and their grid.
    pub fn map_values<const D2: usize>(
        self,
        real: impl FnOnce(Tensor<D>) -> Tensor<D2>,
        int: impl FnOnce(Tensor<D, Int>, &QParams) -> Tensor<D2, Int>,
    ) -> QTensor<D2> {
        let mode = self.mode;
        let value = match self.value {
            QValue::Real(t) => QValue::Real(real(t)),
            QValue::Fake { tensor, grid } => QValue::Fake {
                tensor: real(tensor),
                grid,
            },
            QValue::Int { q, grid } => QValue::Int {
                q: int(q, &grid),
                grid,
            },
        };
        QTensor { value, mode }
    }

    /// Flattens dimensions `start..=end` (the grid is kept).
    pub fn flatten<const D2: usize>(self, start: usize, end: usize) -> QTensor<D2> {
        self.map_values(|t| t.flatten(start, end), |q, _| q.flatten(start, end))
    }

    /// Reshapes (the grid is kept).
    pub fn reshape<const D2: usize>(self, shape: [usize; D2]) -> QTensor<D2> {
        self.map_values(|t| t.reshape(shape), |q, _| q.reshape(shape))
    }
}
