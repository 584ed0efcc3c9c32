//! Quantized average pooling.

use burn::module::Module;
use burn::nn::pool::{AdaptiveAvgPool2dConfig, AvgPool2dConfig};
use burn::tensor::{Int, Tensor};

use super::layer_observers::host_scalar;
use super::{QTensor, QValue, Quantized};
use crate::engine::{int_avg_pool2d, int_global_avg_pool2d};
use crate::export::{ActivationGrid, ExportOp};
use crate::{QParams, QuantError, Ste, dequantize, fake_quant, quantize};

/// Average pooling that keeps its input's grid: non-overlapping `kernel × kernel` windows, or
/// global (`kernel == None`, output `1 × 1`). On the grid the mean is rounded half up
/// ([`int_avg_pool2d`]); in evaluation (no autodiff) the fake-quantized forward computes
/// exactly those integers, in training it fake-quantizes the float mean to the input grid
/// (STE).
///
/// # Shapes
/// - input: `[n, c, h, w]`
/// - output: `[n, c, h / kernel, w / kernel]`, or `[n, c, 1, 1]` when global
#[derive(Module, Debug)]
pub struct QAvgPool2d {
    #[module(skip)]
    kernel: Option<usize>,
}

impl QAvgPool2d {
    /// `kernel × kernel` pooling with stride `kernel`.
    pub fn new(kernel: usize) -> Self {
        Self {
            kernel: Some(kernel),
        }
    }

    /// Global average pooling (Burn's `AdaptiveAvgPool2d` to `1 × 1`).
    pub fn global() -> Self {
        Self { kernel: None }
    }

    /// The one forward (the grid is kept).
    pub fn forward(&self, x: QTensor<4>) -> QTensor<4> {
        let mode = x.mode;
        let [_, _, h, w] = x.dims();
        // The grid of integer values, which is what an export records.
        let mut int_grid = None;
        let value = match x.value.resolved() {
            QValue::Real(t) => QValue::Real(self.forward_float(t)),
            QValue::Int { q, grid } => {
                int_grid = Some(grid.clone());
                QValue::Int {
                    q: self.forward_int(q, &grid),
                    grid,
                }
            }
            fake => self.forward_fq(fake.into_quantized()).into(),
        };
        QTensor::layer_output(value, mode, &[x.trace.as_ref()], "QAvgPool2d", || {
            let grid = int_grid.ok_or(QuantError::InvalidSetting(
                "average pooling is exported on a quantized input".into(),
            ))?;
            Ok(vec![ExportOp::AvgPool {
                window: self.kernel.map_or([h, w], |k| [k, k]),
                global: self.kernel.is_none(),
                grid: ActivationGrid::of(&grid)?,
            }])
        })
    }

    /// Float forward.
    pub fn forward_float(&self, x: Tensor<4>) -> Tensor<4> {
        match self.kernel {
            Some(k) => AvgPool2dConfig::new([k, k])
                .with_strides([k, k])
                .init()
                .forward(x),
            None => AdaptiveAvgPool2dConfig::new([1, 1]).init().forward(x),
        }
    }

    /// Fake-quantized forward (the output stays on the input's grid).
    pub fn forward_fq(&self, x: Quantized<4>) -> Quantized<4> {
        let Some(grid) = x.qparams.clone() else {
            return x.map(|t| self.forward_float(t));
        };
        let tensor = if x.tensor.device().is_autodiff() {
            fake_quant(self.forward_float(x.tensor), &grid, Ste::Identity)
        } else {
            dequantize(self.forward_int(quantize(x.tensor, &grid), &grid), &grid)
        };
        Quantized {
            tensor,
            qparams: Some(grid),
        }
    }

    /// Integer forward on the grid `input`.
    pub fn forward_int(&self, q: Tensor<4, Int>, input: &QParams) -> Tensor<4, Int> {
        let (_, zero_point) = host_scalar(input);
        match self.kernel {
            Some(k) => int_avg_pool2d(q, zero_point, k),
            None => int_global_avg_pool2d(q, zero_point),
        }
    }
}
